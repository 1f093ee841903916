//! The lab topology: a client, a gateway and N pods, each in its own network namespace.
//!
//! ```text
//!  {prefix}-cl                 {prefix}-gw                       {prefix}-pK
//!  eth0 192.168.77.2/24 ─── veth-cl 192.168.77.1/24
//!       fd77::2/64               fd77::1/64
//!                              veth-pK 10.244.K.1/24 ──────── eth0 10.244.K.10/24
//!                                      fd00:10:244:K::1/64         fd00:10:244:K::a/64
//! ```
//! Client and pods route everything via the gateway, which forwards (v4 and v6). All veths are
//! created from inside the namespaces, so the host namespace is never touched.
//!
//! Owns: the namespaces it creates (removed on `Drop`, also during a panic). Must not touch:
//! the host namespace.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::netns::{self, Netns};

/// Client address on the client–gateway link.
pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 2);
/// Client IPv6 address on the client–gateway link.
pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 2);
/// Gateway address on the client–gateway link.
pub const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 1);
/// Gateway IPv6 address on the client–gateway link.
pub const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 1);
/// Name of the gateway's link towards the client.
pub const GATEWAY_CLIENT_LINK: &str = "veth-cl";
/// Most pods a topology can have (the pod index is an octet of its address).
pub const MAX_PODS: usize = 250;

/// Client, gateway and pod namespaces wired together; everything is removed on `Drop`.
#[derive(Debug)]
pub struct Topology {
    prefix: String,
    // Field order is drop order: pods first, then the gateway, then the client.
    pods: Vec<Netns>,
    gateway: Netns,
    client: Netns,
}

impl Topology {
    /// Builds a topology with `pods` pods under a prefix unique to this process and call, so
    /// tests can build topologies in parallel.
    pub fn new(pods: usize) -> Result<Topology> {
        Self::with_prefix(&netns::unique_prefix(), pods)
    }

    /// Builds a topology with namespaces `{prefix}-cl`, `{prefix}-gw`, `{prefix}-p1`..
    /// Namespaces left with this prefix by a crashed run are removed first.
    pub fn with_prefix(prefix: &str, pods: usize) -> Result<Topology> {
        if !(1..=MAX_PODS).contains(&pods) {
            bail!("a topology has 1 to {MAX_PODS} pods, not {pods}");
        }
        if prefix.is_empty() || prefix.len() > 32 || !prefix.chars().all(valid_prefix_char) {
            bail!("invalid namespace prefix {prefix:?} (use up to 32 of [A-Za-z0-9_.-])");
        }
        netns::remove_with_prefix(prefix)
            .with_context(|| format!("removing namespaces left by an earlier run ({prefix}-*)"))?;

        // Each namespace is owned as soon as it exists, so an error below removes it again.
        let client = Netns::create(&format!("{prefix}-cl"))?;
        let gateway = Netns::create(&format!("{prefix}-gw"))?;
        let mut pod_ns = Vec::with_capacity(pods);
        for k in 1..=pods {
            pod_ns.push(Netns::create(&format!("{prefix}-p{k}"))?);
        }
        let topo = Topology {
            prefix: prefix.to_owned(),
            pods: pod_ns,
            gateway,
            client,
        };
        topo.wire().context("wiring the lab topology")?;
        Ok(topo)
    }

    fn wire(&self) -> Result<()> {
        // Addresses must be usable at once: no duplicate address detection anywhere, set
        // before the links exist so link-local addresses skip it too.
        for ns in self.all() {
            ns.sh(
                "sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0 \
                 net.ipv6.conf.all.dad_transmits=0 net.ipv6.conf.default.dad_transmits=0",
            )?;
        }
        let gw = &self.gateway;
        gw.sh(
            "sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1 \
             net.ipv6.conf.default.forwarding=1",
        )?;

        // Client ↔ gateway, then gateway ↔ each pod: the same wiring.
        link_to_gateway(
            &self.client,
            gw,
            GATEWAY_CLIENT_LINK,
            (CLIENT_V4, CLIENT_V6),
            (GATEWAY_V4, GATEWAY_V6),
        )?;
        for (i, pod) in self.pods.iter().enumerate() {
            let k = i + 1;
            let link = Self::gateway_pod_link(k);
            link_to_gateway(
                pod,
                gw,
                &link,
                (self.pod_v4(k), self.pod_v6(k)),
                Self::gateway_pod_side(k),
            )?;
        }
        Ok(())
    }

    /// The prefix of all namespace names.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The client namespace (`{prefix}-cl`).
    pub fn client(&self) -> &Netns {
        &self.client
    }

    /// The gateway namespace (`{prefix}-gw`).
    pub fn gateway(&self) -> &Netns {
        &self.gateway
    }

    /// Pod `k` (1-based, `{prefix}-pK`).
    ///
    /// # Panics
    /// If `k` is 0 or greater than [`Topology::pod_count`].
    pub fn pod(&self, k: usize) -> &Netns {
        assert!(
            (1..=self.pods.len()).contains(&k),
            "pod {k} does not exist (pods are 1..={})",
            self.pods.len()
        );
        &self.pods[k - 1]
    }

    /// Number of pods.
    pub fn pod_count(&self) -> usize {
        self.pods.len()
    }

    /// Pod `k`'s address (1-based): 10.244.K.10 or fd00:10:244:K::a (K written in hex there,
    /// as IPv6 groups are).
    pub fn pod_ip(&self, k: usize, v6: bool) -> IpAddr {
        if v6 {
            self.pod_v6(k).into()
        } else {
            self.pod_v4(k).into()
        }
    }

    /// All pods' addresses, in pod order, as [`super::demo_snapshot`] takes them.
    pub fn pod_addrs(&self) -> Vec<(Ipv4Addr, Ipv6Addr)> {
        (1..=self.pods.len())
            .map(|k| (self.pod_v4(k), self.pod_v6(k)))
            .collect()
    }

    /// The client's address on its link to the gateway.
    pub fn client_ip(&self, v6: bool) -> IpAddr {
        if v6 {
            CLIENT_V6.into()
        } else {
            CLIENT_V4.into()
        }
    }

    /// The gateway's address on its link to the client.
    pub fn gateway_ip(&self, v6: bool) -> IpAddr {
        if v6 {
            GATEWAY_V6.into()
        } else {
            GATEWAY_V4.into()
        }
    }

    /// Name of the gateway's link to pod `k`.
    pub fn gateway_pod_link(k: usize) -> String {
        format!("veth-p{k}")
    }

    /// Writes [`super::demo_snapshot`] for this topology's pods to `path`.
    pub fn write_demo_snapshot(&self, path: &Path) -> Result<()> {
        let text = super::demo_snapshot(&self.pod_addrs());
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    }

    fn pod_v4(&self, k: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 244, pod_octet(k), 10)
    }

    fn pod_v6(&self, k: usize) -> Ipv6Addr {
        Ipv6Addr::new(0xfd00, 0x10, 0x244, u16::from(pod_octet(k)), 0, 0, 0, 0xa)
    }

    fn gateway_pod_side(k: usize) -> (Ipv4Addr, Ipv6Addr) {
        let o = pod_octet(k);
        (
            Ipv4Addr::new(10, 244, o, 1),
            Ipv6Addr::new(0xfd00, 0x10, 0x244, u16::from(o), 0, 0, 0, 1),
        )
    }

    fn all(&self) -> impl Iterator<Item = &Netns> {
        [&self.client, &self.gateway]
            .into_iter()
            .chain(self.pods.iter())
    }
}

fn pod_octet(k: usize) -> u8 {
    u8::try_from(k).unwrap_or(u8::MAX)
}

fn valid_prefix_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')
}

/// A veth between `host` (its end `eth0`, default routes via the gateway) and the gateway
/// (its end `gw_link`), with a /24 and a /64 on each side (IPv6 without DAD).
fn link_to_gateway(
    host: &Netns,
    gw: &Netns,
    gw_link: &str,
    (host4, host6): (Ipv4Addr, Ipv6Addr),
    (gw4, gw6): (Ipv4Addr, Ipv6Addr),
) -> Result<()> {
    host.sh(&format!(
        "ip link add eth0 type veth peer name {gw_link} netns {gw}",
        gw = gw.name()
    ))?;
    host.sh(&format!(
        "ip addr add {host4}/24 dev eth0 && \
         ip -6 addr add {host6}/64 dev eth0 nodad && \
         ip link set eth0 up && \
         ip route add default via {gw4} && \
         ip -6 route add default via {gw6}"
    ))?;
    gw.sh(&format!(
        "ip addr add {gw4}/24 dev {gw_link} && \
         ip -6 addr add {gw6}/64 dev {gw_link} nodad && \
         ip link set {gw_link} up"
    ))?;
    Ok(())
}
