//! Host setup: the TUN device's addresses, link state and routes (rtnetlink), forwarding.

pub mod lookup;
pub mod netlink;
pub mod sysctl;
