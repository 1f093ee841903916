//! clusterway: an off-cluster gateway that makes Kubernetes Service ClusterIPs reachable.
//!
//! The control plane (`cluster`) builds immutable `ServiceTable` snapshots; the dataplane
//! (`dataplane`) reads them and moves packets; `host` owns the TUN device's addresses and
//! routes; `lab` builds the demo topology in network namespaces.

pub mod bgp_config;
pub mod check;
pub mod cluster;
pub mod config;
pub mod dataplane;
pub mod dns;
pub mod fuzz;
pub mod gateway;
pub mod host;
pub mod lab;
pub mod probe;
pub mod routes;
pub mod web;
