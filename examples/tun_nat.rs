//! The TUN leg alone, as a benchmark reference (not part of the gateway, not a test):
//! `tun_nat [--busy-poll MICROS] DEVICE CLIENT SERVICE POD VIRTUAL`, run by `bench/run.sh` as
//! its `tunnat` path.
//!
//! A stateless 1:1 NAT through the gateway's own TUN layer and rewrite code, with offloads
//! on: a TCP or UDP packet from CLIENT to SERVICE leaves as VIRTUAL → POD (ports kept), one
//! from POD to VIRTUAL as SERVICE → CLIENT, and anything else is dropped. The kernel
//! forwards both ways; nothing terminates TCP here. It costs what the gateway's packet
//! path adds to a terminating proxy: every packet routed into the device, read, rewritten
//! and written back, in both directions. The gateway's path is a terminating proxy behind
//! that leg, so this path and HAProxy's together say what the path can reach on a machine
//! (bench/README.md, "What the packet path can reach").
//!
//! It reads the queue as a gateway worker does: until it is empty, then on, yielding the
//! core between reads, for `--busy-poll` µs after the last packet (50, the gateway's default;
//! 0 sleeps in poll(2) at once), then asleep in poll(2).
//!
//! The device is created here; the caller gives it an address in VIRTUAL's prefix, brings
//! it up and routes SERVICE into it. Counts go to stderr when the process is stopped
//! (SIGTERM or SIGINT).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clusterway::dataplane::packet::{self, Transport, VirtioNetHdr, MAX_PACKET};
use clusterway::dataplane::tun::TunDevice;

/// The four addresses of the command line.
struct Mapping {
    client: IpAddr,
    service: IpAddr,
    pod: IpAddr,
    virt: IpAddr,
}

impl Mapping {
    /// The new source and destination of a packet from `src` to `dst`, if it is one of the
    /// two directions.
    fn map(&self, src: SocketAddr, dst: SocketAddr) -> Option<(SocketAddr, SocketAddr)> {
        if src.ip() == self.client && dst.ip() == self.service {
            Some((
                SocketAddr::new(self.virt, src.port()),
                SocketAddr::new(self.pod, dst.port()),
            ))
        } else if src.ip() == self.pod && dst.ip() == self.virt {
            Some((
                SocketAddr::new(self.service, src.port()),
                SocketAddr::new(self.client, dst.port()),
            ))
        } else {
            None
        }
    }
}

/// Set by SIGTERM or SIGINT; the loop looks at it at least every 100 ms.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

#[derive(Default)]
struct Counts {
    forwarded: u64,
    dropped: u64,
    malformed: u64,
    write_errors: u64,
}

/// What becomes of a packet read from the device.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// Rewritten in place: write back `buf[..len]`.
    Forward(usize),
    /// Not TCP or UDP between the client and the service (or the pod and the virtual
    /// address), or the mapping's family is not the packet's.
    Drop,
    Malformed,
}

/// Rewrite `buf[..len]` (behind `hdr`) in place when it is one of the two directions.
fn translate(map: &Mapping, buf: &mut [u8], len: usize, hdr: &VirtioNetHdr) -> Outcome {
    let Ok(pkt) = packet::parse(&buf[..len]) else {
        return Outcome::Malformed;
    };
    let (sport, dport) = match pkt.transport {
        Transport::Tcp {
            src_port, dst_port, ..
        }
        | Transport::Udp {
            src_port, dst_port, ..
        } => (src_port, dst_port),
        _ => return Outcome::Drop,
    };
    let from = SocketAddr::new(pkt.src, sport);
    match map.map(from, SocketAddr::new(pkt.dst, dport)) {
        Some((src, dst)) if src.is_ipv6() == pkt.is_v6() && dst.is_ipv6() == pkt.is_v6() => {
            packet::rewrite(buf, &pkt, src, dst, hdr.checksum_mode());
            Outcome::Forward(pkt.len)
        }
        _ => Outcome::Drop,
    }
}

fn run(device: &str, map: Mapping, busy: Duration) -> io::Result<Counts> {
    let dev = TunDevice::open(device, 1, true).map_err(io::Error::other)?;
    let queue = &dev.queues[0];
    let mut buf = vec![0u8; MAX_PACKET].into_boxed_slice();
    let mut counts = Counts::default();
    let mut last = Instant::now();
    while !STOP.load(Ordering::Relaxed) {
        let rx = match queue.try_recv(&mut buf) {
            Ok(rx) => rx,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if last.elapsed() < busy {
                    std::thread::yield_now();
                } else {
                    queue.wait_readable(100)?;
                }
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        last = Instant::now();
        let Ok(hdr) = rx.hdr else {
            counts.malformed += 1;
            continue;
        };
        match translate(&map, &mut buf, rx.len, &hdr) {
            Outcome::Forward(len) => match queue.send(&buf[..len], &hdr) {
                Ok(()) => counts.forwarded += 1,
                Err(_) => counts.write_errors += 1,
            },
            Outcome::Drop => counts.dropped += 1,
            Outcome::Malformed => counts.malformed += 1,
        }
    }
    Ok(counts)
}

const USAGE: &str = "usage: tun_nat [--busy-poll MICROS] DEVICE CLIENT SERVICE POD VIRTUAL";

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut busy = Duration::from_micros(50);
    if args.first().is_some_and(|a| a == "--busy-poll") {
        match args.get(1).map(|v| v.parse::<u64>()) {
            Some(Ok(us)) if us <= 10_000 => busy = Duration::from_micros(us),
            _ => {
                eprintln!("tun_nat: --busy-poll takes microseconds, 0 to 10000\n{USAGE}");
                return ExitCode::from(2);
            }
        }
        args.drain(..2);
    }
    let [device, rest @ ..] = &args[..] else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let ips: Result<Vec<IpAddr>, String> = rest
        .iter()
        .map(|s| s.parse().map_err(|e| format!("`{s}`: {e}")))
        .collect();
    let map = match ips.as_deref() {
        Ok(&[client, service, pod, virt]) => Mapping {
            client,
            service,
            pod,
            virt,
        },
        Ok(_) => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("tun_nat: not an IP address: {e}");
            return ExitCode::from(2);
        }
    };
    for signal in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        if unsafe { libc::signal(signal, on_signal as *const () as libc::sighandler_t) }
            == libc::SIG_ERR
        {
            eprintln!("tun_nat: cannot handle signal {signal}");
            return ExitCode::FAILURE;
        }
    }
    match run(device, map, busy) {
        Ok(c) => {
            eprintln!(
                "tun_nat: forwarded {} packets, dropped {}, malformed {}, write errors {}",
                c.forwarded, c.dropped, c.malformed, c.write_errors
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tun_nat: {device}: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping() -> Mapping {
        Mapping {
            client: "192.168.77.2".parse().unwrap(),
            service: "10.96.0.10".parse().unwrap(),
            pod: "10.244.1.10".parse().unwrap(),
            virt: "198.18.0.2".parse().unwrap(),
        }
    }

    /// An IPv4/UDP packet `src → dst` carrying `hello`, IPv4 identification 7.
    fn udp(src: &str, dst: &str) -> Vec<u8> {
        let mut buf = vec![0u8; 128];
        let off = packet::udp_payload_offset(false);
        buf[off..off + 5].copy_from_slice(b"hello");
        let (src, dst) = (src.parse().unwrap(), dst.parse().unwrap());
        let len = packet::build_udp_headers_with_id(&mut buf, src, dst, 5, 7).unwrap();
        buf.truncate(len);
        buf
    }

    #[test]
    fn a_translated_packet_is_the_one_built_for_the_new_addresses() {
        let m = mapping();
        let mut buf = udp("192.168.77.2:40000", "10.96.0.10:53");
        let len = buf.len();
        let out = translate(&m, &mut buf, len, &VirtioNetHdr::NONE);
        assert_eq!(out, Outcome::Forward(len));
        // Incremental checksums give the bytes of a packet built afresh.
        assert_eq!(buf, udp("198.18.0.2:40000", "10.244.1.10:53"));
        let mut back = udp("10.244.1.10:53", "198.18.0.2:40000");
        let out = translate(&m, &mut back, len, &VirtioNetHdr::NONE);
        assert_eq!(out, Outcome::Forward(len));
        assert_eq!(back, udp("10.96.0.10:53", "192.168.77.2:40000"));
    }

    #[test]
    fn other_packets_are_dropped_or_counted_as_malformed() {
        let m = mapping();
        let mut other = udp("192.168.77.9:40000", "10.96.0.10:53");
        let len = other.len();
        assert_eq!(
            translate(&m, &mut other, len, &VirtioNetHdr::NONE),
            Outcome::Drop
        );
        assert_eq!(other, udp("192.168.77.9:40000", "10.96.0.10:53"));
        let mut junk = vec![0x45u8; 10];
        assert_eq!(
            translate(&m, &mut junk, 10, &VirtioNetHdr::NONE),
            Outcome::Malformed
        );
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn both_directions_are_mapped_with_ports_kept_and_nothing_else() {
        let m = mapping();
        let out = m.map(sa("192.168.77.2:40000"), sa("10.96.0.10:80"));
        assert_eq!(out, Some((sa("198.18.0.2:40000"), sa("10.244.1.10:80"))));
        let back = m.map(sa("10.244.1.10:80"), sa("198.18.0.2:40000"));
        assert_eq!(back, Some((sa("10.96.0.10:80"), sa("192.168.77.2:40000"))));
        // The pod answering the client directly, or a stranger: not ours.
        assert_eq!(m.map(sa("10.244.1.10:80"), sa("192.168.77.2:40000")), None);
        assert_eq!(m.map(sa("192.168.77.9:40000"), sa("10.96.0.10:80")), None);
    }
}
