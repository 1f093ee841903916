//! The TCP proxy: the listeners on the inner listener address L, the acceptor that matches
//! each accepted connection (peer `V:vp`) to the flow the dataplane mapped, and one task per
//! connection that dials an endpoint (retrying the next ones with short timeouts) and moves
//! bytes both ways, propagating half-close (with `splice(2)`, see [`super::splice`]).
//!
//! It owns sockets only; it learns flows from the workers through [`PendingFlows`] and
//! records what happened to them (accepted, endpoint that answered, closed) in the NAT and
//! balancer the workers share, once per connection set-up and once at its end. It never
//! reads the ServiceTable.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol as SockProtocol, Socket, Type};
use tokio::net::{TcpListener, TcpStream};

use super::balancer::MAX_ATTEMPTS;
use super::engine::PendingFlow;
use super::limits::LogLimit;
use super::shared::{lock, SharedFlows};
use super::splice::{self, PipePool};
use super::stats::{ConnResult, NoticeKind, Stats};

/// Dial timeouts per attempt, as kube-proxy's userspace mode used them.
pub const DIAL_TIMEOUTS: [Duration; MAX_ATTEMPTS] = [
    Duration::from_millis(250),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
];

/// A pending flow the listener never accepted is forgotten after this long: as long as
/// its NAT entry may wait for the handshake.
const PENDING_TIMEOUT: Duration = super::nat::PENDING_TIMEOUT;

/// Shards of [`PendingFlows`]: workers and the acceptor rarely meet on one lock.
const PENDING_SHARDS: usize = 16;

/// Flows by virtual client, with the time they were put there, and the order they came in
/// (entries of flows taken since are skipped when met, and compacted away).
#[derive(Default)]
struct PendingShard {
    map: HashMap<SocketAddr, (PendingFlow, Instant)>,
    order: VecDeque<(SocketAddr, Instant)>,
}

impl PendingShard {
    /// Remove the oldest flow still waiting; whether there was one.
    fn evict_oldest(&mut self) -> bool {
        while let Some((virt, at)) = self.order.pop_front() {
            if self.map.get(&virt).is_some_and(|(_, t)| *t == at) {
                self.map.remove(&virt);
                return true;
            }
        }
        false
    }

    fn compact(&mut self) {
        if self.order.len() > 2 * self.map.len() + 64 {
            let map = &self.map;
            self.order
                .retain(|(virt, at)| map.get(virt).is_some_and(|(_, t)| t == at));
        }
    }
}

/// New TCP flows a worker mapped and the listener has not accepted yet, by virtual client
/// `V:vp` (the peer address the accepted connection will have). A worker puts the flow here
/// before it writes the SYN into the device, so the flow is always found by the time its
/// handshake completes; the acceptor takes it on accept. A shared map rather than a channel:
/// the accept itself is the acceptor's only wake-up per connection (a channel woke it twice).
///
/// Bounded: a flow waits at most [`PENDING_TIMEOUT`], and when `capacity` flows wait, the
/// oldest waiting in the new one's shard makes room (a SYN flood's flows never complete
/// their handshake; the NAT drops them the same way, see `nat`).
pub struct PendingFlows {
    shards: Box<[Mutex<PendingShard>]>,
    /// Seeded at random: the keys are virtual tuples, but chosen by the order of clients' SYNs.
    hasher: std::hash::RandomState,
    len: AtomicUsize,
    capacity: usize,
}

impl PendingFlows {
    /// At most `capacity` flows wait at once; past that [`PendingFlows::insert`] refuses.
    pub fn new(capacity: usize) -> PendingFlows {
        PendingFlows {
            shards: (0..PENDING_SHARDS)
                .map(|_| Mutex::new(PendingShard::default()))
                .collect(),
            hasher: std::hash::RandomState::new(),
            len: AtomicUsize::new(0),
            capacity,
        }
    }

    fn shard(&self, virt: &SocketAddr) -> MutexGuard<'_, PendingShard> {
        let i = self.hasher.hash_one(virt) as usize % PENDING_SHARDS;
        lock(&self.shards[i])
    }

    /// Add a flow. When `capacity` flows are already waiting, the oldest of its shard makes
    /// room; `false` when that shard holds none (the caller drops the SYN and the client
    /// retransmits it).
    #[must_use]
    pub fn insert(&self, flow: PendingFlow, now: Instant) -> bool {
        let mut shard = self.shard(&flow.virt);
        if self.len.fetch_add(1, Ordering::Relaxed) >= self.capacity {
            if shard.evict_oldest() {
                self.len.fetch_sub(1, Ordering::Relaxed);
            } else {
                self.len.fetch_sub(1, Ordering::Relaxed);
                return false;
            }
        }
        let virt = flow.virt;
        if shard.map.insert(virt, (flow, now)).is_some() {
            // A retransmitted SYN mapped again to the same tuple replaces its first copy.
            self.len.fetch_sub(1, Ordering::Relaxed);
        }
        shard.order.push_back((virt, now));
        shard.compact();
        true
    }

    /// Take the flow of an accepted connection whose peer is `virt`.
    pub fn take(&self, virt: &SocketAddr) -> Option<PendingFlow> {
        let (flow, _) = self.shard(virt).map.remove(virt)?;
        self.len.fetch_sub(1, Ordering::Relaxed);
        Some(flow)
    }

    /// Forget flows waiting since before `now - PENDING_TIMEOUT` (never accepted: the
    /// client gave up, or the listener's queue overflowed).
    pub fn sweep(&self, now: Instant) {
        for shard in self.shards.iter() {
            let mut shard = lock(shard);
            let before = shard.map.len();
            shard
                .map
                .retain(|_, (_, at)| now.saturating_duration_since(*at) < PENDING_TIMEOUT);
            self.len
                .fetch_sub(before - shard.map.len(), Ordering::Relaxed);
            shard
                .order
                .retain(|(_, at)| now.saturating_duration_since(*at) < PENDING_TIMEOUT);
        }
    }

    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Bind the listener of one family on `addr` (port 0 picks one). `IP_FREEBIND`, so the
/// bind does not race the address appearing on the device. `TCP_NODELAY` on the listener:
/// accepted connections inherit it, which spares a syscall per connection.
pub fn bind_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM,
        Some(SockProtocol::TCP),
    )?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
        socket.set_freebind_v6(true)?;
    } else {
        socket.set_freebind_v4(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_tcp_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    // The kernel caps this at net.core.somaxconn.
    socket.listen(8192)?;
    TcpListener::from_std(socket.into())
}

/// Accepts connections on the listeners and hands each to its own proxy task.
pub struct Acceptor {
    pub listeners: Vec<TcpListener>,
    /// Flows the workers mapped (put there before their SYN is written to the device).
    pub pending: Arc<PendingFlows>,
    /// The NAT and balancer the workers share.
    pub shared: Arc<SharedFlows>,
    pub stats: Arc<Stats>,
    /// Pipes lent to connections while they have bytes in flight.
    pub pipes: Arc<PipePool>,
}

impl Acceptor {
    pub async fn run(mut self) {
        let mut sweep = tokio::time::interval(Duration::from_secs(5));
        let (l0, l1) = match self.listeners.len() {
            0 => return,
            1 => (self.listeners.remove(0), None),
            _ => {
                let a = self.listeners.remove(0);
                (a, Some(self.listeners.remove(0)))
            }
        };
        loop {
            let accepted = tokio::select! {
                r = l0.accept() => r,
                r = accept_opt(&l1) => r,
                _ = sweep.tick() => {
                    self.pending.sweep(Instant::now());
                    continue;
                }
            };
            let (stream, peer) = match accepted {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    // SYNs can cause it (descriptors run out): at most one line per 10 s.
                    static WARN: std::sync::LazyLock<LogLimit> =
                        std::sync::LazyLock::new(|| LogLimit::new(Duration::from_secs(10)));
                    if let Some(suppressed) = WARN.allow(Instant::now()) {
                        tracing::warn!(error = %e, suppressed, "accept failed");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let peer = normalize(peer);
            let Some(flow) = self.pending.take(&peer) else {
                tracing::debug!(peer = %peer, "accepted a connection no flow owns; resetting it");
                reset(stream);
                continue;
            };
            let shared = self.shared.clone();
            let stats = self.stats.clone();
            let pipes = self.pipes.clone();
            tokio::spawn(proxy(stream, flow, shared, stats, pipes));
        }
    }
}

async fn accept_opt(l: &Option<TcpListener>) -> io::Result<(TcpStream, SocketAddr)> {
    match l {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

fn normalize(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => a,
        },
        v4 => v4,
    }
}

/// Close with a RST rather than a FIN: the client must see a failure, not an empty reply.
fn reset(stream: TcpStream) {
    if let Ok(std) = stream.into_std() {
        let s = Socket::from(std);
        let _ = s.set_linger(Some(Duration::ZERO));
    }
}

/// Dial the flow's candidates in order, each with its own short timeout.
async fn dial(flow: &PendingFlow, stats: &Stats) -> Option<(TcpStream, SocketAddr)> {
    for (attempt, endpoint) in flow.candidates.as_slice().iter().enumerate() {
        let timeout = DIAL_TIMEOUTS[attempt.min(MAX_ATTEMPTS - 1)];
        let error = match tokio::time::timeout(timeout, TcpStream::connect(endpoint)).await {
            Ok(Ok(s)) => return Some((s, *endpoint)),
            Ok(Err(e)) => {
                tracing::debug!(service = %flow.port.service, endpoint = %endpoint, attempt, error = %e, "dial failed");
                e.to_string()
            }
            Err(_) => {
                tracing::debug!(service = %flow.port.service, endpoint = %endpoint, attempt, ?timeout, "dial timed out");
                format!("timed out after {timeout:?}")
            }
        };
        // Observability (per failed attempt, rate limited): the status page's dial failures.
        let kind = NoticeKind::DialAttempt {
            endpoint: *endpoint,
            error,
        };
        stats.notices.push(&flow.port, flow.key.client, kind);
    }
    None
}

async fn proxy(
    mut client: TcpStream,
    flow: PendingFlow,
    shared: Arc<SharedFlows>,
    stats: Arc<Stats>,
    pipes: Arc<PipePool>,
) {
    let virt = flow.virt;
    // The handshake completed: the client is real, and its NAT entry stops being
    // "pending" (no longer one a SYN flood may push out). An entry that is gone (its SYN
    // waited past the pending timeout, or was dropped to make room) has no way back to
    // the client: reset.
    if !shared.accepted(virt) {
        tracing::trace!(peer = %virt, "accepted a connection whose flow is gone; resetting it");
        reset(client);
        return;
    }
    let dial_start = Instant::now();
    let dialed = dial(&flow, &stats).await;
    // ClientIP affinity follows the endpoint that answered.
    if let Some((_, endpoint)) = &dialed {
        shared.served(&flow.port, flow.key.client.ip(), *endpoint, Instant::now());
    }
    match dialed {
        None => {
            stats.tcp_conn(&flow.port, flow.key.client, ConnResult::DialFailed);
            // Once per failed connection, which clients can repeat at will: rate limited.
            static NOTE: std::sync::LazyLock<LogLimit> =
                std::sync::LazyLock::new(|| LogLimit::new(Duration::from_secs(10)));
            if let Some(suppressed) = NOTE.allow(Instant::now()) {
                tracing::info!(service = %flow.port.service, client = %flow.key.client, suppressed, "no endpoint answered; resetting the client");
            }
            reset(client);
        }
        Some((mut upstream, endpoint)) => {
            // Observability, once per connection: counters, latency, the live flow list.
            stats.dial_latency.observe(dial_start.elapsed());
            let svc = stats.tcp_conn(&flow.port, flow.key.client, ConnResult::Ok);
            let listed = stats
                .flows
                .register(&flow.port, flow.key.client, endpoint, svc);
            stats.tcp_active.fetch_add(1, Ordering::Relaxed);
            // The client's inherits it from the listener.
            let _ = upstream.set_nodelay(true);
            let info = listed.info();
            let moved = splice::splice_both(
                &mut client,
                &mut upstream,
                &pipes,
                |n| info.sent(n),
                |n| info.received(n),
            )
            .await;
            if let Some(e) = &moved.error {
                tracing::debug!(error = %e, "proxied connection ended with an error");
            }
            stats
                .bytes_to_endpoint
                .fetch_add(moved.to_endpoint, Ordering::Relaxed);
            stats
                .bytes_to_client
                .fetch_add(moved.to_client, Ordering::Relaxed);
            stats.tcp_active.fetch_sub(1, Ordering::Relaxed);
        }
    }
    shared.closed(virt, Instant::now());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::table::{Protocol, ServicePort};
    use crate::dataplane::balancer::Candidates;
    use crate::dataplane::nat::FlowKey;

    fn flow(virt: &str) -> PendingFlow {
        let virt: SocketAddr = virt.parse().unwrap();
        PendingFlow {
            virt,
            key: FlowKey {
                client: "192.0.2.7:40000".parse().unwrap(),
                service: "10.96.0.10:80".parse().unwrap(),
            },
            port: Arc::new(ServicePort::for_test(
                "demo",
                "web",
                Protocol::Tcp,
                "10.96.0.10:80",
                &["10.244.1.10:8080"],
            )),
            candidates: Candidates::one("10.244.1.10:8080".parse().unwrap()),
        }
    }

    #[test]
    fn pending_flows_are_taken_once_by_their_virtual_tuple() {
        let pending = PendingFlows::new(8);
        let now = Instant::now();
        assert!(pending.insert(flow("198.18.0.2:1024"), now));
        assert!(pending.insert(flow("198.18.0.3:1024"), now));
        // A retransmitted SYN's flow replaces the first; it is not counted twice.
        assert!(pending.insert(flow("198.18.0.2:1024"), now));
        assert_eq!(pending.len(), 2);
        let v: SocketAddr = "198.18.0.2:1024".parse().unwrap();
        assert_eq!(pending.take(&v).map(|f| f.virt), Some(v));
        assert!(pending.take(&v).is_none(), "taken twice");
        assert_eq!(pending.len(), 1);
    }

    #[test]
    fn a_full_pending_map_makes_room_from_its_oldest_and_a_sweep_empties_it() {
        let pending = PendingFlows::new(2);
        let t0 = Instant::now();
        // Sixteen shards: put the flows in one (the shard of each tuple is random, so pick
        // tuples that share one).
        let shard_of = |v: &str| {
            pending.hasher.hash_one(v.parse::<SocketAddr>().unwrap()) as usize % PENDING_SHARDS
        };
        let tuples: Vec<String> = (1024..4000)
            .map(|p| format!("198.18.0.2:{p}"))
            .filter(|v| shard_of(v) == shard_of("198.18.0.2:1024"))
            .take(4)
            .collect();
        assert!(pending.insert(flow(&tuples[0]), t0));
        assert!(pending.insert(flow(&tuples[1]), t0));
        // Full: the oldest waiting makes room.
        assert!(pending.insert(flow(&tuples[2]), t0));
        assert_eq!(pending.len(), 2);
        assert!(pending.take(&tuples[0].parse().unwrap()).is_none());
        assert!(pending.take(&tuples[1].parse().unwrap()).is_some());
        assert!(pending.insert(flow(&tuples[3]), t0));
        assert_eq!(pending.len(), 2);
        // A full map whose flows all sit in other shards refuses.
        let other = (1024..9000)
            .map(|p| format!("198.18.0.3:{p}"))
            .find(|v| shard_of(v) != shard_of(&tuples[0]))
            .unwrap();
        assert!(!pending.insert(flow(&other), t0), "over capacity");
        assert_eq!(pending.len(), 2);
        // Not yet old enough to be forgotten.
        pending.sweep(t0 + PENDING_TIMEOUT / 2);
        assert_eq!(pending.len(), 2);
        pending.sweep(t0 + PENDING_TIMEOUT);
        assert!(pending.is_empty());
        assert!(pending.insert(flow(&other), t0));
        assert_eq!(pending.len(), 1);
    }

    /// The proxy no longer sets TCP_NODELAY on accepted connections: the listener's is
    /// inherited, on both families.
    #[tokio::test]
    async fn accepted_connections_inherit_nodelay_from_the_listener() {
        for addr in ["127.0.0.1:0", "[::1]:0"] {
            let listener = bind_listener(addr.parse().unwrap()).unwrap();
            let client = TcpStream::connect(listener.local_addr().unwrap())
                .await
                .unwrap();
            let (accepted, _) = listener.accept().await.unwrap();
            assert!(accepted.nodelay().unwrap(), "{addr}");
            assert!(!client.nodelay().unwrap(), "{addr}: the default is off");
        }
    }
}
