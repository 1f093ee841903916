//! A classic BPF socket filter for the conntrack events socket: the kernel drops, before
//! they are queued (and before the reader is woken), the events the gateway does not count.
//!
//! Every state change of every entry in the namespace is an event: about six per TCP
//! connection (SYN_RECV, ESTABLISHED, FIN_WAIT, CLOSE_WAIT, LAST_ACK, TIME_WAIT), each one a
//! wake-up and a `recv` of the reader. The filter keeps:
//! - only entries whose mark carries the owner (`mark & mask == owner`; an entry without a
//!   mark attribute has mark 0 and is dropped);
//! - every destroy event (`IPCTNL_MSG_CT_DELETE`);
//! - an update without TCP state (a status change, a protocol without states);
//! - an update whose TCP state is one of `states`.
//!
//! It reads the attributes with the kernel's netlink helpers for socket filters
//! (`SKF_AD_NLATTR`, `SKF_AD_NLATTR_NEST`: the offset of an attribute of a given type at or
//! after offset A, or inside the nested attribute at A; 0 when there is none), so it needs
//! no fixed layout. Pure: [`program`] returns the instructions; [`attach`] puts them on a
//! socket.

use std::io;
use std::os::fd::RawFd;

use super::wire::{
    CTA_MARK, CTA_PROTOINFO, CTA_PROTOINFO_TCP, CTA_PROTOINFO_TCP_STATE, MSG_DELETE,
};

/// Where the attributes of a ctnetlink message start: `nlmsghdr` (16) + `nfgenmsg` (4).
const ATTRS: u32 = 20;
/// The byte of `nlmsg_type` that holds the message (the low byte; the subsystem is the
/// high one), as the host stores the header.
const MSG_TYPE_BYTE: u32 = if cfg!(target_endian = "little") { 4 } else { 5 };
/// An attribute's payload starts after its 4-byte header.
const NLA_HDRLEN: u32 = 4;

fn stmt(code: u32, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jeq(k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter {
        code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        jt,
        jf,
        k,
    }
}

/// `A = ancillary(what)` with X the attribute type and A the offset to search from.
fn ancillary(what: i32) -> libc::sock_filter {
    stmt(
        libc::BPF_LD | libc::BPF_W | libc::BPF_ABS,
        (libc::SKF_AD_OFF + what) as u32,
    )
}

/// The filter: see the module doc. `states` are TCP states (`tcp_state::*`), at most 200.
pub fn program(owner: u32, mask: u32, states: &[u8]) -> Vec<libc::sock_filter> {
    let states = &states[..states.len().min(200)];
    let mut p = Vec::with_capacity(24 + states.len());
    // Ours? The mark attribute, found from the first attribute on.
    p.push(stmt(libc::BPF_LD | libc::BPF_IMM, ATTRS));
    p.push(stmt(libc::BPF_LDX | libc::BPF_IMM, u32::from(CTA_MARK)));
    p.push(ancillary(libc::SKF_AD_NLATTR));
    let no_mark = p.len();
    p.push(jeq(0, 0, 0)); // → drop, patched below
    p.push(stmt(libc::BPF_MISC | libc::BPF_TAX, 0));
    // The mark is big-endian on the wire, as a BPF word load reads it.
    p.push(stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_IND, NLA_HDRLEN));
    p.push(stmt(libc::BPF_ALU | libc::BPF_AND | libc::BPF_K, mask));
    let not_ours = p.len();
    p.push(jeq(owner, 0, 0)); // jf → drop, patched below
                              // Destroyed: always.
    p.push(stmt(
        libc::BPF_LD | libc::BPF_B | libc::BPF_ABS,
        MSG_TYPE_BYTE,
    ));
    let destroy = p.len();
    p.push(jeq(u32::from(MSG_DELETE), 0, 0)); // jt → accept
                                              // The TCP state, through protoinfo → tcp → state; any level missing: keep it.
    let mut missing = Vec::new();
    p.push(stmt(libc::BPF_LD | libc::BPF_IMM, ATTRS));
    p.push(stmt(
        libc::BPF_LDX | libc::BPF_IMM,
        u32::from(CTA_PROTOINFO),
    ));
    p.push(ancillary(libc::SKF_AD_NLATTR));
    missing.push(p.len());
    p.push(jeq(0, 0, 0));
    for kind in [CTA_PROTOINFO_TCP, CTA_PROTOINFO_TCP_STATE] {
        p.push(stmt(libc::BPF_LDX | libc::BPF_IMM, u32::from(kind)));
        p.push(ancillary(libc::SKF_AD_NLATTR_NEST));
        missing.push(p.len());
        p.push(jeq(0, 0, 0));
    }
    p.push(stmt(libc::BPF_MISC | libc::BPF_TAX, 0));
    p.push(stmt(libc::BPF_LD | libc::BPF_B | libc::BPF_IND, NLA_HDRLEN));
    let mut kept = Vec::new();
    for s in states {
        kept.push(p.len());
        p.push(jeq(u32::from(*s), 0, 0));
    }
    let drop = p.len();
    p.push(stmt(libc::BPF_RET | libc::BPF_K, 0));
    let accept = p.len();
    p.push(stmt(libc::BPF_RET | libc::BPF_K, u32::MAX));
    // Jumps count from the next instruction; every target is below 256 away.
    let to = |from: usize, target: usize| (target - from - 1) as u8;
    p[no_mark].jt = to(no_mark, drop);
    p[not_ours].jf = to(not_ours, drop);
    p[destroy].jt = to(destroy, accept);
    for i in missing {
        p[i].jt = to(i, accept);
    }
    for i in kept {
        p[i].jt = to(i, accept);
    }
    p
}

/// Attach `prog` to the socket `fd` (`SO_ATTACH_FILTER`); it replaces any earlier filter.
pub fn attach(fd: RawFd, prog: &[libc::sock_filter]) -> io::Result<()> {
    let fprog = libc::sock_fprog {
        len: u16::try_from(prog.len()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?,
        filter: prog.as_ptr().cast_mut(),
    };
    // SAFETY: the kernel copies `len` instructions from `filter`, which `prog` keeps alive
    // for the call; `fprog` is a live stack value of the size given.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&fprog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    //! The program run by the kernel itself: attached to one end of a Unix datagram socket
    //! pair (socket filters run there too, on the datagram's bytes), fed event messages
    //! built by hand; what arrives is what the filter kept. No root needed.
    use super::*;
    use crate::host::conntrack::wire::{Builder, CTA_STATUS, CTA_TUPLE_ORIG, MSG_NEW};
    use crate::host::conntrack::{tcp_state, MARK_OWNER, MARK_OWNER_MASK};
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixDatagram;

    /// An event: a tuple-like nested attribute first (so the searched ones are not first),
    /// then status, the mark (if any) and the TCP state (if any).
    fn event(msg: u16, mark: Option<u32>, state: Option<u8>) -> Vec<u8> {
        let mut b = Builder::new(msg, 0, 0, libc::AF_INET as u8);
        b.begin(CTA_TUPLE_ORIG).attr(1, &[10, 0, 0, 1]).end();
        b.attr(CTA_STATUS, &8u32.to_be_bytes());
        if let Some(s) = state {
            b.begin(CTA_PROTOINFO)
                .begin(CTA_PROTOINFO_TCP)
                .attr(2, &[0]) // another TCP attribute before the state
                .attr(CTA_PROTOINFO_TCP_STATE, &[s])
                .end()
                .end();
        }
        if let Some(m) = mark {
            b.attr(CTA_MARK, &m.to_be_bytes());
        }
        b.finish()
    }

    fn kept(prog: &[libc::sock_filter], msgs: &[Vec<u8>]) -> Vec<bool> {
        let (tx, rx) = UnixDatagram::pair().unwrap();
        attach(rx.as_raw_fd(), prog).unwrap();
        rx.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 1024];
        msgs.iter()
            .map(|m| {
                tx.send(m).unwrap();
                match rx.recv(&mut buf) {
                    Ok(n) => {
                        assert_eq!(&buf[..n], &m[..], "kept whole");
                        true
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
                    Err(e) => panic!("{e}"),
                }
            })
            .collect()
    }

    #[test]
    fn keeps_destroys_and_counted_states_of_our_entries_only() {
        use tcp_state::*;
        let prog = program(
            MARK_OWNER,
            MARK_OWNER_MASK,
            &[ESTABLISHED, CLOSE, TIME_WAIT],
        );
        let ours = Some(MARK_OWNER | 3);
        let cases = [
            (event(MSG_NEW, ours, Some(SYN_RECV)), false),
            (event(MSG_NEW, ours, Some(ESTABLISHED)), true),
            (event(MSG_NEW, ours, Some(FIN_WAIT)), false),
            (event(MSG_NEW, ours, Some(CLOSE_WAIT)), false),
            (event(MSG_NEW, ours, Some(LAST_ACK)), false),
            (event(MSG_NEW, ours, Some(TIME_WAIT)), true),
            (event(MSG_NEW, ours, Some(CLOSE)), true),
            // No TCP state (UDP, a status change): kept.
            (event(MSG_NEW, ours, None), true),
            // Destroyed: kept in any state.
            (event(MSG_DELETE, ours, Some(SYN_SENT)), true),
            (event(MSG_DELETE, ours, Some(TIME_WAIT)), true),
            // Not ours: another mark, or none.
            (event(MSG_NEW, Some(0x1234_0000), Some(ESTABLISHED)), false),
            (event(MSG_DELETE, Some(0x0000_6377), Some(CLOSE)), false),
            (event(MSG_NEW, None, Some(ESTABLISHED)), false),
            (event(MSG_DELETE, None, None), false),
        ];
        let msgs: Vec<Vec<u8>> = cases.iter().map(|(m, _)| m.clone()).collect();
        let want: Vec<bool> = cases.iter().map(|(_, k)| *k).collect();
        assert_eq!(kept(&prog, &msgs), want);
    }

    #[test]
    fn truncated_messages_are_dropped_not_misread() {
        let prog = program(MARK_OWNER, MARK_OWNER_MASK, &[tcp_state::ESTABLISHED]);
        let full = event(MSG_NEW, Some(MARK_OWNER), Some(tcp_state::ESTABLISHED));
        assert_eq!(kept(&prog, std::slice::from_ref(&full)), [true]);
        // Cut inside the mark attribute (the last one): its value cannot be read.
        let cut = full[..full.len() - 2].to_vec();
        // Too short to hold any attribute.
        let tiny = full[..12].to_vec();
        assert_eq!(kept(&prog, &[cut, tiny]), [false, false]);
    }

    #[test]
    fn jumps_stay_inside_the_program() {
        for n in [0, 1, 3, 200, 250] {
            let states: Vec<u8> = (0..n).map(|i| i as u8).collect();
            let p = program(MARK_OWNER, MARK_OWNER_MASK, &states);
            for (i, ins) in p.iter().enumerate() {
                if u32::from(ins.code) & 0x07 == libc::BPF_JMP {
                    assert!(i + 1 + usize::from(ins.jt) < p.len());
                    assert!(i + 1 + usize::from(ins.jf) < p.len());
                }
            }
            assert!(p.len() <= 255 + 30);
        }
    }
}
