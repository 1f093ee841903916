//! The dataplane: packets in from the TUN device, decisions, packets and sockets out.
//! It never talks to the API server; it reads the published `ServiceTable` only.
pub mod packet;
