//! Host setup: the TUN device's addresses, link state and routes (rtnetlink), forwarding;
//! for flow offload, the conntrack entries (ctnetlink) and the netfilter table (nft).

pub mod conntrack;
pub mod netlink;
pub mod nftables;
pub mod offload;
pub mod sysctl;
