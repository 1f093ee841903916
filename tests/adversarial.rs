//! The gateway under attack, in namespaces: floods of spoofed SYNs (at a ClientIP-affinity
//! Service and at a plain one), of spoofed UDP datagrams, of fragments that never complete,
//! and of malformed and structured-random packets, each sent by a generator of our own
//! (a raw socket in the test's client namespace, aimed only at the test's Service range).
//! During each flood a transfer that started before it must complete, new connections from
//! the legitimate client to another Service must keep succeeding, the gateway's resident
//! memory must stay under a bound, and what it dropped must be counted by reason.
//!
//! Every flood is bounded in packets and in time; the scenarios run one at a time (a lock)
//! so that two floods never share the two cores. Needs root; every namespace is the test's
//! own and is removed on drop, also on failure. `bench/flood.sh` runs this file in release
//! mode and collects the `FLOOD` lines it prints (offered and handled packets per second,
//! resident memory before, during and after).

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// One scenario at a time: floods measure the gateway, not each other.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The spoofed sources: the client's link, 192.168.77.0/24, every host but the real client
/// (.2) and the gateway (.1), so that the gateway's answers go back towards the client
/// namespace (where nobody takes them) and never anywhere else.
fn spoofed_source(n: u64) -> [u8; 4] {
    let host = 3 + (n % 250) as u8;
    [192, 168, 77, host]
}

/// Source port of the `n`th spoofed packet: with the source, distinct for 250 × 60,000
/// packets.
fn spoofed_port(n: u64) -> u16 {
    1024 + ((n / 250) % 60_000) as u16
}

/// How many packets a flood sends and how fast; `CW_FLOOD_SCALE` (a factor, default 1)
/// scales the count, for `bench/flood.sh`.
fn flood_size(base: u64) -> u64 {
    let scale: f64 = std::env::var("CW_FLOOD_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    ((base as f64) * scale).max(1.0) as u64
}

/// Packets offered per second by every flood.
const RATE: u64 = 50_000;
/// A flood stops after this long even if it has not sent its count.
const FLOOD_MAX: Duration = Duration::from_secs(8);
/// The gateway's resident memory may grow by at most this much during a flood. Measured
/// (bench/README.md): 2 to 11 MiB for the floods here (the tables' bounds set the peak, not
/// the flood's length; before the bounds, a UDP flood alone added 28 MiB); the bound leaves
/// room for the allocator under load.
const RSS_GROWTH_MAX_KIB: u64 = 64 * 1024;
/// With flow offload the kernel holds the flood's flows and nothing of them stays in the
/// process, before or after the flood: measured 1 to 3 MiB. (Reading the per-Service byte
/// counters once listed the whole netfilter table, the UDP flood's set elements included:
/// +53 MiB a few seconds after a spoofed UDP flood.)
const RSS_GROWTH_MAX_OFFLOAD_KIB: u64 = 16 * 1024;
/// How long the quiet after a flood is watched: with offload, past one read of the
/// per-Service byte counters (every 5 s, `dataplane::ctevents`).
fn settle_time() -> Duration {
    if offload_under_test() {
        Duration::from_secs(6)
    } else {
        Duration::from_secs(1)
    }
}

/// What a flood did.
#[derive(Debug, Clone, Copy)]
struct Sent {
    packets: u64,
    errors: u64,
    elapsed: Duration,
}

/// Send `count` packets built by `make` (into the buffer; returns the destination) through
/// a raw IPv4 socket (IP_HDRINCL) in the client namespace, at most `RATE` per second and
/// for at most [`FLOOD_MAX`].
fn flood<F>(topo: &Topology, count: u64, make: F) -> std::thread::JoinHandle<anyhow::Result<Sent>>
where
    F: FnMut(u64, &mut Vec<u8>) -> Ipv4Addr + Send + 'static,
{
    let mut make = make;
    topo.client()
        .spawn(move || -> std::io::Result<Sent> {
            use socket2::{Domain, Protocol, SockAddr, Socket, Type};
            let socket = Socket::new(
                Domain::IPV4,
                Type::RAW,
                Some(Protocol::from(libc::IPPROTO_RAW)),
            )?;
            let start = Instant::now();
            let mut buf = Vec::with_capacity(2048);
            let (mut packets, mut errors) = (0u64, 0u64);
            while packets < count && start.elapsed() < FLOOD_MAX {
                // A batch, then wait until the rate allows the next one.
                for _ in 0..256 {
                    if packets >= count {
                        break;
                    }
                    buf.clear();
                    let dst = make(packets, &mut buf);
                    let to = SockAddr::from(SocketAddr::new(dst.into(), 0));
                    if socket.send_to(&buf, &to).is_err() {
                        errors += 1;
                    }
                    packets += 1;
                }
                let due = start + Duration::from_secs_f64(packets as f64 / RATE as f64);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            Ok(Sent {
                packets,
                errors,
                elapsed: start.elapsed(),
            })
        })
        .map(|h| {
            // Flatten the thread's io::Result into the handle's anyhow::Result.
            std::thread::spawn(move || -> anyhow::Result<Sent> {
                match h.join() {
                    Ok(Ok(Ok(sent))) => Ok(sent),
                    Ok(Ok(Err(e))) => Err(e.into()),
                    Ok(Err(e)) => Err(e),
                    Err(_) => anyhow::bail!("the flood thread panicked"),
                }
            })
        })
        .expect("starting the flood in the client namespace")
}

/// The gateway's resident memory, sampled every 20 ms until stopped: the peak seen.
struct RssSampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssSampler {
    fn start(pid: u32) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let (s, p) = (stop.clone(), peak.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Some(kib) = rss_of(pid) {
                    p.fetch_max(kib, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        RssSampler {
            stop,
            peak,
            thread: Some(thread),
        }
    }

    fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.peak.load(Ordering::Relaxed)
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// VmRSS of `pid` in KiB.
fn rss_of(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

const PLAIN: &str = "10.96.0.21:80";
const STICKY: &str = "10.96.0.20:80";
/// The Service the legitimate client opens new connections to during a flood.
const OTHER: &str = "10.96.0.30:80";
const DNS: &str = "10.96.0.53:53";

/// The Services: sticky (ClientIP affinity), plain, other (TCP 80 → 8080) and dns (UDP 53
/// → 5353), each on both pods.
fn snapshot(topo: &Topology) -> String {
    let eps: Vec<String> = (1..=topo.pod_count())
        .map(|k| {
            format!(
                "  - addresses: [\"{}\"]\n    conditions: {{ready: true}}\n",
                topo.pod_ip(k, false)
            )
        })
        .collect();
    let svc = |name: &str, ip: &str, proto: &str, port: u16, target: u16, extra: &str| {
        format!(
            r#"- apiVersion: v1
  kind: Service
  metadata: {{name: {name}, namespace: t}}
  spec:
    clusterIP: "{ip}"
    clusterIPs: ["{ip}"]
    ports: [{{name: p, port: {port}, protocol: {proto}, targetPort: {target}}}]
{extra}- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {{name: {name}-a, namespace: t, labels: {{kubernetes.io/service-name: {name}}}}}
  addressType: IPv4
  ports: [{{name: p, port: {target}, protocol: {proto}}}]
  endpoints:
{eps}"#,
            eps = eps.concat()
        )
    };
    let sticky = "    sessionAffinity: ClientIP\n    sessionAffinityConfig: {clientIP: {timeoutSeconds: 600}}\n";
    format!(
        "apiVersion: v1\nkind: List\nitems:\n{}{}{}{}",
        svc("sticky", "10.96.0.20", "TCP", 80, 8080, sticky),
        svc("plain", "10.96.0.21", "TCP", 80, 8080, ""),
        svc("other", "10.96.0.30", "TCP", 80, 8080, ""),
        svc("dns", "10.96.0.53", "UDP", 53, 5353, ""),
    )
}

/// A spoofed SYN to `dst:80`.
fn spoofed_syn(n: u64, dst: [u8; 4], buf: &mut Vec<u8>) -> Ipv4Addr {
    etherparse::PacketBuilder::ipv4(spoofed_source(n), dst, 64)
        .tcp(spoofed_port(n), 80, n as u32, 64240)
        .syn()
        .write(buf, &[])
        .expect("building a SYN");
    dst.into()
}

/// What the legitimate client saw and the gateway counted during one flood.
struct Outcome {
    sent: Sent,
    transfer: anyhow::Result<usize>,
    new_ok: usize,
    new_tried: usize,
    /// Legitimate UDP queries (new flows) to [`DNS`] answered during the flood, of
    /// [`QUERIES`].
    udp_ok: usize,
    rss_before: u64,
    rss_peak: u64,
    rss_after: u64,
    /// The peak over [`settle_time`] after the flood.
    rss_settled_peak: u64,
    packets_in: f64,
    metrics: String,
    logs: String,
}

/// Bytes of the transfer that runs through each flood.
const TRANSFER: usize = 8_000_000;
/// New connections the legitimate client opens during each flood.
const NEW_CONNECTIONS: usize = 20;
/// How long one of those may take (SYN retransmitted after 1 and 3 s).
const NEW_CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);
/// UDP queries (each a new flow) the legitimate client sends during each flood.
const QUERIES: usize = 5;

/// Start the gateway, start a transfer, run `flood`, open new connections to [`OTHER`]
/// while it runs, and collect what happened.
fn under_flood<F>(name: &str, count: u64, make: F) -> (Topology, Outcome)
where
    F: FnMut(u64, &mut Vec<u8>) -> Ipv4Addr + Send + 'static,
{
    let topo = topology(2);
    let backends = start_backends(&topo);
    let gw = Gateway::start(&topo, &snapshot(&topo), &["--service-cidr", "10.96.0.0/16"]);
    assert!(gw.wait_routed("10.96.0.30".parse().unwrap(), Duration::from_secs(5)));
    // Warm up (neighbours, first flows), then measure from a quiet start.
    for addr in [PLAIN, STICKY, OTHER] {
        assert!(
            wait_for(
                || tcp_get(topo.client(), addr.parse().unwrap()).is_ok(),
                Duration::from_secs(5)
            ),
            "{addr} does not answer before the flood: {}",
            gw.logs()
        );
    }
    let pid = gw.pid().expect("the gateway runs");
    let rss_before = rss_of(pid).unwrap_or(0);
    let in_before = metric_value(
        &gateway_metrics(&topo),
        "clusterway_tun_packets_total{direction=\"in\"}",
    );
    let sampler = RssSampler::start(pid);

    // A transfer that starts before the flood and runs through it (read at a paced rate,
    // so that it lasts about as long as the flood). The flood starts once its first bytes
    // arrived: what it must survive is an established flow (new ones are the legitimate
    // client's connections below).
    let (started, first_bytes) = std::sync::mpsc::channel();
    let transfer = {
        let addr: SocketAddr = PLAIN.parse().unwrap();
        topo.client()
            .spawn(move || slow_get(addr, TRANSFER, started))
            .expect("starting the transfer")
    };
    assert!(
        first_bytes.recv_timeout(Duration::from_secs(5)).is_ok(),
        "the transfer did not start: {}",
        gw.logs()
    );
    let flooding = flood(&topo, count, make);
    // New connections from the legitimate client to another Service, spread over the
    // flood. Each may take [`NEW_CONNECTION_TIMEOUT`]: the flood shares the client's link
    // and cores, so a SYN can be lost before it reaches the gateway and be retransmitted
    // (after 1 and 3 s); what must not happen is a table that locks the client out.
    std::thread::sleep(Duration::from_millis(300));
    let other: SocketAddr = OTHER.parse().unwrap();
    let mut new_ok = 0;
    for _ in 0..NEW_CONNECTIONS {
        let got = topo
            .client()
            .run(|| http_get_here(other, "/", NEW_CONNECTION_TIMEOUT));
        if got.is_ok_and(|r| r.status == 200) {
            new_ok += 1;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Each query is tried twice, as a resolver does (a datagram lost in the crowd).
    let udp_ok = (0..QUERIES)
        .filter(|_| {
            (0..2).any(|_| {
                udp_roundtrip(topo.client(), DNS.parse().unwrap(), b"legit")
                    .is_ok_and(|a| a.ends_with("legit"))
            })
        })
        .count();
    let sent = flooding
        .join()
        .expect("the flood thread")
        .expect("the flood ran");
    let transfer = match transfer.join() {
        Ok(r) => r.and_then(|r| r),
        Err(_) => Err(anyhow::anyhow!("the transfer thread panicked")),
    };
    let rss_peak = sampler.stop();
    let metrics = gateway_metrics(&topo);
    let packets_in =
        metric_value(&metrics, "clusterway_tun_packets_total{direction=\"in\"}") - in_before;
    // After: resident memory one second into the quiet (freed memory the allocator keeps
    // is given back only once many flows closed, see dataplane::memory), and its peak over
    // the settle time (what the gateway does with the flood's leftovers).
    let settling = RssSampler::start(pid);
    std::thread::sleep(Duration::from_secs(1));
    let rss_after = rss_of(pid).unwrap_or(0);
    std::thread::sleep(settle_time().saturating_sub(Duration::from_secs(1)));
    let rss_settled_peak = settling.stop();
    let outcome = Outcome {
        sent,
        transfer,
        new_ok,
        new_tried: NEW_CONNECTIONS,
        udp_ok,
        rss_before,
        rss_peak,
        rss_after,
        rss_settled_peak,
        packets_in,
        metrics,
        logs: gw.logs(),
    };
    let secs = outcome.sent.elapsed.as_secs_f64().max(1e-3);
    println!(
        "FLOOD {name}: offered {} packets in {:.2} s ({:.0}/s, {} send errors), gateway read {:.0} \
         ({:.0}/s); transfer {}; new connections {}/{}; UDP queries {}/{}; RSS KiB before {} peak {} after {} settled peak {}",
        outcome.sent.packets,
        secs,
        outcome.sent.packets as f64 / secs,
        outcome.sent.errors,
        outcome.packets_in,
        outcome.packets_in / secs,
        match &outcome.transfer {
            Ok(n) => format!("{n} bytes"),
            Err(e) => format!("failed: {e:#}"),
        },
        outcome.new_ok,
        outcome.new_tried,
        outcome.udp_ok,
        QUERIES,
        outcome.rss_before,
        outcome.rss_peak,
        outcome.rss_after,
        outcome.rss_settled_peak,
    );
    drop(gw);
    drop(backends);
    (topo, outcome)
}

/// `GET /bytes/n` from `addr`, reading 64 KiB every 40 ms (about 1.6 MB/s); the body's
/// length. Says on `started` when the first bytes arrived.
fn slow_get(
    addr: SocketAddr,
    n: usize,
    started: std::sync::mpsc::Sender<()>,
) -> anyhow::Result<usize> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET /bytes/{n} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::with_capacity(n + 512);
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let got = s.read(&mut chunk)?;
        if got == 0 {
            break;
        }
        if raw.is_empty() {
            let _ = started.send(());
        }
        raw.extend_from_slice(&chunk[..got]);
        std::thread::sleep(Duration::from_millis(40));
    }
    Ok(parse_response(&raw)?.body.len())
}

/// What every flood must leave true.
fn assert_survived(name: &str, o: &Outcome) {
    assert!(o.sent.packets > 0, "{name}: nothing was sent");
    match &o.transfer {
        Ok(n) => assert_eq!(*n, TRANSFER, "{name}: the transfer was cut short"),
        Err(e) => panic!(
            "{name}: the transfer failed during the flood: {e:#}\n{}\n{}",
            o.logs, o.metrics
        ),
    }
    // Generous for a loaded 2-core machine: a legitimate SYN may be lost in the crowd (the
    // kernel drops what the TUN queue cannot hold, before the gateway sees it) and its
    // retries too, but the flows a flood leaves behind must never lock the client out (a
    // table full of spoofed flows did: 1-3 of 20, bench/README.md "Floods").
    assert!(
        o.new_ok + 4 >= o.new_tried,
        "{name}: only {} of {} new connections succeeded",
        o.new_ok,
        o.new_tried
    );
    assert!(
        o.udp_ok + 1 >= QUERIES,
        "{name}: only {} of {QUERIES} UDP queries were answered",
        o.udp_ok
    );
    assert!(
        o.rss_peak <= o.rss_before + RSS_GROWTH_MAX_KIB,
        "{name}: resident memory grew from {} KiB to {} KiB",
        o.rss_before,
        o.rss_peak
    );
    let bound = if offload_under_test() {
        RSS_GROWTH_MAX_OFFLOAD_KIB
    } else {
        RSS_GROWTH_MAX_KIB
    };
    let worst = o.rss_peak.max(o.rss_settled_peak);
    assert!(
        worst <= o.rss_before + bound,
        "{name}: resident memory grew from {} KiB to {worst} KiB (during or in the {:?} after)",
        o.rss_before,
        settle_time()
    );
}

fn metric(o: &Outcome, series: &str) -> f64 {
    metric_value(&o.metrics, series)
}

/// Where a SYN flood went. The proxy: its table filled with unanswered flows, which made
/// room for new ones, counted. Offload: every spoofed SYN was decided and handed to the
/// kernel (a conntrack entry the kernel expires, or drops early when its table is full:
/// unreplied entries are not assured), so nothing of them stays in the process.
fn assert_syn_flood_accounted(o: &Outcome) {
    let series = if offload_under_test() {
        "clusterway_offload_flows_total"
    } else {
        "clusterway_flow_evictions_total{table=\"tcp_unanswered\"}"
    };
    assert!(metric(o, series) > 0.0, "{series}: {}", o.metrics);
}

#[test]
fn spoofed_syn_flood_at_an_affinity_service() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let count = flood_size(150_000);
    let (_topo, o) = under_flood("syn-affinity", count, |n, buf| {
        spoofed_syn(n, [10, 96, 0, 20], buf)
    });
    assert_survived("syn-affinity", &o);
    assert_syn_flood_accounted(&o);
    assert!(o.packets_in > 0.0);
    // A spoofed SYN's handshake never completes, so it records no ClientIP affinity (with
    // offload too, where the kernel carries the flow): only the legitimate client's, from
    // its connection before the flood, of 250 spoofed sources.
    let affinities = metric(&o, "clusterway_client_affinities");
    assert!(affinities <= 1.0, "{affinities} affinities: {}", o.metrics);
}

#[test]
fn spoofed_syn_flood_at_a_plain_service() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let count = flood_size(150_000);
    let (_topo, o) = under_flood("syn-plain", count, |n, buf| {
        spoofed_syn(n, [10, 96, 0, 21], buf)
    });
    assert_survived("syn-plain", &o);
    assert_syn_flood_accounted(&o);
}

#[test]
fn spoofed_udp_flood() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let count = flood_size(100_000);
    let (_topo, o) = under_flood("udp", count, |n, buf| {
        etherparse::PacketBuilder::ipv4(spoofed_source(n), [10, 96, 0, 53], 64)
            .udp(spoofed_port(n), 53)
            .write(buf, b"spoofed query")
            .expect("building a datagram");
        Ipv4Addr::new(10, 96, 0, 53)
    });
    assert_survived("udp", &o);
    if offload_under_test() {
        // Each spoofed datagram was decided and handed to the kernel: a conntrack entry
        // (bounded by nf_conntrack_max; one that saw no second datagram is never assured,
        // so the kernel drops it early when its table is full) and, for the flow, an
        // element of the netfilter table's UDP set (bounded by its size, expiring); nothing
        // of them stays in the process.
        assert!(
            metric(&o, "clusterway_offload_flows_total") > 0.0,
            "{}",
            o.metrics
        );
        return;
    }
    // Each spoofed datagram is a flow of its own: the table filled and the flows quiet
    // longest made room (counted), and a legitimate query still gets its answer.
    assert!(
        metric(&o, "clusterway_flow_evictions_total{table=\"udp\"}") > 0.0,
        "{}",
        o.metrics
    );
}

#[test]
fn fragments_that_never_complete() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let count = flood_size(100_000);
    let (_topo, o) = under_flood("fragments", count, |n, buf| {
        // The first 1,200 bytes of a UDP datagram whose rest never comes: IPv4 header with
        // More Fragments set, offset 0, a fresh identification each time.
        let mut ip = etherparse::Ipv4Header::new(
            1208,
            64,
            etherparse::IpNumber::UDP,
            spoofed_source(n),
            [10, 96, 0, 53],
        )
        .expect("an IPv4 header");
        ip.identification = n as u16;
        ip.more_fragments = true;
        ip.dont_fragment = false;
        ip.header_checksum = ip.calc_header_checksum();
        ip.write(buf).expect("writing the header");
        let udp = etherparse::UdpHeader {
            source_port: spoofed_port(n),
            destination_port: 53,
            length: 4000,
            checksum: 0,
        };
        udp.write(buf).expect("writing the UDP header");
        buf.resize(20 + 1208, (n % 251) as u8);
        Ipv4Addr::new(10, 96, 0, 53)
    });
    assert_survived("fragments", &o);
    if offload_under_test() {
        // Offload turns connection tracking on in the gateway's namespace, and conntrack
        // needs whole datagrams: the kernel's defragmenter holds the fragments in its own
        // bounded queue (net.ipv4.ipfrag_high_thresh) and expires them, so next to none
        // reach the TUN device.
        assert!(
            o.packets_in < count as f64 / 10.0,
            "{} of {count} fragments reached the gateway",
            o.packets_in
        );
        return;
    }
    // The reassembly budget filled and refused the rest, counted by reason.
    assert!(
        metric(
            &o,
            "clusterway_tun_drops_total{reason=\"fragment_table_full\"}"
        ) > 0.0,
        "{}",
        o.metrics
    );
}

/// A deterministic generator (xorshift), so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Packets of the packet parser's fuzz inputs, raw IP packets, in a stable order: the
/// committed seeds (`fuzz/seeds/parse`) and what fuzz runs on this machine found
/// (`fuzz/corpus/parse`, not committed, present once `scripts/fuzz.sh` ran).
fn fuzz_corpus() -> Vec<Vec<u8>> {
    let fuzz = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut files = Vec::new();
    let mut dirs = vec![fuzz.join("seeds/parse"), fuzz.join("corpus/parse")];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else {
                files.push(p);
            }
        }
    }
    files.sort();
    files
        .iter()
        .filter_map(|p| std::fs::read(p).ok())
        .filter(|b| b.len() >= 20 && b.len() <= 1400 && b[0] >> 4 == 4)
        .collect()
}

/// The `n`th malformed or structured-random IPv4 packet to the Service range: a header the
/// gateway's kernel accepts and forwards (its checksum and length are filled in by the
/// raw socket), then anything — TCP, UDP and ICMP headers with random fields, options and
/// lengths, truncated, or random bytes under a random protocol — or a corpus packet with
/// its destination moved into the range.
fn malformed(n: u64, rng: &mut Rng, corpus: &[Vec<u8>], buf: &mut Vec<u8>) -> Ipv4Addr {
    let r = rng.next();
    let dst = [10, 96, 0, [20, 21, 30, 53, 77][(r % 5) as usize]];
    if !corpus.is_empty() && n % 4 == 0 {
        let p = &corpus[(r as usize / 7) % corpus.len()];
        buf.extend_from_slice(p);
        let ihl = usize::from(buf[0] & 0x0f) * 4;
        if ihl >= 20 && ihl <= buf.len() {
            buf[16..20].copy_from_slice(&dst);
            buf[12..16].copy_from_slice(&spoofed_source(n));
            return Ipv4Addr::from(dst);
        }
        buf.clear();
    }
    let proto = match (r >> 8) % 5 {
        0 => 6,
        1 => 17,
        2 => 1,
        3 => (r >> 16) as u8,
        _ => 6,
    };
    let body_len = ((r >> 24) % 120) as usize;
    let mut ip = etherparse::Ipv4Header::new(
        body_len as u16,
        (1 + (r >> 32) % 64) as u8,
        etherparse::IpNumber(proto),
        spoofed_source(n),
        dst,
    )
    .expect("an IPv4 header");
    ip.identification = (r >> 40) as u16;
    ip.dont_fragment = r & (1 << 50) != 0;
    ip.header_checksum = ip.calc_header_checksum();
    ip.write(buf).expect("writing the header");
    let mut body: Vec<u8> = (0..body_len).map(|_| rng.next() as u8).collect();
    if proto == 6 && body_len >= 14 {
        // Plausible ports and a random data offset and flags: the parser's edge cases.
        body[2..4].copy_from_slice(&80u16.to_be_bytes());
        body[12] = ((rng.next() % 16) as u8) << 4;
    }
    if proto == 17 && body_len >= 8 {
        body[2..4].copy_from_slice(&53u16.to_be_bytes());
    }
    buf.extend_from_slice(&body);
    Ipv4Addr::from(dst)
}

#[test]
fn malformed_and_random_packets_at_full_rate() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let count = flood_size(150_000);
    let corpus = fuzz_corpus();
    assert!(
        corpus.len() >= 5,
        "the packet parser's fuzz seeds (fuzz/seeds/parse) are replayed too: {} found",
        corpus.len()
    );
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (_topo, o) = under_flood("malformed", count, move |n, buf| {
        malformed(n, &mut rng, &corpus, buf)
    });
    assert_survived("malformed", &o);
    // It all went somewhere countable: malformed packets by their reason, the rest as
    // refusals and drops; and the gateway is still up (it answered /metrics).
    let drops: f64 = o
        .metrics
        .lines()
        .filter(|l| l.starts_with("clusterway_tun_drops_total{"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum();
    assert!(drops > 0.0, "{}", o.metrics);
    assert!(o.metrics.contains("clusterway_tun_packets_total"));
}
