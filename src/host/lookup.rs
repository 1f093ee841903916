//! Which route the kernel would take to an address: `RTM_GETROUTE` with `RTM_F_FIB_MATCH`
//! (what `ip route get fibmatch ADDR` asks), which answers with the routing table entry
//! that matched — its real prefix, so a default route shows as `/0` — instead of a host
//! route cloned for the address.
//!
//! `clusterway check` uses it before dialling a pod: a pod address that only the default
//! route covers is not dialled, since a connection through the default route would say
//! nothing about the pod network (and would send a probe off towards the internet).
//!
//! Owns nothing; reads the routing tables through the caller's [`Host`] (in its network
//! namespace) and changes nothing.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::RouteMessageBuilder;

use super::netlink::Host;

/// The routing table entry the kernel matched for an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatchedRoute {
    /// Prefix length of the matched entry: 0 for a default route.
    pub prefix_len: u8,
    /// Its next hop, when it has one.
    pub gateway: Option<IpAddr>,
    /// Its outgoing link's index.
    pub oif: Option<u32>,
}

impl MatchedRoute {
    /// True when the address is covered only by a default route (`0.0.0.0/0`, `::/0`).
    pub fn is_default(&self) -> bool {
        self.prefix_len == 0
    }
}

/// Why the route to an address could not be told.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// The kernel has no usable route (ENETUNREACH; also an `unreachable`, `prohibit` or
    /// `blackhole` route). The cause is in the message, not also `source()`.
    #[error("no route to {dst}: {error}")]
    NoRoute { dst: IpAddr, error: io::Error },
    /// The request failed otherwise.
    #[error("cannot look up the route to {dst}")]
    Netlink {
        dst: IpAddr,
        #[source]
        source: rtnetlink::Error,
    },
    /// The kernel answered with no route message.
    #[error("the kernel returned no route for {dst}")]
    Empty { dst: IpAddr },
}

impl LookupError {
    /// A short, stable label for reports and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::NoRoute { .. } => "no_route",
            Self::Netlink { .. } => "netlink",
            Self::Empty { .. } => "empty",
        }
    }
}

/// The entry of the routing tables (policy rules applied) the kernel matches for `dst`.
pub async fn route_to(host: &Host, dst: IpAddr) -> Result<MatchedRoute, LookupError> {
    let mut message = match dst {
        IpAddr::V4(a) => RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(a, 32)
            .build(),
        IpAddr::V6(a) => RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(a, 128)
            .build(),
    };
    // A lookup, not a route: no table (the rules pick it), protocol, scope or type.
    message.header.table = 0;
    message.header.protocol = RouteProtocol::Unspec;
    message.header.scope = RouteScope::Universe;
    message.header.kind = RouteType::Unspec;
    message.header.flags = RouteFlags::FibMatch;
    let mut replies = host.handle().route().get(message).execute();
    let reply = match replies.try_next().await {
        Ok(Some(m)) => m,
        Ok(None) => return Err(LookupError::Empty { dst }),
        Err(rtnetlink::Error::NetlinkError(m)) if m.raw_code() != 0 => {
            return Err(LookupError::NoRoute {
                dst,
                error: io::Error::from_raw_os_error(m.raw_code().abs()),
            })
        }
        Err(source) => return Err(LookupError::Netlink { dst, source }),
    };
    let mut route = MatchedRoute {
        prefix_len: reply.header.destination_prefix_length,
        gateway: None,
        oif: None,
    };
    for attr in &reply.attributes {
        match attr {
            RouteAttribute::Gateway(RouteAddress::Inet(a)) => route.gateway = Some((*a).into()),
            RouteAttribute::Gateway(RouteAddress::Inet6(a)) => route.gateway = Some((*a).into()),
            RouteAttribute::Oif(i) => route.oif = Some(*i),
            _ => {}
        }
    }
    Ok(route)
}
