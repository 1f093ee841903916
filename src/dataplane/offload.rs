//! Flow offload, the worker's side: apply a [`Verdict::Offload`] — hand the flow to the
//! kernel's connection tracking and let its first packet take the entry.
//!
//! For a SYN (or a UDP flow's first datagram) `C:cp → S:sp` the engine has decided
//! (endpoint `E:ep`):
//! 1. the gateway's address toward `E` is looked up (`G`, the source the kernel would pick
//!    for `E`, as MASQUERADE does; cached per endpoint address, bounded);
//! 2. a conntrack entry is created: original tuple `C:cp → S:sp`, destination NAT `E:ep`,
//!    source NAT `G` with a port the kernel picks, the gateway's mark;
//! 3. the SYN, unchanged, is sent again through a raw socket (header included), as a packet
//!    of this host: conntrack meets it at OUTPUT, finds the entry, NATs it and routes it to
//!    the endpoint. rp_filter never sees it, so a strict rp_filter is fine.
//!
//! Every later packet of the flow meets the entry in PREROUTING and never reaches the TUN.
//! A retransmitted SYN still does (first SYNs are not tracked on the way in, see
//! `host::nftables`): creating fails with EEXIST, the entry is read back and, while it is
//! ours and still opening, the SYN is re-injected without a second entry. An entry that is
//! not ours, or ours but past its handshake (a tuple reused after close), is replaced.
//!
//! UDP flows the same way, with their first datagram: the entry has no TCP state and takes
//! the kernel's UDP timeouts from that datagram on ([`UDP_OPENING_TIMEOUT`] until then).
//! The re-injected datagram, meeting the entry at OUTPUT, puts the flow in the netfilter
//! table's UDP set, which is what lets the client's later datagrams be tracked (see
//! `host::nftables`). A datagram of a flow whose element expired while its entry lives
//! arrives untracked, like a retransmitted SYN: EEXIST, ours, re-injected on the entry
//! (any entry of ours without TCP state is reused). The endpoint's ICMP errors about the
//! flow are RELATED to the entry and go to the client through the kernel. A raw socket
//! does not fragment: a first datagram larger than the route to the endpoint carries (one
//! that came in fragments) fails with EMSGSIZE ([`OffloadError::is_too_big`]); the worker
//! then deletes the entry ([`Offloader::forget_udp`]) and proxies that flow in user space.
//!
//! Loop guard: a packet is re-injected only after its entry exists (or was read back). The
//! netfilter table drops anything re-injected that would leave through the TUN again.
//!
//! Owns: one ctnetlink socket, two raw sockets and the source cache of one worker.
//! Must not touch: entries that are not ours except to replace one on the tuple of a new
//! flow; the TUN device (the worker writes it).
//!
//! [`Verdict::Offload`]: super::engine::Verdict::Offload

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use super::nat::FlowKey;
use crate::host::conntrack::batch::Request;
use crate::host::conntrack::{self, Conntrack, ConntrackError, Entry, NatEntry, Tuple};
use crate::host::nftables::INJECT_MARK;

/// The source ports the kernel picks from for the gateway's side of a flow. Below 1024
/// stays for services on the gateway itself.
pub const SOURCE_PORTS: (u16, u16) = (1024, 65535);
/// Seconds a new entry lives before its handshake completes (the kernel's own SYN_SENT
/// timeout is 120 s); once packets flow the kernel keeps the timeouts of each state. An
/// entry the endpoint never answers is ended sooner, after 10 s, by `ctsweep`.
pub const OPENING_TIMEOUT: u32 = 120;
/// Endpoint addresses whose source address is remembered; the cache is cleared when full.
const SOURCE_CACHE: usize = 4096;
/// How long a looked-up source address is trusted (routes can change).
const SOURCE_TTL: Duration = Duration::from_secs(30);

/// How a flow was handed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandedOver {
    /// A new entry was created and the first packet re-injected.
    New,
    /// The entry existed (a retransmitted SYN): the packet was re-injected on it.
    Retransmit,
}

/// Why a flow could not be handed over.
#[derive(Debug, thiserror::Error)]
pub enum OffloadError {
    /// No route to the endpoint (no source address for it).
    #[error("no route to endpoint {endpoint}")]
    NoRoute {
        endpoint: IpAddr,
        #[source]
        source: io::Error,
    },
    /// The kernel refused the entry (its table is full: ENOMEM), or ctnetlink failed.
    #[error(transparent)]
    Conntrack(#[from] ConntrackError),
    /// The raw socket would not send the first packet.
    #[error("cannot re-inject the first packet")]
    Inject(#[source] io::Error),
    /// The worker has no raw socket of this family (IPv6 disabled).
    #[error("no raw socket for this address family")]
    NoFamily,
}

impl OffloadError {
    /// A short, stable label for metrics and structured logs.
    pub fn label(&self) -> &'static str {
        match self {
            Self::NoRoute { .. } => "no_route",
            Self::Conntrack(e) if e.errno() == Some(libc::ENOMEM) => "table_full",
            Self::Conntrack(e) => e.label(),
            Self::Inject(_) => "inject",
            Self::NoFamily => "no_family",
        }
    }

    /// Whether the first packet was larger than the route toward the endpoint carries (a
    /// raw socket does not fragment: EMSGSIZE). A UDP flow whose first datagram the kernel
    /// had to reassemble ends up here; the worker proxies such a flow in user space.
    pub fn is_too_big(&self) -> bool {
        matches!(self, Self::Inject(e) if e.raw_os_error() == Some(libc::EMSGSIZE))
    }

    /// Whether the kernel's table is full (counted as `table_full`).
    pub fn is_table_full(&self) -> bool {
        matches!(self, Self::Conntrack(e) if e.errno() == Some(libc::ENOMEM))
    }
}

/// The labels of [`OffloadError::label`], in the order [`OffloadStats`] counts them.
pub const FAILURE_LABELS: [&str; 8] = [
    "no_route",
    "table_full",
    "socket",
    "io",
    "refused",
    "malformed",
    "inject",
    "no_family",
];

/// Counters of the hand-over (relaxed atomics, touched once per new flow).
#[derive(Debug, Default)]
pub struct OffloadStats {
    /// Entries created and first packets re-injected.
    pub flows: AtomicU64,
    /// Retransmitted SYNs re-injected on an existing entry.
    pub retransmits: AtomicU64,
    failures: [AtomicU64; FAILURE_LABELS.len()],
    /// Endpoint ejections (an offloaded flow to it failed before it was established).
    pub ejections: AtomicU64,
    /// Times conntrack events were lost (the reader resynced from a dump).
    pub events_lost: AtomicU64,
    /// Bytes the kernel forwarded for offloaded flows, each way (the netfilter table's
    /// counters, read every few seconds).
    pub bytes_to_endpoint: AtomicU64,
    pub bytes_to_client: AtomicU64,
    /// UDP flows carried in user space after all: the kernel path could not take them
    /// (see `Worker::hand_over_udp`).
    pub udp_proxied: AtomicU64,
    /// UDP flows the kernel carries that have been answered and whose entry is alive
    /// (kept by the conntrack-event reader; `Stats::udp_active_now` adds them to the
    /// flows in user space).
    pub udp_active: AtomicU64,
}

impl OffloadStats {
    pub fn handed_over(&self, new: bool) {
        let c = if new { &self.flows } else { &self.retransmits };
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn failed(&self, label: &str) {
        let i = FAILURE_LABELS
            .iter()
            .position(|l| *l == label)
            .unwrap_or(FAILURE_LABELS.len() - 1);
        self.failures[i].fetch_add(1, Ordering::Relaxed);
    }

    /// `(label, count)` of every failure reason.
    pub fn failures(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        FAILURE_LABELS
            .iter()
            .zip(&self.failures)
            .map(|(l, c)| (*l, c.load(Ordering::Relaxed)))
    }
}

/// What to do when an entry for a new flow's tuple already exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// Ours and still opening: a retransmitted SYN; re-inject on it.
    Reuse,
    /// Not ours (the kernel's own), or ours but past the handshake: delete, create anew.
    Replace,
    /// Gone since (expired or deleted): create again.
    Create,
}

/// Seconds a new UDP entry lives before its first datagram, re-injected, refreshes it to the
/// kernel's own UDP timeouts (`nf_conntrack_udp_timeout`, `…_stream`).
pub const UDP_OPENING_TIMEOUT: u32 = 30;

/// Whether `pkt` (an IP packet read from the TUN device) is UDP: the protocol of the IPv4
/// header, or the first next-header of the IPv6 one (a datagram the engine reassembled has
/// no fragment header left).
pub fn is_udp(pkt: &[u8]) -> bool {
    let udp = libc::IPPROTO_UDP as u8;
    match pkt.first().map(|b| b >> 4) {
        Some(4) => pkt.get(9) == Some(&udp),
        Some(6) => pkt.get(6) == Some(&udp),
        _ => false,
    }
}

/// The entry of a new UDP flow: as for TCP, without TCP state; the kernel's UDP timeouts
/// apply from its first datagram on.
pub fn udp_entry(key: FlowKey, endpoint: SocketAddr, source: IpAddr) -> NatEntry {
    NatEntry {
        orig: Tuple::udp(key.client, key.service),
        endpoint,
        source,
        source_ports: SOURCE_PORTS,
        mark: conntrack::MARK_OWNER,
        timeout: UDP_OPENING_TIMEOUT,
        tcp_state: None,
        be_liberal: false,
    }
}

/// Decide about an existing entry (pure).
pub fn existing(entry: Option<&Entry>) -> Existing {
    match entry {
        None => Existing::Create,
        Some(e) if e.is_ours() && e.tcp_state.is_none_or(conntrack::tcp_state::is_opening) => {
            Existing::Reuse
        }
        Some(_) => Existing::Replace,
    }
}

/// Source addresses toward endpoints, looked up through `lookup` and kept for
/// [`SOURCE_TTL`]; at most [`SOURCE_CACHE`] addresses (cleared when full).
pub struct SourceCache {
    map: HashMap<IpAddr, (IpAddr, Instant)>,
}

impl SourceCache {
    pub fn new() -> SourceCache {
        SourceCache {
            map: HashMap::new(),
        }
    }

    pub fn get(
        &mut self,
        endpoint: IpAddr,
        now: Instant,
        lookup: impl FnOnce(IpAddr) -> io::Result<IpAddr>,
    ) -> io::Result<IpAddr> {
        if let Some((src, at)) = self.map.get(&endpoint) {
            if now.saturating_duration_since(*at) < SOURCE_TTL {
                return Ok(*src);
            }
        }
        let src = lookup(endpoint)?;
        if self.map.len() >= SOURCE_CACHE {
            self.map.clear();
        }
        self.map.insert(endpoint, (src, now));
        Ok(src)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

impl Default for SourceCache {
    fn default() -> Self {
        Self::new()
    }
}

/// The address this host sends from toward `endpoint`: a route lookup by connecting a UDP
/// socket (no packet is sent).
pub fn route_source(endpoint: IpAddr) -> io::Result<IpAddr> {
    let bind: SocketAddr = match endpoint {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let s = UdpSocket::bind(bind)?;
    s.connect(SocketAddr::new(endpoint, 9))?;
    Ok(s.local_addr()?.ip())
}

/// A raw socket that sends whole IP packets (header included) as this host's own, marked
/// with [`INJECT_MARK`].
fn raw_socket(domain: Domain) -> io::Result<Socket> {
    let s = Socket::new(domain, Type::RAW, Some(Protocol::from(libc::IPPROTO_RAW)))?;
    s.set_mark(INJECT_MARK)?;
    Ok(s)
}

/// One worker's offload shell.
pub struct Offloader {
    ct: Conntrack,
    raw4: Socket,
    raw6: Option<Socket>,
    sources: SourceCache,
    /// Set the per-entry "be liberal" TCP flag (window tracking off for our entries).
    pub be_liberal: bool,
}

impl Offloader {
    /// Open the sockets in the calling thread's namespace (`ipv6`: also the IPv6 one).
    pub fn open(ipv6: bool) -> io::Result<Offloader> {
        let ct = Conntrack::open().map_err(io::Error::other)?;
        let raw4 = raw_socket(Domain::IPV4)?;
        let raw6 = if ipv6 {
            Some(raw_socket(Domain::IPV6)?)
        } else {
            None
        };
        Ok(Offloader {
            ct,
            raw4,
            raw6,
            sources: SourceCache::new(),
            be_liberal: false,
        })
    }

    /// Hand the flow `key` to the kernel with its NAT to `endpoint`, then re-inject `pkt`
    /// (its first packet, checksums complete).
    pub fn hand_over(
        &mut self,
        key: FlowKey,
        endpoint: SocketAddr,
        pkt: &[u8],
        now: Instant,
    ) -> Result<HandedOver, OffloadError> {
        let source = self
            .sources
            .get(endpoint.ip(), now, route_source)
            .map_err(|source| OffloadError::NoRoute {
                endpoint: endpoint.ip(),
                source,
            })?;
        let entry = if is_udp(pkt) {
            udp_entry(key, endpoint, source)
        } else {
            NatEntry {
                orig: Tuple::tcp(key.client, key.service),
                endpoint,
                source,
                source_ports: SOURCE_PORTS,
                mark: conntrack::MARK_OWNER,
                timeout: OPENING_TIMEOUT,
                tcp_state: Some(conntrack::tcp_state::SYN_SENT),
                be_liberal: self.be_liberal,
            }
        };
        let how = match self.ct.create(&entry) {
            Ok(()) => HandedOver::New,
            Err(e) if e.errno() == Some(libc::EEXIST) => {
                let found = self.ct.get(&entry.orig)?;
                match existing(found.as_ref()) {
                    Existing::Reuse => HandedOver::Retransmit,
                    Existing::Replace => {
                        tracing::debug!(client = %key.client, service = %key.service, state = found.as_ref().and_then(|e| e.tcp_state).map(conntrack::tcp_state::name), "replacing an entry on a new flow's tuple");
                        self.replace(&entry)?;
                        HandedOver::New
                    }
                    Existing::Create => {
                        self.ct.create(&entry)?;
                        HandedOver::New
                    }
                }
            }
            Err(e) => return Err(e.into()),
        };
        self.inject(key.service, pkt)?;
        Ok(how)
    }

    /// Delete the entry of the UDP flow `key` (a flow the kernel could not take after all,
    /// see [`OffloadError::is_too_big`]; gone already is fine).
    pub fn forget_udp(&mut self, key: FlowKey) -> Result<(), OffloadError> {
        self.ct.delete(&Tuple::udp(key.client, key.service))?;
        Ok(())
    }

    /// Delete the entry on `entry`'s tuple and create `entry`, both in one datagram. A
    /// delete that found nothing (the entry went meanwhile) is fine.
    fn replace(&mut self, entry: &NatEntry) -> Result<(), ConntrackError> {
        let mut r = self
            .ct
            .batch(&[Request::Delete(&entry.orig), Request::Create(entry)])
            .into_iter();
        let (deleted, created) = (r.next(), r.next());
        match (deleted, created) {
            (_, Some(Ok(()))) => Ok(()),
            (Some(Err(e)), _) if e.errno() != Some(libc::ENOENT) => Err(e),
            (_, Some(Err(e))) => Err(e),
            // Two requests give two results.
            _ => Err(ConntrackError::Io {
                op: "replace",
                source: io::ErrorKind::InvalidData.into(),
            }),
        }
    }

    fn inject(&self, dst: SocketAddr, pkt: &[u8]) -> Result<(), OffloadError> {
        let sock = match dst {
            SocketAddr::V4(_) => &self.raw4,
            SocketAddr::V6(_) => self.raw6.as_ref().ok_or(OffloadError::NoFamily)?,
        };
        // The port must be 0 for a raw IPv6 socket (it would name a protocol).
        let to = SockAddr::from(SocketAddr::new(dst.ip(), 0));
        sock.send_to(pkt, &to).map_err(OffloadError::Inject)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::conntrack::{tcp_state, MARK_OWNER};

    fn entry(mark: u32, state: Option<u8>) -> Entry {
        Entry {
            mark,
            tcp_state: state,
            ..Entry::default()
        }
    }

    #[test]
    fn a_retransmitted_syn_reuses_only_an_opening_entry_of_ours() {
        assert_eq!(existing(None), Existing::Create);
        for s in [
            tcp_state::SYN_SENT,
            tcp_state::SYN_RECV,
            tcp_state::SYN_SENT2,
        ] {
            assert_eq!(existing(Some(&entry(MARK_OWNER, Some(s)))), Existing::Reuse);
        }
        assert_eq!(existing(Some(&entry(MARK_OWNER, None))), Existing::Reuse);
        // Ours but done: the tuple is reused by a new connection.
        for s in [
            tcp_state::ESTABLISHED,
            tcp_state::TIME_WAIT,
            tcp_state::CLOSE,
        ] {
            assert_eq!(
                existing(Some(&entry(MARK_OWNER | 7, Some(s)))),
                Existing::Replace
            );
        }
        // The kernel's own entry (no mark), even while opening.
        assert_eq!(
            existing(Some(&entry(0, Some(tcp_state::SYN_SENT)))),
            Existing::Replace
        );
        assert_eq!(
            existing(Some(&entry(0x1234_0000, Some(tcp_state::SYN_SENT)))),
            Existing::Replace
        );
    }

    #[test]
    fn the_source_cache_looks_up_once_per_ttl_and_stays_bounded() {
        let mut c = SourceCache::new();
        let t0 = Instant::now();
        let ep: IpAddr = "10.244.1.10".parse().unwrap();
        let g: IpAddr = "10.244.1.1".parse().unwrap();
        let mut lookups = 0;
        for dt in [0, 1, 29] {
            let got = c
                .get(ep, t0 + Duration::from_secs(dt), |_| {
                    lookups += 1;
                    Ok(g)
                })
                .unwrap();
            assert_eq!(got, g);
        }
        assert_eq!(lookups, 1);
        c.get(ep, t0 + SOURCE_TTL, |_| {
            lookups += 1;
            Ok(g)
        })
        .unwrap();
        assert_eq!(lookups, 2, "expired after the TTL");
        // A failed lookup is an error and is not cached.
        let bad: IpAddr = "10.250.0.1".parse().unwrap();
        assert!(c
            .get(bad, t0, |_| Err(io::ErrorKind::HostUnreachable.into()))
            .is_err());
        assert!(c.get(bad, t0, |_| Ok(g)).is_ok());
        for i in 0..(SOURCE_CACHE as u32 + 10) {
            let ip = IpAddr::from(Ipv4Addr::from(0x0a00_0000 + i));
            c.get(ip, t0, |_| Ok(g)).unwrap();
            assert!(c.len() <= SOURCE_CACHE);
        }
    }

    #[test]
    fn route_source_finds_loopback_for_loopback() {
        assert_eq!(
            route_source("127.0.0.1".parse().unwrap()).unwrap(),
            "127.0.0.1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn udp_first_datagrams_get_a_udp_entry_without_tcp_state() {
        let v4 =
            etherparse::PacketBuilder::ipv4([192, 168, 77, 2], [10, 96, 0, 53], 64).udp(40000, 53);
        let mut d4 = Vec::new();
        v4.write(&mut d4, b"q").unwrap();
        let v6 = etherparse::PacketBuilder::ipv6([1; 16], [2; 16], 64).udp(40000, 53);
        let mut d6 = Vec::new();
        v6.write(&mut d6, b"q").unwrap();
        let t = etherparse::PacketBuilder::ipv4([192, 168, 77, 2], [10, 96, 0, 10], 64)
            .tcp(40000, 80, 1, 1000)
            .syn();
        let mut s = Vec::new();
        t.write(&mut s, &[]).unwrap();
        assert!(is_udp(&d4) && is_udp(&d6));
        assert!(!is_udp(&s) && !is_udp(&[]) && !is_udp(&[0x45]));

        let key = FlowKey {
            client: "192.168.77.2:40000".parse().unwrap(),
            service: "10.96.0.53:53".parse().unwrap(),
        };
        let e = udp_entry(
            key,
            "10.244.1.10:5353".parse().unwrap(),
            "10.244.1.1".parse().unwrap(),
        );
        assert_eq!(e.orig, Tuple::udp(key.client, key.service));
        assert_eq!(e.tcp_state, None);
        assert!(!e.be_liberal);
        assert_eq!(e.timeout, UDP_OPENING_TIMEOUT);
        assert_eq!(e.mark, MARK_OWNER);
        // Any entry of ours without TCP state is reused by a datagram that arrives untracked.
        assert_eq!(existing(Some(&entry(MARK_OWNER, None))), Existing::Reuse);
        let too_big = OffloadError::Inject(io::Error::from_raw_os_error(libc::EMSGSIZE));
        assert!(too_big.is_too_big());
        assert!(!OffloadError::NoFamily.is_too_big());
    }
}
