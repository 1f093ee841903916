//! The control plane: sources of Service/EndpointSlice objects and the table builder.
//! It never touches packets; its only output is a published `ServiceTable`.

pub mod table;
