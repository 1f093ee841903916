//! The DNS server's I/O shell: it only moves bytes and applies [`super::answer::handle`]'s
//! decisions.
//!
//! - one UDP task per `--dns-listen` address: receive, answer from the current snapshot,
//!   send (replies over 512 bytes, or the client's EDNS size, go out truncated with TC);
//! - one TCP accept task per address, at most [`MAX_TCP_CONNECTIONS`] connections at once
//!   and [`MAX_TCP_PER_CLIENT`] from one address (past either, new ones are closed,
//!   counted), each closed after [`TCP_IDLE`] without a query;
//! - with `--dns-forward`: out-of-zone UDP queries go to the forwarder from one connected
//!   socket, tracked in a bounded [`InFlight`] table (expired after 5 s, a share per
//!   client address); TCP ones are
//!   relayed over a TCP connection of their own, under the same timeout.
//!
//! The in-flight table is the one structure written by several tasks (the listeners insert,
//! the forwarder's reader takes): a short mutex, never held across an await.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use arc_swap::ArcSwap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::answer::{handle, DnsConfig, Outcome, Reply, Transport};
use super::forward::{InFlight, FORWARD_TIMEOUT};
use super::stats::{DnsStats, DropReason, RCODES};
use super::{DnsArgs, PerClient};
use crate::cluster::table::ServiceTable;

/// Open TCP connections at most (each is a descriptor and a task).
pub const MAX_TCP_CONNECTIONS: usize = 128;
/// Open TCP connections from one client address at most, so that one host cannot hold
/// every slot (it would still answer over UDP; others would lose TCP).
pub const MAX_TCP_PER_CLIENT: usize = 16;
/// A TCP connection without a complete query for this long is closed.
pub const TCP_IDLE: Duration = Duration::from_secs(10);
/// Largest UDP datagram read (a query is small; anything longer is cut and then FORMERR).
const UDP_BUF: usize = 4096;

/// Bound sockets, not yet serving.
pub struct DnsServer {
    udp: Vec<Arc<UdpSocket>>,
    tcp: Vec<TcpListener>,
    /// The forwarder's address and the connected socket to it.
    forwarder: Option<(SocketAddr, Arc<UdpSocket>)>,
    cfg: DnsConfig,
}

impl DnsServer {
    /// Binds UDP and TCP on every `--dns-listen` address (and the forwarder's socket).
    /// `allow` is `--allow-source`.
    pub async fn bind(args: &DnsArgs, allow: Option<Vec<ipnet::IpNet>>) -> Result<DnsServer> {
        let mut udp = Vec::new();
        let mut tcp = Vec::new();
        for addr in &args.dns_listen {
            let u = UdpSocket::bind(addr)
                .await
                .with_context(|| format!("--dns-listen {addr}: cannot bind UDP"))?;
            // Port 0 picks a port: TCP takes the same one.
            let bound = u.local_addr()?;
            let t = TcpListener::bind(bound)
                .await
                .with_context(|| format!("--dns-listen {addr}: cannot bind TCP"))?;
            udp.push(Arc::new(u));
            tcp.push(t);
        }
        let forwarder = match args.dns_forward {
            Some(fwd) => {
                let any: SocketAddr = if fwd.is_ipv4() {
                    ([0, 0, 0, 0], 0).into()
                } else {
                    (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
                };
                let s = UdpSocket::bind(any)
                    .await
                    .context("cannot bind the forwarder's socket")?;
                s.connect(fwd)
                    .await
                    .with_context(|| format!("--dns-forward {fwd}: cannot reach"))?;
                Some((fwd, Arc::new(s)))
            }
            None => None,
        };
        let mut cfg = DnsConfig::new(args.dns_zone.clone(), args.dns_ttl);
        cfg.forward = forwarder.is_some();
        cfg.allow = allow;
        Ok(DnsServer {
            udp,
            tcp,
            forwarder,
            cfg,
        })
    }

    /// The bound addresses (UDP and TCP share each).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.udp
            .iter()
            .filter_map(|u| u.local_addr().ok())
            .collect()
    }

    /// Serves until the returned future is dropped (which stops every task).
    pub async fn run(self, table: Arc<ArcSwap<ServiceTable>>, stats: Arc<DnsStats>) {
        let mut tasks = JoinSet::new();
        let inflight = Arc::new(Mutex::new(InFlight::default()));
        let listeners: Arc<[Arc<UdpSocket>]> = self.udp.iter().cloned().collect();
        let cfg = Arc::new(self.cfg);
        let shell = Arc::new(Shell {
            table,
            stats,
            cfg,
            inflight,
            listeners,
            forwarder: self.forwarder.clone(),
            tcp_clients: Mutex::new(PerClient::default()),
        });
        for (i, sock) in self.udp.into_iter().enumerate() {
            tasks.spawn(shell.clone().serve_udp(i, sock));
        }
        let limit = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
        for listener in self.tcp {
            tasks.spawn(shell.clone().serve_tcp(listener, limit.clone()));
        }
        if let Some((_, sock)) = self.forwarder {
            tasks.spawn(shell.clone().forwarder_replies(sock));
            tasks.spawn(shell.clone().expire_forwarded());
        }
        while let Some(r) = tasks.join_next().await {
            if let Err(e) = r {
                tracing::warn!(error = %e, "a DNS task stopped");
            }
        }
    }
}

struct Shell {
    table: Arc<ArcSwap<ServiceTable>>,
    stats: Arc<DnsStats>,
    cfg: Arc<DnsConfig>,
    inflight: Arc<Mutex<InFlight>>,
    listeners: Arc<[Arc<UdpSocket>]>,
    forwarder: Option<(SocketAddr, Arc<UdpSocket>)>,
    /// Open TCP connections per client address.
    tcp_clients: Mutex<PerClient>,
}

/// One client's claim on a TCP connection slot, given back when dropped.
struct ClientSlot {
    shell: Arc<Shell>,
    client: IpAddr,
}

impl ClientSlot {
    /// Takes a slot for `client`, or `None` when it holds [`MAX_TCP_PER_CLIENT`] already.
    fn take(shell: &Arc<Shell>, client: IpAddr) -> Option<ClientSlot> {
        let mut open = shell.tcp_clients.lock().unwrap_or_else(|e| e.into_inner());
        if !open.take(client, MAX_TCP_PER_CLIENT) {
            return None;
        }
        Some(ClientSlot {
            shell: shell.clone(),
            client,
        })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.shell
            .tcp_clients
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .release(self.client);
    }
}

/// The local address worth naming as the NS's address (not a wildcard).
fn named_local(addr: Option<SocketAddr>) -> Option<IpAddr> {
    addr.map(|a| a.ip().to_canonical())
        .filter(|ip| !ip.is_unspecified())
}

impl Shell {
    fn answer(&self, bytes: &[u8], client: IpAddr, local: Option<IpAddr>, t: Transport) -> Outcome {
        let table = self.table.load();
        handle(
            bytes,
            &table.names,
            table.generation,
            &self.cfg,
            client,
            local,
            t,
        )
    }

    fn record(&self, reply: &Reply, client: IpAddr) {
        self.stats.response(reply.rcode);
        if reply.nodata {
            self.stats
                .nodata
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        if reply.truncated {
            self.stats
                .truncated
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        if let Some(why) = &reply.failure {
            tracing::trace!(client = %client, failure = %why, "DNS query failed");
            self.stats.failure(client, why.clone());
        }
    }

    fn dropped(&self, reason: DropReason, client: IpAddr) {
        tracing::trace!(client = %client, reason = reason.label(), "DNS query dropped");
        self.stats.dropped(reason);
        if !matches!(reason, DropReason::TcpTruncated) {
            self.stats.failure(client, format!("dropped: {reason}"));
        }
    }

    async fn serve_udp(self: Arc<Self>, index: usize, sock: Arc<UdpSocket>) {
        let local = named_local(sock.local_addr().ok());
        let mut buf = vec![0u8; UDP_BUF];
        loop {
            let (n, peer) = match sock.recv_from(&mut buf).await {
                Ok(x) => x,
                Err(e) => {
                    // ICMP errors of earlier sends surface here; keep serving.
                    tracing::trace!(error = %e, "DNS UDP receive error");
                    continue;
                }
            };
            self.stats
                .udp_queries
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let client = peer.ip().to_canonical();
            match self.answer(&buf[..n], client, local, Transport::Udp) {
                Outcome::Reply(r) => {
                    self.record(&r, client);
                    if let Err(e) = sock.send_to(&r.bytes, peer).await {
                        tracing::trace!(error = %e, client = %peer, "DNS UDP send failed");
                    }
                }
                Outcome::Forward { id } => self.forward_udp(&buf[..n], id, peer, index).await,
                Outcome::Drop(reason) => self.dropped(reason, client),
            }
        }
    }

    async fn forward_udp(&self, query: &[u8], client_id: u16, peer: SocketAddr, index: usize) {
        let Some((_, upstream)) = &self.forwarder else {
            return;
        };
        let id = self
            .inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(peer, client_id, index, Instant::now());
        let id = match id {
            Ok(id) => id,
            Err(reason) => {
                self.dropped(reason, peer.ip().to_canonical());
                return;
            }
        };
        let mut out = query.to_vec();
        out[..2].copy_from_slice(&id.to_be_bytes());
        self.stats
            .forwarded
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Err(e) = upstream.send(&out).await {
            tracing::debug!(error = %e, "sending to the DNS forwarder failed");
        }
    }

    /// Replies from the forwarder (the socket is connected: nobody else's datagrams).
    async fn forwarder_replies(self: Arc<Self>, sock: Arc<UdpSocket>) {
        let mut buf = vec![0u8; 65535];
        loop {
            let n = match sock.recv(&mut buf).await {
                Ok(n) => n,
                Err(e) => {
                    tracing::trace!(error = %e, "DNS forwarder receive error");
                    // An ICMP error (forwarder down) surfaces once per send; do not spin.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            if n < 12 {
                self.stats.dropped(DropReason::ForwardUnmatched);
                continue;
            }
            let id = u16::from_be_bytes([buf[0], buf[1]]);
            let pending = self
                .inflight
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(id, Instant::now());
            let Some(p) = pending else {
                self.stats.dropped(DropReason::ForwardUnmatched);
                continue;
            };
            buf[..2].copy_from_slice(&p.client_id.to_be_bytes());
            self.stats.response(upstream_rcode(buf[3]));
            if let Some(l) = self.listeners.get(p.listener) {
                if let Err(e) = l.send_to(&buf[..n], p.client).await {
                    tracing::trace!(error = %e, client = %p.client, "DNS UDP send failed");
                }
            }
        }
    }

    async fn expire_forwarded(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let gone = self
                .inflight
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .expire(Instant::now());
            for _ in 0..gone {
                self.stats.dropped(DropReason::ForwardTimeout);
            }
            if gone > 0 {
                let fwd = self.forwarder.as_ref().map(|(a, _)| a.to_string());
                self.stats.failure(
                    IpAddr::from([0, 0, 0, 0]),
                    format!(
                        "{gone} forwarded queries unanswered by {}",
                        fwd.unwrap_or_default()
                    ),
                );
            }
        }
    }

    async fn serve_tcp(self: Arc<Self>, listener: TcpListener, limit: Arc<Semaphore>) {
        let local = named_local(listener.local_addr().ok());
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    // Out of descriptors and the like: wait a little, keep serving.
                    tracing::debug!(error = %e, "DNS TCP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let client = peer.ip().to_canonical();
            let Some(slot) = ClientSlot::take(&self, client) else {
                self.dropped(DropReason::TcpClientLimit, client);
                drop(stream);
                continue;
            };
            let Ok(permit) = limit.clone().try_acquire_owned() else {
                self.dropped(DropReason::TcpLimit, client);
                drop(stream);
                continue;
            };
            let shell = self.clone();
            tokio::spawn(async move {
                shell
                    .stats
                    .tcp_open
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                shell.serve_connection(stream, peer, local).await;
                shell
                    .stats
                    .tcp_open
                    .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                drop(permit);
                drop(slot);
            });
        }
    }

    async fn serve_connection(
        &self,
        mut stream: TcpStream,
        peer: SocketAddr,
        local: Option<IpAddr>,
    ) {
        let client = peer.ip().to_canonical();
        loop {
            let len = match tokio::time::timeout(TCP_IDLE, stream.read_u16()).await {
                Ok(Ok(len)) => usize::from(len),
                // Closed, reset, or idle: the connection ends.
                _ => return,
            };
            let mut query = vec![0u8; len];
            match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut query)).await {
                Ok(Ok(_)) => {}
                _ => {
                    self.dropped(DropReason::TcpTruncated, client);
                    return;
                }
            }
            self.stats
                .tcp_queries
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let reply = match self.answer(&query, client, local, Transport::Tcp) {
                Outcome::Reply(r) => {
                    self.record(&r, client);
                    r.bytes
                }
                Outcome::Forward { .. } => match self.forward_tcp(&query).await {
                    Some(bytes) => bytes,
                    None => {
                        self.dropped(DropReason::ForwardTimeout, client);
                        continue;
                    }
                },
                Outcome::Drop(reason) => {
                    self.dropped(reason, client);
                    return;
                }
            };
            let Ok(n) = u16::try_from(reply.len()) else {
                return;
            };
            let mut out = Vec::with_capacity(reply.len() + 2);
            out.extend_from_slice(&n.to_be_bytes());
            out.extend_from_slice(&reply);
            if tokio::time::timeout(TCP_IDLE, stream.write_all(&out))
                .await
                .map_or(true, |r| r.is_err())
            {
                return;
            }
        }
    }

    /// One query relayed to the forwarder over TCP; `None` on failure or timeout.
    async fn forward_tcp(&self, query: &[u8]) -> Option<Vec<u8>> {
        let (fwd, _) = self.forwarder.as_ref()?;
        self.stats
            .forwarded
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let relay = async {
            let mut s = TcpStream::connect(fwd).await.ok()?;
            let n = u16::try_from(query.len()).ok()?;
            let mut out = n.to_be_bytes().to_vec();
            out.extend_from_slice(query);
            s.write_all(&out).await.ok()?;
            let len = usize::from(s.read_u16().await.ok()?);
            let mut reply = vec![0u8; len];
            s.read_exact(&mut reply).await.ok()?;
            Some(reply)
        };
        let reply = tokio::time::timeout(FORWARD_TIMEOUT, relay).await.ok()??;
        if reply.len() >= 4 {
            self.stats.response(upstream_rcode(reply[3]));
        }
        Some(reply)
    }
}

/// The counter label of a forwarded reply's response code (the low 4 bits of byte 3).
fn upstream_rcode(byte3: u8) -> &'static str {
    RCODES
        .get(usize::from(byte3 & 0x0f))
        .copied()
        .unwrap_or("servfail")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::build::{build_table, BuildOptions};
    use crate::cluster::parse::parse_objects;
    use clap::Parser;
    use hickory_proto::op::{Message, Query};
    use hickory_proto::rr::{Name, RecordType};

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        dns: DnsArgs,
    }

    fn query(name: &str) -> Vec<u8> {
        let mut m = Message::new();
        m.set_id(42);
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
        m.to_vec().unwrap()
    }

    async fn connect_from(src: IpAddr, to: SocketAddr) -> TcpStream {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(SocketAddr::new(src, 0)).unwrap();
        sock.connect(to).await.unwrap()
    }

    /// A connection from `src` that has asked `q` once and read the answer.
    async fn ask_tcp(src: IpAddr, to: SocketAddr, q: &[u8]) -> TcpStream {
        let mut s = connect_from(src, to).await;
        s.write_all(&(q.len() as u16).to_be_bytes()).await.unwrap();
        s.write_all(q).await.unwrap();
        let len = tokio::time::timeout(Duration::from_secs(5), s.read_u16())
            .await
            .expect("a TCP answer")
            .unwrap();
        let mut reply = vec![0u8; usize::from(len)];
        s.read_exact(&mut reply).await.unwrap();
        assert_eq!(Message::from_vec(&reply).unwrap().answers().len(), 1);
        s
    }

    /// The server closes `s` at once.
    async fn assert_closed(mut s: TcpStream) {
        let mut one = [0u8; 1];
        let closed = tokio::time::timeout(Duration::from_secs(5), s.read(&mut one))
            .await
            .expect("the connection is closed");
        assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
    }

    /// On loopback, port chosen by the kernel: UDP and TCP answer from the table; past
    /// MAX_TCP_PER_CLIENT from one address, or MAX_TCP_CONNECTIONS in all, a new connection
    /// is closed at once and counted.
    #[tokio::test]
    async fn udp_tcp_and_the_connection_bound() {
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: a}\n\
                    spec: {clusterIP: 10.96.0.10, ports: [{port: 80}]}\n";
        let objs = parse_objects("t.yaml", text).unwrap();
        let table = Arc::new(ArcSwap::from_pointee(
            build_table(1, &objs, &BuildOptions::default()).0,
        ));
        let args = Cli::parse_from(["x", "--dns-listen", "127.0.0.1:0"]).dns;
        let server = DnsServer::bind(&args, None).await.unwrap();
        let addr = server.local_addrs()[0];
        let stats = Arc::new(DnsStats::default());
        let task = tokio::spawn(server.run(table, stats.clone()));

        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        udp.send_to(&query("web.a.svc.cluster.local."), addr)
            .await
            .unwrap();
        let mut buf = [0u8; 512];
        let n = tokio::time::timeout(Duration::from_secs(5), udp.recv(&mut buf))
            .await
            .expect("a UDP answer")
            .unwrap();
        let m = Message::from_vec(&buf[..n]).unwrap();
        assert_eq!(m.id(), 42);
        assert_eq!(m.answers()[0].data().to_string(), "10.96.0.10");

        // One client holds at most MAX_TCP_PER_CLIENT connections; every connection asks
        // one question (so it is accepted and counted) and stays open.
        let q = query("web.a.svc.cluster.local.");
        let mut held = Vec::new();
        let first: IpAddr = "127.0.0.2".parse().unwrap();
        for _ in 0..MAX_TCP_PER_CLIENT {
            held.push(ask_tcp(first, addr, &q).await);
        }
        assert_closed(connect_from(first, addr).await).await;
        assert_eq!(stats.dropped_of(DropReason::TcpClientLimit), 1);
        // Other clients fill every other slot, then one more connection is closed.
        let mut others = (3u8..).map(|i| IpAddr::from([127, 0, 0, i]));
        while held.len() < MAX_TCP_CONNECTIONS {
            let src = others.next().unwrap();
            for _ in 0..MAX_TCP_PER_CLIENT.min(MAX_TCP_CONNECTIONS - held.len()) {
                held.push(ask_tcp(src, addr, &q).await);
            }
        }
        assert_closed(connect_from("127.0.0.200".parse().unwrap(), addr).await).await;
        assert_eq!(stats.dropped_of(DropReason::TcpLimit), 1);
        assert_eq!(stats.dropped_of(DropReason::TcpClientLimit), 1);
        assert_eq!(
            stats.tcp_open.load(std::sync::atomic::Ordering::Relaxed),
            MAX_TCP_CONNECTIONS as u64
        );
        // Closing one frees a slot.
        drop(held.pop());
        let mut ok = false;
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            if stats.tcp_open.load(std::sync::atomic::Ordering::Relaxed)
                < MAX_TCP_CONNECTIONS as u64
            {
                ok = true;
                break;
            }
        }
        assert!(ok, "a closed connection gives its slot back");
        assert_eq!(
            stats.responses_of("noerror"),
            1 + MAX_TCP_CONNECTIONS as u64
        );
        task.abort();
    }
}
