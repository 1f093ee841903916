//! The status server of a running gateway (`clusterway run` in the gateway namespace of a
//! test topology): the JSON API, `/metrics` counting exactly the connections made, bounded
//! labels, `/readyz` following the table's sync state, and the token. The server binds
//! 127.0.0.1:9310 inside the gateway namespace; the test queries it from a thread in that
//! namespace. Needs root.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use clusterway::lab::{demo_snapshot, DNS_ECHO_V4, EMPTY_V4, WEB_V4, WEB_V6};
use common::*;
use serde_json::Value;

const STATUS: &str = "127.0.0.1:9310";
const CIDRS: [&str; 4] = [
    "--service-cidr",
    "10.96.0.0/16",
    "--service-cidr",
    "fd00:10:96::/112",
];

/// GET `path` from the status server, optionally with a bearer token.
fn get(topo: &Topology, path: &str, token: Option<&str>) -> HttpResponse {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    get_with(topo, path, &auth)
}

/// GET `path` with extra header lines (each ending in CRLF).
fn get_with(topo: &Topology, path: &str, headers: &str) -> HttpResponse {
    let addr: SocketAddr = STATUS.parse().unwrap();
    topo.gateway()
        .run(|| -> anyhow::Result<HttpResponse> {
            let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
            s.set_read_timeout(Some(IO_TIMEOUT))?;
            let auth = headers;
            write!(
                s,
                "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n"
            )?;
            let mut raw = Vec::new();
            s.read_to_end(&mut raw)?;
            parse_response(&raw)
        })
        .unwrap_or_else(|e| panic!("GET {path}: {e:#}"))
}

/// Read the live-update stream for up to `secs` seconds; returns what arrived.
fn stream(topo: &Topology, secs: u64) -> String {
    let addr: SocketAddr = STATUS.parse().unwrap();
    topo.gateway().run(|| {
        let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        write!(
            s,
            "GET /api/v1/stream HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
        )
        .unwrap();
        let mut out = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        let mut buf = [0u8; 4096];
        while std::time::Instant::now() < deadline {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(_) => {}
            }
            if String::from_utf8_lossy(&out).contains("event: tick") {
                break;
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    })
}

fn json(topo: &Topology, path: &str) -> Value {
    let r = get(topo, path, None);
    assert_eq!(r.status, 200, "GET {path}: {}", r.text());
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("GET {path}: {e}: {}", r.text()))
}

/// The value of the sample `name{labels}` in a text exposition (0 when absent).
fn sample(metrics: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    for line in metrics.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (n, rest) = series.split_once('{').unwrap_or((series, "}"));
        if n != name {
            continue;
        }
        let body = rest.trim_end_matches('}');
        let have: Vec<(&str, &str)> = body
            .split(',')
            .filter(|kv| !kv.is_empty())
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k, v.trim_matches('"')))
            .collect();
        if labels.iter().all(|l| have.contains(l)) && have.len() == labels.len() {
            return value.parse().unwrap();
        }
    }
    0.0
}

fn conns(metrics: &str, service: &str, port: &str, proto: &str, result: &str) -> f64 {
    sample(
        metrics,
        "clusterway_connections_total",
        &[
            ("namespace", "demo"),
            ("service", service),
            ("port", port),
            ("protocol", proto),
            ("result", result),
        ],
    )
}

fn wait_ready(topo: &Topology, gw: &Gateway) {
    let ok = wait_for(
        || {
            topo.gateway()
                .try_run(|| TcpStream::connect_timeout(&STATUS.parse().unwrap(), IO_TIMEOUT))
                .is_ok_and(|r| r.is_ok())
                && get(topo, "/readyz", None).status == 200
        },
        Duration::from_secs(10),
    );
    assert!(ok, "the gateway did not become ready; log:\n{}", gw.logs());
}

#[test]
fn metrics_and_api_count_exactly_the_connections_made() {
    let topo = topology(2);
    let _backends = start_backends(&topo);
    let gw = Gateway::start(&topo, &demo_snapshot(&topo.pod_addrs()), &CIDRS);
    wait_ready(&topo, &gw);
    let r = get(&topo, "/readyz", None);
    assert_eq!(r.text().lines().next(), Some("ready"), "{}", r.text());
    assert_eq!(get(&topo, "/healthz", None).status, 200);

    let before = get(&topo, "/metrics", None).text();
    assert_eq!(conns(&before, "web", "80", "TCP", "ok"), 0.0);

    // 3 + 2 TCP connections to demo/web, 2 refused by demo/empty, 3 UDP flows.
    for _ in 0..3 {
        tcp_get(topo.client(), SocketAddr::new(WEB_V4.into(), 80)).unwrap();
    }
    for _ in 0..2 {
        tcp_get(topo.client(), SocketAddr::new(WEB_V6.into(), 80)).unwrap();
    }
    for _ in 0..2 {
        assert!(tcp_get(topo.client(), SocketAddr::new(EMPTY_V4.into(), 80)).is_err());
    }
    for i in 0..3 {
        let echo = udp_roundtrip(
            topo.client(),
            SocketAddr::new(DNS_ECHO_V4.into(), 53),
            format!("hi {i}").as_bytes(),
        )
        .unwrap();
        assert!(echo.ends_with(&format!("hi {i}")), "{echo}");
    }
    let big = http_get(
        topo.client(),
        SocketAddr::new(WEB_V4.into(), 80),
        "/bytes/100000",
    )
    .unwrap();
    assert_eq!(big.body.len(), 100_000);

    // Counters move by exactly what was made (give the last close a moment).
    let mut metrics = String::new();
    let settled = wait_for(
        || {
            metrics = get(&topo, "/metrics", None).text();
            conns(&metrics, "web", "80", "TCP", "ok") == 6.0
                && conns(&metrics, "empty", "80", "TCP", "no_endpoints") == 2.0
                && conns(&metrics, "dns-echo", "53", "UDP", "ok") == 3.0
        },
        Duration::from_secs(3),
    );
    assert!(settled, "{metrics}");
    std::thread::sleep(Duration::from_millis(300));
    let metrics = get(&topo, "/metrics", None).text();
    assert_eq!(conns(&metrics, "web", "80", "TCP", "ok"), 6.0);
    assert_eq!(conns(&metrics, "web", "80", "TCP", "dial_failed"), 0.0);
    assert_eq!(conns(&metrics, "empty", "80", "TCP", "no_endpoints"), 2.0);
    assert_eq!(conns(&metrics, "empty", "80", "TCP", "ok"), 0.0);
    assert_eq!(conns(&metrics, "dns-echo", "53", "UDP", "ok"), 3.0);
    let to_client = sample(
        &metrics,
        "clusterway_bytes_total",
        &[
            ("namespace", "demo"),
            ("service", "web"),
            ("direction", "to_client"),
        ],
    );
    assert!(to_client >= 100_000.0, "{to_client}");
    assert_eq!(
        sample(
            &metrics,
            "clusterway_services",
            &[("state", "no_endpoints")]
        ),
        1.0
    );
    assert_eq!(
        sample(&metrics, "clusterway_services", &[("state", "serving")]),
        3.0
    );
    assert!(sample(&metrics, "clusterway_dial_duration_seconds_count", &[]) >= 6.0);
    // The proxy's byte path: every byte written to a socket is counted as spliced or copied.
    let moved = sample(
        &metrics,
        "clusterway_proxy_moved_bytes_total",
        &[("method", "splice")],
    ) + sample(
        &metrics,
        "clusterway_proxy_moved_bytes_total",
        &[("method", "copy")],
    );
    assert!(moved >= to_client, "moved {moved}, to clients {to_client}");
    assert!(
        sample(
            &metrics,
            "clusterway_splice_pipes",
            &[("state", "capacity")]
        ) > 0.0
    );
    assert_eq!(
        sample(&metrics, "clusterway_splice_refused_total", &[]),
        0.0
    );
    assert!(
        sample(
            &metrics,
            "clusterway_tun_packets_total",
            &[("direction", "in")]
        ) > 0.0
    );
    assert_eq!(sample(&metrics, "clusterway_table_generation", &[]), 1.0);

    // Bounded labels: no client or endpoint address anywhere, known label names only.
    for line in metrics.lines().filter(|l| !l.starts_with('#')) {
        for ip in ["192.168.77.", "fd77::", "10.244.", "fd00:10:244"] {
            assert!(!line.contains(ip), "address in a label: {line}");
        }
        if let Some((_, labels)) = line.split_once('{') {
            for kv in labels.split('}').next().unwrap().split(',') {
                let k = kv.split('=').next().unwrap();
                assert!(
                    [
                        "namespace",
                        "service",
                        "port",
                        "protocol",
                        "result",
                        "direction",
                        "state",
                        "source",
                        "reason",
                        "method",
                        "table",
                        "le",
                        // clusterway_route_announced: a Service CIDR or ClusterIP, from the
                        // table, withdrawn ones bounded (src/host/announce.rs).
                        "prefix",
                        // clusterway_dataplane: which one runs, which one was asked for.
                        "dataplane",
                        "requested"
                    ]
                    .contains(&k),
                    "unexpected label {k} in {line}"
                );
            }
        }
    }

    // The API: filtering, state, sorting, paging, one Service, events, flows.
    let web = json(&topo, "/api/v1/services?q=WEB");
    assert_eq!(web["matched"], 1);
    assert_eq!(
        web["total"], 5,
        "the lab's five demo Services (db is headless)"
    );
    let row = &web["items"][0];
    assert_eq!(row["name"], "web");
    assert_eq!(row["endpoints"]["ready"], 4, "two pods, v4 and v6: {row}");
    assert_eq!(row["connections"], 6);
    assert_eq!(row["state"], "serving");
    let by_ip = json(&topo, "/api/v1/services?q=10.96.0.53");
    assert_eq!(by_ip["items"][0]["name"], "dns-echo");
    // demo/empty (no endpoints) is unservable; demo/db is headless: reached by its pods'
    // names and addresses, not by a ClusterIP, and shown as such with its pods.
    let unservable = json(&topo, "/api/v1/services?state=unservable&sort=name");
    assert_eq!(unservable["matched"], 1, "{unservable}");
    assert_eq!(unservable["items"][0]["name"], "empty");
    assert_eq!(
        unservable["items"][0]["last_failure"]["result"],
        "no_endpoints"
    );
    assert_eq!(unservable["unservable"], 1, "{unservable}");
    let headless = json(&topo, "/api/v1/services?state=headless");
    assert_eq!(headless["matched"], 1, "{headless}");
    assert_eq!(headless["items"][0]["name"], "db");
    assert!(
        headless["items"][0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("its 2 pods")),
        "{headless}"
    );
    let db = json(&topo, "/api/v1/services/demo/db");
    let pods: Vec<&str> = db["pods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(pods, ["db-0", "db-1"], "{db}");
    let page = json(
        &topo,
        "/api/v1/services?sort=name&order=desc&limit=2&offset=1",
    );
    let names: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["sticky", "empty"]);
    let busiest = json(
        &topo,
        "/api/v1/services?sort=connections&order=desc&limit=1",
    );
    assert_eq!(busiest["items"][0]["name"], "web");

    let detail = json(&topo, "/api/v1/services/demo/web");
    let eps = detail["ports"][0]["endpoints"].as_array().unwrap();
    assert_eq!(eps.len(), 2);
    assert!(eps
        .iter()
        .all(|e| e["ready"] == true && e["usable"] == true));
    assert_eq!(eps[0]["pod"], "pod-1");
    assert_eq!(get(&topo, "/api/v1/services/demo/nope", None).status, 404);
    let empty = json(&topo, "/api/v1/services/demo/empty");
    assert_eq!(empty["failures"].as_array().unwrap().len(), 2, "{empty}");

    let events = json(&topo, "/api/v1/events?limit=50");
    let kinds: Vec<&str> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"no_endpoints"), "{kinds:?}");

    // A connection held open is listed as a flow, and leaves the list when closed.
    let held = topo.client().run(|| {
        let s =
            TcpStream::connect_timeout(&SocketAddr::new(WEB_V4.into(), 80), IO_TIMEOUT).unwrap();
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        s
    });
    let mut flows = Value::Null;
    assert!(wait_for(
        || {
            flows = json(&topo, "/api/v1/flows?service=demo/web");
            flows["total"] == 1
        },
        Duration::from_secs(3)
    ));
    let f = &flows["items"][0];
    assert_eq!(f["service"], "demo/web");
    assert_eq!(f["protocol"], "TCP");
    assert_eq!(
        f["client"].as_str().unwrap().split(':').next(),
        Some("192.168.77.2")
    );
    assert_eq!(f["frontend"], "10.96.0.10:80");
    // The three UDP flows are listed too, until they idle out.
    let all = json(&topo, "/api/v1/flows");
    assert_eq!(all["total"], 4, "{all}");
    drop(held);
    assert!(wait_for(
        || json(&topo, "/api/v1/flows?service=demo/web")["total"] == 0,
        Duration::from_secs(3)
    ));

    let status = json(&topo, "/api/v1/status");
    assert_eq!(status["source"]["kind"], "file");
    assert_eq!(status["sync"]["state"], "synced");
    assert_eq!(status["tun"]["up"], true);
    assert_eq!(status["routes"]["installed"], 2);
    assert_eq!(status["ready"]["ready"], true);

    let live = stream(&topo, 3);
    assert!(live.contains("text/event-stream"), "{live}");
    assert!(live.contains("event: hello"), "{live}");
    assert!(live.contains("event: tick"), "{live}");
    assert!(live.contains("\"new_per_s\""), "{live}");

    let page = get(&topo, "/", None);
    assert_eq!(page.status, 200);
    assert!(page.text().contains("clusterway"));
}

#[test]
fn readyz_follows_the_sync_state_and_the_token_guards_the_rest() {
    let topo = topology(1);
    let _backends = start_backends(&topo);
    let good = demo_snapshot(&topo.pod_addrs());
    let mut args = CIDRS.to_vec();
    args.extend(["--ready-max-stale", "1s", "--status-token", "s3cret"]);
    let gw = Gateway::start(&topo, &good, &args);
    wait_ready(&topo, &gw);

    // The token guards the page, the API and /metrics, not the health endpoints.
    assert_eq!(get(&topo, "/api/v1/status", None).status, 401);
    assert_eq!(get(&topo, "/api/v1/status", Some("wrong")).status, 401);
    assert_eq!(get(&topo, "/metrics", None).status, 401);
    assert_eq!(get(&topo, "/", None).status, 401);
    assert_eq!(get(&topo, "/api/v1/status", Some("s3cret")).status, 200);
    assert_eq!(get(&topo, "/metrics", Some("s3cret")).status, 200);
    assert_eq!(get(&topo, "/healthz", None).status, 200);
    // In a browser: `/?token=` once sets a cookie that opens the page and the API.
    let login = get(&topo, "/?token=s3cret", None);
    assert_eq!(login.status, 303);
    let cookie = login.header("set-cookie").unwrap().to_owned();
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    let pair = cookie.split(';').next().unwrap();
    let page = get_with(&topo, "/", &format!("Cookie: {pair}\r\n"));
    assert_eq!(page.status, 200);
    assert!(page.text().contains("/app.js"));
    assert_eq!(get(&topo, "/?token=nope", None).status, 401);

    // A broken file on reload: the last table keeps serving, the source is stale, and
    // once stale longer than --ready-max-stale, /readyz says so with the reason.
    gw.write_snapshot_in_place("kind: [\n");
    let mut body = String::new();
    let flipped = wait_for(
        || {
            let r = get(&topo, "/readyz", None);
            body = r.text();
            r.status == 503
        },
        Duration::from_secs(5),
    );
    assert!(flipped, "{body}\n{}", gw.logs());
    assert!(body.starts_with("not ready: table\n"), "{body}");
    assert!(body.contains("tun: ok"), "{body}");
    assert!(body.contains("routes: ok (2 installed)"), "{body}");
    let status: Value =
        serde_json::from_slice(&get(&topo, "/api/v1/status", Some("s3cret")).body).unwrap();
    assert_eq!(status["sync"]["state"], "stale");
    let events: Value =
        serde_json::from_slice(&get(&topo, "/api/v1/events", Some("s3cret")).body).unwrap();
    assert!(
        events["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "sync" && e["level"] == "error"),
        "{events}"
    );
    assert!(status["sync"]["error"]
        .as_str()
        .unwrap()
        .contains("snapshot"));
    assert_eq!(
        tcp_get(topo.client(), SocketAddr::new(WEB_V4.into(), 80)).unwrap(),
        "pod-1\n"
    );

    // A good file again: synced and ready.
    gw.update_snapshot(&good);
    assert!(
        wait_for(
            || get(&topo, "/readyz", None).status == 200,
            Duration::from_secs(5)
        ),
        "{}",
        gw.logs()
    );
    let metrics = get(&topo, "/metrics", Some("s3cret")).text();
    assert_eq!(
        sample(
            &metrics,
            "clusterway_sync_state",
            &[("source", "file"), ("state", "synced")]
        ),
        1.0
    );
}

#[test]
fn a_non_loopback_status_address_without_a_token_is_served_with_a_warning() {
    let topo = topology(1);
    let mut args = CIDRS.to_vec();
    args.extend(["--status-addr", "0.0.0.0:9310"]);
    let gw = Gateway::start(&topo, &demo_snapshot(&topo.pod_addrs()), &args);
    let addr = SocketAddr::new(topo.gateway_ip(false), 9310);
    let mut health = None;
    assert!(wait_for(
        || {
            health = http_get(topo.client(), addr, "/healthz").ok();
            health.is_some()
        },
        Duration::from_secs(5)
    ));
    assert_eq!(health.unwrap().status, 200);
    assert!(
        gw.logged("non-loopback address without --status-token"),
        "{}",
        gw.logs()
    );
}

/// Read one HTTP/1.1 response with a `Content-Length` body from a kept-alive connection.
fn read_one_response(s: &mut TcpStream) -> String {
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).unwrap(), 1, "connection closed mid-head");
        raw.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&raw).to_string();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or_else(|| panic!("no Content-Length in {head:?}"));
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    String::from_utf8_lossy(&body).to_string()
}

#[test]
fn with_the_proxy_on_two_workers_each_flow_is_steered_to_the_worker_running_its_proxy() {
    let topo = topology(2);
    let _backends = start_backends(&topo);
    let mut extra: Vec<&str> = CIDRS.to_vec();
    extra.extend(["--proxy-on-workers", "--queues", "2"]);
    let gw = Gateway::start(&topo, &demo_snapshot(&topo.pod_addrs()), &extra);
    wait_ready(&topo, &gw);
    assert!(gw.logged("queues=2 "), "log:\n{}", gw.logs());
    assert!(gw.logged("proxy=\"workers\""), "log:\n{}", gw.logs());

    // Connections whose first packets may meet the other worker (the kernel learns a
    // flow's queue only after delivering its SYN), then many requests on each.
    const FLOWS: usize = 16;
    const REQUESTS: usize = 25;
    let addr = SocketAddr::new(WEB_V4.into(), 80);
    let answered = topo.client().run(move || {
        let mut streams: Vec<TcpStream> = (0..FLOWS)
            .map(|_| {
                let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).unwrap();
                s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
                s
            })
            .collect();
        let mut answered = 0;
        for _ in 0..REQUESTS {
            for s in streams.iter_mut() {
                // One write: a request split over segments would wait on delayed ACKs.
                let request = format!("GET / HTTP/1.1\r\nHost: {addr}\r\n\r\n");
                s.write_all(request.as_bytes()).unwrap();
                let body = read_one_response(s);
                assert!(body.starts_with("pod-"), "{body:?}");
                answered += 1;
            }
        }
        answered
    });
    assert_eq!(answered, FLOWS * REQUESTS);

    // Each request and its answer are at least two packets read from the device (the
    // request, and the answer on its way back). A flow left on the wrong worker would put
    // all of them off their owner; steered back, a flow has at most its SYN-ACK and a
    // packet or two racing it there.
    let metrics = get(&topo, "/metrics", None).text();
    let off = sample(&metrics, "clusterway_tun_packets_off_owner_total", &[]);
    let total = sample(
        &metrics,
        "clusterway_tun_packets_total",
        &[("direction", "in")],
    );
    assert!(total >= (FLOWS * REQUESTS * 2) as f64, "{total} packets in");
    assert!(
        off <= (2 * FLOWS) as f64,
        "{off} of {total} packets read off their owner's queue; log:\n{}",
        gw.logs()
    );
}

/// A ClusterIP outside every `--service-cidr` of its family cannot reach the gateway: it is
/// a warning at start and on reload, "not routed" in the API, on `/readyz` (still ready:
/// the other Services are served) and in `/metrics`; fixing the file clears it.
#[test]
fn a_cluster_ip_outside_the_service_cidrs_is_reported_not_routed() {
    let topo = topology(1);
    let good = demo_snapshot(&topo.pod_addrs());
    let stray = "\n---\napiVersion: v1\nkind: Service\n\
                 metadata: {name: stray, namespace: demo}\n\
                 spec:\n  clusterIP: 10.97.0.7\n  clusterIPs: [10.97.0.7]\n  \
                 ports: [{name: http, port: 80, protocol: TCP}]\n";
    let with_stray = format!("{good}{stray}");
    let gw = Gateway::start(&topo, &with_stray, &CIDRS);
    wait_ready(&topo, &gw);
    assert!(
        gw.logged(
            "1 ClusterIP not routed: 10.97.0.7 (demo/stray): outside every routed Service CIDR"
        ),
        "{}",
        gw.logs()
    );

    let ready = get(&topo, "/readyz", None);
    assert_eq!(ready.status, 200, "{}", ready.text());
    assert!(
        ready
            .text()
            .contains("routes: ok (2 installed; 1 ClusterIP not routed: 10.97.0.7 (demo/stray)"),
        "{}",
        ready.text()
    );
    let status = json(&topo, "/api/v1/status");
    let listed = &status["routes"]["not_routed"];
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{status}");
    assert_eq!(listed[0]["ip"], "10.97.0.7");
    assert_eq!(listed[0]["service"], "demo/stray");
    assert_eq!(listed[0]["reason"], "outside_service_cidrs");
    let rows = json(&topo, "/api/v1/services?state=not_routed");
    assert_eq!(rows["matched"], 1, "{rows}");
    assert_eq!(rows["items"][0]["name"], "stray");
    assert_eq!(rows["items"][0]["not_routed"][0]["ip"], "10.97.0.7");
    // Services inside the ranges carry no mark.
    let web = json(&topo, "/api/v1/services/demo/web");
    assert!(web["service"].get("not_routed").is_none(), "{web}");
    let metrics = get(&topo, "/metrics", None).text();
    let gauge = |m: &str, reason| {
        sample(
            m,
            "clusterway_cluster_ips_not_routed",
            &[("reason", reason)],
        )
    };
    assert_eq!(gauge(&metrics, "outside_service_cidrs"), 1.0, "{metrics}");
    assert_eq!(gauge(&metrics, "ipv6_disabled"), 0.0);

    // The file without the stray Service: the report clears, and says so.
    gw.update_snapshot(&good);
    assert!(
        wait_for(
            || json(&topo, "/api/v1/status")["routes"]["not_routed"]
                .as_array()
                .is_some_and(Vec::is_empty),
            Duration::from_secs(10)
        ),
        "{}",
        gw.logs()
    );
    assert!(
        gw.logged("every exposed ClusterIP is inside the routed ranges again"),
        "{}",
        gw.logs()
    );
    assert!(!get(&topo, "/readyz", None).text().contains("not routed"));
}
