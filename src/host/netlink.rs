//! The TUN device's addresses, link state and routes, through one rtnetlink handle.
//!
//! Owns, on the link it is given (`cw0`): the link's global addresses, its MTU and its up
//! state; and, in the main table or the one `--route-table` names, every route whose route
//! protocol is [`ROUTE_PROTO`].
//! Everything is desired state: callers say what should exist, [`Host`] reads what the kernel
//! has and changes only the difference, so every call is idempotent and a crashed run is
//! cleaned up by the next one ([`Host::remove_owned`], [`Host::delete_link`]).
//!
//! Must not touch: routes of any other protocol (kernel prefix routes, static routes, a
//! routing daemon's routes), addresses of other links, link-local addresses, rp_filter or
//! any other host setting. Deleting a link is only done by name, on request, and the kernel
//! refuses to delete physical devices.
//!
//! Namespaces: the netlink socket belongs to the network namespace of the thread that calls
//! [`Host::connect`]; every request made through that `Host` acts there, whichever thread
//! later polls it.

use std::collections::BTreeSet;
use std::net::IpAddr;

use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage, AddressScope};
use netlink_packet_route::link::LinkMessage;
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::AddressFamily;
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

/// The route protocol (`rtm_protocol`) of every route clusterway installs: 75 (`0x4b`).
///
/// It marks the routes clusterway owns, so they can be reconciled and cleaned up without
/// touching anyone else's, and so a routing daemon can pick exactly these up and announce
/// them. 75 is free in Linux's `include/uapi/linux/rtnetlink.h` (which uses 0–18, 42, 99 and
/// 186–192), in iproute2's `/etc/iproute2/rt_protos`, and outside the range FRR's zebra
/// defines for itself (186–198); it is not 99, which is `RTPROT_OPENR`.
///
/// Using it:
/// - `ip route show proto 75` lists clusterway's routes; to see a name instead, add the
///   line `75 clusterway` to `/etc/iproute2/rt_protos.d/clusterway.conf`;
/// - BIRD 2: in the `kernel` protocol set `learn;` and import with
///   `filter { if krt_source = 75 then accept; reject; }`;
/// - anything else reading the kernel table: match `protocol == 75`.
pub const ROUTE_PROTO: u8 = 75;

/// The main routing table (`RT_TABLE_MAIN`), where the routes go unless `--route-table`
/// names another.
pub const MAIN_TABLE: u32 = RouteHeader::RT_TABLE_MAIN as u32;

/// `errno` values the reconcilers treat as "already in the wanted state".
const EEXIST: i32 = libc::EEXIST;
const ESRCH: i32 = libc::ESRCH;
const ENODEV: i32 = libc::ENODEV;
const EADDRNOTAVAIL: i32 = libc::EADDRNOTAVAIL;

/// What went wrong while configuring the host, named by the operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// [`Host::connect`] was called outside a tokio runtime; the connection task needs one.
    #[error("no tokio runtime to run the netlink connection on")]
    NoRuntime,
    /// The rtnetlink socket could not be opened.
    #[error("cannot open an rtnetlink socket")]
    Connect(#[source] std::io::Error),
    /// A link name the kernel cannot hold (empty, longer than 15 bytes, or with `/`, NUL or
    /// whitespace).
    #[error("{name:?} is not a valid link name")]
    InvalidLinkName { name: String },
    /// Looking a link up by name failed for a reason other than "no such link".
    #[error("cannot look up link {name:?}")]
    LookupLink {
        name: String,
        #[source]
        source: rtnetlink::Error,
    },
    /// No link has this index (it was deleted, or never existed in this namespace).
    #[error("no link with index {ifindex}")]
    LinkNotFound { ifindex: u32 },
    /// Reading a link by index failed for a reason other than "no such link".
    #[error("cannot read link {ifindex}")]
    GetLink {
        ifindex: u32,
        #[source]
        source: rtnetlink::Error,
    },
    /// Setting the MTU or the up flag failed.
    #[error("cannot set link {ifindex} up (mtu {mtu:?})")]
    SetLink {
        ifindex: u32,
        mtu: Option<u32>,
        #[source]
        source: rtnetlink::Error,
    },
    /// Deleting a link failed (physical devices cannot be deleted: EOPNOTSUPP).
    #[error("cannot delete link {name:?}")]
    DeleteLink {
        name: String,
        #[source]
        source: rtnetlink::Error,
    },
    /// Dumping a link's addresses failed.
    #[error("cannot list the addresses of link {ifindex}")]
    ListAddresses {
        ifindex: u32,
        #[source]
        source: rtnetlink::Error,
    },
    /// Adding an address failed.
    #[error("cannot add address {addr} to link {ifindex}")]
    AddAddress {
        ifindex: u32,
        addr: IpNet,
        #[source]
        source: rtnetlink::Error,
    },
    /// Removing an address that should not be there failed.
    #[error("cannot remove address {addr} from link {ifindex}")]
    RemoveAddress {
        ifindex: u32,
        addr: IpNet,
        #[source]
        source: rtnetlink::Error,
    },
    /// Dumping the routing table failed.
    #[error("cannot list {family} routes")]
    ListRoutes {
        family: &'static str,
        #[source]
        source: rtnetlink::Error,
    },
    /// Adding a route failed.
    #[error("cannot add route {dst} via link {ifindex}")]
    AddRoute {
        dst: IpNet,
        ifindex: u32,
        #[source]
        source: rtnetlink::Error,
    },
    /// Deleting one of our routes failed.
    #[error("cannot delete route {dst}")]
    DeleteRoute {
        dst: IpNet,
        #[source]
        source: rtnetlink::Error,
    },
}

impl HostError {
    /// A short, stable label for metrics and structured logs.
    pub fn label(&self) -> &'static str {
        match self {
            Self::NoRuntime => "no_runtime",
            Self::Connect(_) => "connect",
            Self::InvalidLinkName { .. } => "invalid_link_name",
            Self::LookupLink { .. } => "lookup_link",
            Self::LinkNotFound { .. } => "link_not_found",
            Self::GetLink { .. } => "get_link",
            Self::SetLink { .. } => "set_link",
            Self::DeleteLink { .. } => "delete_link",
            Self::ListAddresses { .. } => "list_addresses",
            Self::AddAddress { .. } => "add_address",
            Self::RemoveAddress { .. } => "remove_address",
            Self::ListRoutes { .. } => "list_routes",
            Self::AddRoute { .. } => "add_route",
            Self::DeleteRoute { .. } => "delete_route",
        }
    }
}

/// What [`Host::configure_link`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressDiff {
    /// Addresses that were missing and have been added.
    pub added: Vec<IpNet>,
    /// Global addresses that were on the link, not wanted, and have been removed.
    pub removed: Vec<IpNet>,
}

impl AddressDiff {
    /// True when the link already had exactly the wanted addresses.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }
}

/// What [`Host::reconcile_routes`] or [`Host::remove_owned`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteDiff {
    /// Routes that were missing and have been added via the link.
    pub added: Vec<IpNet>,
    /// Routes of ours that were not wanted (or pointed at another link) and have been deleted.
    pub removed: Vec<IpNet>,
    /// Wanted routes the kernel refused with EEXIST: a route of another owner (for example
    /// the kernel's prefix route of the link's own address) already covers exactly that
    /// destination. Left as they are; not an error.
    pub already_present: Vec<IpNet>,
}

impl RouteDiff {
    /// True when nothing was added or removed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }
}

/// The host's network configuration, seen through one rtnetlink connection.
///
/// Cloning shares the connection.
#[derive(Debug, Clone)]
pub struct Host {
    handle: Handle,
}

impl Host {
    /// Opens the rtnetlink socket and spawns its connection task on the current tokio
    /// runtime. The socket is bound to the calling thread's network namespace.
    pub fn connect() -> Result<Host, HostError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| HostError::NoRuntime)?;
        let (connection, handle, _unsolicited) =
            rtnetlink::new_connection().map_err(HostError::Connect)?;
        // The task ends by itself once every clone of the handle is dropped.
        runtime.spawn(connection);
        Ok(Host { handle })
    }

    /// The underlying handle, for requests this module does not wrap (tests, diagnostics).
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// The index of the link called `name`, or `None` when there is none.
    pub async fn link_index(&self, name: &str) -> Result<Option<u32>, HostError> {
        check_link_name(name)?;
        let mut links = self.handle.link().get().match_name(name).execute();
        match links.try_next().await {
            Ok(Some(link)) => Ok(Some(link.header.index)),
            Ok(None) => Ok(None),
            Err(e) if errno(&e) == Some(ENODEV) => Ok(None),
            Err(source) => Err(HostError::LookupLink {
                name: name.to_owned(),
                source,
            }),
        }
    }

    /// Makes the link have exactly `addrs` as its global addresses, sets its MTU when `mtu`
    /// is given, and brings it up. Idempotent.
    ///
    /// IPv6 addresses are added with `IFA_F_NODAD`, so they are usable at once (TUN devices
    /// are point-to-point and no-ARP, so the kernel skips DAD there anyway). Each address also
    /// gives the kernel's prefix route for its prefix via the link (protocol `kernel`, not
    /// ours). Link-local and host-scope addresses are left alone.
    pub async fn configure_link(
        &self,
        ifindex: u32,
        addrs: &[IpNet],
        mtu: Option<u32>,
    ) -> Result<AddressDiff, HostError> {
        self.get_link(ifindex).await?;

        // MTU before addresses: the kernel disables IPv6 on a link whose MTU is below 1280,
        // and up before addresses, so nothing added is dropped by a later state change.
        let mut link = LinkUnspec::new_with_index(ifindex).up();
        if let Some(mtu) = mtu {
            link = link.mtu(mtu);
        }
        self.handle
            .link()
            .set(link.build())
            .execute()
            .await
            .map_err(|source| HostError::SetLink {
                ifindex,
                mtu,
                source,
            })?;

        let current = self.global_addresses(ifindex).await?;
        let mut diff = AddressDiff::default();

        for (net, message) in &current {
            if !addrs.contains(net) {
                match self.handle.address().del(message.clone()).execute().await {
                    Ok(()) => diff.removed.push(*net),
                    Err(e) if errno(&e) == Some(EADDRNOTAVAIL) => {}
                    Err(source) => {
                        return Err(HostError::RemoveAddress {
                            ifindex,
                            addr: *net,
                            source,
                        })
                    }
                }
            }
        }

        // Read again: deleting an IPv4 primary address also deletes its secondaries (unless
        // promote_secondaries is set), which may include a wanted one.
        let current = if diff.removed.is_empty() {
            current
        } else {
            self.global_addresses(ifindex).await?
        };
        for addr in addrs {
            if current.iter().any(|(net, _)| net == addr) || diff.added.contains(addr) {
                continue;
            }
            let mut request = self
                .handle
                .address()
                .add(ifindex, addr.addr(), addr.prefix_len());
            if addr.addr().is_ipv6() {
                request
                    .message_mut()
                    .attributes
                    .push(AddressAttribute::Flags(AddressFlags::Nodad));
            }
            match request.execute().await {
                Ok(()) => diff.added.push(*addr),
                Err(e) if errno(&e) == Some(EEXIST) => {}
                Err(source) => {
                    return Err(HostError::AddAddress {
                        ifindex,
                        addr: *addr,
                        source,
                    })
                }
            }
        }

        Ok(diff)
    }

    /// Makes the routes of protocol [`ROUTE_PROTO`] in the main table be exactly `desired`,
    /// each via link `ifindex` (IPv4 and IPv6; host bits of a prefix are cleared first).
    ///
    /// Routes of ours that are not desired, or point at another link, are deleted first; then
    /// missing ones are added. A destination the kernel already has from another owner is
    /// reported in [`RouteDiff::already_present`], not as an error. Routes of any other
    /// protocol are never touched.
    pub async fn reconcile_routes(
        &self,
        ifindex: u32,
        desired: &BTreeSet<IpNet>,
    ) -> Result<RouteDiff, HostError> {
        self.reconcile_routes_in(ifindex, MAIN_TABLE, None, desired)
            .await
    }

    /// [`Host::reconcile_routes`] in routing table `table` (`--route-table`; 254 is main),
    /// with route metric `metric` (`None`: the kernel's default, and any metric counts).
    /// Routes of ours in other tables are left alone ([`Host::remove_owned`] clears them).
    ///
    /// Wanted routes are added before unwanted ones are deleted, so a change of metric (the
    /// drain: [`super::announce`]) never leaves a prefix without a route; only a route that
    /// would clash with a wanted one (same destination and metric, another link) goes first.
    pub async fn reconcile_routes_in(
        &self,
        ifindex: u32,
        table: u32,
        metric: Option<u32>,
        desired: &BTreeSet<IpNet>,
    ) -> Result<RouteDiff, HostError> {
        let desired: BTreeSet<IpNet> = desired.iter().map(IpNet::trunc).collect();
        let current = self.owned_routes().await?;
        let mut diff = RouteDiff::default();
        let same_metric = |route: &OwnedRoute| metric.is_none_or(|m| route.metric == m);

        let mut present = BTreeSet::new();
        let mut unwanted = Vec::new();
        for route in current.iter().filter(|route| route.table == table) {
            if route.via(ifindex) && desired.contains(&route.dst) && same_metric(route) {
                present.insert(route.dst);
            } else if desired.contains(&route.dst) && same_metric(route) {
                // Same key as a wanted route: it must go before that one can be added.
                self.delete_route(route, &mut diff).await?;
            } else {
                unwanted.push(route);
            }
        }
        for dst in desired.difference(&present) {
            self.add_route(ifindex, table, metric, *dst, &mut diff)
                .await?;
        }
        for route in unwanted {
            self.delete_route(route, &mut diff).await?;
        }
        Ok(diff)
    }

    /// Deletes every route of protocol [`ROUTE_PROTO`], in any table; with `Some(ifindex)`,
    /// only those via that link. Used on shutdown, and at start to clean what a crashed run
    /// left. Returns what was deleted.
    pub async fn remove_owned(&self, ifindex: Option<u32>) -> Result<RouteDiff, HostError> {
        let mut diff = RouteDiff::default();
        for route in self.owned_routes().await? {
            if ifindex.is_none_or(|ifindex| route.via(ifindex)) {
                self.delete_route(&route, &mut diff).await?;
            }
        }
        Ok(diff)
    }

    /// Deletes the link called `name` if there is one (a persistent TUN left by a crash, or
    /// anything else of that name). Returns whether a link was deleted. The kernel refuses
    /// to delete physical devices; that is reported as [`HostError::DeleteLink`].
    pub async fn delete_link(&self, name: &str) -> Result<bool, HostError> {
        let Some(ifindex) = self.link_index(name).await? else {
            return Ok(false);
        };
        match self.handle.link().del(ifindex).execute().await {
            Ok(()) => Ok(true),
            Err(e) if errno(&e) == Some(ENODEV) => Ok(false),
            Err(source) => Err(HostError::DeleteLink {
                name: name.to_owned(),
                source,
            }),
        }
    }

    async fn get_link(&self, ifindex: u32) -> Result<LinkMessage, HostError> {
        let mut links = self.handle.link().get().match_index(ifindex).execute();
        match links.try_next().await {
            Ok(Some(link)) => Ok(link),
            Ok(None) => Err(HostError::LinkNotFound { ifindex }),
            Err(e) if errno(&e) == Some(ENODEV) => Err(HostError::LinkNotFound { ifindex }),
            Err(source) => Err(HostError::GetLink { ifindex, source }),
        }
    }

    /// The link's universe-scope addresses, each with the message that deletes it.
    async fn global_addresses(
        &self,
        ifindex: u32,
    ) -> Result<Vec<(IpNet, AddressMessage)>, HostError> {
        let messages: Vec<AddressMessage> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(ifindex)
            .execute()
            .try_collect()
            .await
            .map_err(|source| HostError::ListAddresses { ifindex, source })?;

        Ok(messages
            .into_iter()
            .filter(|m| m.header.scope == AddressScope::Universe)
            .filter_map(|m| {
                let net = address_of(&m)?;
                Some((net, deletion_message(&m)))
            })
            .collect())
    }

    /// Every route of ours, both families, every table.
    async fn owned_routes(&self) -> Result<Vec<OwnedRoute>, HostError> {
        let mut routes = Vec::new();
        for (family, request) in [
            (
                "IPv4",
                RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
            ),
            (
                "IPv6",
                RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
            ),
        ] {
            let messages: Vec<RouteMessage> = self
                .handle
                .route()
                .get(request)
                .execute()
                .try_collect()
                .await
                .map_err(|source| HostError::ListRoutes { family, source })?;
            routes.extend(messages.into_iter().filter_map(OwnedRoute::from_message));
        }
        Ok(routes)
    }

    async fn add_route(
        &self,
        ifindex: u32,
        table: u32,
        metric: Option<u32>,
        dst: IpNet,
        diff: &mut RouteDiff,
    ) -> Result<(), HostError> {
        let mut message = route_message(ifindex, table, dst);
        if let Some(m) = metric {
            message.attributes.push(RouteAttribute::Priority(m));
        }
        match self.handle.route().add(message).execute().await {
            Ok(()) => diff.added.push(dst),
            Err(e) if errno(&e) == Some(EEXIST) => diff.already_present.push(dst),
            Err(source) => {
                return Err(HostError::AddRoute {
                    dst,
                    ifindex,
                    source,
                })
            }
        }
        Ok(())
    }

    async fn delete_route(
        &self,
        route: &OwnedRoute,
        diff: &mut RouteDiff,
    ) -> Result<(), HostError> {
        match self
            .handle
            .route()
            .del(route.deletion.clone())
            .execute()
            .await
        {
            Ok(()) => diff.removed.push(route.dst),
            // Already gone: its link was deleted meanwhile.
            Err(e) if errno(&e) == Some(ESRCH) => {}
            Err(source) => {
                return Err(HostError::DeleteRoute {
                    dst: route.dst,
                    source,
                })
            }
        }
        Ok(())
    }
}

/// Link events (`RTNLGRP_LINK`: a link added, changed, going up or down, deleted) in the
/// calling thread's namespace, as the index of the link concerned and whether it is up now
/// (a deleted link is not).
///
/// The kernel drops the routes of a link that goes down without telling anyone, so the
/// gateway reconciles its routes at each event of its TUN device. The receiver is bounded
/// (`LINK_EVENTS` per burst, the extra ones dropped): an event only asks for a reconcile, and
/// the gateway also reconciles in full now and then.
pub fn watch_links() -> Result<tokio::sync::mpsc::Receiver<(u32, bool)>, HostError> {
    const LINK_EVENTS: usize = 16;
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| HostError::NoRuntime)?;
    let (connection, _handle, mut messages) =
        rtnetlink::new_multicast_connection(&[rtnetlink::MulticastGroup::Link])
            .map_err(HostError::Connect)?;
    runtime.spawn(connection);
    let (tx, rx) = tokio::sync::mpsc::channel(LINK_EVENTS);
    runtime.spawn(async move {
        use futures::StreamExt;
        use netlink_packet_route::RouteNetlinkMessage;
        use rtnetlink::packet_core::NetlinkPayload;
        while let Some((message, _)) = messages.next().await {
            let event = match message.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) => (
                    l.header.index,
                    l.header
                        .flags
                        .contains(netlink_packet_route::link::LinkFlags::Up),
                ),
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(l)) => {
                    (l.header.index, false)
                }
                _ => continue,
            };
            match tx.try_send(event) {
                Ok(()) | Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {}
                Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => break,
            }
        }
    });
    Ok(rx)
}

/// A route of protocol [`ROUTE_PROTO`] as the kernel reported it.
struct OwnedRoute {
    dst: IpNet,
    table: u32,
    /// `RTA_PRIORITY` (0 when absent).
    metric: u32,
    /// Output links: `RTA_OIF`, or the links of a multipath route's next hops.
    links: Vec<u32>,
    /// The request that deletes exactly this route (and no other owner's).
    deletion: RouteMessage,
}

impl OwnedRoute {
    fn from_message(message: RouteMessage) -> Option<OwnedRoute> {
        if u8::from(message.header.protocol) != ROUTE_PROTO {
            return None;
        }
        let prefix_len = message.header.destination_prefix_length;
        let mut dst = None;
        let mut table = u32::from(message.header.table);
        let mut metric = 0;
        let mut links = Vec::new();
        for attribute in &message.attributes {
            match attribute {
                RouteAttribute::Destination(RouteAddress::Inet(a)) => {
                    dst = IpNet::new(IpAddr::V4(*a), prefix_len).ok();
                }
                RouteAttribute::Destination(RouteAddress::Inet6(a)) => {
                    dst = IpNet::new(IpAddr::V6(*a), prefix_len).ok();
                }
                RouteAttribute::Table(t) => table = *t,
                RouteAttribute::Priority(m) => metric = *m,
                RouteAttribute::Oif(i) => links.push(*i),
                RouteAttribute::MultiPath(hops) => {
                    links.extend(hops.iter().map(|hop| hop.interface_index));
                }
                _ => {}
            }
        }
        // A default route has no RTA_DST.
        let dst = dst.or_else(|| match message.header.address_family {
            AddressFamily::Inet => IpNet::new(IpAddr::V4([0, 0, 0, 0].into()), 0).ok(),
            AddressFamily::Inet6 => IpNet::new(IpAddr::V6(0u128.into()), 0).ok(),
            _ => None,
        })?;

        // Keep what identifies the route: family, prefix, table, protocol (so the kernel
        // matches only ours), type, and destination/link/metric/table attributes.
        let mut deletion = RouteMessage::default();
        deletion.header = message.header.clone();
        deletion.attributes = message
            .attributes
            .into_iter()
            .filter(|a| {
                matches!(
                    a,
                    RouteAttribute::Destination(_)
                        | RouteAttribute::Oif(_)
                        | RouteAttribute::Priority(_)
                        | RouteAttribute::Table(_)
                )
            })
            .collect();

        Some(OwnedRoute {
            dst,
            table,
            metric,
            links,
            deletion,
        })
    }

    fn via(&self, ifindex: u32) -> bool {
        self.links.contains(&ifindex)
    }
}

/// The request that adds `dst` via link `ifindex` with our protocol, in routing table `table`
/// (in the header when it fits in a byte, as iproute2 does, and always in `RTA_TABLE`).
fn route_message(ifindex: u32, table: u32, dst: IpNet) -> RouteMessage {
    let (family, address, scope) = match dst.addr() {
        // As `ip route add … dev cw0` does: an IPv4 route without a gateway is link-scoped.
        IpAddr::V4(a) => (AddressFamily::Inet, RouteAddress::Inet(a), RouteScope::Link),
        IpAddr::V6(a) => (
            AddressFamily::Inet6,
            RouteAddress::Inet6(a),
            RouteScope::Universe,
        ),
    };
    let mut message = RouteMessage::default();
    message.header.address_family = family;
    message.header.destination_prefix_length = dst.prefix_len();
    message.header.table = u8::try_from(table).unwrap_or(RouteHeader::RT_TABLE_UNSPEC);
    message.header.protocol = RouteProtocol::from(ROUTE_PROTO);
    message.header.scope = scope;
    message.header.kind = RouteType::Unicast;
    message.attributes = vec![
        RouteAttribute::Destination(address),
        RouteAttribute::Oif(ifindex),
        RouteAttribute::Table(table),
    ];
    message
}

/// The prefix of an address message: `IFA_LOCAL` (the link's own address; on a
/// point-to-point link `IFA_ADDRESS` is the peer), else `IFA_ADDRESS`.
fn address_of(message: &AddressMessage) -> Option<IpNet> {
    let local = message.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    });
    let address = message.attributes.iter().find_map(|a| match a {
        AddressAttribute::Address(ip) => Some(*ip),
        _ => None,
    });
    IpNet::new(local.or(address)?, message.header.prefix_len).ok()
}

/// A delete request carrying only what identifies the address.
fn deletion_message(message: &AddressMessage) -> AddressMessage {
    let mut deletion = AddressMessage::default();
    deletion.header = message.header.clone();
    deletion.attributes = message
        .attributes
        .iter()
        .filter(|a| matches!(a, AddressAttribute::Local(_) | AddressAttribute::Address(_)))
        .cloned()
        .collect();
    deletion
}

/// Checks what the kernel's `dev_valid_name` checks, so a bad name gets a clear error.
fn check_link_name(name: &str) -> Result<(), HostError> {
    let valid = !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace());
    if valid {
        Ok(())
    } else {
        Err(HostError::InvalidLinkName {
            name: name.to_owned(),
        })
    }
}

/// The positive errno of a netlink NACK, if that is what the error is.
fn errno(error: &rtnetlink::Error) -> Option<i32> {
    match error {
        rtnetlink::Error::NetlinkError(message) => Some(message.raw_code().abs()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_proto_is_not_a_known_protocol() {
        // Named values in netlink-packet-route (the kernel's uapi list) and RTPROT_OPENR.
        assert!(matches!(
            RouteProtocol::from(ROUTE_PROTO),
            RouteProtocol::Other(_)
        ));
        assert_ne!(ROUTE_PROTO, 99);
    }

    #[test]
    fn route_message_carries_our_protocol_and_link() {
        let message = route_message(7, MAIN_TABLE, "10.96.0.0/12".parse().unwrap());
        assert_eq!(u8::from(message.header.protocol), ROUTE_PROTO);
        assert_eq!(message.header.table, RouteHeader::RT_TABLE_MAIN);
        assert_eq!(message.header.scope, RouteScope::Link);
        assert!(message.attributes.contains(&RouteAttribute::Oif(7)));

        let message = route_message(7, MAIN_TABLE, "fd00:96::/112".parse().unwrap());
        assert_eq!(message.header.address_family, AddressFamily::Inet6);
        assert_eq!(message.header.scope, RouteScope::Universe);
    }

    #[test]
    fn owned_route_ignores_other_protocols() {
        let mut message = route_message(3, MAIN_TABLE, "10.0.0.0/8".parse().unwrap());
        message.header.protocol = RouteProtocol::Static;
        assert!(OwnedRoute::from_message(message).is_none());

        let message = route_message(3, MAIN_TABLE, "10.0.0.0/8".parse().unwrap());
        let route = OwnedRoute::from_message(message).expect("ours");
        assert_eq!(route.dst, "10.0.0.0/8".parse::<IpNet>().unwrap());
        assert!(route.via(3));
        assert!(!route.via(4));
        assert_eq!(route.table, u32::from(RouteHeader::RT_TABLE_MAIN));
    }

    #[test]
    fn link_names_are_checked_like_the_kernel() {
        assert!(check_link_name("cw0").is_ok());
        assert!(check_link_name("123456789012345").is_ok());
        assert!(check_link_name("1234567890123456").is_err());
        assert!(check_link_name("").is_err());
        assert!(check_link_name("a/b").is_err());
        assert!(check_link_name("a b").is_err());
    }

    #[test]
    fn address_prefers_local() {
        let mut message = AddressMessage::default();
        message.header.prefix_len = 16;
        message
            .attributes
            .push(AddressAttribute::Address("198.18.0.2".parse().unwrap()));
        message
            .attributes
            .push(AddressAttribute::Local("198.18.0.1".parse().unwrap()));
        assert_eq!(address_of(&message), Some("198.18.0.1/16".parse().unwrap()));
    }

    #[test]
    fn labels_are_distinct() {
        let a = HostError::LinkNotFound { ifindex: 1 }.label();
        let b = HostError::NoRuntime.label();
        assert_ne!(a, b);
    }
}
