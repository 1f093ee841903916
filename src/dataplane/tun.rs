//! The TUN device: opens its queues and reads/writes whole IP packets. Nothing else in the
//! crate knows how the queues were opened; callers get packets and the checksum state they
//! arrive in.
//!
//! The queues are opened here with the TUN ioctls (`TUNSETIFF` with `IFF_MULTI_QUEUE`), not
//! through tokio-tun: the dataplane worker owns its queue on a dedicated thread and reads it
//! directly, waiting in `poll(2)` only when it is idle, so a packet never takes a hop through
//! the async runtime's reactor (measured: that hop — an epoll wakeup in the reactor thread,
//! a futex wake of the worker task, an extra EAGAIN read — was the largest per-packet cost).
//! tokio-tun registers every queue with the reactor and cannot hand one over, nor open a
//! queue with `IFF_VNET_HDR`.
//!
//! **Offloads.** Unless turned off, the queues are opened with `IFF_VNET_HDR` and the device
//! gets `TUNSETOFFLOAD` (checksum, TSO4/6 with ECN, and USO4/6 where the kernel has it): the
//! kernel then hands over and takes back GSO super-packets of up to 64 KiB with a
//! `virtio_net_hdr` in front, instead of segmenting everything to the MTU — one read and one
//! write per 64 KiB instead of per 1.5 KiB. The header travels beside the packet: reads fill
//! a [`VirtioNetHdr`] and the packet buffer separately (`readv`), writes gather them
//! (`writev`), so the packet core always sees the IP packet at offset 0.
//!
//! Writes may come from several threads at once (the worker, UDP reply tasks): a write of one
//! packet to a TUN queue is atomic.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;

use super::packet::{DropReason, VirtioNetHdr};

const TUN_PATH: &[u8] = b"/dev/net/tun\0";
// From <linux/if_tun.h>.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_MULTI_QUEUE: libc::c_short = 0x0100;
const IFF_VNET_HDR: libc::c_short = 0x4000;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const TUN_F_CSUM: libc::c_uint = 0x01;
const TUN_F_TSO4: libc::c_uint = 0x02;
const TUN_F_TSO6: libc::c_uint = 0x04;
const TUN_F_TSO_ECN: libc::c_uint = 0x08;
const TUN_F_USO4: libc::c_uint = 0x20;
const TUN_F_USO6: libc::c_uint = 0x40;

/// `struct ifreq` as TUNSETIFF reads it: the name, then the flags (the rest of the union
/// is padding here).
#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

#[derive(Debug, thiserror::Error)]
pub enum TunError {
    #[error("TUN device name {0:?} must be 1 to 15 characters without '/' or NUL")]
    BadName(String),
    // The cause is part of each message (mid-sentence, before the hint), so it is not also
    // given as `source()`: an error chain (`{:#}`) would print it twice.
    #[error("cannot open /dev/net/tun: {0} (is the tun module loaded, and is /dev/net/tun passed to the container?)")]
    Open(io::Error),
    #[error("cannot create TUN device {name}: {error} (this needs CAP_NET_ADMIN)")]
    Create { name: String, error: io::Error },
    #[error("cannot set up offloads on TUN device {name}: {error} (run with --no-offload)")]
    Offload { name: String, error: io::Error },
    #[error("TUN device {name} has no interface index: {error}")]
    Index { name: String, error: io::Error },
}

/// One queue of the device.
#[derive(Debug)]
pub struct TunQueue {
    fd: OwnedFd,
    /// Packets carry a `virtio_net_hdr` in front (offloads on).
    vnet: bool,
}

/// What a read delivered: the packet is `buf[..len]`, `hdr` its offload state
/// ([`VirtioNetHdr::NONE`] on a queue without offloads; an error when the kernel's header
/// cannot be used, e.g. an unknown GSO type: the packet is then dropped and counted).
#[derive(Debug, Clone, Copy)]
pub struct Received {
    pub len: usize,
    pub hdr: Result<VirtioNetHdr, DropReason>,
}

fn check(n: isize) -> io::Result<usize> {
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// For a reactor to wait on the queue (the worker that runs the proxy, too).
impl AsRawFd for TunQueue {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }
}

impl TunQueue {
    /// A packet if one is waiting (`WouldBlock` otherwise). Never blocks. `buf` should hold
    /// [`super::packet::MAX_PACKET`] bytes: with offloads, packets are up to 64 KiB.
    pub fn try_recv(&self, buf: &mut [u8]) -> io::Result<Received> {
        if !self.vnet {
            // SAFETY: reading into a buffer we own, of the length we pass.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            return Ok(Received {
                len: check(n)?,
                hdr: Ok(VirtioNetHdr::NONE),
            });
        }
        let mut raw = [0u8; VirtioNetHdr::LEN];
        let iov = [
            libc::iovec {
                iov_base: raw.as_mut_ptr().cast(),
                iov_len: raw.len(),
            },
            libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: buf.len(),
            },
        ];
        // SAFETY: two iovecs over buffers we own, of the lengths we pass.
        let n = check(unsafe { libc::readv(self.fd.as_raw_fd(), iov.as_ptr(), 2) })?;
        let len = n.saturating_sub(VirtioNetHdr::LEN);
        Ok(Received {
            len,
            hdr: VirtioNetHdr::parse(&raw),
        })
    }

    /// Wait until a packet is waiting or `timeout_ms` passed; true when one is.
    pub fn wait_readable(&self, timeout_ms: i32) -> io::Result<bool> {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd that lives across the call.
        let r = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        match r {
            r if r > 0 => Ok(true),
            0 => Ok(false),
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    Ok(false)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// True when packets carry a virtio-net header (offloads on): only then may [`send`]
    /// be given a header with a partial checksum or GSO.
    ///
    /// [`send`]: TunQueue::send
    pub fn offload(&self) -> bool {
        self.vnet
    }

    /// Write one packet with its offload state (`hdr`: as read for a rewritten packet,
    /// [`VirtioNetHdr::NONE`] for one the gateway built complete). A TUN write hands the
    /// packet to the kernel's receive path and does not wait for buffer space.
    pub fn send(&self, packet: &[u8], hdr: &VirtioNetHdr) -> io::Result<()> {
        let mut raw = [0u8; VirtioNetHdr::LEN];
        hdr.write(&mut raw);
        let iov = [
            libc::iovec {
                iov_base: raw.as_mut_ptr().cast(),
                iov_len: raw.len(),
            },
            libc::iovec {
                iov_base: packet.as_ptr().cast_mut().cast(),
                iov_len: packet.len(),
            },
        ];
        if !self.vnet {
            debug_assert_eq!(
                *hdr,
                VirtioNetHdr::NONE,
                "this queue has no virtio-net header"
            );
        }
        let iov = if self.vnet { &iov[..] } else { &iov[1..] };
        loop {
            // SAFETY: iovecs over buffers that live across the call; the kernel only reads.
            let n = unsafe { libc::writev(self.fd.as_raw_fd(), iov.as_ptr(), iov.len() as _) };
            if n >= 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

/// The device: its name, index and queues. Closing the last queue removes the device.
#[derive(Debug)]
pub struct TunDevice {
    pub name: String,
    pub index: u32,
    pub queues: Vec<Arc<TunQueue>>,
    /// The offloads in use (`None`: plain packets, no virtio-net header).
    pub offload: Option<Offloads>,
}

/// The offloads the device was given with `TUNSETOFFLOAD`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offloads {
    /// UDP segmentation (USO): the kernel has it from 6.2.
    pub uso: bool,
}

impl std::fmt::Display for Offloads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("csum tso4 tso6 tso-ecn")?;
        if self.uso {
            f.write_str(" uso4 uso6")?;
        }
        Ok(())
    }
}

impl TunDevice {
    /// Create the device `name` with `queues` queues (at least one), with offloads unless
    /// `offload` is false.
    pub fn open(name: &str, queues: usize, offload: bool) -> Result<TunDevice, TunError> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('/') {
            return Err(TunError::BadName(name.to_string()));
        }
        let cname = CString::new(name).map_err(|_| TunError::BadName(name.to_string()))?;
        let mut opened = Vec::with_capacity(queues.max(1));
        for _ in 0..queues.max(1) {
            opened.push(Arc::new(open_queue(name, offload)?));
        }
        let offloads = match opened.first() {
            Some(q) if offload => Some(set_offload(q, name)?),
            _ => None,
        };
        // SAFETY: a NUL-terminated name.
        let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
        if index == 0 {
            return Err(TunError::Index {
                name: name.to_string(),
                error: io::Error::last_os_error(),
            });
        }
        Ok(TunDevice {
            name: name.to_string(),
            index,
            queues: opened,
            offload: offloads,
        })
    }
}

/// Enable the offloads on the device (one queue's fd speaks for the device): USO too where
/// the kernel knows it (EINVAL before 6.2), else without.
fn set_offload(q: &TunQueue, name: &str) -> Result<Offloads, TunError> {
    let base = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN;
    let set = |flags: libc::c_uint| {
        // SAFETY: TUNSETOFFLOAD takes its flags as the integer argument.
        let r =
            unsafe { libc::ioctl(q.fd.as_raw_fd(), TUNSETOFFLOAD as _, flags as libc::c_ulong) };
        check(r as isize).map(drop)
    };
    let failed = |error| TunError::Offload {
        name: name.to_string(),
        error,
    };
    match set(base | TUN_F_USO4 | TUN_F_USO6) {
        Ok(()) => Ok(Offloads { uso: true }),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            set(base).map(|()| Offloads { uso: false }).map_err(failed)
        }
        Err(e) => Err(failed(e)),
    }
}

fn open_queue(name: &str, vnet: bool) -> Result<TunQueue, TunError> {
    // SAFETY: a NUL-terminated path; the result is checked.
    let raw = unsafe {
        libc::open(
            TUN_PATH.as_ptr().cast(),
            libc::O_RDWR | libc::O_CLOEXEC | libc::O_NONBLOCK,
        )
    };
    if raw < 0 {
        return Err(TunError::Open(io::Error::last_os_error()));
    }
    // SAFETY: `raw` is a descriptor we just opened and own.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: IFF_TUN | IFF_NO_PI | IFF_MULTI_QUEUE | if vnet { IFF_VNET_HDR } else { 0 },
        _pad: [0; 22],
    };
    for (dst, src) in req.name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    // SAFETY: TUNSETIFF reads and writes a `struct ifreq`, which `IfReq` lays out.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF as _, &mut req) };
    if r < 0 {
        return Err(TunError::Create {
            name: name.to_string(),
            error: io::Error::last_os_error(),
        });
    }
    if vnet {
        let size = VirtioNetHdr::LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads an int through the pointer.
        if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETVNETHDRSZ as _, &size) } < 0 {
            return Err(TunError::Offload {
                name: name.to_string(),
                error: io::Error::last_os_error(),
            });
        }
    }
    Ok(TunQueue { fd, vnet })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each error names its cause once, also through an error chain (`{:#}`).
    #[test]
    fn errors_name_their_cause_once() {
        let cause = || io::Error::from_raw_os_error(libc::EPERM);
        let text = cause().to_string();
        for e in [
            TunError::Open(cause()),
            TunError::Create {
                name: "cw0".into(),
                error: cause(),
            },
            TunError::Offload {
                name: "cw0".into(),
                error: cause(),
            },
            TunError::Index {
                name: "cw0".into(),
                error: cause(),
            },
        ] {
            let chain = format!("{:#}", anyhow::Error::from(e));
            assert_eq!(chain.matches(&text).count(), 1, "{chain}");
        }
    }

    #[test]
    fn bad_names_are_refused_before_any_syscall() {
        assert!(matches!(
            TunDevice::open("", 1, true),
            Err(TunError::BadName(_))
        ));
        assert!(matches!(
            TunDevice::open("a-very-long-name-x", 1, true),
            Err(TunError::BadName(_))
        ));
        assert!(matches!(
            TunDevice::open("a/b", 1, true),
            Err(TunError::BadName(_))
        ));
    }

    #[test]
    fn ifreq_has_the_kernel_layout() {
        assert_eq!(std::mem::size_of::<IfReq>(), 40);
    }
}
