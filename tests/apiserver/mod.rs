//! A test Kubernetes API server that speaks the real protocol, so that the unmodified
//! kube-rs watcher runs against it (`mod apiserver;`).
//!
//! - HTTPS with a throw-away CA (rcgen); [`ApiServer::kubeconfig`] writes a kubeconfig that
//!   trusts it and carries a bearer token.
//! - `GET /version`; `GET /api/v1/services`, `/apis/discovery.k8s.io/v1/endpointslices`,
//!   `/apis/networking.k8s.io/v1/servicecidrs` (404 unless [`ApiServer::serve_service_cidrs`])
//!   as lists with `metadata.resourceVersion` (paged with `limit` and `continue`, every page
//!   from the first page's snapshot), and with `watch=1|true` as a chunked stream of
//!   JSON lines `ADDED`/`MODIFIED`/`DELETED`/`BOOKMARK` (`allowWatchBookmarks`), ended when
//!   `timeoutSeconds` expires. A watch from a resourceVersion older than the compaction
//!   point gets an `ERROR` event with a `410 Gone` Status, as a real API server sends it.
//! - Faults: [`ApiServer::expire_watches`] (410 mid-stream), [`ApiServer::drop_connections`],
//!   [`ApiServer::stop`] / [`ApiServer::restart`] (same port), [`ApiServer::fail_with`]
//!   (an HTTP status for every API request), [`ApiServer::stall`] (answer nothing).
//!
//! Bookmarks are sent the way the fixtures show them: an object of the watched kind that
//! carries only `metadata.resourceVersion` (for EndpointSlices with `addressType: ""` and
//! `endpoints: null`), so nothing may validate them.
//!
//! The server runs on its own thread and tokio runtime; [`ApiServer::start_in`] starts that
//! thread inside a network namespace (the gateway under test cannot reach the host's
//! loopback).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;
use tokio::sync::watch;

/// The three resources the gateway reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Res {
    Services,
    Slices,
    Cidrs,
}

impl Res {
    fn path(self) -> &'static str {
        match self {
            Res::Services => "/api/v1/services",
            Res::Slices => "/apis/discovery.k8s.io/v1/endpointslices",
            Res::Cidrs => "/apis/networking.k8s.io/v1/servicecidrs",
        }
    }

    fn list_kind(self) -> (&'static str, &'static str) {
        match self {
            Res::Services => ("v1", "ServiceList"),
            Res::Slices => ("discovery.k8s.io/v1", "EndpointSliceList"),
            Res::Cidrs => ("networking.k8s.io/v1", "ServiceCIDRList"),
        }
    }

    fn kind(self) -> (&'static str, &'static str) {
        match self {
            Res::Services => ("v1", "Service"),
            Res::Slices => ("discovery.k8s.io/v1", "EndpointSlice"),
            Res::Cidrs => ("networking.k8s.io/v1", "ServiceCIDR"),
        }
    }

    fn of_kind(kind: &str) -> Option<Res> {
        match kind {
            "Service" => Some(Res::Services),
            "EndpointSlice" => Some(Res::Slices),
            "ServiceCIDR" => Some(Res::Cidrs),
            _ => None,
        }
    }
}

type ObjKey = (Res, String, String);

#[derive(Debug, Clone)]
struct Change {
    rv: u64,
    res: Res,
    kind: &'static str,
    object: Arc<Value>,
}

#[derive(Debug, Default)]
struct Store {
    rv: u64,
    objects: BTreeMap<ObjKey, Arc<Value>>,
    history: Vec<Change>,
    /// Watches from a resourceVersion below this get 410 Gone.
    compacted: u64,
    /// Paged lists in progress: the items of each as they were at its first page, served
    /// page by page from there (a real server serves every page from the first page's
    /// resourceVersion), by the number in its continue token. Dropped at compaction.
    snapshots: BTreeMap<u64, Snapshot>,
    next_snapshot: u64,
}

/// Paged lists kept at once.
const MAX_SNAPSHOTS: usize = 64;

#[derive(Debug)]
struct Snapshot {
    res: Res,
    rv: u64,
    items: Vec<Value>,
}

#[derive(Debug, Clone)]
struct Faults {
    serve_cidrs: bool,
    fail_status: Option<u16>,
    stall: bool,
    bookmark_interval: Duration,
    /// Cap on the watch timeout the client asks for (a real server uses its own too).
    max_watch_timeout: Duration,
}

struct Shared {
    store: Mutex<Store>,
    /// Latest resourceVersion, for watchers.
    changed: watch::Sender<u64>,
    faults: Mutex<Faults>,
    /// Bumped to end every open connection at once (dropped, no clean end).
    drop_epoch: watch::Sender<u64>,
    /// Bumped by [`ApiServer::freeze_watches`]: watches open at that moment go silent for
    /// good (no event, no bookmark, no close) while new requests are served as usual.
    freeze_epoch: watch::Sender<u64>,
    /// Bumped to send every open watch an ERROR 410.
    expire_epoch: watch::Sender<u64>,
    /// Requests served, by path (for assertions).
    requests: Mutex<Vec<String>>,
}

/// Commands to the server thread.
enum Cmd {
    Stop(std::sync::mpsc::Sender<()>),
    Start(std::sync::mpsc::Sender<std::io::Result<()>>),
    Quit,
}

/// A running test API server. Dropping it stops the server thread.
pub struct ApiServer {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    cmds: tokio::sync::mpsc::UnboundedSender<Cmd>,
    thread: Option<std::thread::JoinHandle<()>>,
    ca_pem: String,
    dir: tempfile::TempDir,
}

fn now_rfc3339() -> String {
    "2026-01-01T00:00:00Z".to_string()
}

impl ApiServer {
    /// Starts a server on `127.0.0.1` (random port) in the calling process's namespace.
    pub fn start() -> ApiServer {
        Self::start_with(|f| {
            std::thread::Builder::new()
                .name("test-apiserver".into())
                .spawn(f)
                .expect("spawning the API server thread")
        })
    }

    /// Starts the server on a thread inside `ns`, listening on that namespace's loopback.
    pub fn start_in(ns: &clusterway::lab::netns::Netns) -> ApiServer {
        Self::start_with(|f| {
            let h = ns
                .spawn(f)
                .unwrap_or_else(|e| panic!("starting the API server in {}: {e:#}", ns.name()));
            // Keep the join handle's type uniform: wrap in a thread that joins it.
            std::thread::spawn(move || {
                let _ = h.join();
            })
        })
    }

    fn start_with(
        spawn: impl FnOnce(Box<dyn FnOnce() + Send>) -> std::thread::JoinHandle<()>,
    ) -> ApiServer {
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "clusterway test CA");
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("CA cert");
        let key = rcgen::KeyPair::generate().expect("server key");
        let params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
                .expect("server params");
        let cert = params.signed_by(&key, &ca).expect("server cert");
        let cert_der = cert.der().clone();
        let key_der = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der())
            .expect("server key DER");
        let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert_der], key_der)
        .expect("TLS config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));

        let shared = Arc::new(Shared {
            store: Mutex::new(Store {
                rv: 100,
                ..Store::default()
            }),
            changed: watch::channel(100).0,
            faults: Mutex::new(Faults {
                serve_cidrs: false,
                fail_status: None,
                stall: false,
                bookmark_interval: Duration::from_millis(500),
                max_watch_timeout: Duration::from_secs(300),
            }),
            drop_epoch: watch::channel(0).0,
            freeze_epoch: watch::channel(0).0,
            expire_epoch: watch::channel(0).0,
            requests: Mutex::new(Vec::new()),
        });
        let (cmds, mut cmd_rx) = tokio::sync::mpsc::unbounded_channel::<Cmd>();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel::<std::io::Result<SocketAddr>>();
        let sh = shared.clone();
        let thread = spawn(Box::new(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("API server runtime");
            rt.block_on(async move {
                let bind = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
                let (addr, mut server) = match listen(bind) {
                    Ok(l) => {
                        let addr = l.local_addr().expect("local addr");
                        let _ = addr_tx.send(Ok(addr));
                        (
                            addr,
                            Some(tokio::spawn(serve(l, acceptor.clone(), sh.clone()))),
                        )
                    }
                    Err(e) => {
                        let _ = addr_tx.send(Err(e));
                        return;
                    }
                };
                while let Some(cmd) = cmd_rx.recv().await {
                    match cmd {
                        Cmd::Stop(done) => {
                            if let Some(s) = server.take() {
                                s.abort();
                                let _ = s.await;
                            }
                            sh.drop_epoch.send_modify(|e| *e += 1);
                            let _ = done.send(());
                        }
                        Cmd::Start(done) => {
                            if server.is_some() {
                                let _ = done.send(Ok(()));
                                continue;
                            }
                            match listen(addr) {
                                Ok(l) => {
                                    server =
                                        Some(tokio::spawn(serve(l, acceptor.clone(), sh.clone())));
                                    let _ = done.send(Ok(()));
                                }
                                Err(e) => {
                                    let _ = done.send(Err(e));
                                }
                            }
                        }
                        Cmd::Quit => break,
                    }
                }
                if let Some(s) = server.take() {
                    s.abort();
                }
                sh.drop_epoch.send_modify(|e| *e += 1);
            });
        }));
        let addr = addr_rx
            .recv()
            .expect("the API server thread started")
            .expect("binding the API server");
        ApiServer {
            addr,
            shared,
            cmds,
            thread: Some(thread),
            ca_pem: ca.pem(),
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// Writes a kubeconfig for this server (CA, bearer token) and returns its path.
    pub fn kubeconfig(&self) -> PathBuf {
        use base64_engine::encode;
        let path = self.dir.path().join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: test\nclusters:\n- name: test\n  cluster:\n    server: https://{}\n    certificate-authority-data: {}\ncontexts:\n- name: test\n  context: {{cluster: test, user: test}}\n- name: other\n  context: {{cluster: test, user: nobody}}\nusers:\n- name: test\n  user: {{token: test-token}}\n- name: nobody\n  user: {{token: wrong}}\n",
            self.addr,
            encode(self.ca_pem.as_bytes())
        );
        let mut f = std::fs::File::create(&path).expect("writing the kubeconfig");
        f.write_all(text.as_bytes())
            .expect("writing the kubeconfig");
        path
    }

    /// The directory the kubeconfig is written to.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    // ---- objects ------------------------------------------------------------------

    /// Loads every Service, EndpointSlice and ServiceCIDR of a `kind: List` (JSON), as
    /// `kubectl get svc,endpointslices -A -o json` writes it.
    pub fn load_list(&self, list_json: &str) {
        let v: Value = serde_json::from_str(list_json).expect("a JSON list");
        for item in v["items"].as_array().cloned().unwrap_or_default() {
            self.apply(item);
        }
    }

    /// Creates or replaces an object (its `kind` says which resource); returns the new
    /// resourceVersion.
    pub fn apply(&self, mut obj: Value) -> u64 {
        let kind = obj["kind"].as_str().unwrap_or_default().to_string();
        let res = Res::of_kind(&kind).unwrap_or_else(|| panic!("unsupported kind {kind:?}"));
        let ns = if res == Res::Cidrs {
            String::new()
        } else {
            obj["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default")
                .to_string()
        };
        let name = obj["metadata"]["name"]
            .as_str()
            .expect("metadata.name")
            .to_string();
        let (api, k) = res.kind();
        obj["apiVersion"] = json!(api);
        obj["kind"] = json!(k);
        if res != Res::Cidrs {
            obj["metadata"]["namespace"] = json!(ns);
        }
        let mut store = self.shared.store.lock().unwrap();
        store.rv += 1;
        let rv = store.rv;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        if obj["metadata"]["uid"].is_null() {
            obj["metadata"]["uid"] = json!(format!("uid-{rv}"));
        }
        if obj["metadata"]["creationTimestamp"].is_null() {
            obj["metadata"]["creationTimestamp"] = json!(now_rfc3339());
        }
        let obj = Arc::new(obj);
        let kind = if store.objects.insert((res, ns, name), obj.clone()).is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        store.history.push(Change {
            rv,
            res,
            kind,
            object: obj,
        });
        drop(store);
        self.shared.changed.send_replace(rv);
        rv
    }

    /// Deletes an object; returns whether it existed.
    pub fn delete(&self, res: Res, namespace: &str, name: &str) -> bool {
        let mut store = self.shared.store.lock().unwrap();
        let key = (
            res,
            if res == Res::Cidrs {
                String::new()
            } else {
                namespace.to_string()
            },
            name.to_string(),
        );
        let Some(old) = store.objects.remove(&key) else {
            return false;
        };
        store.rv += 1;
        let rv = store.rv;
        let mut obj = (*old).clone();
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        store.history.push(Change {
            rv,
            res,
            kind: "DELETED",
            object: Arc::new(obj),
        });
        drop(store);
        self.shared.changed.send_replace(rv);
        true
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.store.lock().unwrap().rv
    }

    // ---- faults -------------------------------------------------------------------

    /// Serve (or stop serving: 404) `networking.k8s.io/v1` ServiceCIDR.
    pub fn serve_service_cidrs(&self, on: bool) {
        self.shared.faults.lock().unwrap().serve_cidrs = on;
    }

    /// Answer every API request with this HTTP status (`None`: normal service). Open
    /// watches are dropped.
    pub fn fail_with(&self, status: Option<u16>) {
        self.shared.faults.lock().unwrap().fail_status = status;
        if status.is_some() {
            self.drop_connections();
        }
    }

    /// Accept connections and requests but never answer (a hung server); open watches go
    /// silent (no events, no bookmarks).
    pub fn stall(&self, on: bool) {
        self.shared.faults.lock().unwrap().stall = on;
    }

    /// Every watch open now goes silent for good, with its connection held open (a stalled
    /// watch: a proxy or load balancer that lost the stream); later requests, watches
    /// included, are served as usual, so only stall detection brings news through.
    pub fn freeze_watches(&self) {
        self.shared.freeze_epoch.send_modify(|e| *e += 1);
    }

    /// Interval of BOOKMARK events on watches that asked for them.
    pub fn set_bookmark_interval(&self, d: Duration) {
        self.shared.faults.lock().unwrap().bookmark_interval = d;
    }

    /// Caps the watch timeout the client asks for.
    pub fn set_max_watch_timeout(&self, d: Duration) {
        self.shared.faults.lock().unwrap().max_watch_timeout = d;
    }

    /// Compacts the history: every open watch gets an `ERROR` 410 Gone event, and a watch
    /// from any resourceVersion seen so far is answered with 410 too (the client re-lists).
    pub fn expire_watches(&self) {
        {
            let mut store = self.shared.store.lock().unwrap();
            store.compacted = store.rv + 1;
            store.snapshots.clear();
        }
        self.shared.expire_epoch.send_modify(|e| *e += 1);
    }

    /// Ends every open connection abruptly (no final chunk), as a crashed server or a
    /// broken network would.
    pub fn drop_connections(&self) {
        self.shared.drop_epoch.send_modify(|e| *e += 1);
    }

    /// Stops listening and drops every connection (connections are refused).
    pub fn stop(&self) {
        let (tx, rx) = std::sync::mpsc::channel();
        if self.cmds.send(Cmd::Stop(tx)).is_ok() {
            let _ = rx.recv_timeout(Duration::from_secs(5));
        }
    }

    /// Listens again on the same address.
    pub fn restart(&self) {
        let (tx, rx) = std::sync::mpsc::channel();
        self.cmds.send(Cmd::Start(tx)).expect("server thread alive");
        rx.recv_timeout(Duration::from_secs(5))
            .expect("restart answered")
            .expect("re-binding the same address");
    }

    /// Paths requested so far (with query).
    pub fn requests(&self) -> Vec<String> {
        self.shared.requests.lock().unwrap().clone()
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = self.cmds.send(Cmd::Quit);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn listen(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let s = TcpSocket::new_v4()?;
    s.set_reuseaddr(true)?;
    s.bind(addr)?;
    s.listen(1024)
}

async fn serve(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    shared: Arc<Shared>,
) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let shared = shared.clone();
        let mut dropped = shared.drop_epoch.subscribe();
        tokio::spawn(async move {
            tokio::select! {
                _ = dropped.changed() => {}
                _ = async move {
                    if let Ok(tls) = acceptor.accept(tcp).await {
                        let _ = connection(tls, shared).await;
                    }
                } => {}
            }
        });
    }
}

struct Request {
    method: String,
    path: String,
    query: BTreeMap<String, String>,
    auth: Option<String>,
}

async fn read_request<S: tokio::io::AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<Request>> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.drain(..end + 4);
            let mut lines = head.split("\r\n");
            let first = lines.next().unwrap_or_default();
            let mut parts = first.split(' ');
            let method = parts.next().unwrap_or_default().to_string();
            let target = parts.next().unwrap_or_default();
            let (path, q) = target.split_once('?').unwrap_or((target, ""));
            let query = q
                .split('&')
                .filter(|kv| !kv.is_empty())
                .map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                    (k.to_string(), v.to_string())
                })
                .collect();
            let mut auth = None;
            let mut content_length = 0usize;
            for l in lines {
                if let Some((k, v)) = l.split_once(':') {
                    if k.eq_ignore_ascii_case("authorization") {
                        auth = Some(v.trim().to_string());
                    }
                    if k.eq_ignore_ascii_case("content-length") {
                        content_length = v.trim().parse().unwrap_or(0);
                    }
                }
            }
            // GETs carry no body; skip one if sent.
            while buf.len() < content_length {
                let mut chunk = [0u8; 4096];
                let n = s.read(&mut chunk).await?;
                if n == 0 {
                    return Ok(None);
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            buf.drain(..content_length);
            return Ok(Some(Request {
                method,
                path: path.to_string(),
                query,
                auth,
            }));
        }
        let mut chunk = [0u8; 8192];
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn reason_phrase(code: u16) -> &'static str {
    match code {
        200 => "OK",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        410 => "Gone",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

async fn respond<S: tokio::io::AsyncWrite + Unpin>(
    s: &mut S,
    code: u16,
    body: &Value,
) -> std::io::Result<()> {
    let body = serde_json::to_vec(body).unwrap_or_default();
    let head = format!(
        "HTTP/1.1 {code} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        reason_phrase(code),
        body.len()
    );
    s.write_all(head.as_bytes()).await?;
    s.write_all(&body).await?;
    s.flush().await
}

async fn connection<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut s: S,
    shared: Arc<Shared>,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    while let Some(req) = read_request(&mut s, &mut buf).await? {
        let target = if req.query.is_empty() {
            req.path.clone()
        } else {
            let q: Vec<String> = req.query.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!("{}?{}", req.path, q.join("&"))
        };
        shared.requests.lock().unwrap().push(target);
        let faults = shared.faults.lock().unwrap().clone();
        if faults.stall {
            std::future::pending::<()>().await;
        }
        if req.method != "GET" {
            respond(
                &mut s,
                405,
                &status_body(405, "MethodNotAllowed", "read-only test server"),
            )
            .await?;
            continue;
        }
        if req.path == "/version" {
            respond(
                &mut s,
                200,
                &json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-clusterway-test",
                        "platform": "linux/amd64"}),
            )
            .await?;
            continue;
        }
        if let Some(code) = faults.fail_status {
            respond(
                &mut s,
                code,
                &status_body(code, "InternalError", "injected failure"),
            )
            .await?;
            continue;
        }
        if req.auth.as_deref() != Some("Bearer test-token") {
            respond(
                &mut s,
                401,
                &status_body(401, "Unauthorized", "Unauthorized"),
            )
            .await?;
            continue;
        }
        let res = [Res::Services, Res::Slices, Res::Cidrs]
            .into_iter()
            .find(|r| r.path() == req.path);
        let Some(res) = res else {
            respond(
                &mut s,
                404,
                &status_body(
                    404,
                    "NotFound",
                    "the server could not find the requested resource",
                ),
            )
            .await?;
            continue;
        };
        if res == Res::Cidrs && !faults.serve_cidrs {
            respond(
                &mut s,
                404,
                &status_body(
                    404,
                    "NotFound",
                    "the server could not find the requested resource",
                ),
            )
            .await?;
            continue;
        }
        let watching = matches!(
            req.query.get("watch").map(String::as_str),
            Some("1" | "true")
        );
        if !watching {
            match list(&shared, res, &req.query) {
                Ok(body) => respond(&mut s, 200, &body).await?,
                Err((code, body)) => respond(&mut s, code, &body).await?,
            }
            continue;
        }
        watch_stream(&mut s, &shared, res, &req, &faults).await?;
        // A watch ends the connection.
        return Ok(());
    }
    Ok(())
}

/// A list, or a page of it: with `limit`, at most that many items and, when more remain,
/// `metadata.continue` and `remainingItemCount`, as a real API server pages (kube-rs's
/// watcher asks for pages of 500). A `continue` token this server did not give, or one
/// from before a compaction ([`ApiServer::expire_watches`]), gets 410 Expired.
fn list(
    shared: &Shared,
    res: Res,
    query: &BTreeMap<String, String>,
) -> Result<Value, (u16, Value)> {
    let bad = |msg: &str| (400, status_body(400, "BadRequest", msg));
    let limit = match query.get("limit").map(|l| l.parse::<usize>()) {
        None => 0,
        Some(Ok(n)) => n,
        Some(Err(_)) => return Err(bad("limit must be a non-negative integer")),
    };
    let mut store = shared.store.lock().unwrap();
    let (snapshot, offset) = match query.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => {
            let parsed = token
                .split_once('.')
                .and_then(|(id, at)| Some((id.parse::<u64>().ok()?, at.parse::<usize>().ok()?)));
            let Some((id, at)) = parsed else {
                return Err(bad("continue key is not valid"));
            };
            match store.snapshots.get(&id) {
                Some(snap) if snap.res == res => (id, at),
                _ => {
                    return Err((
                        410,
                        status_body(
                            410,
                            "Expired",
                            "The provided continue parameter is too old to display a \
                             consistent list result. You can start a new list without the \
                             continue parameter.",
                        ),
                    ))
                }
            }
        }
        None => {
            let items: Vec<Value> = store
                .objects
                .range((res, String::new(), String::new())..)
                .take_while(|(k, _)| k.0 == res)
                .map(|(_, v)| (**v).clone())
                .collect();
            let rv = store.rv;
            let id = store.next_snapshot;
            store.next_snapshot += 1;
            // Lists a client gave up on are forgotten, oldest first (their tokens expire).
            while store.snapshots.len() >= MAX_SNAPSHOTS {
                store.snapshots.pop_first();
            }
            store.snapshots.insert(id, Snapshot { res, rv, items });
            (id, 0)
        }
    };
    let snap = &store.snapshots[&snapshot];
    let end = if limit == 0 {
        snap.items.len()
    } else {
        offset.saturating_add(limit).min(snap.items.len())
    };
    let items = snap.items.get(offset..end).unwrap_or_default().to_vec();
    let mut metadata = json!({"resourceVersion": snap.rv.to_string()});
    if end < snap.items.len() {
        metadata["continue"] = json!(format!("{snapshot}.{end}"));
        metadata["remainingItemCount"] = json!(snap.items.len() - end);
    } else {
        store.snapshots.remove(&snapshot);
    }
    let (api, kind) = res.list_kind();
    Ok(json!({"apiVersion": api, "kind": kind, "metadata": metadata, "items": items}))
}

async fn write_chunk<S: tokio::io::AsyncWrite + Unpin>(
    s: &mut S,
    line: &[u8],
) -> std::io::Result<()> {
    let mut out = format!("{:x}\r\n", line.len() + 1).into_bytes();
    out.extend_from_slice(line);
    out.extend_from_slice(b"\n\r\n");
    s.write_all(&out).await?;
    s.flush().await
}

fn bookmark(res: Res, rv: u64) -> Value {
    let (api, kind) = res.kind();
    let mut obj = json!({"kind": kind, "apiVersion": api,
        "metadata": {"resourceVersion": rv.to_string(), "creationTimestamp": null}});
    if res == Res::Slices {
        obj["addressType"] = json!("");
        obj["endpoints"] = Value::Null;
        obj["ports"] = Value::Null;
    }
    json!({"type": "BOOKMARK", "object": obj})
}

async fn watch_stream<S: tokio::io::AsyncWrite + Unpin>(
    s: &mut S,
    shared: &Shared,
    res: Res,
    req: &Request,
    faults: &Faults,
) -> std::io::Result<()> {
    let head =
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
    s.write_all(head.as_bytes()).await?;
    s.flush().await?;
    let from: u64 = req
        .query
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let timeout = req
        .query
        .get("timeoutSeconds")
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(1800))
        .min(faults.max_watch_timeout);
    let bookmarks = req.query.get("allowWatchBookmarks").map(String::as_str) == Some("true");
    let gone = |rv: u64| {
        serde_json::to_vec(
            &json!({"type": "ERROR", "object": status_body(410, "Expired",
            &format!("too old resource version: {rv}"))}),
        )
        .unwrap_or_default()
    };
    let (too_old, current) = {
        let store = shared.store.lock().unwrap();
        (from != 0 && from < store.compacted, store.rv)
    };
    if too_old {
        write_chunk(s, &gone(from)).await?;
        s.write_all(b"0\r\n\r\n").await?;
        return s.flush().await;
    }
    let mut cursor = if from == 0 { current } else { from };
    let mut changed = shared.changed.subscribe();
    let mut expired = shared.expire_epoch.subscribe();
    let mut frozen = shared.freeze_epoch.subscribe();
    frozen.borrow_and_update();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut tick = tokio::time::interval(faults.bookmark_interval);
    tick.tick().await;
    loop {
        if frozen.has_changed().unwrap_or(false) {
            // Stalled while open: the connection stays and says nothing more.
            std::future::pending::<()>().await;
        }
        // Send what happened after `cursor`.
        let pending: Vec<Change> = {
            let store = shared.store.lock().unwrap();
            let start = store.history.partition_point(|c| c.rv <= cursor);
            let out = store.history[start..]
                .iter()
                .filter(|c| c.res == res)
                .cloned()
                .collect();
            cursor = cursor.max(store.rv);
            out
        };
        let stalled = shared.faults.lock().unwrap().stall;
        if !stalled {
            for c in pending {
                let line = serde_json::to_vec(&json!({"type": c.kind, "object": &*c.object}))
                    .unwrap_or_default();
                write_chunk(s, &line).await?;
            }
        }
        tokio::select! {
            _ = changed.changed() => {}
            _ = frozen.changed() => {
                // A watch that stalls silently: the client must notice on its own.
                std::future::pending::<()>().await;
            }
            _ = expired.changed() => {
                write_chunk(s, &gone(cursor)).await?;
                s.write_all(b"0\r\n\r\n").await?;
                return s.flush().await;
            }
            _ = tick.tick() => {
                let stalled = shared.faults.lock().unwrap().stall;
                if bookmarks && !stalled {
                    let line = serde_json::to_vec(&bookmark(res, cursor)).unwrap_or_default();
                    write_chunk(s, &line).await?;
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                if shared.faults.lock().unwrap().stall {
                    std::future::pending::<()>().await;
                }
                s.write_all(b"0\r\n\r\n").await?;
                return s.flush().await;
            }
        }
    }
}

/// Minimal base64 (standard alphabet, padded) for the kubeconfig's CA data.
mod base64_engine {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    pub fn encode(data: &[u8]) -> String {
        let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
        for chunk in data.chunks(3) {
            let b = [
                chunk[0],
                chunk.get(1).copied().unwrap_or(0),
                chunk.get(2).copied().unwrap_or(0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
}
