//! The control plane: sources of Service/EndpointSlice objects and the table builder.
//! It never touches packets; its only output is a published `ServiceTable`.
//!
//! - `parse`: file text → `Objects` (Services, EndpointSlices, ignored kinds);
//! - `build`: `Objects` → `ServiceTable`, with kube-proxy's semantics;
//! - `file`: the file source (load at start-up, reload on change);
//! - `error`: `ObjectError` (one bad object + field) and `SourceError`.

pub mod build;
pub mod error;
pub mod file;
pub mod parse;
pub mod table;

pub use build::{build_table, BuildOptions};
pub use error::{ObjectError, SourceError};
pub use file::{load, watch_file, FileSource};
pub use parse::{parse_objects, Objects};
