//! The TCP proxy: the listeners on the inner listener address L, the acceptor that matches
//! each accepted connection (peer `V:vp`) to the flow the dataplane mapped, and one task per
//! connection that dials an endpoint (retrying the next ones with short timeouts) and moves
//! bytes both ways, propagating half-close (with `splice(2)`, see [`super::splice`]).
//!
//! It owns sockets only; it learns flows from the workers over a bounded channel and records
//! what happened to them (accepted, endpoint that answered, closed) in the NAT and balancer
//! the workers share, once per connection set-up and once at its end. It never reads the
//! ServiceTable.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol as SockProtocol, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::balancer::MAX_ATTEMPTS;
use super::engine::PendingFlow;
use super::shared::SharedFlows;
use super::splice::{self, PipePool};
use super::stats::{ConnResult, NoticeKind, Stats};

/// Dial timeouts per attempt, as kube-proxy's userspace mode used them.
pub const DIAL_TIMEOUTS: [Duration; MAX_ATTEMPTS] = [
    Duration::from_millis(250),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
];

/// A pending flow the listener never accepted is forgotten after this long.
const PENDING_TIMEOUT: Duration = Duration::from_secs(30);

/// Bind the listener of one family on `addr` (port 0 picks one). `IP_FREEBIND`, so the
/// bind does not race the address appearing on the device.
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
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    // The kernel caps this at net.core.somaxconn.
    socket.listen(8192)?;
    TcpListener::from_std(socket.into())
}

/// Accepts connections on the listeners and hands each to its own proxy task.
pub struct Acceptor {
    pub listeners: Vec<TcpListener>,
    /// Flows the workers mapped (sent before their SYN is written to the device).
    pub flows: mpsc::Receiver<PendingFlow>,
    /// The NAT and balancer the workers share.
    pub shared: Arc<SharedFlows>,
    pub stats: Arc<Stats>,
    /// Pipes lent to connections while they have bytes in flight.
    pub pipes: Arc<PipePool>,
}

impl Acceptor {
    pub async fn run(mut self) {
        let mut pending: HashMap<SocketAddr, (PendingFlow, Instant)> = HashMap::new();
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
                flow = self.flows.recv() => {
                    match flow {
                        Some(f) => { pending.insert(f.virt, (f, Instant::now())); }
                        None => return,
                    }
                    continue;
                }
                r = l0.accept() => r,
                r = accept_opt(&l1) => r,
                _ = sweep.tick() => {
                    let now = Instant::now();
                    pending.retain(|_, (_, at)| now.duration_since(*at) < PENDING_TIMEOUT);
                    continue;
                }
            };
            let (stream, peer) = match accepted {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let peer = normalize(peer);
            let mut flow = pending.remove(&peer).map(|(f, _)| f);
            if flow.is_none() {
                // The flow was sent before its SYN went out; it may still be queued.
                while let Ok(f) = self.flows.try_recv() {
                    pending.insert(f.virt, (f, Instant::now()));
                }
                flow = pending.remove(&peer).map(|(f, _)| f);
            }
            let Some(flow) = flow else {
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
    client: TcpStream,
    flow: PendingFlow,
    shared: Arc<SharedFlows>,
    stats: Arc<Stats>,
    pipes: Arc<PipePool>,
) {
    let virt = flow.virt;
    let dial_start = Instant::now();
    let dialed = dial(&flow, &stats).await;
    // The NAT entry stops being "pending" (the dials take at most 3.75 s, well inside its
    // pending timeout); ClientIP affinity follows the endpoint that answered.
    shared.accepted(virt);
    if let Some((_, endpoint)) = &dialed {
        shared.served(&flow.port, flow.key.client.ip(), *endpoint, Instant::now());
    }
    match dialed {
        None => {
            stats.tcp_conn(&flow.port, flow.key.client, ConnResult::DialFailed);
            tracing::info!(service = %flow.port.service, client = %flow.key.client, "no endpoint answered; resetting the client");
            reset(client);
        }
        Some((upstream, endpoint)) => {
            // Observability, once per connection: counters, latency, the live flow list.
            stats.dial_latency.observe(dial_start.elapsed());
            let svc = stats.tcp_conn(&flow.port, flow.key.client, ConnResult::Ok);
            let listed = stats
                .flows
                .register(&flow.port, flow.key.client, endpoint, svc);
            stats.tcp_active.fetch_add(1, Ordering::Relaxed);
            let _ = client.set_nodelay(true);
            let _ = upstream.set_nodelay(true);
            let info = listed.info();
            let moved = splice::splice_both(
                &client,
                &upstream,
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
