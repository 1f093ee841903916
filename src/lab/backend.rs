//! Demo pod servers (`clusterway demo-backend`): a small HTTP/1.1 server and a UDP echo.
//!
//! HTTP: `GET /` answers `200` with body `{name}\n`; `GET /bytes/N` answers N bytes;
//! `GET /ip` answers the peer address as the pod sees it (`{ip}\n`). Keep-alive is the
//! HTTP/1.1 default, `Connection: close` is honoured, HTTP/1.0 closes unless it asks for
//! keep-alive. `HEAD` works on every path. Every response carries `X-Backend: {name}`.
//! UDP: every datagram is answered with `{name} {payload}`.
//!
//! Owns: the sockets it binds. Must not touch: anything outside them (it runs inside a pod
//! namespace of the lab or of a test).

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinSet;

/// Largest request head (request line + headers) accepted.
const MAX_HEAD: usize = 16 * 1024;
/// Largest `/bytes/N` answered (1 GiB).
const MAX_BYTES: u64 = 1 << 30;
/// A connection idle this long between requests, or this slow sending a request, is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Chunk size for `/bytes/N` bodies.
const CHUNK: usize = 64 * 1024;

/// Options of `clusterway demo-backend`.
#[derive(clap::Args, Debug, Clone)]
pub struct BackendArgs {
    /// Name this backend answers with (HTTP body, UDP prefix, `X-Backend` header).
    #[arg(long, default_value = "backend")]
    pub name: String,
    /// Serve HTTP on this address (repeatable; IPv6 addresses are bound v6-only).
    #[arg(long = "http", value_name = "ADDR")]
    pub http: Vec<SocketAddr>,
    /// Echo UDP on this address (repeatable; IPv6 addresses are bound v6-only).
    #[arg(long = "udp", value_name = "ADDR")]
    pub udp: Vec<SocketAddr>,
    /// Accept TCP connections on the `--http` addresses and reset them at once (a broken
    /// backend, for tests of how the gateway reports it).
    #[arg(long)]
    pub refuse: bool,
}

/// Serves until a listener fails (or the process is stopped by a signal).
pub async fn serve(args: BackendArgs) -> Result<()> {
    serve_until(args, std::future::pending()).await
}

/// Serves until `shutdown` completes or a listener fails. Binds every address before
/// serving any, so a bad address fails at start.
pub async fn serve_until(args: BackendArgs, shutdown: impl Future<Output = ()>) -> Result<()> {
    if args.http.is_empty() && args.udp.is_empty() {
        bail!("nothing to serve: give at least one --http or --udp address");
    }
    let name: std::sync::Arc<str> = args.name.clone().into();
    let mut tasks: JoinSet<Result<()>> = JoinSet::new();
    for &addr in &args.http {
        let listener = bind_tcp(addr).with_context(|| format!("binding HTTP on {addr}"))?;
        tracing::info!(name = %name, %addr, refuse = args.refuse, "demo backend serving HTTP");
        tasks.spawn(accept_loop(listener, name.clone(), args.refuse));
    }
    for &addr in &args.udp {
        let socket = bind_udp(addr).with_context(|| format!("binding UDP on {addr}"))?;
        tracing::info!(name = %name, %addr, "demo backend echoing UDP");
        tasks.spawn(udp_echo(socket, name.clone()));
    }
    tokio::select! {
        () = shutdown => Ok(()),
        Some(res) = tasks.join_next() => match res {
            Ok(Ok(())) => bail!("a listener stopped"),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(e).context("listener task failed"),
        },
    }
}

fn socket_for(addr: SocketAddr, ty: socket2::Type) -> Result<socket2::Socket> {
    let domain = socket2::Domain::for_address(addr);
    let socket = socket2::Socket::new(domain, ty, None).context("socket()")?;
    if addr.is_ipv6() {
        // So that `0.0.0.0:P` and `[::]:P` can both be given.
        socket.set_only_v6(true).context("IPV6_V6ONLY")?;
    }
    socket.set_reuse_address(true).context("SO_REUSEADDR")?;
    socket.set_nonblocking(true).context("O_NONBLOCK")?;
    socket.bind(&addr.into()).context("bind()")?;
    Ok(socket)
}

fn bind_tcp(addr: SocketAddr) -> Result<TcpListener> {
    let socket = socket_for(addr, socket2::Type::STREAM)?;
    socket.listen(1024).context("listen()")?;
    TcpListener::from_std(socket.into()).context("registering the listener")
}

fn bind_udp(addr: SocketAddr) -> Result<UdpSocket> {
    let socket = socket_for(addr, socket2::Type::DGRAM)?;
    UdpSocket::from_std(socket.into()).context("registering the UDP socket")
}

async fn accept_loop(listener: TcpListener, name: std::sync::Arc<str>, refuse: bool) -> Result<()> {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            // Out of descriptors or a connection aborted before accept: keep serving.
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if refuse {
            // SO_LINGER 0 turns close() into a RST (without blocking: the socket is
            // non-blocking and there is nothing to flush).
            let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        let name = name.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_conn(stream, peer, &name).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}

/// One parsed request head.
#[derive(Debug, PartialEq, Eq)]
struct Request {
    method: String,
    target: String,
    /// HTTP/1.1 or later.
    http11: bool,
    /// Whether the connection stays open after the response.
    keep_alive: bool,
    content_length: u64,
    chunked: bool,
}

#[derive(Debug, PartialEq, Eq)]
enum HeadError {
    Malformed(&'static str),
}

/// Parses a request head (everything before the blank line, without it).
fn parse_head(head: &[u8]) -> Result<Request, HeadError> {
    let text = std::str::from_utf8(head).map_err(|_| HeadError::Malformed("not UTF-8"))?;
    let mut lines = text
        .split("\r\n")
        .map(|l| l.strip_suffix('\r').unwrap_or(l));
    let request_line = lines.next().ok_or(HeadError::Malformed("empty request"))?;
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HeadError::Malformed("bad request line"));
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(HeadError::Malformed("bad method"));
    }
    if target.is_empty() {
        return Err(HeadError::Malformed("empty target"));
    }
    let http11 = match version {
        "HTTP/1.1" => true,
        "HTTP/1.0" => false,
        _ => return Err(HeadError::Malformed("unsupported HTTP version")),
    };
    let mut close = false;
    let mut keep_alive_token = false;
    let mut content_length: Option<u64> = None;
    let mut chunked = false;
    for line in lines {
        if line.is_empty() {
            continue;
        }
        let (key, value) = line
            .split_once(':')
            .ok_or(HeadError::Malformed("header without colon"))?;
        if key.is_empty() || key.ends_with(' ') || key.ends_with('\t') {
            return Err(HeadError::Malformed("bad header name"));
        }
        let value = value.trim();
        if key.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                close |= token.eq_ignore_ascii_case("close");
                keep_alive_token |= token.eq_ignore_ascii_case("keep-alive");
            }
        } else if key.eq_ignore_ascii_case("content-length") {
            let n = value
                .parse()
                .map_err(|_| HeadError::Malformed("bad Content-Length"))?;
            if content_length.is_some_and(|old| old != n) {
                return Err(HeadError::Malformed("conflicting Content-Length"));
            }
            content_length = Some(n);
        } else if key.eq_ignore_ascii_case("transfer-encoding") {
            chunked |= value
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("chunked"));
        }
    }
    Ok(Request {
        method: method.to_owned(),
        target: target.to_owned(),
        http11,
        keep_alive: !close && (http11 || keep_alive_token),
        content_length: content_length.unwrap_or(0),
        chunked,
    })
}

/// What a request is answered with.
#[derive(Debug, PartialEq, Eq)]
enum Body {
    Text(String),
    Bytes(u64),
}

fn route(req: &Request, name: &str, peer: SocketAddr) -> (u16, &'static str, Body) {
    if req.method != "GET" && req.method != "HEAD" {
        return (
            405,
            "Method Not Allowed",
            Body::Text("only GET and HEAD\n".into()),
        );
    }
    let path = req.target.split('?').next().unwrap_or("");
    match path {
        "/" => (200, "OK", Body::Text(format!("{name}\n"))),
        "/ip" => (
            200,
            "OK",
            Body::Text(format!("{}\n", peer.ip().to_canonical())),
        ),
        _ => match path.strip_prefix("/bytes/").map(str::parse::<u64>) {
            Some(Ok(n)) if n <= MAX_BYTES => (200, "OK", Body::Bytes(n)),
            Some(_) => (
                400,
                "Bad Request",
                Body::Text(format!("N must be 0..={MAX_BYTES}\n")),
            ),
            None => (404, "Not Found", Body::Text("not found\n".into())),
        },
    }
}

async fn serve_conn(mut stream: TcpStream, peer: SocketAddr, name: &str) -> Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    loop {
        // Read until a complete head is buffered.
        let head_end = loop {
            if let Some(pos) = find_head_end(&buf) {
                break pos;
            }
            if buf.len() >= MAX_HEAD {
                let _ = respond_error(&mut stream, 431, "Request Header Fields Too Large").await;
                return Ok(());
            }
            let mut chunk = [0u8; 4096];
            let n = match tokio::time::timeout(IDLE_TIMEOUT, stream.read(&mut chunk)).await {
                Ok(r) => r.context("reading request")?,
                Err(_) => return Ok(()), // idle or too slow: close quietly
            };
            if n == 0 {
                return Ok(()); // client closed (between requests or mid-head)
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = buf[..head_end].to_vec();
        buf.drain(..head_end + 4);
        let req = match parse_head(&head) {
            Ok(req) => req,
            Err(HeadError::Malformed(why)) => {
                tracing::debug!(%peer, why, "malformed request");
                let _ = respond_error(&mut stream, 400, "Bad Request").await;
                return Ok(());
            }
        };
        if req.chunked {
            // Not needed by anything that talks to a demo backend.
            let _ = respond_error(&mut stream, 411, "Length Required").await;
            return Ok(());
        }
        // Discard a request body, part of which may already be buffered.
        let mut remaining = req.content_length;
        let buffered = remaining.min(buf.len() as u64) as usize;
        buf.drain(..buffered);
        remaining -= buffered as u64;
        while remaining > 0 {
            let mut chunk = [0u8; 4096];
            let want = remaining.min(chunk.len() as u64) as usize;
            let n = tokio::time::timeout(IDLE_TIMEOUT, stream.read(&mut chunk[..want]))
                .await
                .context("request body timed out")?
                .context("reading request body")?;
            if n == 0 {
                return Ok(());
            }
            remaining -= n as u64;
        }

        let (status, reason, body) = route(&req, name, peer);
        let len = match &body {
            Body::Text(t) => t.len() as u64,
            Body::Bytes(n) => *n,
        };
        let version = if req.http11 { "HTTP/1.1" } else { "HTTP/1.0" };
        let connection = if req.keep_alive {
            "keep-alive"
        } else {
            "close"
        };
        let content_type = match body {
            Body::Text(_) => "text/plain; charset=utf-8",
            Body::Bytes(_) => "application/octet-stream",
        };
        let mut out = format!(
            "{version} {status} {reason}\r\nContent-Type: {content_type}\r\n\
             Content-Length: {len}\r\nConnection: {connection}\r\nX-Backend: {name}\r\n\r\n"
        )
        .into_bytes();
        let head_only = req.method == "HEAD";
        match body {
            Body::Text(t) => {
                if !head_only {
                    out.extend_from_slice(t.as_bytes());
                }
                stream.write_all(&out).await.context("writing response")?;
            }
            Body::Bytes(n) => {
                stream.write_all(&out).await.context("writing response")?;
                if !head_only {
                    write_bytes(&mut stream, n).await?;
                }
            }
        }
        if !req.keep_alive {
            let _ = stream.shutdown().await;
            return Ok(());
        }
    }
}

async fn write_bytes(stream: &mut TcpStream, mut n: u64) -> Result<()> {
    let chunk = vec![b'x'; CHUNK];
    while n > 0 {
        let len = n.min(CHUNK as u64) as usize;
        stream
            .write_all(&chunk[..len])
            .await
            .context("writing body")?;
        n -= len as u64;
    }
    Ok(())
}

async fn respond_error(stream: &mut TcpStream, status: u16, reason: &str) -> Result<()> {
    let body = format!("{status} {reason}\n");
    let msg = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(msg.as_bytes()).await?;
    stream.shutdown().await?;
    Ok(())
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n")
}

async fn udp_echo(socket: UdpSocket, name: std::sync::Arc<str>) -> Result<()> {
    let mut buf = vec![0u8; 65536];
    let mut out = Vec::with_capacity(65536 + name.len() + 1);
    loop {
        let (n, peer) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            // ICMP errors from earlier replies surface here (ECONNREFUSED): not fatal.
            Err(e) => {
                tracing::debug!(error = %e, "UDP receive error");
                continue;
            }
        };
        out.clear();
        out.extend_from_slice(name.as_bytes());
        out.push(b' ');
        out.extend_from_slice(&buf[..n]);
        if let Err(e) = socket.send_to(&out, peer).await {
            tracing::debug!(%peer, error = %e, "UDP send error");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> SocketAddr {
        "192.0.2.7:4000".parse().unwrap()
    }

    #[test]
    fn parses_keep_alive_defaults() {
        let r = parse_head(b"GET / HTTP/1.1\r\nHost: x").unwrap();
        assert!(r.keep_alive && r.http11);
        let r = parse_head(b"GET / HTTP/1.1\r\nConnection: Close").unwrap();
        assert!(!r.keep_alive);
        let r = parse_head(b"GET / HTTP/1.0").unwrap();
        assert!(!r.keep_alive);
        let r = parse_head(b"GET / HTTP/1.0\r\nconnection: keep-alive").unwrap();
        assert!(r.keep_alive);
    }

    #[test]
    fn rejects_malformed_heads() {
        for head in [
            &b""[..],
            b"GET /",
            b"GET / HTTP/2.0",
            b"get / HTTP/1.1",
            b"GET / HTTP/1.1\r\nnocolon",
            b"GET / HTTP/1.1\r\nContent-Length: x",
            b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2",
            b"GET  / HTTP/1.1",
        ] {
            assert!(
                parse_head(head).is_err(),
                "{:?}",
                String::from_utf8_lossy(head)
            );
        }
    }

    #[test]
    fn routes() {
        let req = |t: &str| parse_head(format!("GET {t} HTTP/1.1").as_bytes()).unwrap();
        assert_eq!(
            route(&req("/"), "pod-1", peer()),
            (200, "OK", Body::Text("pod-1\n".into()))
        );
        assert_eq!(route(&req("/bytes/10"), "p", peer()).2, Body::Bytes(10));
        assert_eq!(route(&req("/bytes/x"), "p", peer()).0, 400);
        assert_eq!(route(&req("/nope"), "p", peer()).0, 404);
        assert_eq!(
            route(&req("/ip"), "p", peer()).2,
            Body::Text("192.0.2.7\n".into())
        );
        let post = parse_head(b"POST / HTTP/1.1").unwrap();
        assert_eq!(route(&post, "p", peer()).0, 405);
    }

    #[tokio::test]
    async fn serves_keep_alive_and_udp_on_loopback() {
        let http = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let http_addr = http.local_addr().unwrap();
        drop(http);
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let udp_addr = udp.local_addr().unwrap();
        drop(udp);
        let args = BackendArgs {
            name: "pod-x".into(),
            http: vec![http_addr],
            udp: vec![udp_addr],
            refuse: false,
        };
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_until(args, async {
            let _ = rx.await;
        }));
        tokio::time::sleep(Duration::from_millis(100)).await;

        let mut s = TcpStream::connect(http_addr).await.unwrap();
        // Two requests on one connection, the second with a body and asking to close.
        s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        let mut chunk = [0u8; 1024];
        while !String::from_utf8_lossy(&got).ends_with("pod-x\n") {
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0);
            got.extend_from_slice(&chunk[..n]);
        }
        s.write_all(
            b"GET /bytes/100000 HTTP/1.1\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
        )
        .await
        .unwrap();
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).await.unwrap();
        let text = String::from_utf8_lossy(&rest);
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.contains("Connection: close"));
        let body_at = text.find("\r\n\r\n").unwrap() + 4;
        assert_eq!(rest.len() - body_at, 100_000);

        let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        c.send_to(b"hi", udp_addr).await.unwrap();
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(2), c.recv(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf[..n], b"pod-x hi");

        tx.send(()).unwrap();
        server.await.unwrap().unwrap();
    }
}
