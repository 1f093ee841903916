//! Host setup: the TUN device's addresses, link state and routes (rtnetlink), forwarding,
//! and the announcement those routes make (`announce`); for flow offload, the conntrack
//! entries (ctnetlink) and the netfilter table (nft).

pub mod announce;
pub mod conntrack;
pub mod lookup;
pub mod netlink;
pub mod nftables;
pub mod offload;
pub mod sysctl;
