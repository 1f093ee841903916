//! The conntrack entries the gateway hands its flows to, through ctnetlink
//! (`NETLINK_NETFILTER`, subsystem `NFNL_SUBSYS_CTNETLINK`).
//!
//! Owns: every conntrack entry whose mark carries [`MARK_OWNER`] in its upper half — the
//! entries this gateway created for offloaded flows. It creates them (original tuple
//! `client → ClusterIP:port`, destination NAT to the endpoint, source NAT to the gateway's
//! address toward it with a port the kernel picks), reads them back, deletes them one by one
//! or all at once by mark, and lists them (dump filtered by mark).
//!
//! Must not touch: any entry without our mark (the kernel's own, another program's), the
//! conntrack sysctls (`nf_conntrack_max`, `nf_conntrack_tcp_be_liberal`,
//! `nf_conntrack_acct` are read at most; per-entry TCP flags replace the liberal sysctl).
//!
//! Two halves: [`wire`] builds and parses the messages byte by byte (no socket, unit-tested
//! against hand-written layouts of `include/uapi/linux/netfilter/nfnetlink_conntrack.h`),
//! and [`Conntrack`] is the thin synchronous socket that sends a request and reads the
//! kernel's answer. No crate covers creating an entry with NAT (`netlink-packet-netfilter`
//! 0.4 parses tuples, status, mark and TCP protoinfo, but has no `CTA_NAT_*`), so the
//! messages are our own, on `netlink-sys`'s socket.
//!
//! Namespaces: the socket acts in the network namespace of the thread that opened it.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::Duration;

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr as NlAddr};

/// The upper half of every mark the gateway puts on its entries ("cw").
pub const MARK_OWNER: u32 = 0x6377_0000;
/// The part of the mark that says who owns the entry.
pub const MARK_OWNER_MASK: u32 = 0xffff_0000;

/// TCP states of `enum tcp_conntrack` (`include/uapi/linux/netfilter/nf_conntrack_tcp.h`
/// has them as an enum; libc does not carry them).
pub mod tcp_state {
    pub const NONE: u8 = 0;
    pub const SYN_SENT: u8 = 1;
    pub const SYN_RECV: u8 = 2;
    pub const ESTABLISHED: u8 = 3;
    pub const FIN_WAIT: u8 = 4;
    pub const CLOSE_WAIT: u8 = 5;
    pub const LAST_ACK: u8 = 6;
    pub const TIME_WAIT: u8 = 7;
    pub const CLOSE: u8 = 8;
    pub const SYN_SENT2: u8 = 9;

    /// The state's name as `conntrack -L` prints it.
    pub fn name(state: u8) -> &'static str {
        match state {
            NONE => "NONE",
            SYN_SENT => "SYN_SENT",
            SYN_RECV => "SYN_RECV",
            ESTABLISHED => "ESTABLISHED",
            FIN_WAIT => "FIN_WAIT",
            CLOSE_WAIT => "CLOSE_WAIT",
            LAST_ACK => "LAST_ACK",
            TIME_WAIT => "TIME_WAIT",
            CLOSE => "CLOSE",
            SYN_SENT2 => "SYN_SENT2",
            _ => "UNKNOWN",
        }
    }

    /// Whether a flow in this state is still setting up (a SYN may be retransmitted).
    pub fn is_opening(state: u8) -> bool {
        matches!(state, NONE | SYN_SENT | SYN_RECV | SYN_SENT2)
    }
}

/// Entry status bits (`enum ip_conntrack_status`, `nf_conntrack_common.h`).
pub mod status {
    pub const SEEN_REPLY: u32 = 1 << 1;
    pub const ASSURED: u32 = 1 << 2;
}

/// One direction of a flow: protocol and both ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tuple {
    /// IP protocol number (6 TCP, 17 UDP).
    pub proto: u8,
    pub src: SocketAddr,
    pub dst: SocketAddr,
}

impl Tuple {
    pub fn tcp(src: SocketAddr, dst: SocketAddr) -> Tuple {
        Tuple {
            proto: libc::IPPROTO_TCP as u8,
            src,
            dst,
        }
    }

    pub fn udp(src: SocketAddr, dst: SocketAddr) -> Tuple {
        Tuple {
            proto: libc::IPPROTO_UDP as u8,
            src,
            dst,
        }
    }

    /// The same flow seen from the other end.
    pub fn reversed(&self) -> Tuple {
        Tuple {
            proto: self.proto,
            src: self.dst,
            dst: self.src,
        }
    }

    fn family(&self) -> u8 {
        if self.src.is_ipv6() {
            libc::AF_INET6 as u8
        } else {
            libc::AF_INET as u8
        }
    }
}

/// An entry to create: the client's tuple, where it goes, and from where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatEntry {
    /// `client:cp → ClusterIP:sp`, as the client sends it.
    pub orig: Tuple,
    /// Destination NAT: the endpoint.
    pub endpoint: SocketAddr,
    /// Source NAT: the gateway's address toward the endpoint…
    pub source: IpAddr,
    /// …and the range the kernel picks its port from.
    pub source_ports: (u16, u16),
    pub mark: u32,
    /// Seconds until the kernel drops the entry unless a packet refreshes it.
    pub timeout: u32,
    /// TCP only: the state to start in.
    pub tcp_state: Option<u8>,
    /// TCP only: set the "be liberal" window-tracking flag in both directions of this entry.
    pub be_liberal: bool,
}

/// What the kernel says about one entry (a dump line or a GET answer).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Entry {
    pub orig: Option<Tuple>,
    pub reply: Option<Tuple>,
    pub status: u32,
    pub mark: u32,
    pub timeout: Option<u32>,
    pub tcp_state: Option<u8>,
    /// (packets, bytes) in the original direction, when accounting is on.
    pub counters_orig: Option<(u64, u64)>,
    pub counters_reply: Option<(u64, u64)>,
    pub id: Option<u32>,
}

impl Entry {
    /// Whether this gateway created it.
    pub fn is_ours(&self) -> bool {
        self.mark & MARK_OWNER_MASK == MARK_OWNER
    }

    /// The endpoint the flow was sent to: the reply tuple's source.
    pub fn endpoint(&self) -> Option<SocketAddr> {
        self.reply.map(|r| r.src)
    }
}

pub mod batch;
pub mod filter;

/// The message layouts. Pure: bytes in, bytes out.
pub mod wire {
    use super::*;

    /// `NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_*`.
    pub const SUBSYS: u16 = libc::NFNL_SUBSYS_CTNETLINK as u16;
    pub const MSG_NEW: u16 = 0;
    pub const MSG_GET: u16 = 1;
    pub const MSG_DELETE: u16 = 2;

    // `enum ctattr_type` and its nested enums (nfnetlink_conntrack.h; not in libc).
    pub const CTA_TUPLE_ORIG: u16 = 1;
    pub const CTA_TUPLE_REPLY: u16 = 2;
    pub const CTA_STATUS: u16 = 3;
    pub const CTA_PROTOINFO: u16 = 4;
    pub const CTA_NAT_SRC: u16 = 6;
    pub const CTA_TIMEOUT: u16 = 7;
    pub const CTA_MARK: u16 = 8;
    pub const CTA_COUNTERS_ORIG: u16 = 9;
    pub const CTA_COUNTERS_REPLY: u16 = 10;
    pub const CTA_ID: u16 = 12;
    pub const CTA_NAT_DST: u16 = 13;
    pub const CTA_MARK_MASK: u16 = 21;
    /// With `CTA_STATUS` in a dump request: only entries whose `status & mask == status`.
    pub const CTA_STATUS_MASK: u16 = 26;

    pub const CTA_TUPLE_IP: u16 = 1;
    pub const CTA_TUPLE_PROTO: u16 = 2;
    pub const CTA_IP_V4_SRC: u16 = 1;
    pub const CTA_IP_V4_DST: u16 = 2;
    pub const CTA_IP_V6_SRC: u16 = 3;
    pub const CTA_IP_V6_DST: u16 = 4;
    pub const CTA_PROTO_NUM: u16 = 1;
    pub const CTA_PROTO_SRC_PORT: u16 = 2;
    pub const CTA_PROTO_DST_PORT: u16 = 3;

    pub const CTA_PROTOINFO_TCP: u16 = 1;
    pub const CTA_PROTOINFO_TCP_STATE: u16 = 1;
    pub const CTA_PROTOINFO_TCP_FLAGS_ORIGINAL: u16 = 4;
    pub const CTA_PROTOINFO_TCP_FLAGS_REPLY: u16 = 5;
    /// `IP_CT_TCP_FLAG_BE_LIBERAL` (nf_conntrack_tcp.h).
    pub const TCP_FLAG_BE_LIBERAL: u8 = 0x08;

    pub const CTA_NAT_V4_MINIP: u16 = 1;
    pub const CTA_NAT_V4_MAXIP: u16 = 2;
    pub const CTA_NAT_PROTO: u16 = 3;
    pub const CTA_NAT_V6_MINIP: u16 = 4;
    pub const CTA_NAT_V6_MAXIP: u16 = 5;
    pub const CTA_PROTONAT_PORT_MIN: u16 = 1;
    pub const CTA_PROTONAT_PORT_MAX: u16 = 2;

    pub const CTA_COUNTERS_PACKETS: u16 = 1;
    pub const CTA_COUNTERS_BYTES: u16 = 2;

    const NLA_F_NESTED: u16 = libc::NLA_F_NESTED as u16;
    const NLA_TYPE_MASK: u16 = 0x3fff;
    const NLMSG_HDRLEN: usize = 16;
    const NFGEN_HDRLEN: usize = 4;

    fn align4(n: usize) -> usize {
        (n + 3) & !3
    }

    /// A netlink message being built: header, `nfgenmsg`, attributes (nested ones closed
    /// in order).
    pub struct Builder {
        buf: Vec<u8>,
        open: Vec<usize>,
    }

    impl Builder {
        pub fn new(msg: u16, flags: u16, seq: u32, family: u8) -> Builder {
            let mut buf = Vec::with_capacity(256);
            buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_len, set in finish
            buf.extend_from_slice(&(SUBSYS << 8 | msg).to_ne_bytes());
            buf.extend_from_slice(&flags.to_ne_bytes());
            buf.extend_from_slice(&seq.to_ne_bytes());
            buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid: the kernel
            buf.push(family);
            buf.push(libc::NFNETLINK_V0 as u8);
            buf.extend_from_slice(&0u16.to_be_bytes()); // res_id
            Builder {
                buf,
                open: Vec::new(),
            }
        }

        pub fn attr(&mut self, kind: u16, value: &[u8]) -> &mut Self {
            let len = 4 + value.len();
            self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
            self.buf.extend_from_slice(&kind.to_ne_bytes());
            self.buf.extend_from_slice(value);
            self.buf.resize(align4(self.buf.len()), 0);
            self
        }

        pub fn begin(&mut self, kind: u16) -> &mut Self {
            self.open.push(self.buf.len());
            self.buf.extend_from_slice(&0u16.to_ne_bytes());
            self.buf
                .extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
            self
        }

        pub fn end(&mut self) -> &mut Self {
            if let Some(at) = self.open.pop() {
                let len = (self.buf.len() - at) as u16;
                self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
            }
            self
        }

        pub fn finish(mut self) -> Vec<u8> {
            while !self.open.is_empty() {
                self.end();
            }
            let len = self.buf.len() as u32;
            self.buf[..4].copy_from_slice(&len.to_ne_bytes());
            self.buf
        }

        fn tuple(&mut self, kind: u16, t: &Tuple) -> &mut Self {
            self.begin(kind).begin(CTA_TUPLE_IP);
            match (t.src.ip(), t.dst.ip()) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    self.attr(CTA_IP_V4_SRC, &s.octets());
                    self.attr(CTA_IP_V4_DST, &d.octets());
                }
                (s, d) => {
                    self.attr(CTA_IP_V6_SRC, &v6_octets(s));
                    self.attr(CTA_IP_V6_DST, &v6_octets(d));
                }
            }
            self.end()
                .begin(CTA_TUPLE_PROTO)
                .attr(CTA_PROTO_NUM, &[t.proto])
                .attr(CTA_PROTO_SRC_PORT, &t.src.port().to_be_bytes())
                .attr(CTA_PROTO_DST_PORT, &t.dst.port().to_be_bytes())
                .end()
                .end()
        }

        fn nat(&mut self, kind: u16, ip: IpAddr, ports: (u16, u16)) -> &mut Self {
            self.begin(kind);
            match ip {
                IpAddr::V4(a) => {
                    self.attr(CTA_NAT_V4_MINIP, &a.octets());
                    self.attr(CTA_NAT_V4_MAXIP, &a.octets());
                }
                IpAddr::V6(a) => {
                    self.attr(CTA_NAT_V6_MINIP, &a.octets());
                    self.attr(CTA_NAT_V6_MAXIP, &a.octets());
                }
            }
            self.begin(CTA_NAT_PROTO)
                .attr(CTA_PROTONAT_PORT_MIN, &ports.0.to_be_bytes())
                .attr(CTA_PROTONAT_PORT_MAX, &ports.1.to_be_bytes())
                .end()
                .end()
        }
    }

    fn v6_octets(ip: IpAddr) -> [u8; 16] {
        match ip {
            IpAddr::V6(a) => a.octets(),
            IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        }
    }

    const REQ: u16 = libc::NLM_F_REQUEST as u16;
    const ACK: u16 = libc::NLM_F_ACK as u16;

    /// `IPCTNL_MSG_CT_NEW` with `NLM_F_CREATE | NLM_F_EXCL`: fails with EEXIST when an
    /// entry for the tuple exists. The reply tuple given is the plain inverse; the kernel
    /// rewrites it when it sets the NAT up (as `conntrack -I` does).
    pub fn create(seq: u32, e: &NatEntry) -> Vec<u8> {
        let flags = REQ | ACK | libc::NLM_F_CREATE as u16 | libc::NLM_F_EXCL as u16;
        let mut b = Builder::new(MSG_NEW, flags, seq, e.orig.family());
        b.tuple(CTA_TUPLE_ORIG, &e.orig)
            .tuple(CTA_TUPLE_REPLY, &e.orig.reversed())
            .nat(
                CTA_NAT_DST,
                e.endpoint.ip(),
                (e.endpoint.port(), e.endpoint.port()),
            )
            .nat(CTA_NAT_SRC, e.source, e.source_ports)
            .attr(CTA_MARK, &e.mark.to_be_bytes())
            .attr(CTA_TIMEOUT, &e.timeout.to_be_bytes());
        if let Some(state) = e.tcp_state {
            b.begin(CTA_PROTOINFO)
                .begin(CTA_PROTOINFO_TCP)
                .attr(CTA_PROTOINFO_TCP_STATE, &[state]);
            if e.be_liberal {
                // struct nf_ct_tcp_flags { __u8 flags; __u8 mask; }
                let f = [TCP_FLAG_BE_LIBERAL, TCP_FLAG_BE_LIBERAL];
                b.attr(CTA_PROTOINFO_TCP_FLAGS_ORIGINAL, &f)
                    .attr(CTA_PROTOINFO_TCP_FLAGS_REPLY, &f);
            }
            b.end().end();
        }
        b.finish()
    }

    /// `IPCTNL_MSG_CT_GET` of the entry whose original tuple is `t`.
    pub fn get(seq: u32, t: &Tuple) -> Vec<u8> {
        let mut b = Builder::new(MSG_GET, REQ | ACK, seq, t.family());
        b.tuple(CTA_TUPLE_ORIG, t);
        b.finish()
    }

    /// `IPCTNL_MSG_CT_DELETE` of the entry whose original tuple is `t`.
    pub fn delete(seq: u32, t: &Tuple) -> Vec<u8> {
        let mut b = Builder::new(MSG_DELETE, REQ | ACK, seq, t.family());
        b.tuple(CTA_TUPLE_ORIG, t);
        b.finish()
    }

    /// A dump of every entry (both families) whose `mark & mask == mark`.
    pub fn dump_by_mark(seq: u32, mark: u32, mask: u32) -> Vec<u8> {
        let flags = REQ | libc::NLM_F_DUMP as u16;
        let mut b = Builder::new(MSG_GET, flags, seq, libc::AF_UNSPEC as u8);
        b.attr(CTA_MARK, &mark.to_be_bytes())
            .attr(CTA_MARK_MASK, &mask.to_be_bytes());
        b.finish()
    }

    /// A dump of the entries (both families) whose `mark & mask == mark` that have seen no
    /// reply: the kernel filters on `status & SEEN_REPLY == 0` (`CTA_STATUS` 0 with
    /// `CTA_STATUS_MASK` SEEN_REPLY, Linux 5.19 and later).
    pub fn dump_unreplied_by_mark(seq: u32, mark: u32, mask: u32) -> Vec<u8> {
        let flags = REQ | libc::NLM_F_DUMP as u16;
        let mut b = Builder::new(MSG_GET, flags, seq, libc::AF_UNSPEC as u8);
        b.attr(CTA_MARK, &mark.to_be_bytes())
            .attr(CTA_MARK_MASK, &mask.to_be_bytes())
            .attr(CTA_STATUS, &0u32.to_be_bytes())
            .attr(CTA_STATUS_MASK, &status::SEEN_REPLY.to_be_bytes());
        b.finish()
    }

    /// `IPCTNL_MSG_CT_DELETE` of the entry whose original tuple is `t` only if its id is
    /// still `id` (the kernel answers ENOENT when the tuple now belongs to another entry).
    pub fn delete_id(seq: u32, t: &Tuple, id: u32) -> Vec<u8> {
        let mut b = Builder::new(MSG_DELETE, REQ | ACK, seq, t.family());
        b.tuple(CTA_TUPLE_ORIG, t).attr(CTA_ID, &id.to_be_bytes());
        b.finish()
    }

    /// Delete every entry (both families) whose `mark & mask == mark`, in one request.
    pub fn flush_by_mark(seq: u32, mark: u32, mask: u32) -> Vec<u8> {
        let mut b = Builder::new(MSG_DELETE, REQ | ACK, seq, libc::AF_UNSPEC as u8);
        b.attr(CTA_MARK, &mark.to_be_bytes())
            .attr(CTA_MARK_MASK, &mask.to_be_bytes());
        b.finish()
    }

    /// One message of a datagram from the kernel.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Message {
        /// An acknowledgement (error 0) or an error (`errno`, positive) for request `seq`.
        Ack { seq: u32, errno: i32 },
        /// The end of a dump.
        Done { seq: u32 },
        /// An entry: a dump line, a GET answer or an event (`msg` tells NEW from DELETE).
        /// Boxed: an entry is large, acknowledgements are many.
        Entry {
            seq: u32,
            msg: u16,
            entry: Box<Entry>,
        },
        /// Anything else (skipped).
        Other,
    }

    /// Why a message from the kernel could not be read.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
    #[error("malformed ctnetlink message: {0}")]
    pub struct Malformed(pub &'static str);

    /// Split a datagram into its messages.
    pub fn parse(buf: &[u8]) -> Vec<Result<Message, Malformed>> {
        let mut out = Vec::new();
        let mut at = 0;
        while buf.len() - at >= NLMSG_HDRLEN {
            let len = u32::from_ne_bytes(buf[at..at + 4].try_into().unwrap_or_default()) as usize;
            if len < NLMSG_HDRLEN || at + len > buf.len() {
                out.push(Err(Malformed("message length")));
                break;
            }
            let kind = u16::from_ne_bytes([buf[at + 4], buf[at + 5]]);
            let seq = u32::from_ne_bytes(buf[at + 8..at + 12].try_into().unwrap_or_default());
            let body = &buf[at + NLMSG_HDRLEN..at + len];
            out.push(message(kind, seq, body));
            at += align4(len);
        }
        out
    }

    fn message(kind: u16, seq: u32, body: &[u8]) -> Result<Message, Malformed> {
        match i32::from(kind) {
            libc::NLMSG_ERROR => {
                let code = body
                    .get(..4)
                    .ok_or(Malformed("short error message"))?
                    .try_into()
                    .map(i32::from_ne_bytes)
                    .map_err(|_| Malformed("short error message"))?;
                Ok(Message::Ack { seq, errno: -code })
            }
            libc::NLMSG_DONE => Ok(Message::Done { seq }),
            _ if kind >> 8 == SUBSYS => {
                let attrs = body
                    .get(NFGEN_HDRLEN..)
                    .ok_or(Malformed("short nfgenmsg"))?;
                Ok(Message::Entry {
                    seq,
                    msg: kind & 0xff,
                    entry: Box::new(entry(attrs)?),
                })
            }
            _ => Ok(Message::Other),
        }
    }

    /// The attributes in `buf`: (type without flags, payload).
    pub fn attrs(buf: &[u8]) -> impl Iterator<Item = Result<(u16, &[u8]), Malformed>> {
        let mut at = 0;
        std::iter::from_fn(move || {
            if buf.len().saturating_sub(at) < 4 {
                return None;
            }
            let len = usize::from(u16::from_ne_bytes([buf[at], buf[at + 1]]));
            let kind = u16::from_ne_bytes([buf[at + 2], buf[at + 3]]) & NLA_TYPE_MASK;
            if len < 4 || at + len > buf.len() {
                at = buf.len();
                return Some(Err(Malformed("attribute length")));
            }
            let value = &buf[at + 4..at + len];
            at += align4(len);
            Some(Ok((kind, value)))
        })
    }

    fn be32(v: &[u8]) -> Result<u32, Malformed> {
        v.try_into()
            .map(u32::from_be_bytes)
            .map_err(|_| Malformed("32-bit attribute"))
    }

    fn be64(v: &[u8]) -> Result<u64, Malformed> {
        match v.len() {
            8 => Ok(u64::from_be_bytes(v.try_into().unwrap_or_default())),
            4 => be32(v).map(u64::from),
            _ => Err(Malformed("counter attribute")),
        }
    }

    fn port(v: &[u8]) -> Result<u16, Malformed> {
        v.try_into()
            .map(u16::from_be_bytes)
            .map_err(|_| Malformed("port attribute"))
    }

    fn ip(v: &[u8]) -> Result<IpAddr, Malformed> {
        match v.len() {
            4 => Ok(IpAddr::from(<[u8; 4]>::try_from(v).unwrap_or_default())),
            16 => Ok(IpAddr::from(<[u8; 16]>::try_from(v).unwrap_or_default())),
            _ => Err(Malformed("address attribute")),
        }
    }

    fn tuple(buf: &[u8]) -> Result<Tuple, Malformed> {
        let (mut src, mut dst, mut proto, mut sp, mut dp) = (None, None, None, 0, 0);
        for a in attrs(buf) {
            match a? {
                (CTA_TUPLE_IP, v) => {
                    for a in attrs(v) {
                        match a? {
                            (CTA_IP_V4_SRC | CTA_IP_V6_SRC, v) => src = Some(ip(v)?),
                            (CTA_IP_V4_DST | CTA_IP_V6_DST, v) => dst = Some(ip(v)?),
                            _ => {}
                        }
                    }
                }
                (CTA_TUPLE_PROTO, v) => {
                    for a in attrs(v) {
                        match a? {
                            (CTA_PROTO_NUM, v) => proto = v.first().copied(),
                            (CTA_PROTO_SRC_PORT, v) => sp = port(v)?,
                            (CTA_PROTO_DST_PORT, v) => dp = port(v)?,
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        match (src, dst, proto) {
            (Some(s), Some(d), Some(p)) => Ok(Tuple {
                proto: p,
                src: SocketAddr::new(s, sp),
                dst: SocketAddr::new(d, dp),
            }),
            _ => Err(Malformed("incomplete tuple")),
        }
    }

    fn counters(buf: &[u8]) -> Result<(u64, u64), Malformed> {
        let (mut packets, mut bytes) = (0, 0);
        for a in attrs(buf) {
            match a? {
                (CTA_COUNTERS_PACKETS, v) => packets = be64(v)?,
                (CTA_COUNTERS_BYTES, v) => bytes = be64(v)?,
                _ => {}
            }
        }
        Ok((packets, bytes))
    }

    /// The entry described by a message's attributes.
    pub fn entry(buf: &[u8]) -> Result<Entry, Malformed> {
        let mut e = Entry::default();
        for a in attrs(buf) {
            match a? {
                (CTA_TUPLE_ORIG, v) => e.orig = Some(tuple(v)?),
                (CTA_TUPLE_REPLY, v) => e.reply = Some(tuple(v)?),
                (CTA_STATUS, v) => e.status = be32(v)?,
                (CTA_MARK, v) => e.mark = be32(v)?,
                (CTA_TIMEOUT, v) => e.timeout = Some(be32(v)?),
                (CTA_ID, v) => e.id = Some(be32(v)?),
                (CTA_COUNTERS_ORIG, v) => e.counters_orig = Some(counters(v)?),
                (CTA_COUNTERS_REPLY, v) => e.counters_reply = Some(counters(v)?),
                (CTA_PROTOINFO, v) => {
                    for a in attrs(v) {
                        if let (CTA_PROTOINFO_TCP, v) = a? {
                            for a in attrs(v) {
                                if let (CTA_PROTOINFO_TCP_STATE, v) = a? {
                                    e.tcp_state = v.first().copied();
                                }
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(e)
    }
}

/// What went wrong talking to ctnetlink.
#[derive(Debug, thiserror::Error)]
pub enum ConntrackError {
    /// The netlink socket could not be opened or bound (no CAP_NET_ADMIN, or seccomp).
    #[error("cannot open a ctnetlink socket")]
    Socket(#[source] io::Error),
    /// Sending or receiving failed (including a receive timeout).
    #[error("ctnetlink {op} failed")]
    Io {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    /// The kernel refused the request.
    #[error("the kernel refused ctnetlink {op}")]
    Refused {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    /// The kernel's answer could not be read.
    #[error(transparent)]
    Malformed(#[from] wire::Malformed),
}

impl ConntrackError {
    /// A short, stable label for metrics and structured logs.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Socket(_) => "socket",
            Self::Io { .. } => "io",
            Self::Refused { .. } => "refused",
            Self::Malformed(_) => "malformed",
        }
    }

    /// The kernel's errno, when it refused.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Refused { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// How long a request waits for the kernel's answer. The kernel answers within the send
/// for these requests; the bound only keeps a lost answer from stopping a worker.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// A synchronous ctnetlink socket: one request at a time, answered before the next.
pub struct Conntrack {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Conntrack {
    /// Open a socket in the calling thread's network namespace.
    pub fn open() -> Result<Conntrack, ConntrackError> {
        let mut sock = Socket::new(NETLINK_NETFILTER).map_err(ConntrackError::Socket)?;
        sock.bind_auto().map_err(ConntrackError::Socket)?;
        sock.connect(&NlAddr::new(0, 0))
            .map_err(ConntrackError::Socket)?;
        set_rcvtimeo(&sock, ANSWER_TIMEOUT).map_err(ConntrackError::Socket)?;
        Ok(Conntrack {
            sock,
            seq: 1,
            buf: vec![0u8; 1 << 16],
        })
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1).max(1);
        self.seq
    }

    fn send(&mut self, op: &'static str, msg: &[u8]) -> Result<(), ConntrackError> {
        self.sock
            .send(msg, 0)
            .map(drop)
            .map_err(|source| ConntrackError::Io { op, source })
    }

    /// Read the answer to request `seq`: entries until its ACK or DONE; a refusal is an
    /// error.
    fn answer(&mut self, op: &'static str, seq: u32) -> Result<Vec<Entry>, ConntrackError> {
        let mut entries = Vec::new();
        loop {
            let n = loop {
                let mut slice = &mut self.buf[..];
                match self.sock.recv(&mut slice, 0) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(source) => return Err(ConntrackError::Io { op, source }),
                }
            };
            for m in wire::parse(&self.buf[..n]) {
                match m? {
                    wire::Message::Ack { seq: s, errno } if s == seq => {
                        return if errno == 0 {
                            Ok(entries)
                        } else {
                            Err(ConntrackError::Refused {
                                op,
                                source: io::Error::from_raw_os_error(errno),
                            })
                        };
                    }
                    wire::Message::Done { seq: s } if s == seq => return Ok(entries),
                    wire::Message::Entry { seq: s, entry, .. } if s == seq => entries.push(*entry),
                    // An answer to an earlier request that timed out: skip it.
                    _ => {}
                }
            }
        }
    }

    fn request(
        &mut self,
        op: &'static str,
        build: impl FnOnce(u32) -> Vec<u8>,
    ) -> Result<Vec<Entry>, ConntrackError> {
        let seq = self.next_seq();
        let msg = build(seq);
        self.send(op, &msg)?;
        self.answer(op, seq)
    }

    /// Create `e`; EEXIST (an entry with this tuple exists) comes back as
    /// [`ConntrackError::Refused`].
    pub fn create(&mut self, e: &NatEntry) -> Result<(), ConntrackError> {
        self.request("create", |seq| wire::create(seq, e)).map(drop)
    }

    /// The entry whose original tuple is `t`, if any.
    pub fn get(&mut self, t: &Tuple) -> Result<Option<Entry>, ConntrackError> {
        match self.request("get", |seq| wire::get(seq, t)) {
            Ok(mut v) => Ok(v.pop()),
            Err(e) if e.errno() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Delete the entry whose original tuple is `t`; false when there was none.
    pub fn delete(&mut self, t: &Tuple) -> Result<bool, ConntrackError> {
        match self.request("delete", |seq| wire::delete(seq, t)) {
            Ok(_) => Ok(true),
            Err(e) if e.errno() == Some(libc::ENOENT) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Every entry of ours (both families).
    pub fn dump_ours(&mut self) -> Result<Vec<Entry>, ConntrackError> {
        let mut v = self.request("dump", |seq| {
            wire::dump_by_mark(seq, MARK_OWNER, MARK_OWNER_MASK)
        })?;
        // The kernel filters by mark; keep the check where the ownership rule is.
        v.retain(Entry::is_ours);
        Ok(v)
    }

    /// Up to `limit` entries of ours that have seen no reply, and whether that was all of
    /// them. Takes the socket: a dump cut short is abandoned with it (closing the socket
    /// ends the kernel's dump), so a flood of entries costs a bounded amount per call.
    pub fn dump_ours_unreplied(
        mut self,
        limit: usize,
    ) -> Result<(Vec<Entry>, bool), ConntrackError> {
        let seq = self.next_seq();
        let msg = wire::dump_unreplied_by_mark(seq, MARK_OWNER, MARK_OWNER_MASK);
        self.send("dump", &msg)?;
        let mut entries = Vec::new();
        loop {
            let n = loop {
                let mut slice = &mut self.buf[..];
                match self.sock.recv(&mut slice, 0) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(source) => return Err(ConntrackError::Io { op: "dump", source }),
                }
            };
            for m in wire::parse(&self.buf[..n]) {
                match m? {
                    wire::Message::Ack { seq: s, errno } if s == seq && errno != 0 => {
                        return Err(ConntrackError::Refused {
                            op: "dump",
                            source: io::Error::from_raw_os_error(errno),
                        });
                    }
                    wire::Message::Ack { seq: s, .. } | wire::Message::Done { seq: s }
                        if s == seq =>
                    {
                        return Ok((entries, true));
                    }
                    wire::Message::Entry { seq: s, entry, .. } if s == seq => {
                        // The kernel filters by mark and status; keep the ownership check.
                        if entry.is_ours() && entry.status & status::SEEN_REPLY == 0 {
                            entries.push(*entry);
                        }
                        if entries.len() >= limit {
                            return Ok((entries, false));
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// Delete the entry whose original tuple is `t` if it is still the entry `id`; false
    /// when there is none (gone, or the tuple belongs to a newer entry).
    pub fn delete_entry(&mut self, t: &Tuple, id: u32) -> Result<bool, ConntrackError> {
        match self.request("delete", |seq| wire::delete_id(seq, t, id)) {
            Ok(_) => Ok(true),
            Err(e) if e.errno() == Some(libc::ENOENT) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Delete every entry of ours (both families).
    pub fn flush_ours(&mut self) -> Result<(), ConntrackError> {
        match self.request("flush", |seq| {
            wire::flush_by_mark(seq, MARK_OWNER, MARK_OWNER_MASK)
        }) {
            Ok(_) => Ok(()),
            Err(e) if e.errno() == Some(libc::ENOENT) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// What an event says happened to an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// Created, or changed (state, status): `IPCTNL_MSG_CT_NEW`.
    NewOrUpdate,
    /// Destroyed: `IPCTNL_MSG_CT_DELETE`.
    Destroy,
}

/// A socket subscribed to conntrack events (update, destroy) of every entry in the
/// namespace; the reader keeps those of ours.
pub struct Events {
    sock: Socket,
    buf: Vec<u8>,
    /// An error met while draining, for the next call of [`Events::recv_all`].
    deferred: Option<ConntrackError>,
}

impl Events {
    /// Subscribe in the calling thread's namespace. `wait` bounds each [`Events::recv`].
    pub fn open(wait: Duration) -> Result<Events, ConntrackError> {
        let mut sock = Socket::new(NETLINK_NETFILTER).map_err(ConntrackError::Socket)?;
        sock.bind_auto().map_err(ConntrackError::Socket)?;
        // Not NEW: the gateway creates its entries itself (and reads an earlier run's with
        // a dump); each event wakes the reader, a few per connection already.
        for group in [
            libc::NFNLGRP_CONNTRACK_UPDATE,
            libc::NFNLGRP_CONNTRACK_DESTROY,
        ] {
            sock.add_membership(group as u32)
                .map_err(ConntrackError::Socket)?;
        }
        // Room for bursts of events (the kernel caps it at rmem_max unless forced).
        let _ = sock.set_rx_buf_sz(8 << 20);
        set_rcvtimeo(&sock, wait).map_err(ConntrackError::Socket)?;
        Ok(Events {
            sock,
            buf: vec![0u8; 1 << 16],
            deferred: None,
        })
    }

    /// Have the kernel drop, before queueing them, the events of entries not ours and the
    /// updates to a TCP state not in `states` (see [`filter`]).
    pub fn keep_only(&self, states: &[u8]) -> Result<(), ConntrackError> {
        let prog = filter::program(MARK_OWNER, MARK_OWNER_MASK, states);
        filter::attach(self.sock.as_raw_fd(), &prog).map_err(ConntrackError::Socket)
    }

    /// Raise the socket's receive buffer to `bytes` past the `rmem_max` sysctl
    /// (`SO_RCVBUFFORCE`, needs CAP_NET_ADMIN, which the gateway has): room for the events
    /// that gather while the reader lets them (see [`Events::recv_all`]).
    pub fn force_buffer(&self, bytes: usize) -> io::Result<()> {
        let v = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
        // SAFETY: setsockopt reads a c_int of the size given from a live stack value.
        let r = unsafe {
            libc::setsockopt(
                self.sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&v as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// The events of every datagram queued: waits (up to `wait`) for the first, then takes
    /// what is queued without waiting, up to about `max` events. An error after some events
    /// were read is returned by the next call, so that neither is lost.
    pub fn recv_all(&mut self, max: usize) -> Result<Vec<(EventKind, Entry)>, ConntrackError> {
        if let Some(e) = self.deferred.take() {
            return Err(e);
        }
        let mut out = self.recv()?;
        while !out.is_empty() && out.len() < max {
            match self.recv_with(libc::MSG_DONTWAIT) {
                Ok(more) if more.is_empty() => break,
                Ok(more) => out.extend(more),
                Err(e) => {
                    self.deferred = Some(e);
                    break;
                }
            }
        }
        Ok(out)
    }

    /// The events of one datagram (none when `wait` passed). ENOBUFS (events were lost,
    /// the reader fell behind) comes back as [`ConntrackError::Io`] with that errno.
    pub fn recv(&mut self) -> Result<Vec<(EventKind, Entry)>, ConntrackError> {
        self.recv_with(0)
    }

    fn recv_with(&mut self, flags: libc::c_int) -> Result<Vec<(EventKind, Entry)>, ConntrackError> {
        let n = {
            let mut slice = &mut self.buf[..];
            match self.sock.recv(&mut slice, flags) {
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) =>
                {
                    return Ok(Vec::new())
                }
                Err(source) => {
                    return Err(ConntrackError::Io {
                        op: "events",
                        source,
                    })
                }
            }
        };
        let mut out = Vec::new();
        for m in wire::parse(&self.buf[..n]) {
            if let wire::Message::Entry { msg, entry, .. } = m? {
                let kind = if msg == wire::MSG_DELETE {
                    EventKind::Destroy
                } else {
                    EventKind::NewOrUpdate
                };
                out.push((kind, *entry));
            }
        }
        Ok(out)
    }
}

fn set_rcvtimeo(sock: &Socket, d: Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: d.as_secs() as libc::time_t,
        tv_usec: libc::suseconds_t::from(d.subsec_micros() as i32),
    };
    // SAFETY: setsockopt reads a timeval of the size given from a live stack value.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The kernel's conntrack table size in this namespace (`net.netfilter.nf_conntrack_max`):
/// the ceiling of offloaded flows. None when conntrack is not loaded.
pub fn table_size() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

#[cfg(test)]
mod tests;
