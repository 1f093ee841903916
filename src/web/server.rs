//! The axum router: dashboard assets, `/api/v1/*`, `/metrics`, `/healthz`, `/readyz`, and
//! the bearer-token check in front of everything but the two health endpoints.
//!
//! With `--status-token`, a request is let through with `Authorization: Bearer TOKEN`, or
//! with the `clusterway_token` cookie that `/?token=TOKEN` sets (browsers cannot add a
//! header to a page load or an `EventSource`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::{Context, Result};
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures::StreamExt;
use serde::Deserialize;
use tokio::net::TcpListener;

use super::{api, assets, metrics, observe, Status};

const COOKIE: &str = "clusterway_token";

/// Bind the status listener; a non-loopback address without a token is logged as a
/// warning (allowed: the operator asked for it).
pub async fn bind(addr: SocketAddr, has_token: bool) -> Result<TcpListener> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot bind the status server on {addr} (--status-addr)"))?;
    if !addr.ip().is_loopback() && !has_token {
        tracing::warn!(
            addr = %addr,
            "the status server listens on a non-loopback address without --status-token: \
             anyone who reaches it can read the services, clients and endpoints"
        );
    }
    Ok(listener)
}

/// Start the server and the sampler on the current runtime. `changed` fires on each new
/// table generation.
pub fn spawn(
    listener: TcpListener,
    status: Arc<Status>,
    changed: tokio::sync::watch::Receiver<u64>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(observe::run(status.clone(), changed));
    tokio::spawn(serve(listener, status))
}

/// Serve until the task is aborted.
pub async fn serve(listener: TcpListener, status: Arc<Status>) {
    let addr = listener.local_addr().ok();
    tracing::info!(addr = ?addr, auth = status.token.is_some(), "status server listening");
    if let Err(e) = axum::serve(listener, router(status)).await {
        tracing::error!(error = %e, "status server stopped");
    }
}

pub fn router(status: Arc<Status>) -> Router {
    let protected = Router::new()
        .route("/", get(index))
        .route("/app.js", get(|| async { asset("app.js") }))
        .route("/style.css", get(|| async { asset("style.css") }))
        .route("/favicon.svg", get(|| async { asset("favicon.svg") }))
        .route("/api/v1/status", get(status_json))
        .route("/api/v1/services", get(services))
        .route("/api/v1/services/{ns}/{name}", get(service))
        .route("/api/v1/flows", get(flows))
        .route("/api/v1/events", get(events))
        .route("/api/v1/stream", get(stream))
        .route("/metrics", get(metrics_text))
        .route_layer(middleware::from_fn_with_state(status.clone(), auth));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .merge(protected)
        .with_state(status)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn presented_token(headers: &HeaderMap) -> Option<String> {
    if let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        if let Some(t) = v.strip_prefix("Bearer ") {
            return Some(t.trim().to_string());
        }
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
}

#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

async fn auth(
    State(status): State<Arc<Status>>,
    Query(q): Query<TokenQuery>,
    req: Request,
    next: Next,
) -> Response {
    let Some(want) = status.token.as_deref() else {
        return next.run(req).await;
    };
    // `/?token=…`: remember it in a cookie and reload without it in the address bar.
    if let Some(given) = q.token.as_deref() {
        if req.uri().path() == "/" && constant_time_eq(given.as_bytes(), want.as_bytes()) {
            let cookie = format!("{COOKIE}={given}; Path=/; HttpOnly; SameSite=Strict");
            let mut resp = (StatusCode::SEE_OTHER, [(header::LOCATION, "/")]).into_response();
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                resp.headers_mut().insert(header::SET_COOKIE, v);
            }
            return resp;
        }
    }
    match presented_token(req.headers()) {
        Some(t) if constant_time_eq(t.as_bytes(), want.as_bytes()) => next.run(req).await,
        _ if req.uri().path() == "/" => {
            (StatusCode::UNAUTHORIZED, Html(assets::LOGIN_HTML)).into_response()
        }
        _ => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer realm=\"clusterway\"")],
            "a bearer token is required (--status-token)\n",
        )
            .into_response(),
    }
}

fn asset(name: &str) -> Response {
    match assets::get(name) {
        Some((body, mime)) => (
            [
                (header::CONTENT_TYPE, mime),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            body,
        )
            .into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn index() -> Response {
    asset("index.html")
}

async fn readyz(State(status): State<Arc<Status>>) -> Response {
    let state = status.sync.state.borrow().clone();
    let generation = status.table.load().generation;
    let r = status
        .health
        .readiness(&state, generation, SystemTime::now());
    let code = if r.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, r.text()).into_response()
}

#[derive(Deserialize)]
struct StatusQuery {
    /// `false` leaves out the chart history (the page asks for it once).
    history: Option<bool>,
}

async fn status_json(
    State(status): State<Arc<Status>>,
    Query(q): Query<StatusQuery>,
) -> Json<serde_json::Value> {
    Json(api::status(&status, q.history.unwrap_or(true)))
}

async fn services(
    State(status): State<Arc<Status>>,
    Query(q): Query<api::ServicesQuery>,
) -> Json<serde_json::Value> {
    Json(api::services(&status, &q))
}

async fn service(
    State(status): State<Arc<Status>>,
    Path((ns, name)): Path<(String, String)>,
) -> Response {
    match api::service(&status, &ns, &name) {
        Some(v) => Json(v).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({"error": format!("no Service {ns}/{name} in the table")})),
        )
            .into_response(),
    }
}

#[derive(Deserialize)]
struct ListQuery {
    service: Option<String>,
    limit: Option<usize>,
}

async fn flows(
    State(status): State<Arc<Status>>,
    Query(q): Query<ListQuery>,
) -> Json<serde_json::Value> {
    Json(api::flows(
        &status,
        q.service.as_deref(),
        q.limit.unwrap_or(api::DEFAULT_LIMIT),
    ))
}

async fn events(
    State(status): State<Arc<Status>>,
    Query(q): Query<ListQuery>,
) -> Json<serde_json::Value> {
    Json(api::events(
        &status,
        q.service.as_deref(),
        q.limit.unwrap_or(api::DEFAULT_LIMIT),
    ))
}

async fn metrics_text(State(status): State<Arc<Status>>) -> Response {
    let body = metrics::render(&status);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// Server-sent events: `hello` at once, then `tick` every second (chart point, table
/// generation), `table` on a new table and `event` for each new event.
async fn stream(
    State(status): State<Arc<Status>>,
) -> Sse<impl futures::Stream<Item = Result<Event, Infallible>>> {
    let rx = status.updates.subscribe();
    let hello = futures::stream::once(async {
        Ok::<_, Infallible>(Event::default().event("hello").data("{}"))
    });
    let updates = futures::stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok((name, data)) => {
                    return Some((Ok(Event::default().event(name).data(&*data)), rx));
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    Sse::new(hello.chain(updates)).keep_alive(KeepAlive::default())
}
