//! The per-packet decision core: one packet from the TUN device in, one [`Verdict`] out.
//!
//! It owns the UDP flow table and the fragment reassembler of one worker, and uses the
//! NAT, balancer and error budget all workers share ([`SharedFlows`], [`ErrorBudget`]). It
//! takes `now` and the current `ServiceTable`, does no I/O and spawns nothing: the worker
//! (the shell) writes packets, opens sockets and talks to the proxy tasks according to the
//! verdict. Every address of a routed range gets an answer: a Service's, or a refusal.
//!
//! Two directions reach it:
//! - client → ClusterIP (`C:cp → S:sp`): looked up in the table; TCP is rewritten to
//!   `V:vp → L:lp` (the listener), UDP goes to a flow socket, echo requests are answered;
//! - listener → virtual client (`L:lp → V:vp`): reverse-NATed to `S:sp → C:cp`.

use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::balancer::Candidates;
use super::limits::ErrorBudget;
use super::nat::{FlowKey, FlowState, NatConfig, Partition};
use super::packet::{self, Checksum, Packet, Reassembler, TcpFlags, Transport, Unreachable};
use super::shared::SharedFlows;
use super::stats::{ConnResult, Reason, Refusal, Stats};
use super::udp::UdpFlows;
use crate::cluster::table::{Lookup, Protocol, ServicePort, ServiceTable};

const IPPROTO_TCP: u8 = 6;
/// Errors (ICMP unreachable, RST) the gateway builds per second, and burst, over all workers.
const ERROR_RATE: u32 = 1000;
const ERROR_BURST: u32 = 200;

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub nat: NatConfig,
    pub udp_capacity: usize,
    pub udp_idle: Duration,
    /// Errors (ICMP unreachable, RST) the gateway builds: one budget for the process,
    /// shared by every engine made from clones of this config.
    pub errors: Arc<ErrorBudget>,
    /// The `--service-cidr` ranges routed into the device. An address in a routed range
    /// (these, or the table's ServiceCIDRs when the API serves them) that is no ClusterIP
    /// is refused at once; with no range known (one host route per ClusterIP), any
    /// unicast address that arrives is one whose route is on its way out.
    pub service_cidrs: Vec<IpNet>,
    pub reassembly_bytes: usize,
    pub reassembly_datagrams: usize,
    pub reassembly_timeout: Duration,
    /// Flow offload (`--dataplane offload`): a new TCP flow the engine accepts becomes a
    /// [`Verdict::Offload`] instead of a proxied flow.
    pub offload: bool,
    /// Flow offload: endpoints ejected for failing flows, skipped by new ones.
    pub outliers: Option<Arc<super::outlier::Outliers>>,
    /// Flow offload with the kernel's conntrack events read (`dataplane::ctevents`): a
    /// TCP flow's ClientIP affinity is recorded when its entry is established, not when
    /// its SYN is handed over, so a spoofed SYN (its handshake never completes) leaves
    /// none. Without the events the hand-over is all the gateway sees, and records it.
    pub affinity_from_events: bool,
}

impl EngineConfig {
    pub fn new(nat: NatConfig, udp_capacity: usize) -> Self {
        EngineConfig {
            nat,
            udp_capacity,
            udp_idle: Duration::from_secs(30),
            errors: Arc::new(ErrorBudget::new(ERROR_RATE, ERROR_BURST, Instant::now())),
            service_cidrs: Vec::new(),
            reassembly_bytes: 4 << 20,
            reassembly_datagrams: 256,
            reassembly_timeout: Duration::from_secs(5),
            offload: false,
            outliers: None,
            affinity_from_events: false,
        }
    }
}

/// A new TCP flow, handed to the listener's acceptor before its SYN goes on.
#[derive(Debug, Clone)]
pub struct PendingFlow {
    pub virt: SocketAddr,
    pub key: FlowKey,
    pub port: Arc<ServicePort>,
    pub candidates: Candidates,
}

/// What the worker must do with the packet it passed in.
#[derive(Debug)]
pub enum Verdict<'e, T> {
    /// Write `buf[..len]` (rewritten in place) back into the TUN device: through the queue
    /// of worker `owner` when given (see [`Engine::owner_queue`]), else through this one's.
    Forward { len: usize, owner: Option<usize> },
    /// Write `scratch[..len]` (a packet the gateway built) into the TUN device.
    Reply { len: usize },
    /// A new TCP flow: give `flow` to the acceptor, then write `buf[..len]`.
    NewTcp { len: usize, flow: PendingFlow },
    /// A datagram of an existing UDP flow: send `buf[payload]` on `flow`'s socket.
    UdpSend { flow: &'e T, payload: Range<usize> },
    /// A new UDP flow to `endpoint`: open its socket, [`Engine::udp_insert`] it, then send
    /// `buf[payload]`. If the socket cannot be opened, answer with [`Engine::reject`].
    UdpNew {
        key: FlowKey,
        port: Arc<ServicePort>,
        endpoint: SocketAddr,
        payload: Range<usize>,
    },
    /// Nothing to send (counted under `reason`).
    Drop(Reason),
    /// Flow offload: a new TCP or UDP flow (`port.protocol`) to `endpoint`, decided. The
    /// worker hands it to the kernel (a conntrack entry with the NAT) and re-injects
    /// `buf[..len]`, unchanged, to take that entry; then [`Engine::offloaded`], or
    /// [`Engine::refuse_tcp`] / [`Engine::refuse_udp`] when the kernel would not take it.
    Offload {
        len: usize,
        key: FlowKey,
        port: Arc<ServicePort>,
        endpoint: SocketAddr,
    },
}

pub struct Engine<T> {
    nat: Arc<SharedFlows>,
    /// UDP flows at most, over all workers.
    udp_capacity: usize,
    /// This worker's UDP flow count as last added to the shared one.
    udp_reported: usize,
    udp: UdpFlows<T>,
    frag: Reassembler,
    frag_out: Box<[u8]>,
    errors: Arc<ErrorBudget>,
    service_cidrs: Vec<IpNet>,
    inner_v4: Ipv4Net,
    inner_v6: Ipv6Net,
    listener_v4: IpAddr,
    listener_v6: IpAddr,
    /// The listener port of each worker (index: [`SharedFlows::owner_of`]).
    listener_ports: Arc<[u16]>,
    /// This engine's worker: the owner of the flows it maps.
    worker: usize,
    stats: Arc<Stats>,
    generation: u64,
    /// See [`EngineConfig::offload`].
    offload: bool,
    outliers: Option<Arc<super::outlier::Outliers>>,
    affinity_from_events: bool,
}

impl<T> Engine<T> {
    /// An engine with a NAT of its own (one worker). `listener_port` is the port the
    /// listeners bound on L (both families).
    pub fn new(config: EngineConfig, listener_port: u16, stats: Arc<Stats>, now: Instant) -> Self {
        let shared = Arc::new(SharedFlows::new(config.nat.clone(), now));
        Self::with_shared(config, shared, Arc::new([listener_port]), 0, stats, now)
    }

    /// The engine of worker `worker` among several, all using `shared` (made from the same
    /// `config.nat`, dealt out to as many owners as there are `listener_ports`: one port
    /// per worker, bound on L in both families). `_now` is unused since the error budget
    /// moved into the config (one for all workers); the callers keep their signature.
    pub fn with_shared(
        config: EngineConfig,
        shared: Arc<SharedFlows>,
        listener_ports: Arc<[u16]>,
        worker: usize,
        stats: Arc<Stats>,
        _now: Instant,
    ) -> Self {
        assert_eq!(
            listener_ports.len(),
            shared.owners(),
            "one listener port per worker"
        );
        Engine {
            inner_v4: config.nat.inner_v4,
            inner_v6: config.nat.inner_v6,
            nat: shared,
            udp: UdpFlows::new(config.udp_capacity, config.udp_idle),
            udp_capacity: config.udp_capacity,
            udp_reported: 0,
            frag: Reassembler::new(
                config.reassembly_bytes,
                config.reassembly_datagrams,
                config.reassembly_timeout,
            ),
            frag_out: vec![0u8; packet::MAX_PACKET].into_boxed_slice(),
            errors: config.errors.clone(),
            service_cidrs: config.service_cidrs.clone(),
            listener_v4: config.nat.listener_v4().into(),
            listener_v6: config.nat.listener_v6().into(),
            listener_ports,
            worker,
            stats,
            generation: 0,
            offload: config.offload,
            outliers: config.outliers.clone(),
            affinity_from_events: config.affinity_from_events,
        }
    }

    pub fn nat(&self) -> &SharedFlows {
        &self.nat
    }

    pub fn udp(&self) -> &UdpFlows<T> {
        &self.udp
    }

    fn is_inner(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(a) => self.inner_v4.contains(&a),
            IpAddr::V6(a) => self.inner_v6.contains(&a),
        }
    }

    /// With the proxy on several workers, the worker whose queue must carry the rewritten
    /// packets of the flow mapped to `virt`: its owner (None otherwise: any queue will do).
    ///
    /// The kernel sends a flow's packets to the queue that last wrote one of its packets
    /// (`tun_flow_update`), and learns a written packet's flow only after delivering it. So
    /// the SYN-ACK, sent while the SYN is being delivered, goes to the queue the flow's hash
    /// picks, and the worker reading it would, by writing the client's SYN-ACK, steer the
    /// whole flow to itself, away from the worker running its proxy (a quarter of the
    /// keep-alive flows with two workers). Writing every rewritten packet through the
    /// owner's queue makes the kernel steer both directions of the flow to the owner.
    pub fn owner_queue(&self, virt: &SocketAddr) -> Option<usize> {
        if self.listener_ports.len() > 1 {
            self.nat.owner_of(virt)
        } else {
            None
        }
    }

    /// The listener `L:lp` the connection of the flow mapped to `virt` goes to: that of
    /// the worker that mapped it.
    fn listener(&self, virt: &SocketAddr) -> SocketAddr {
        let port = match *self.listener_ports {
            [port] => port,
            ref ports => ports[self.nat.owner_of(virt).unwrap_or(0) % ports.len()],
        };
        let ip = if virt.is_ipv6() {
            self.listener_v6
        } else {
            self.listener_v4
        };
        SocketAddr::new(ip, port)
    }

    /// Decide what to do with `buf[..len]`, a packet read from the TUN device. `buf` must
    /// hold at least [`packet::MAX_PACKET`] bytes (a reassembled datagram replaces the
    /// fragment in it); `scratch` at least 1,280 bytes, for packets the gateway builds.
    pub fn handle(
        &mut self,
        table: &ServiceTable,
        buf: &mut [u8],
        len: usize,
        csum: Checksum,
        now: Instant,
        scratch: &mut [u8],
    ) -> Verdict<'_, T> {
        if table.generation != self.generation {
            self.on_table(table);
        }
        let mut csum = csum;
        let mut len = len.min(buf.len());
        let mut pkt = match packet::parse(&buf[..len]) {
            Ok(p) => p,
            Err(r) => return Verdict::Drop(Reason::Malformed(r)),
        };
        if let Transport::Fragment { .. } = pkt.transport {
            match self.frag.push(&buf[..len], &pkt, now, &mut self.frag_out) {
                Ok(Some(n)) if n <= buf.len() => {
                    buf[..n].copy_from_slice(&self.frag_out[..n]);
                    len = n;
                    csum = Checksum::Full;
                    pkt = match packet::parse(&buf[..len]) {
                        Ok(p) => p,
                        Err(r) => return Verdict::Drop(Reason::Malformed(r)),
                    };
                }
                Ok(Some(_)) => {
                    return Verdict::Drop(Reason::Malformed(packet::DropReason::FragmentTooLarge))
                }
                Ok(None) => return Verdict::Drop(Reason::FragmentQueued),
                Err(r) => return Verdict::Drop(Reason::Malformed(r)),
            }
        }
        if self.is_inner(pkt.dst) {
            return self.listener_to_client(buf, &pkt, csum);
        }
        match pkt.transport {
            Transport::Tcp {
                src_port,
                dst_port,
                flags,
                ..
            } => {
                let key = FlowKey {
                    client: SocketAddr::new(pkt.src, src_port),
                    service: SocketAddr::new(pkt.dst, dst_port),
                };
                self.tcp_from_client(table, buf, &pkt, key, flags, csum, now, scratch)
            }
            Transport::Udp {
                src_port,
                dst_port,
                payload_offset,
                payload_len,
            } => {
                let key = FlowKey {
                    client: SocketAddr::new(pkt.src, src_port),
                    service: SocketAddr::new(pkt.dst, dst_port),
                };
                let payload = payload_offset..payload_offset + payload_len;
                self.udp_from_client(table, buf, &pkt, key, payload, now, scratch)
            }
            Transport::EchoRequest { .. } => {
                if table.service_of(pkt.dst).is_some() {
                    let n = packet::echo_reply_in_place(buf, &pkt);
                    Verdict::Forward {
                        len: n,
                        owner: None,
                    }
                } else {
                    self.no_service(table, buf, &pkt, now, scratch)
                }
            }
            Transport::IcmpError { inner, .. } => self.icmp_error(buf, &pkt, inner),
            Transport::OtherIcmp { .. } => Verdict::Drop(Reason::IcmpIgnored),
            Transport::Fragment { .. } => {
                Verdict::Drop(Reason::Malformed(packet::DropReason::FragmentOverlap))
            }
        }
    }

    /// `L:lp → V:vp`: the kernel's side of a proxied connection, back to the client.
    fn listener_to_client(
        &mut self,
        buf: &mut [u8],
        pkt: &Packet,
        csum: Checksum,
    ) -> Verdict<'_, T> {
        let Transport::Tcp {
            src_port,
            dst_port,
            seq,
            flags,
            ..
        } = pkt.transport
        else {
            return Verdict::Drop(Reason::NoReverseFlow);
        };
        let virt = SocketAddr::new(pkt.dst, dst_port);
        if SocketAddr::new(pkt.src, src_port) != self.listener(&virt) {
            return Verdict::Drop(Reason::NoReverseFlow);
        }
        match self.nat.reverse(&virt) {
            Some((key, state)) => {
                // The listener's SYN-ACK: the client that acknowledges it is real.
                if matches!(state, FlowState::Pending { .. })
                    && flags.has(TcpFlags::SYN)
                    && flags.has(TcpFlags::ACK)
                {
                    self.nat.syn_ack(virt, seq);
                }
                packet::rewrite(buf, pkt, key.service, key.client, csum);
                Verdict::Forward {
                    len: pkt.len,
                    owner: self.owner_queue(&virt),
                }
            }
            None => Verdict::Drop(Reason::NoReverseFlow),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn tcp_from_client(
        &mut self,
        table: &ServiceTable,
        buf: &mut [u8],
        pkt: &Packet,
        key: FlowKey,
        flags: TcpFlags,
        csum: Checksum,
        now: Instant,
        scratch: &mut [u8],
    ) -> Verdict<'_, T> {
        let syn = flags.has(TcpFlags::SYN) && !flags.has(TcpFlags::ACK);
        if let Some((virt, state)) = self.nat.get(&key, self.worker) {
            let reopened = syn && matches!(state, FlowState::Closed { .. });
            if !reopened {
                // The client completes the handshake: its flow is no longer one a SYN
                // flood may push out before the proxy accepts it.
                if let (
                    FlowState::Pending {
                        syn_ack: Some(_), ..
                    },
                    Transport::Tcp { ack, .. },
                ) = (state, pkt.transport)
                {
                    if flags.has(TcpFlags::ACK) && !flags.has(TcpFlags::SYN) {
                        self.nat.client_ack(virt, ack);
                    }
                }
                packet::rewrite(buf, pkt, virt, self.listener(&virt), csum);
                return Verdict::Forward {
                    len: pkt.len,
                    owner: self.owner_queue(&virt),
                };
            }
        }
        let port = match table.lookup(pkt.dst, key.service.port(), Protocol::Tcp) {
            Lookup::Port(p) => p.clone(),
            Lookup::UnknownPort => return self.rst(pkt, flags, now, scratch, Refusal::UnknownPort),
            Lookup::NotService => return self.no_service(table, buf, pkt, now, scratch),
        };
        if !syn {
            return self.rst(pkt, flags, now, scratch, Refusal::NoFlow);
        }
        if !port.allows(key.client.ip()) {
            self.stats
                .tcp_conn(&port, key.client, ConnResult::RejectedPolicy);
            return self.rst(pkt, flags, now, scratch, Refusal::Policy);
        }
        let Some(candidates) = self.nat.pick(&port, key.client.ip(), now) else {
            self.stats
                .tcp_conn(&port, key.client, ConnResult::NoEndpoints);
            return self.unreachable(
                buf,
                pkt,
                Unreachable::Port,
                Refusal::NoEndpoints,
                now,
                scratch,
            );
        };
        if self.offload {
            let endpoint = match &self.outliers {
                Some(o) => o.choose(&candidates, now),
                None => candidates.first(),
            };
            return Verdict::Offload {
                len: pkt.len,
                key,
                port,
                endpoint,
            };
        }
        match self.nat.insert(key, self.worker, now) {
            Ok(virt) => {
                packet::rewrite(buf, pkt, virt, self.listener(&virt), csum);
                Verdict::NewTcp {
                    len: pkt.len,
                    flow: PendingFlow {
                        virt,
                        key,
                        port,
                        candidates,
                    },
                }
            }
            Err(e) => {
                self.stats
                    .tcp_conn(&port, key.client, ConnResult::TableFull);
                tracing::trace!(error = %e, reason = e.label(), client = %key.client, "new TCP flow refused");
                self.rst(pkt, flags, now, scratch, Refusal::TableFull)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn udp_from_client(
        &mut self,
        table: &ServiceTable,
        buf: &mut [u8],
        pkt: &Packet,
        key: FlowKey,
        payload: Range<usize>,
        now: Instant,
        scratch: &mut [u8],
    ) -> Verdict<'_, T> {
        if self.udp.contains(&key) {
            let flow = self.udp.touch(&key, now).expect("flow present");
            return Verdict::UdpSend { flow, payload };
        }
        let port = match table.lookup(pkt.dst, key.service.port(), Protocol::Udp) {
            Lookup::Port(p) => p.clone(),
            Lookup::UnknownPort => {
                return self.unreachable(
                    buf,
                    pkt,
                    Unreachable::Port,
                    Refusal::UnknownPort,
                    now,
                    scratch,
                )
            }
            Lookup::NotService => return self.no_service(table, buf, pkt, now, scratch),
        };
        if !port.allows(key.client.ip()) {
            self.stats
                .udp_flow(&port, key.client, ConnResult::RejectedPolicy);
            return self.unreachable(
                buf,
                pkt,
                Unreachable::AdminProhibited,
                Refusal::Policy,
                now,
                scratch,
            );
        }
        let Some(candidates) = self.nat.pick(&port, key.client.ip(), now) else {
            self.stats
                .udp_flow(&port, key.client, ConnResult::NoEndpoints);
            return self.unreachable(
                buf,
                pkt,
                Unreachable::Port,
                Refusal::NoEndpoints,
                now,
                scratch,
            );
        };
        if self.offload {
            // The kernel carries the flow (bounded by its conntrack table, not by
            // `--max-udp-flows`); endpoint choice as for TCP.
            let endpoint = match &self.outliers {
                Some(o) => o.choose(&candidates, now),
                None => candidates.first(),
            };
            return Verdict::Offload {
                len: pkt.len,
                key,
                port,
                endpoint,
            };
        }
        if self.udp.is_full() || self.nat.udp_active() >= self.udp_capacity {
            // Full: this worker's flow whose client has been quiet longest makes room (its
            // socket closes with its handle); refused only when this worker holds none.
            if let Some(handle) = self.udp.evict_quietest() {
                drop(handle);
                self.report_udp();
                self.stats
                    .udp_evictions
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        if self.udp.is_full() || self.nat.udp_active() >= self.udp_capacity {
            self.stats
                .udp_flow(&port, key.client, ConnResult::TableFull);
            return self.unreachable(
                buf,
                pkt,
                Unreachable::Port,
                Refusal::TableFull,
                now,
                scratch,
            );
        }
        Verdict::UdpNew {
            key,
            port,
            endpoint: candidates.first(),
            payload,
        }
    }

    /// An ICMP error about a packet the gateway sent to a client on behalf of a proxied
    /// TCP flow (`S:sp → C:cp`): hand it to the listener's socket as an error about
    /// `L:lp → V:vp` (path MTU, unreachable client).
    fn icmp_error(&mut self, buf: &mut [u8], pkt: &Packet, inner: packet::Inner) -> Verdict<'_, T> {
        if inner.protocol != IPPROTO_TCP {
            return Verdict::Drop(Reason::IcmpIgnored);
        }
        let key = FlowKey {
            client: inner.dst,
            service: inner.src,
        };
        let Some((virt, _)) = self.nat.get(&key, self.worker) else {
            return Verdict::Drop(Reason::IcmpIgnored);
        };
        let listener = self.listener(&virt);
        if packet::rewrite_icmp_error(buf, pkt, listener.ip(), listener, virt) {
            Verdict::Forward {
                len: pkt.len,
                owner: self.owner_queue(&virt),
            }
        } else {
            Verdict::Drop(Reason::IcmpIgnored)
        }
    }

    /// Whether `dst` lies in a range routed into the device: the table's ServiceCIDRs when
    /// the API serves them, else the `--service-cidr` ranges, else (one host route per
    /// ClusterIP) any unicast address, since only a ClusterIP's route brings one here.
    /// Multicast and link-local packets the kernel itself sends into the device (IPv6
    /// neighbour and router discovery) are never in a routed range.
    fn routed(&self, table: &ServiceTable, dst: IpAddr) -> bool {
        let ranges = match table.service_cidrs.as_deref() {
            Some(served) if !served.is_empty() => served,
            _ => &self.service_cidrs,
        };
        if !ranges.is_empty() {
            return ranges.iter().any(|n| n.contains(&dst));
        }
        match dst {
            IpAddr::V4(a) => {
                !(a.is_multicast()
                    || a.is_broadcast()
                    || a.is_unspecified()
                    || a.is_loopback()
                    || a.is_link_local())
            }
            IpAddr::V6(a) => {
                !(a.is_multicast()
                    || a.is_unspecified()
                    || a.is_loopback()
                    || a.is_unicast_link_local())
            }
        }
    }

    /// A packet to an address that is no exposed ClusterIP. Inside a routed range (a
    /// deleted Service, a typo) it is refused at once with ICMP administratively
    /// prohibited, whatever its protocol: of the unreachable codes, it is the one Linux
    /// reports to a connected UDP socket as well as to a TCP connect (host unreachable is a
    /// soft error that UDP clients never hear of, so they would wait for their time-out),
    /// and it is what a `prohibit` route answers. kube-proxy's nftables mode drops such
    /// packets, but its clients are pods that can look the Service up; ours are outside
    /// hosts for which a refusal is the only news. RSTs are never answered.
    fn no_service(
        &mut self,
        table: &ServiceTable,
        buf: &[u8],
        pkt: &Packet,
        now: Instant,
        scratch: &mut [u8],
    ) -> Verdict<'_, T> {
        if !self.routed(table, pkt.dst) {
            return Verdict::Drop(Reason::NotService);
        }
        if let Transport::Tcp { flags, .. } = pkt.transport {
            if flags.has(TcpFlags::RST) {
                return Verdict::Drop(Reason::NotService);
            }
        }
        self.unreachable(
            buf,
            pkt,
            Unreachable::AdminProhibited,
            Refusal::NoService,
            now,
            scratch,
        )
    }

    fn rst(
        &mut self,
        pkt: &Packet,
        flags: TcpFlags,
        now: Instant,
        scratch: &mut [u8],
        refusal: Refusal,
    ) -> Verdict<'_, T> {
        if flags.has(TcpFlags::RST) {
            return Verdict::Drop(Reason::NoFlow);
        }
        if !self.errors.take(now) {
            return Verdict::Drop(Reason::RateLimited);
        }
        self.stats.count_refusal(refusal);
        Verdict::Reply {
            len: packet::build_tcp_rst(scratch, pkt),
        }
    }

    fn unreachable(
        &mut self,
        buf: &[u8],
        pkt: &Packet,
        kind: Unreachable,
        refusal: Refusal,
        now: Instant,
        scratch: &mut [u8],
    ) -> Verdict<'_, T> {
        if !self.errors.take(now) {
            return Verdict::Drop(Reason::RateLimited);
        }
        let n =
            packet::build_unreachable(scratch, &buf[..pkt.len.min(buf.len())], pkt, pkt.dst, kind);
        if n == 0 {
            return Verdict::Drop(Reason::IcmpIgnored);
        }
        self.stats.count_refusal(refusal);
        Verdict::Reply { len: n }
    }

    /// Answer `buf[..len]` (the packet of a [`Verdict::UdpNew`] whose socket could not be
    /// opened, or a flow refused later) with ICMP port unreachable. Returns the reply length
    /// in `scratch`, 0 when nothing should be sent.
    pub fn reject(&mut self, buf: &[u8], len: usize, now: Instant, scratch: &mut [u8]) -> usize {
        let Ok(pkt) = packet::parse(&buf[..len.min(buf.len())]) else {
            return 0;
        };
        match self.unreachable(
            buf,
            &pkt,
            Unreachable::Port,
            Refusal::DialFailed,
            now,
            scratch,
        ) {
            Verdict::Reply { len } => len,
            _ => 0,
        }
    }

    /// Flow offload: the flow of a [`Verdict::Offload`] was handed to the kernel. A UDP
    /// flow is served from its first datagram, so ClientIP affinity follows the endpoint
    /// now; a TCP flow's affinity waits for its entry to be established (reported by
    /// `dataplane::ctevents`, see [`EngineConfig::affinity_from_events`]): a spoofed SYN
    /// must leave no state in the gateway. (The connection is counted when conntrack
    /// reports how it went.)
    pub fn offloaded(
        &mut self,
        key: FlowKey,
        port: &ServicePort,
        endpoint: SocketAddr,
        now: Instant,
    ) {
        if port.protocol == Protocol::Tcp && self.affinity_from_events {
            return;
        }
        self.nat.served(port, key.client.ip(), endpoint, now);
    }

    /// Flow offload: the kernel would not take the flow of a [`Verdict::Offload`] (its
    /// table is full, or the request failed): count it as `result` and answer the SYN in
    /// `buf[..len]` with a RST (rate limited). Returns the RST's length in `scratch`, 0 when
    /// nothing should be sent.
    pub fn refuse_tcp(
        &mut self,
        buf: &[u8],
        len: usize,
        port: &ServicePort,
        result: ConnResult,
        now: Instant,
        scratch: &mut [u8],
    ) -> usize {
        let Ok(pkt) = packet::parse(&buf[..len.min(buf.len())]) else {
            return 0;
        };
        let Transport::Tcp {
            src_port, flags, ..
        } = pkt.transport
        else {
            return 0;
        };
        self.stats
            .tcp_conn(port, SocketAddr::new(pkt.src, src_port), result);
        let refusal = match result {
            ConnResult::TableFull => Refusal::TableFull,
            _ => Refusal::DialFailed,
        };
        match self.rst(&pkt, flags, now, scratch, refusal) {
            Verdict::Reply { len } => len,
            _ => 0,
        }
    }

    /// Flow offload: the kernel would not take the UDP flow of a [`Verdict::Offload`] (its
    /// table is full, or the request failed): count it as `result` and answer the datagram
    /// in `buf[..len]` with ICMP port unreachable (rate limited). Returns the reply's
    /// length in `scratch`, 0 when nothing should be sent.
    pub fn refuse_udp(
        &mut self,
        buf: &[u8],
        len: usize,
        port: &ServicePort,
        result: ConnResult,
        now: Instant,
        scratch: &mut [u8],
    ) -> usize {
        let Ok(pkt) = packet::parse(&buf[..len.min(buf.len())]) else {
            return 0;
        };
        let Transport::Udp { src_port, .. } = pkt.transport else {
            return 0;
        };
        self.stats
            .udp_flow(port, SocketAddr::new(pkt.src, src_port), result);
        let refusal = match result {
            ConnResult::TableFull => Refusal::TableFull,
            _ => Refusal::DialFailed,
        };
        match self.unreachable(buf, &pkt, Unreachable::Port, refusal, now, scratch) {
            Verdict::Reply { len } => len,
            _ => 0,
        }
    }

    /// Record a UDP flow whose socket the worker opened for a [`Verdict::UdpNew`].
    pub fn udp_insert(
        &mut self,
        key: FlowKey,
        port: Arc<ServicePort>,
        endpoint: SocketAddr,
        handle: T,
        now: Instant,
    ) {
        self.nat.served(&port, key.client.ip(), endpoint, now);
        self.stats.udp_flow(&port, key.client, ConnResult::Ok);
        self.udp.insert(key, handle, port, endpoint, now);
        self.report_udp();
    }

    /// Periodic housekeeping: idle UDP flows, old fragments, and `nat_share` of the shared
    /// NAT (unaccepted and closed TCP flows, old affinities). `last_reply` tells when a UDP
    /// flow last saw a reply.
    pub fn expire(
        &mut self,
        now: Instant,
        nat_share: Partition,
        last_reply: impl Fn(&T) -> Option<Instant>,
    ) -> Vec<T> {
        self.nat.expire(now, nat_share);
        let timed_out = self.frag.expire(now);
        self.stats.count_drops(
            Reason::Malformed(packet::DropReason::FragmentTimeout),
            timed_out as u64,
        );
        let gone = self.udp.expire(now, last_reply);
        self.report_udp();
        gone
    }

    /// A new table: UDP flows whose endpoint is no longer usable end (as kube-proxy clears
    /// their conntrack entries); TCP connections go on until they close.
    fn on_table(&mut self, table: &ServiceTable) {
        self.generation = table.generation;
        self.udp.retain_usable(table);
        self.report_udp();
    }

    /// Carry the change of this worker's UDP flow count into the count all workers share
    /// (the `--max-udp-flows` bound is over all of them).
    fn report_udp(&mut self) {
        let now = self.udp.len();
        self.nat.udp_changed(self.udp_reported, now);
        self.udp_reported = now;
    }
}

#[cfg(test)]
mod tests;
