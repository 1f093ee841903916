//! The dataplane: packets in from the TUN device, decisions, packets and sockets out.
//! It never talks to the API server; it reads the published `ServiceTable` only.
pub mod balancer;
pub mod ctevents;
pub mod ctsweep;
pub mod engine;
pub mod flows;
pub mod limits;
pub mod memory;
pub mod nat;
pub mod offload;
pub mod outlier;
pub mod packet;
pub mod shared;
pub mod splice;
pub mod stats;
pub mod svcbytes;
pub mod tcp;
pub mod tun;
pub mod udp;
pub mod worker;
