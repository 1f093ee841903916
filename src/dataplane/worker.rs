//! The dataplane worker: the shell around one [`Engine`]. It reads packets from its TUN
//! queue (a batch per wake-up), applies the engine's verdicts (writes packets, feeds UDP
//! flow sockets, hands new TCP flows to the acceptor, or with flow offload hands new TCP
//! and UDP flows to the kernel) and runs the UDP reply tasks of the flows it opened, which
//! write to its own queue. With offload, a UDP flow stays in user space only where the
//! kernel path cannot carry it (`hand_over_udp` says when; logged once, counted). It owns the engine; nothing else touches
//! it. There is one worker per TUN queue, each on its own thread; they share only the NAT
//! and balancer (see `shared`), the table snapshot and the counters. With the proxy on the
//! workers (`--proxy-on-workers`), each also runs the proxy of the flows it maps, on a
//! runtime of its own, and writes a flow's packets through the queue of the worker that owns
//! it, which is what keeps the kernel steering the flow there.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::task::AbortHandle;

use super::engine::{Engine, Verdict};
use super::flows::{FlowGuard, FlowInfo};
use super::limits::LogLimit;
use super::nat::FlowKey;
use super::nat::Partition;
use super::packet::{self, VirtioNetHdr};
use super::stats::{ConnResult, Reason, Stats};
use super::tcp::PendingFlows;
use super::tun::TunQueue;
use crate::cluster::table::{Protocol, ServicePort, ServiceTable};

/// Packets read per wake-up before the worker looks at its other inputs again.
const BATCH: usize = 64;
/// How long an idle worker sleeps in poll(2) before it looks at events, expiry and shutdown.
const IDLE_POLL_MS: i32 = 50;
/// Replies one UDP flow's task forwards before it lets the other tasks run.
const REPLY_BATCH: usize = 64;
/// How often idle flows, unaccepted SYNs and old fragments are swept.
const EXPIRY_INTERVAL: Duration = Duration::from_secs(1);

/// A UDP flow's resources: its connected socket and the task reading replies.
pub struct UdpHandle {
    socket: Arc<UdpSocket>,
    /// Milliseconds since the worker's epoch at the last reply (0: none yet).
    last_reply_ms: Arc<AtomicU64>,
    task: AbortHandle,
    /// Lists the flow on the status page while it lives (and counts its bytes).
    flow: FlowGuard,
}

impl UdpHandle {
    /// Send one datagram now. A plain non-blocking send(2): tokio's `try_send` would report
    /// WouldBlock on a socket whose readiness its reactor has not seen yet (a new flow).
    fn send(&self, payload: &[u8]) -> io::Result<usize> {
        let n = socket2::SockRef::from(self.socket.as_ref()).send(payload)?;
        self.flow.info().sent(n as u64);
        Ok(n)
    }
}

impl Drop for UdpHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub struct Worker {
    /// Every queue of the device, by worker: this worker reads `queues[part.index]`; with
    /// the proxy on several workers, a flow's packets are written through its owner's queue
    /// (see `Engine::owner_queue`).
    pub queues: Arc<[Arc<TunQueue>]>,
    pub table: Arc<ArcSwap<ServiceTable>>,
    pub engine: Engine<UdpHandle>,
    /// New TCP flows, for the acceptor. Bounded (see where it is made): when the listener
    /// lags that far behind, new SYNs are dropped and retried by clients.
    pub pending: Arc<PendingFlows>,
    pub stats: Arc<Stats>,
    pub shutdown: Arc<AtomicBool>,
    /// This worker's number among `part.count`: it sweeps that share of the shared NAT.
    pub part: Partition,
    /// After its last packet, keep reading the queue this long before sleeping in poll(2)
    /// (zero: sleep at once). Spares the wake-up of a request/response exchange.
    pub busy_poll: Duration,
    /// Flow offload (`--dataplane offload`): this worker's ctnetlink and raw sockets, which
    /// apply the engine's `Verdict::Offload`. None with the proxy dataplane.
    pub offload: Option<super::offload::Offloader>,
}

/// What one worker keeps between batches: its buffers and clocks.
struct Loop {
    epoch: Instant,
    buf: Box<[u8]>,
    scratch: Box<[u8]>,
    last_expiry: Instant,
    /// When the last packet was read (for busy polling).
    last_packet: Instant,
}

impl Loop {
    fn new() -> Loop {
        let now = Instant::now();
        Loop {
            epoch: now,
            buf: vec![0u8; packet::MAX_PACKET].into_boxed_slice(),
            scratch: vec![0u8; 2048].into_boxed_slice(),
            last_expiry: now,
            last_packet: now,
        }
    }
}

/// What a batch did: packets handled, and whether the queue was found empty.
struct Batch {
    handled: usize,
    drained: bool,
}

impl Worker {
    /// Run on the calling thread (a dedicated OS thread) until `shutdown` is set or the
    /// queue fails; the proxy runs elsewhere (the acceptor on the shared runtime).
    /// `runtime` is where UDP flow sockets and their reply tasks live.
    pub fn run(mut self, runtime: tokio::runtime::Handle) -> io::Result<()> {
        let _runtime = runtime.enter();
        let mut state = Loop::new();
        while self.housekeeping(&mut state) {
            let batch = self.read_batch(&mut state)?;
            if batch.handled > 0 {
                continue;
            }
            if self.busy(&state) {
                // Busy polling: the answer to what was just forwarded is likely on its way.
                // Yielding, not spinning: a runnable thread (the proxy, a server on the same
                // cores) gets the core first, so the poll only takes time nobody else wants.
                std::thread::yield_now();
            } else {
                // Idle: sleep in poll(2) until a packet arrives (or the idle tick passes).
                self.queue().wait_readable(IDLE_POLL_MS)?;
            }
        }
        Ok(())
    }

    /// Run on the calling thread, with a runtime of its own that also runs `acceptor` (the
    /// listeners of this worker's port) and the proxy tasks of the connections it accepts,
    /// and the UDP flows this worker opens (`--proxy-on-workers`). A packet written into
    /// the device and the socket it makes readable are then handled by one thread, without
    /// waking another; see `shared` for how a flow's packets and its connection meet there.
    pub fn run_with_proxy(self, acceptor: super::tcp::Acceptor) -> io::Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async move {
            let accept = tokio::spawn(acceptor.run());
            let r = self.run_local().await;
            accept.abort();
            r
        })
    }

    /// The queue as one task among the proxy's: a batch, then the other tasks' turn.
    async fn run_local(mut self) -> io::Result<()> {
        // SAFETY: the Arc keeps the queue, and so its descriptor, open while this lives.
        let queue =
            unsafe { AsyncFd::register_with_interest(self.queue().clone(), Interest::READABLE) }
                .map_err(io::Error::from)?;
        let idle = Duration::from_millis(IDLE_POLL_MS as u64);
        let mut state = Loop::new();
        while self.housekeeping(&mut state) {
            let batch = self.read_batch(&mut state)?;
            if !batch.drained || self.busy(&state) {
                // More to read (or busy polling): let the proxy tasks run first. The yield
                // to the kernel's scheduler as in `run`: a server on the same cores, woken
                // by what was just forwarded, gets the core before this thread polls again.
                if batch.drained {
                    std::thread::yield_now();
                }
                tokio::task::yield_now().await;
                continue;
            }
            // The queue is empty: sleep until it is readable (or the idle tick passes).
            // Readiness is cleared only here, after a read found it empty.
            match tokio::time::timeout(idle, queue.readable()).await {
                Ok(Ok(mut ready)) => ready.clear_ready(),
                Ok(Err(e)) => return Err(e),
                Err(_) => {}
            }
        }
        Ok(())
    }

    /// Between batches: expire idle flows when it is time; false once shutdown is set.
    fn housekeeping(&mut self, state: &mut Loop) -> bool {
        if self.shutdown.load(Ordering::Relaxed) {
            return false;
        }
        if state.last_expiry.elapsed() >= EXPIRY_INTERVAL {
            state.last_expiry = Instant::now();
            self.expire(state.epoch);
        }
        true
    }

    /// The queue this worker reads.
    fn queue(&self) -> &Arc<TunQueue> {
        &self.queues[self.part.index]
    }

    /// Within the busy-poll time after the last packet.
    fn busy(&self, state: &Loop) -> bool {
        state.last_packet.elapsed() < self.busy_poll
    }

    /// Read and handle up to [`BATCH`] packets, stopping early when the queue is empty.
    fn read_batch(&mut self, state: &mut Loop) -> io::Result<Batch> {
        let mut handled = 0;
        while handled < BATCH {
            match self.queue().try_recv(&mut state.buf) {
                Ok(rx) => {
                    handled += 1;
                    match rx.hdr {
                        Ok(hdr) => self.packet(
                            &mut state.buf,
                            rx.len,
                            hdr,
                            &mut state.scratch,
                            state.epoch,
                        ),
                        Err(r) => {
                            self.stats.packets_in.fetch_add(1, Ordering::Relaxed);
                            self.stats.count_drop(Reason::Malformed(r));
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if handled > 0 {
                        state.last_packet = Instant::now();
                    }
                    return Ok(Batch {
                        handled,
                        drained: true,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        state.last_packet = Instant::now();
        Ok(Batch {
            handled,
            drained: false,
        })
    }

    fn expire(&mut self, epoch: Instant) {
        let now = Instant::now();
        let gone = self.engine.expire(now, self.part, |h: &UdpHandle| {
            let ms = h.last_reply_ms.load(Ordering::Relaxed);
            (ms > 0).then(|| epoch + Duration::from_millis(ms))
        });
        drop(gone);
        if self.part.index == 0 {
            // The gauge of UDP flows over all workers.
            let udp = self.engine.nat().udp_active() as u64;
            self.stats.udp_active.store(udp, Ordering::Relaxed);
            let nat = self.engine.nat();
            let (early, pending) = (nat.early_drops(), nat.pending() as u64);
            self.stats.tcp_early_drops.store(early, Ordering::Relaxed);
            self.stats.tcp_pending.store(pending, Ordering::Relaxed);
            let (held, refused) = nat.affinity_counts();
            self.stats.affinities.store(held as u64, Ordering::Relaxed);
            self.stats
                .affinities_refused
                .store(refused, Ordering::Relaxed);
        }
    }

    /// One packet read from the queue, `hdr` its offload state.
    fn packet(
        &mut self,
        buf: &mut [u8],
        len: usize,
        mut hdr: VirtioNetHdr,
        scratch: &mut [u8],
        epoch: Instant,
    ) {
        self.stats.packets_in.fetch_add(1, Ordering::Relaxed);
        if hdr.needs_csum() && !hdr.is_gso() && packet::is_icmp(&buf[..len]) {
            // The packet core answers echo requests in place assuming a complete checksum;
            // the kernel rarely leaves one partial, but then it is completed here.
            if hdr.complete_checksum(&mut buf[..len]).is_err() {
                self.stats
                    .count_drop(Reason::Malformed(packet::DropReason::BadVnetHeader));
                return;
            }
            hdr = VirtioNetHdr::NONE;
        }
        let now = Instant::now();
        let table = self.table.load();
        let csum = hdr.checksum_mode();
        let write = match self.engine.handle(&table, buf, len, csum, now, scratch) {
            Verdict::Forward { len, owner } => Some((false, len, owner)),
            Verdict::Reply { len } => Some((true, len, None)),
            Verdict::NewTcp { len, flow } => {
                let owner = self.engine.owner_queue(&flow.virt);
                if self.pending.insert(flow, now) {
                    Some((false, len, owner))
                } else {
                    // The listener is behind: drop the SYN; the client retransmits it.
                    self.stats.count_drop(Reason::RateLimited);
                    None
                }
            }
            Verdict::UdpSend { flow, payload } => {
                for datagram in datagrams(&buf[payload], &hdr) {
                    if flow.send(datagram).is_err() {
                        self.stats.count_drop(Reason::UdpSendFailed);
                    }
                }
                None
            }
            Verdict::UdpNew {
                key,
                port,
                endpoint,
                payload,
            } => match self.open_udp(key, &port, endpoint, epoch) {
                Ok(handle) => {
                    for datagram in datagrams(&buf[payload], &hdr) {
                        if let Err(e) = handle.send(datagram) {
                            tracing::debug!(service = %port.service, endpoint = %endpoint, error = %e, "first datagram of a UDP flow not sent");
                            self.stats.count_drop(Reason::UdpSendFailed);
                        }
                    }
                    self.engine.udp_insert(key, port, endpoint, handle, now);
                    None
                }
                Err(e) => {
                    // A datagram can trigger it (descriptors run out under a flood): at most
                    // one line per 10 s, saying how many were left out.
                    static WARN: std::sync::LazyLock<LogLimit> =
                        std::sync::LazyLock::new(|| LogLimit::new(Duration::from_secs(10)));
                    if let Some(suppressed) = WARN.allow(now) {
                        tracing::warn!(service = %port.service, endpoint = %endpoint, error = %e, suppressed, "cannot open a UDP flow socket");
                    }
                    self.stats
                        .udp_flow(&port, key.client, ConnResult::DialFailed);
                    let n = self.engine.reject(buf, len, now, scratch);
                    (n > 0).then_some((true, n, None))
                }
            },
            Verdict::Drop(reason) => {
                self.stats.count_drop(reason);
                None
            }
            Verdict::Offload {
                len,
                key,
                port,
                endpoint,
            } if port.protocol == Protocol::Udp => {
                self.hand_over_udp(buf, len, &hdr, key, port, endpoint, scratch, epoch)
            }
            Verdict::Offload {
                len,
                key,
                port,
                endpoint,
            } => self.hand_over(buf, len, &hdr, key, port, endpoint, scratch),
        };
        if let Some((from_scratch, n, owner)) = write {
            let pkt = if from_scratch {
                &scratch[..n]
            } else {
                &buf[..n]
            };
            // A rewritten packet keeps its offload state (header lengths do not change, so
            // GSO and checksum offsets stay right); a built one is complete.
            let hdr = if from_scratch {
                &VirtioNetHdr::NONE
            } else {
                &hdr
            };
            // Through the flow owner's queue where it has one (see Engine::owner_queue).
            let own = self.part.index;
            let other = owner.filter(|&o| o != own && o < self.queues.len());
            if other.is_some() {
                self.stats.packets_off_owner.fetch_add(1, Ordering::Relaxed);
            }
            match self.queues[other.unwrap_or(own)].send(pkt, hdr) {
                Ok(()) => {
                    self.stats.packets_out.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => tracing::trace!(error = %e, "TUN write failed"),
            }
        }
    }

    /// Apply a `Verdict::Offload`: hand the flow to the kernel and re-inject its SYN
    /// (`buf[..len]`); when the kernel will not take it, answer with a RST (written from
    /// `scratch`, as the returned write says).
    #[allow(clippy::too_many_arguments)]
    fn hand_over(
        &mut self,
        buf: &mut [u8],
        len: usize,
        hdr: &VirtioNetHdr,
        key: FlowKey,
        port: Arc<ServicePort>,
        endpoint: SocketAddr,
        scratch: &mut [u8],
    ) -> Option<(bool, usize, Option<usize>)> {
        let now = Instant::now();
        let result = self.try_hand_over(buf, len, hdr, key, &port, endpoint, now)?;
        match result {
            Ok(()) => None,
            Err(e) => {
                tracing::debug!(client = %key.client, service = %port.service, endpoint = %endpoint, error = ?e, reason = e.label(), "flow not offloaded; resetting the client");
                let r = self.not_handed_over(&e);
                let n = self.engine.refuse_tcp(buf, len, &port, r, now, scratch);
                (n > 0).then_some((true, n, None))
            }
        }
    }

    /// Completes the first packet's checksum (the raw socket sends it as it is) and hands
    /// its flow to the kernel; a flow handed over is counted and recorded by the engine.
    /// `None`: the packet was malformed (counted, dropped).
    #[allow(clippy::too_many_arguments)]
    fn try_hand_over(
        &mut self,
        buf: &mut [u8],
        len: usize,
        hdr: &VirtioNetHdr,
        key: FlowKey,
        port: &Arc<ServicePort>,
        endpoint: SocketAddr,
        now: Instant,
    ) -> Option<Result<(), super::offload::OffloadError>> {
        if hdr.needs_csum() && hdr.complete_checksum(&mut buf[..len]).is_err() {
            self.stats
                .count_drop(Reason::Malformed(packet::DropReason::BadVnetHeader));
            return None;
        }
        let result = match self.offload.as_mut() {
            Some(off) => off.hand_over(key, endpoint, &buf[..len], now),
            None => Err(super::offload::OffloadError::NoFamily),
        };
        Some(result.map(|how| {
            let new = how == super::offload::HandedOver::New;
            self.stats.offload.handed_over(new);
            self.engine.offloaded(key, port, endpoint, now);
            tracing::trace!(client = %key.client, service = %key.service, endpoint = %endpoint, new, "flow handed to conntrack");
        }))
    }

    /// A flow the kernel did not take: counted by reason; the connection result its
    /// refusal counts.
    fn not_handed_over(&self, e: &super::offload::OffloadError) -> ConnResult {
        self.stats.offload.failed(e.label());
        if e.is_table_full() {
            ConnResult::TableFull
        } else {
            ConnResult::DialFailed
        }
    }

    /// Apply a `Verdict::Offload` of a UDP flow: hand it to the kernel and re-inject its
    /// first datagram (`buf[..len]`); the netfilter table then lets the client's datagrams
    /// of the flow be tracked (see `host::nftables`). When the kernel will not take it (its
    /// table full, a failed request), the datagram is answered with ICMP port unreachable.
    /// A flow the kernel path cannot carry is proxied in user space as with the proxy
    /// dataplane: its first datagram larger than the route toward the endpoint carries (the
    /// raw socket does not fragment), or a segmentation super-packet (USO), or an IPv6
    /// datagram with extension headers.
    #[allow(clippy::too_many_arguments)]
    fn hand_over_udp(
        &mut self,
        buf: &mut [u8],
        len: usize,
        hdr: &VirtioNetHdr,
        key: FlowKey,
        port: Arc<ServicePort>,
        endpoint: SocketAddr,
        scratch: &mut [u8],
        epoch: Instant,
    ) -> Option<(bool, usize, Option<usize>)> {
        let now = Instant::now();
        if hdr.is_gso() || !super::offload::is_udp(&buf[..len]) {
            let why = if hdr.is_gso() {
                "first datagram is a segmentation super-packet"
            } else {
                "IPv6 extension headers"
            };
            return self.proxy_udp(buf, len, hdr, key, port, endpoint, scratch, epoch, why);
        }
        let result = self.try_hand_over(buf, len, hdr, key, &port, endpoint, now)?;
        match result {
            Ok(()) => None,
            Err(e) if e.is_too_big() => {
                // The entry exists but no datagram took it: remove it, so that the flow's
                // socket cannot meet it as its reply direction.
                if let Some(off) = self.offload.as_mut() {
                    if let Err(e) = off.forget_udp(key) {
                        tracing::debug!(client = %key.client, error = %e, "cannot delete the entry of a UDP flow left to user space");
                    }
                }
                self.proxy_udp(
                    buf,
                    len,
                    hdr,
                    key,
                    port,
                    endpoint,
                    scratch,
                    epoch,
                    "first datagram larger than the route to the endpoint carries",
                )
            }
            Err(e) => {
                tracing::debug!(client = %key.client, service = %port.service, endpoint = %endpoint, error = ?e, reason = e.label(), "UDP flow not offloaded; refusing the datagram");
                let r = self.not_handed_over(&e);
                let n = self.engine.refuse_udp(buf, len, &port, r, now, scratch);
                (n > 0).then_some((true, n, None))
            }
        }
    }

    /// Flow offload: carry a UDP flow in user space after all (`why`: the kernel path
    /// cannot, one of three fixed reasons), as the proxy dataplane does; logged once per
    /// reason and process.
    #[allow(clippy::too_many_arguments)]
    fn proxy_udp(
        &mut self,
        buf: &mut [u8],
        len: usize,
        hdr: &VirtioNetHdr,
        key: FlowKey,
        port: Arc<ServicePort>,
        endpoint: SocketAddr,
        scratch: &mut [u8],
        epoch: Instant,
        why: &'static str,
    ) -> Option<(bool, usize, Option<usize>)> {
        // Once per reason (there are three), whatever the number of flows.
        static LOGGED: std::sync::Mutex<Vec<&'static str>> = std::sync::Mutex::new(Vec::new());
        let mut logged = LOGGED.lock().unwrap_or_else(|e| e.into_inner());
        if !logged.contains(&why) {
            logged.push(why);
            tracing::info!(reason = why, "a UDP flow is proxied in user space: the kernel path cannot carry it (logged once per reason)");
        }
        drop(logged);
        let now = Instant::now();
        self.stats
            .offload
            .udp_proxied
            .fetch_add(1, Ordering::Relaxed);
        let payload = match packet::parse(&buf[..len]) {
            Ok(packet::Packet {
                transport:
                    packet::Transport::Udp {
                        payload_offset,
                        payload_len,
                        ..
                    },
                ..
            }) => payload_offset..payload_offset + payload_len,
            _ => return None,
        };
        if self.engine.udp().is_full() {
            let n = self
                .engine
                .refuse_udp(buf, len, &port, ConnResult::TableFull, now, scratch);
            return (n > 0).then_some((true, n, None));
        }
        match self.open_udp(key, &port, endpoint, epoch) {
            Ok(handle) => {
                for datagram in datagrams(&buf[payload], hdr) {
                    if handle.send(datagram).is_err() {
                        self.stats.count_drop(Reason::UdpSendFailed);
                    }
                }
                self.engine.udp_insert(key, port, endpoint, handle, now);
                None
            }
            Err(e) => {
                tracing::debug!(service = %port.service, endpoint = %endpoint, error = %e, "cannot open a UDP flow socket");
                let n =
                    self.engine
                        .refuse_udp(buf, len, &port, ConnResult::DialFailed, now, scratch);
                (n > 0).then_some((true, n, None))
            }
        }
    }

    /// Open the connected socket of a new UDP flow and start its reply task.
    fn open_udp(
        &self,
        key: FlowKey,
        port: &ServicePort,
        endpoint: SocketAddr,
        epoch: Instant,
    ) -> io::Result<UdpHandle> {
        let bind: SocketAddr = if endpoint.is_ipv4() {
            "0.0.0.0:0".parse().unwrap()
        } else {
            "[::]:0".parse().unwrap()
        };
        let std = std::net::UdpSocket::bind(bind)?;
        std.connect(endpoint)?;
        std.set_nonblocking(true)?;
        let socket = Arc::new(UdpSocket::from_std(std)?);
        let last_reply_ms = Arc::new(AtomicU64::new(0));
        let flow =
            self.stats
                .flows
                .register(port, key.client, endpoint, self.stats.services.get(port));
        let task = tokio::spawn(udp_replies(
            flow.info().clone(),
            socket.clone(),
            key,
            self.queue().clone(),
            last_reply_ms.clone(),
            epoch,
            self.stats.clone(),
        ))
        .abort_handle();
        Ok(UdpHandle {
            socket,
            last_reply_ms,
            task,
            flow,
        })
    }
}

/// The datagrams in a UDP payload: one, or for a USO super-packet (`GSO_UDP_L4`) one per
/// `gso_size` bytes, as the kernel would have segmented them.
/// An empty payload is one empty datagram.
fn datagrams<'a>(payload: &'a [u8], hdr: &VirtioNetHdr) -> impl Iterator<Item = &'a [u8]> {
    let len = payload.len();
    let size = match hdr.gso_type & !VirtioNetHdr::GSO_ECN {
        VirtioNetHdr::GSO_UDP_L4 if hdr.gso_size > 0 => usize::from(hdr.gso_size),
        _ => len.max(1),
    };
    let count = len.div_ceil(size).max(1);
    (0..count).map(move |i| &payload[(i * size).min(len)..((i + 1) * size).min(len)])
}

/// Where a reply task builds its packets: one per thread (each 64 KiB and a bit), not one
/// per flow. A flow's reply task reads and writes a whole datagram without awaiting in
/// between, so the buffer is never held across a wake-up; memory for replies is then
/// bounded by the threads, not by the flows a client can open (64 KiB each before).
struct ReplyBuffers {
    packet: Box<[u8]>,
    fragment: [u8; packet::IPV6_MIN_MTU],
}

thread_local! {
    static REPLY_BUFFERS: std::cell::RefCell<ReplyBuffers> = std::cell::RefCell::new(ReplyBuffers {
        packet: vec![0u8; packet::MAX_PACKET].into_boxed_slice(),
        fragment: [0u8; packet::IPV6_MIN_MTU],
    });
}

/// A flow's reply path: its socket, the client it answers, and what it counts.
struct ReplyPath {
    flow: Arc<FlowInfo>,
    socket: Arc<UdpSocket>,
    key: FlowKey,
    queue: Arc<TunQueue>,
    last_reply_ms: Arc<AtomicU64>,
    epoch: Instant,
    stats: Arc<Stats>,
    /// Fragment identification: distinct per flow and per reply.
    frag_id: u32,
}

impl ReplyPath {
    /// Read one datagram if one is queued and write it to the client. `Ok(false)` when the
    /// socket has nothing more for now.
    fn forward_one(&mut self, bufs: &mut ReplyBuffers) -> io::Result<bool> {
        let v6 = self.key.client.is_ipv6();
        let offset = packet::udp_payload_offset(v6);
        let n = match self.socket.try_recv(&mut bufs.packet[offset..]) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            // ICMP errors from the endpoint (ECONNREFUSED) arrive as recv errors: go on.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => return Ok(true),
            Err(e) => return Err(e),
        };
        let stats = &self.stats;
        self.last_reply_ms.store(
            self.epoch.elapsed().as_millis().max(1) as u64,
            Ordering::Relaxed,
        );
        let buf = &mut bufs.packet;
        let Some(len) = packet::build_udp_headers(buf, self.key.service, self.key.client, n) else {
            stats.count_drop(Reason::UdpSendFailed);
            return Ok(true);
        };
        stats.bytes_to_client.fetch_add(n as u64, Ordering::Relaxed);
        self.flow.received(n as u64);
        if v6 && len > packet::IPV6_MIN_MTU {
            // Routers do not fragment IPv6: send fragments every path carries.
            self.frag_id = self.frag_id.wrapping_add(1);
            let Some(mut frags) =
                packet::V6Fragments::new(&buf[..len], packet::IPV6_MIN_MTU, self.frag_id)
            else {
                return Ok(true);
            };
            while let Some(f) = frags.next_into(&mut bufs.fragment) {
                if self
                    .queue
                    .send(&bufs.fragment[..f], &VirtioNetHdr::NONE)
                    .is_ok()
                {
                    stats.packets_out.fetch_add(1, Ordering::Relaxed);
                }
            }
        } else if self.queue.send(&buf[..len], &VirtioNetHdr::NONE).is_ok() {
            stats.packets_out.fetch_add(1, Ordering::Relaxed);
        }
        Ok(true)
    }
}

/// Read the endpoint's replies and write them to the client as `S:sp → C:cp` packets.
async fn udp_replies(
    flow: Arc<FlowInfo>,
    socket: Arc<UdpSocket>,
    key: FlowKey,
    queue: Arc<TunQueue>,
    last_reply_ms: Arc<AtomicU64>,
    epoch: Instant,
    stats: Arc<Stats>,
) {
    let frag_id = (epoch.elapsed().as_nanos() as u32) ^ u32::from(key.client.port()) << 16;
    let mut path = ReplyPath {
        flow,
        socket,
        key,
        queue,
        last_reply_ms,
        epoch,
        stats,
        frag_id,
    };
    loop {
        if let Err(e) = path.socket.readable().await {
            tracing::debug!(client = %path.key.client, error = %e, "UDP flow socket failed");
            return;
        }
        // What is queued now, up to a batch, with this thread's buffers (no await while they
        // are held); then the other tasks' turn.
        let drained = REPLY_BUFFERS.with_borrow_mut(|bufs| {
            for _ in 0..REPLY_BATCH {
                if !path.forward_one(bufs)? {
                    return Ok(true);
                }
            }
            Ok::<bool, io::Error>(false)
        });
        match drained {
            Ok(true) => {}
            Ok(false) => tokio::task::yield_now().await,
            Err(e) => {
                tracing::debug!(client = %path.key.client, error = %e, "UDP flow socket failed");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uso(size: u16) -> VirtioNetHdr {
        VirtioNetHdr {
            gso_type: VirtioNetHdr::GSO_UDP_L4,
            gso_size: size,
            ..VirtioNetHdr::NONE
        }
    }

    #[test]
    fn a_uso_super_packet_is_split_into_its_datagrams() {
        let payload: Vec<u8> = (0..10u8).collect();
        let parts: Vec<&[u8]> = datagrams(&payload, &uso(4)).collect();
        assert_eq!(parts, [&[0, 1, 2, 3][..], &[4, 5, 6, 7], &[8, 9]]);
        let exact: Vec<&[u8]> = datagrams(&payload[..8], &uso(4)).collect();
        assert_eq!(exact.len(), 2);
    }

    #[test]
    fn other_packets_are_one_datagram_even_when_empty() {
        let payload = [7u8; 3000];
        let tcp_gso = VirtioNetHdr {
            gso_type: VirtioNetHdr::GSO_TCPV4,
            gso_size: 1000,
            ..VirtioNetHdr::NONE
        };
        for hdr in [VirtioNetHdr::NONE, tcp_gso, uso(0)] {
            let parts: Vec<&[u8]> = datagrams(&payload, &hdr).collect();
            assert_eq!(parts, [&payload[..]]);
        }
        let empty: Vec<&[u8]> = datagrams(&[0u8; 0], &uso(4)).collect();
        assert_eq!(empty, [&[0u8; 0][..]]);
    }
}
