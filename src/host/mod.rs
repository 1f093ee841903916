//! Host setup: the TUN device's addresses, link state and routes (rtnetlink), forwarding,
//! and the announcement those routes make (`announce`).

pub mod announce;
pub mod lookup;
pub mod netlink;
pub mod sysctl;
