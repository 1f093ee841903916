//! The lab's status page on the host: a TCP relay from a listener on the host's loopback
//! to the gateway's status server, which listens on 127.0.0.1 *inside* the gateway
//! namespace. Upstream sockets are opened by one thread that entered that namespace
//! (`setns`), so nothing in the host's network configuration changes: the relay is an
//! ordinary loopback listener of the lab process.
//!
//! Owns: its listener, one dialer thread, one task per relayed connection. Stops when
//! dropped.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::netns::Netns;

/// Connections waiting for an upstream socket; a browser opens a handful at once.
const DIAL_QUEUE: usize = 64;
const DIAL_TIMEOUT: Duration = Duration::from_secs(3);

pub struct Relay {
    /// Where the host listener ended up (the port may differ from the one asked for).
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        // Dropping the task drops the dial queue's sender, which ends the dialer thread.
        self.task.abort();
    }
}

type Dial = oneshot::Sender<io::Result<std::net::TcpStream>>;

/// Listen on `bind` (on the host; when its port is taken, any free port of the same
/// address) and relay each connection to `upstream` inside `ns`.
pub async fn start(ns: &Netns, bind: SocketAddr, upstream: SocketAddr) -> Result<Relay> {
    let listener = match TcpListener::bind(bind).await {
        Ok(l) => l,
        Err(e) if e.kind() == io::ErrorKind::AddrInUse && bind.port() != 0 => {
            TcpListener::bind(SocketAddr::new(bind.ip(), 0))
                .await
                .with_context(|| format!("binding the status relay on {}", bind.ip()))?
        }
        Err(e) => return Err(e).with_context(|| format!("binding the status relay on {bind}")),
    };
    let addr = listener.local_addr()?;
    let (dial_tx, mut dial_rx) = mpsc::channel::<Dial>(DIAL_QUEUE);
    ns.spawn(move || {
        while let Some(reply) = dial_rx.blocking_recv() {
            let _ = reply.send(std::net::TcpStream::connect_timeout(
                &upstream,
                DIAL_TIMEOUT,
            ));
        }
    })
    .context("starting the status relay's dialer in the gateway namespace")?;
    let task = tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let (tx, rx) = oneshot::channel();
            if dial_tx.send(tx).await.is_err() {
                return;
            }
            tokio::spawn(relay(client, rx));
        }
    });
    Ok(Relay { addr, task })
}

async fn relay(
    mut client: TcpStream,
    upstream: oneshot::Receiver<io::Result<std::net::TcpStream>>,
) {
    let upstream = match upstream.await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "status relay: the gateway's status server did not answer");
            return;
        }
        Err(_) => return,
    };
    let Ok(mut upstream) = upstream
        .set_nonblocking(true)
        .and_then(|()| TcpStream::from_std(upstream))
    else {
        return;
    };
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}
