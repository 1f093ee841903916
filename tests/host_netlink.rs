//! `clusterway::host` against the real kernel: a real TUN device, real addresses and routes.
//!
//! Every test body runs on its own OS thread that first moves into a fresh, anonymous
//! network namespace (`unshare(CLONE_NEWNET)`), then builds a current-thread tokio runtime
//! there, so the netlink socket, the TUN device and `/proc/sys/net` all belong to that
//! namespace. Nothing here touches the host's links, routes or sysctls; the namespace
//! disappears with the thread, even when the test panics.
//!
//! These tests need root (CAP_NET_ADMIN and CAP_SYS_ADMIN). Without it they fail; they do
//! not skip, because CI runs as root and a silent skip would hide a broken setup.

use std::collections::BTreeSet;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::Command;
use std::time::{Duration, Instant};

use clusterway::dataplane::tun::TunDevice;
use clusterway::host::netlink::{Host, HostError, ROUTE_PROTO};
use clusterway::host::sysctl;
use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressScope};
use netlink_packet_route::link::{LinkAttribute, LinkFlags};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol};
use netlink_packet_route::AddressFamily;
use rtnetlink::RouteMessageBuilder;

const TUN: &str = "cwt0";
const OTHER_TUN: &str = "cwt1";

/// Runs `body` on a new thread inside a new network namespace, on a current-thread runtime.
fn in_netns<F, Fut>(test: &str, body: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "host_netlink tests must run as root (they create network namespaces and TUN \
         devices); not skipping, CI runs as root"
    );
    let host_ns = netns_id();

    let thread = std::thread::Builder::new()
        .name(test.to_owned())
        .spawn(move || {
            // SAFETY: unshare only changes this thread's namespaces; CLONE_NEWNET is allowed
            // in a multi-threaded process.
            let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            assert_eq!(
                rc,
                0,
                "unshare(CLONE_NEWNET): {}",
                std::io::Error::last_os_error()
            );
            // Refuse to go on if the thread is somehow still in the host namespace: the
            // tests below write sysctls and routes.
            assert_ne!(
                netns_id(),
                host_ns,
                "unshare left the thread in the host netns"
            );

            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            runtime.block_on(body());
        })
        .expect("spawn test thread");
    if let Err(panic) = thread.join() {
        std::panic::resume_unwind(panic);
    }
}

/// The calling thread's network namespace (`/proc/thread-self/ns/net` link text).
fn netns_id() -> String {
    std::fs::read_link("/proc/thread-self/ns/net")
        .expect("read /proc/thread-self/ns/net")
        .to_string_lossy()
        .into_owned()
}

fn tun(name: &str) -> TunDevice {
    TunDevice::open(name, 1, false).unwrap_or_else(|e| panic!("create TUN {name}: {e}"))
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn nets(list: &[&str]) -> BTreeSet<IpNet> {
    list.iter().map(|s| net(s)).collect()
}

/// Runs `ip` with `args` from the calling thread, so in its namespace; panics on failure.
fn ip(args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run ip {args:?}: {e}"));
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A route as read back from the kernel: destination, protocol, output link.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Route {
    dst: IpNet,
    proto: u8,
    oif: Option<u32>,
}

/// Every route in the main table, both families.
async fn main_routes(host: &Host) -> Vec<Route> {
    let mut routes = Vec::new();
    for request in [
        RouteMessageBuilder::<Ipv4Addr>::new().build(),
        RouteMessageBuilder::<Ipv6Addr>::new().build(),
    ] {
        let messages: Vec<RouteMessage> = host
            .handle()
            .route()
            .get(request)
            .execute()
            .try_collect()
            .await
            .expect("dump routes");
        for m in messages {
            if m.header.table != 254 {
                continue;
            }
            let mut dst = None;
            let mut oif = None;
            for a in &m.attributes {
                match a {
                    RouteAttribute::Destination(RouteAddress::Inet(v4)) => {
                        dst = Some(IpAddr::V4(*v4));
                    }
                    RouteAttribute::Destination(RouteAddress::Inet6(v6)) => {
                        dst = Some(IpAddr::V6(*v6));
                    }
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    _ => {}
                }
            }
            let dst = dst.unwrap_or(match m.header.address_family {
                AddressFamily::Inet => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                _ => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            });
            routes.push(Route {
                dst: IpNet::new(dst, m.header.destination_prefix_length).unwrap(),
                proto: u8::from(m.header.protocol),
                oif,
            });
        }
    }
    routes.sort();
    routes
}

/// Our routes in the main table: (destination, output link).
async fn our_routes(host: &Host) -> BTreeSet<(IpNet, Option<u32>)> {
    main_routes(host)
        .await
        .into_iter()
        .filter(|r| r.proto == ROUTE_PROTO)
        .map(|r| (r.dst, r.oif))
        .collect()
}

/// Adds a route with any protocol through the raw handle, bypassing the reconciler.
async fn add_route_with_proto(host: &Host, dst: IpNet, ifindex: u32, proto: RouteProtocol) {
    let mut builder = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(dst.addr(), dst.prefix_len())
        .unwrap()
        .output_interface(ifindex)
        .protocol(proto);
    if dst.addr().is_ipv4() {
        builder = builder.scope(netlink_packet_route::route::RouteScope::Link);
    }
    host.handle()
        .route()
        .add(builder.build())
        .execute()
        .await
        .unwrap_or_else(|e| panic!("add foreign route {dst}: {e}"));
}

/// Addresses on a link, with their scope and flags (`IFA_FLAGS`).
async fn addresses(host: &Host, ifindex: u32) -> Vec<(IpNet, AddressScope, AddressFlags)> {
    let messages: Vec<_> = host
        .handle()
        .address()
        .get()
        .set_link_index_filter(ifindex)
        .execute()
        .try_collect()
        .await
        .expect("dump addresses");
    let mut out = Vec::new();
    for m in messages {
        let mut addr = None;
        let mut flags = AddressFlags::empty();
        for a in &m.attributes {
            match a {
                AddressAttribute::Local(ip) => addr = Some(*ip),
                AddressAttribute::Address(ip) if addr.is_none() => addr = Some(*ip),
                AddressAttribute::Flags(f) => flags = *f,
                _ => {}
            }
        }
        if let Some(addr) = addr {
            out.push((
                IpNet::new(addr, m.header.prefix_len).unwrap(),
                m.header.scope,
                flags,
            ));
        }
    }
    out.sort_by_key(|(n, _, _)| *n);
    out
}

async fn link_state(host: &Host, ifindex: u32) -> (LinkFlags, u32) {
    let link = host
        .handle()
        .link()
        .get()
        .match_index(ifindex)
        .execute()
        .try_next()
        .await
        .expect("get link")
        .expect("link exists");
    let mtu = link
        .attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Mtu(m) => Some(*m),
            _ => None,
        })
        .expect("link has an MTU");
    (link.header.flags, mtu)
}

#[test]
fn child_processes_inherit_the_thread_namespace() {
    in_netns("child_ns", || async {
        let _tun = tun(TUN);
        // `ip` spawned from this thread sees the TUN that exists only in this namespace.
        let shown = ip(&["-o", "link", "show", TUN]);
        assert!(shown.contains(TUN), "{shown}");
    });
    // Spawned from the test harness thread, `ip` is in the host namespace: no such link.
    let status = Command::new("ip")
        .args(["link", "show", TUN])
        .output()
        .expect("run ip");
    assert!(!status.status.success(), "{TUN} leaked into the host netns");
}

#[test]
fn connect_needs_a_runtime() {
    let err = Host::connect().unwrap_err();
    assert!(matches!(err, HostError::NoRuntime), "{err}");
}

#[test]
fn configure_link_sets_addresses_mtu_and_up() {
    in_netns("configure_link", || async {
        let tun = tun(TUN);
        let host = Host::connect().expect("connect");

        let ifindex = host.link_index(TUN).await.unwrap().expect("TUN exists");
        assert_eq!(ifindex, tun.index);
        assert_eq!(host.link_index("nosuchlink").await.unwrap(), None);

        let wanted = [net("198.18.0.1/16"), net("fd00:cafe::1/64")];
        let diff = host
            .configure_link(ifindex, &wanted, Some(1400))
            .await
            .expect("configure");
        assert_eq!(diff.added, wanted.to_vec());
        assert!(diff.removed.is_empty());

        let (flags, mtu) = link_state(&host, ifindex).await;
        assert!(flags.contains(LinkFlags::Up), "{flags:?}");
        assert_eq!(mtu, 1400);

        let global: Vec<_> = addresses(&host, ifindex)
            .await
            .into_iter()
            .filter(|(_, scope, _)| *scope == AddressScope::Universe)
            .collect();
        let nets_only: Vec<IpNet> = global.iter().map(|(n, _, _)| *n).collect();
        assert_eq!(nets_only, wanted.to_vec());
        // IPv6 is usable at once: added with NODAD, never tentative.
        let (_, _, v6_flags) = global[1];
        assert!(v6_flags.contains(AddressFlags::Nodad), "{v6_flags:?}");
        assert!(!v6_flags.contains(AddressFlags::Tentative), "{v6_flags:?}");

        // Idempotent.
        let again = host
            .configure_link(ifindex, &wanted, Some(1400))
            .await
            .expect("configure again");
        assert!(again.is_empty(), "{again:?}");

        // An address nobody asked for is removed; a smaller set removes the rest.
        ip(&["addr", "add", "10.1.2.3/24", "dev", TUN]);
        let diff = host
            .configure_link(ifindex, &wanted[..1], None)
            .await
            .expect("configure v4 only");
        let mut removed = diff.removed.clone();
        removed.sort();
        assert_eq!(removed, vec![net("10.1.2.3/24"), wanted[1]]);
        assert!(diff.added.is_empty());
        let global: Vec<_> = addresses(&host, ifindex)
            .await
            .into_iter()
            .filter(|(_, scope, _)| *scope == AddressScope::Universe)
            .map(|(n, _, _)| n)
            .collect();
        assert_eq!(global, vec![wanted[0]]);
        // MTU not asked for: left as it was.
        assert_eq!(link_state(&host, ifindex).await.1, 1400);

        // Deleting an unwanted IPv4 primary takes its secondaries with it (unless
        // promote_secondaries is on); a wanted secondary must still be there afterwards.
        ip(&["addr", "add", "10.1.2.3/24", "dev", TUN]);
        ip(&["addr", "add", "10.1.2.4/24", "dev", TUN]);
        let keep = [wanted[0], net("10.1.2.4/24")];
        let diff = host.configure_link(ifindex, &keep, None).await.unwrap();
        assert_eq!(diff.removed, vec![net("10.1.2.3/24")]);
        let global: Vec<_> = addresses(&host, ifindex)
            .await
            .into_iter()
            .filter(|(_, scope, _)| *scope == AddressScope::Universe)
            .map(|(n, _, _)| n)
            .collect();
        assert_eq!(global, vec![net("10.1.2.4/24"), wanted[0]]);

        let err = host
            .configure_link(999_999, &wanted, None)
            .await
            .unwrap_err();
        assert!(
            matches!(err, HostError::LinkNotFound { ifindex: 999_999 }),
            "{err}"
        );
    });
}

#[test]
fn reconcile_routes_changes_exactly_the_diff() {
    in_netns("reconcile", || async {
        let _tun = tun(TUN);
        let _other = tun(OTHER_TUN);
        let host = Host::connect().expect("connect");
        let ifindex = host.link_index(TUN).await.unwrap().unwrap();
        let other = host.link_index(OTHER_TUN).await.unwrap().unwrap();
        host.configure_link(
            ifindex,
            &[net("198.18.0.1/16"), net("fd00:cafe::1/64")],
            None,
        )
        .await
        .unwrap();
        host.configure_link(other, &[], None).await.unwrap();

        // Routes of other owners: a static one added by `ip` (a child of this thread, so in
        // this namespace) and a boot one added through the handle.
        ip(&[
            "route",
            "add",
            "10.200.0.0/16",
            "dev",
            TUN,
            "proto",
            "static",
        ]);
        add_route_with_proto(&host, net("fd00:200::/64"), ifindex, RouteProtocol::Boot).await;
        // A route of ours on another link, as a previous run could have left.
        host.reconcile_routes(other, &nets(&["10.98.0.0/16"]))
            .await
            .unwrap();
        let foreign_before: Vec<Route> = main_routes(&host)
            .await
            .into_iter()
            .filter(|r| r.proto != ROUTE_PROTO)
            .collect();
        assert!(foreign_before
            .iter()
            .any(|r| r.dst == net("10.200.0.0/16") && r.proto == u8::from(RouteProtocol::Static)));

        let desired = nets(&[
            "10.96.0.0/12",
            "10.97.1.5/32",
            "fd00:96::/112",
            "fd00:96::5/128",
        ]);
        let diff = host.reconcile_routes(ifindex, &desired).await.unwrap();
        assert_eq!(diff.added.iter().copied().collect::<BTreeSet<_>>(), desired);
        assert_eq!(diff.removed, vec![net("10.98.0.0/16")]);
        assert!(diff.already_present.is_empty());
        assert_eq!(
            our_routes(&host).await,
            desired.iter().map(|d| (*d, Some(ifindex))).collect()
        );

        // Idempotent; host bits in a prefix are ignored.
        let mut with_host_bits = desired.clone();
        with_host_bits.remove(&net("10.96.0.0/12"));
        with_host_bits.insert(net("10.96.0.1/12"));
        let diff = host
            .reconcile_routes(ifindex, &with_host_bits)
            .await
            .unwrap();
        assert!(diff.is_empty(), "{diff:?}");

        // A new set: exactly the difference moves.
        let next = nets(&["10.96.0.0/12", "fd00:97::/112"]);
        let diff = host.reconcile_routes(ifindex, &next).await.unwrap();
        assert_eq!(diff.added, vec![net("fd00:97::/112")]);
        assert_eq!(
            diff.removed.iter().copied().collect::<BTreeSet<_>>(),
            nets(&["10.97.1.5/32", "fd00:96::/112", "fd00:96::5/128"])
        );
        assert_eq!(
            our_routes(&host).await,
            next.iter().map(|d| (*d, Some(ifindex))).collect()
        );

        // A destination another owner already routes is reported, not an error, and the
        // other owner's route stays.
        let mut clash = next.clone();
        clash.insert(net("10.200.0.0/16"));
        let diff = host.reconcile_routes(ifindex, &clash).await.unwrap();
        assert_eq!(diff.already_present, vec![net("10.200.0.0/16")]);
        assert!(diff.added.is_empty() && diff.removed.is_empty(), "{diff:?}");

        // Nothing but our routes changed through all of this.
        let foreign_after: Vec<Route> = main_routes(&host)
            .await
            .into_iter()
            .filter(|r| r.proto != ROUTE_PROTO)
            .collect();
        assert_eq!(foreign_before, foreign_after);

        // Empty desired set: all of ours go.
        let diff = host
            .reconcile_routes(ifindex, &BTreeSet::new())
            .await
            .unwrap();
        assert_eq!(diff.removed.len(), 2);
        assert!(our_routes(&host).await.is_empty());
    });
}

#[test]
fn remove_owned_clears_only_our_routes() {
    in_netns("remove_owned", || async {
        let _tun = tun(TUN);
        let _other = tun(OTHER_TUN);
        let host = Host::connect().expect("connect");
        let ifindex = host.link_index(TUN).await.unwrap().unwrap();
        let other = host.link_index(OTHER_TUN).await.unwrap().unwrap();
        host.configure_link(ifindex, &[net("198.18.0.1/16")], None)
            .await
            .unwrap();
        host.configure_link(other, &[], None).await.unwrap();

        ip(&[
            "route",
            "add",
            "10.200.0.0/16",
            "dev",
            TUN,
            "proto",
            "static",
        ]);
        // Ours on two links, as two runs (or a run on a since-recreated link) could leave.
        host.reconcile_routes(other, &nets(&["10.98.0.0/16"]))
            .await
            .unwrap();
        let proto = RouteProtocol::from(ROUTE_PROTO);
        add_route_with_proto(&host, net("10.96.0.0/12"), ifindex, proto).await;
        add_route_with_proto(&host, net("fd00:96::/112"), ifindex, proto).await;
        let foreign_before: Vec<Route> = main_routes(&host)
            .await
            .into_iter()
            .filter(|r| r.proto != ROUTE_PROTO)
            .collect();

        let diff = host.remove_owned(Some(other)).await.unwrap();
        assert_eq!(diff.removed, vec![net("10.98.0.0/16")]);
        assert_eq!(
            our_routes(&host).await,
            BTreeSet::from([
                (net("10.96.0.0/12"), Some(ifindex)),
                (net("fd00:96::/112"), Some(ifindex)),
            ])
        );

        let diff = host.remove_owned(None).await.unwrap();
        assert_eq!(
            diff.removed.into_iter().collect::<BTreeSet<_>>(),
            nets(&["10.96.0.0/12", "fd00:96::/112"])
        );
        assert!(our_routes(&host).await.is_empty());
        let foreign_after: Vec<Route> = main_routes(&host)
            .await
            .into_iter()
            .filter(|r| r.proto != ROUTE_PROTO)
            .collect();
        assert_eq!(foreign_before, foreign_after);
        assert!(foreign_after.iter().any(|r| r.dst == net("10.200.0.0/16")));
        // The kernel's prefix route of the link's address is untouched.
        assert!(foreign_after
            .iter()
            .any(|r| r.dst == net("198.18.0.0/16") && r.oif == Some(ifindex)));

        // Nothing left: a second call is a no-op.
        assert!(host.remove_owned(None).await.unwrap().is_empty());
    });
}

#[test]
fn enable_forwarding_changes_only_the_namespace() {
    let host_before = FORWARDING_NAMES.map(|n| sysctl::read(n).expect("read host sysctl"));

    in_netns("forwarding", || async {
        // Start from off, whatever this namespace inherited.
        for name in FORWARDING_NAMES {
            sysctl::ensure(name, "0").expect("turn off in the namespace");
            assert_eq!(sysctl::read(name).unwrap(), "0");
        }
        sysctl::enable_forwarding().expect("enable forwarding");
        for name in FORWARDING_NAMES {
            assert_eq!(sysctl::read(name).unwrap(), "1", "{name}");
            // Already on: nothing is written.
            assert!(!sysctl::ensure(name, "1").unwrap(), "{name}");
        }
        sysctl::enable_forwarding().expect("enable forwarding again");
    });

    let host_after = FORWARDING_NAMES.map(|n| sysctl::read(n).expect("read host sysctl"));
    assert_eq!(host_before, host_after, "host sysctls changed");
}

const FORWARDING_NAMES: [&str; 2] = sysctl::FORWARDING;

#[test]
fn closing_the_tun_removes_the_link_and_its_routes() {
    in_netns("close_tun", || async {
        let tun = tun(TUN);
        let host = Host::connect().expect("connect");
        let ifindex = host.link_index(TUN).await.unwrap().unwrap();
        host.configure_link(
            ifindex,
            &[net("198.18.0.1/16"), net("fd00:cafe::1/64")],
            None,
        )
        .await
        .unwrap();
        host.reconcile_routes(ifindex, &nets(&["10.96.0.0/12", "fd00:96::/112"]))
            .await
            .unwrap();
        assert_eq!(our_routes(&host).await.len(), 2);

        drop(tun);
        let deadline = Instant::now() + Duration::from_secs(5);
        while host.link_index(TUN).await.unwrap().is_some() {
            assert!(Instant::now() < deadline, "{TUN} still exists after close");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(our_routes(&host).await.is_empty());
        assert!(host.remove_owned(None).await.unwrap().is_empty());

        // Routing via the gone link is an error that names the route.
        let err = host
            .reconcile_routes(ifindex, &nets(&["10.96.0.0/12"]))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, HostError::AddRoute { dst, .. } if *dst == net("10.96.0.0/12")),
            "{err}"
        );
        assert!(err.to_string().contains("10.96.0.0/12"), "{err}");
    });
}

#[test]
fn delete_link_removes_a_persistent_tun() {
    in_netns("delete_link", || async {
        let host = Host::connect().expect("connect");
        assert!(
            !host.delete_link(TUN).await.unwrap(),
            "nothing to delete yet"
        );

        // A persistent TUN outlives any file descriptor, as a crashed run's could (made by
        // iproute2 from this thread, so inside the test's namespace).
        let out = std::process::Command::new("ip")
            .args(["tuntap", "add", "dev", TUN, "mode", "tun"])
            .output()
            .expect("run ip tuntap");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(host.link_index(TUN).await.unwrap().is_some());

        assert!(host.delete_link(TUN).await.unwrap());
        assert_eq!(host.link_index(TUN).await.unwrap(), None);
        assert!(!host.delete_link(TUN).await.unwrap());

        // The kernel refuses to delete a device that has no link type (loopback here, a
        // NIC on a real host); that is an error naming the link.
        let err = host.delete_link("lo").await.unwrap_err();
        assert!(
            matches!(&err, HostError::DeleteLink { name, .. } if name == "lo"),
            "{err}"
        );
        assert!(host.link_index("lo").await.unwrap().is_some());

        let err = host
            .link_index("name-too-long-for-linux")
            .await
            .unwrap_err();
        assert!(matches!(err, HostError::InvalidLinkName { .. }), "{err}");
    });
}
