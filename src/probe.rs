//! `clusterway probe [URL]`: one HTTP GET against the status server, exit 0 on `200 OK`.
//!
//! This is the container health check: the slim image has no curl or wget, so the binary
//! checks itself (`HEALTHCHECK CMD ["/usr/local/bin/clusterway", "probe"]`). Plain HTTP over a
//! blocking `TcpStream`, a few seconds at most, no runtime needed.
//!
//! Owns: one TCP connection. Must not touch: anything else.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// The status server's default address (`--status-addr`) and readiness path.
pub const DEFAULT_URL: &str = "http://127.0.0.1:9310/readyz";

/// Options of `clusterway probe`.
#[derive(clap::Args, Debug, Clone)]
pub struct ProbeArgs {
    /// The URL to GET (plain http); healthy when it answers 200.
    #[arg(default_value = DEFAULT_URL)]
    pub url: String,

    /// Give up after this long (e.g. 3s, 500ms).
    #[arg(long, default_value = "3s", value_parser = crate::config::parse_duration)]
    pub timeout: Duration,

    /// Bearer token sent as `Authorization` (when the status server has --status-token).
    #[arg(long, env = "CLUSTERWAY_STATUS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// An `http://host:port/path` URL split into its parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `host:port` as written (for the Host header), port defaulted to 80.
    pub authority: String,
    pub path: String,
}

/// Parses a plain-HTTP URL; `https` and anything else are refused.
pub fn parse_url(url: &str) -> Result<Target> {
    let Some(rest) = url.strip_prefix("http://") else {
        bail!("`{url}` is not an http:// URL (the probe speaks plain HTTP to the local status server)");
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        bail!("`{url}` has no host");
    }
    // A port is present when the text after the last ':' is outside IPv6 brackets.
    let has_port = match authority.rfind(':') {
        Some(i) => !authority[i..].contains(']'),
        None => false,
    };
    let authority = if has_port {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    Ok(Target {
        authority,
        path: path.to_owned(),
    })
}

/// The status code of the first line of an HTTP/1.x response.
pub fn status_code(head: &[u8]) -> Option<u16> {
    let line = head.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split_whitespace();
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    parts.next()?.parse().ok()
}

/// GETs the URL; returns the status code and the body (lossy, for the message).
pub fn get(target: &Target, timeout: Duration, token: Option<&str>) -> Result<(u16, String)> {
    let addrs: Vec<SocketAddr> = target
        .authority
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {}", target.authority))?
        .collect();
    let mut last = None;
    let mut stream = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = Some(anyhow::Error::new(e).context(format!("connect {addr}"))),
        }
    }
    let mut s = match (stream, last) {
        (Some(s), _) => s,
        (None, Some(e)) => return Err(e),
        (None, None) => bail!("{} resolves to no address", target.authority),
    };
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    // One write: servers (and the test below) may read the head in a single call.
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: clusterway-probe\r\n{auth}Connection: close\r\n\r\n",
        target.path, target.authority
    );
    s.write_all(request.as_bytes())
        .context("sending the request")?;
    let mut raw = Vec::new();
    // The status line is all we need; a server may keep the body short or stream it.
    let mut buf = [0u8; 4096];
    while raw.len() < 64 * 1024 {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if raw.is_empty() => return Err(e).context("reading the response"),
            Err(_) => break,
        }
    }
    let code = status_code(&raw).context("the answer is not an HTTP/1.x response")?;
    let body = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| String::from_utf8_lossy(&raw[i + 4..]).trim().to_owned())
        .unwrap_or_default();
    Ok((code, body))
}

/// `clusterway probe`: Ok when the URL answers 200, an error naming the status otherwise.
pub fn run(args: ProbeArgs) -> Result<()> {
    let target = parse_url(&args.url)?;
    let (code, body) = get(&target, args.timeout, args.token.as_deref())
        .with_context(|| format!("GET {}", args.url))?;
    if code != 200 {
        bail!("GET {} answered {code}: {body}", args.url);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let t = parse_url(DEFAULT_URL).unwrap();
        assert_eq!(t.authority, "127.0.0.1:9310");
        assert_eq!(t.path, "/readyz");
        let t = parse_url("http://[::1]/healthz").unwrap();
        assert_eq!(t.authority, "[::1]:80");
        let t = parse_url("http://[::1]:9310").unwrap();
        assert_eq!((t.authority.as_str(), t.path.as_str()), ("[::1]:9310", "/"));
        assert!(parse_url("https://127.0.0.1/readyz").is_err());
        assert!(parse_url("http:///x").is_err());
    }

    #[test]
    fn status_lines() {
        assert_eq!(status_code(b"HTTP/1.1 200 OK\r\n\r\n"), Some(200));
        assert_eq!(
            status_code(b"HTTP/1.0 503 Service Unavailable\r\n"),
            Some(503)
        );
        assert_eq!(status_code(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(status_code(b""), None);
    }

    #[test]
    fn probe_against_a_local_server() {
        use std::net::TcpListener;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            for answer in [
                "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n",
                "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 12\r\n\r\ntable stale\n",
            ] {
                let (mut s, _) = listener.accept().unwrap();
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.ends_with(b"\r\n\r\n") {
                    let n = s.read(&mut buf).unwrap();
                    assert!(n > 0, "the request ended early: {req:?}");
                    req.extend_from_slice(&buf[..n]);
                }
                assert!(req.starts_with(b"GET /readyz HTTP/1.1\r\n"));
                s.write_all(answer.as_bytes()).unwrap();
            }
        });
        let args = |url: String| ProbeArgs {
            url,
            timeout: Duration::from_secs(2),
            token: None,
        };
        run(args(format!("http://{addr}/readyz"))).unwrap();
        let err = run(args(format!("http://{addr}/readyz"))).unwrap_err();
        assert!(format!("{err:#}").contains("503: table stale"), "{err:#}");
        server.join().unwrap();
        // Nothing listens any more: refused, an error.
        assert!(run(args(format!("http://{addr}/readyz"))).is_err());
    }
}
