//! The TUN device: opens its queues and reads/writes whole IP packets. Nothing else in the
//! crate knows how the queues were opened; callers get packets and the checksum state they
//! arrive in.
//!
//! The queues are opened here with the TUN ioctls (`TUNSETIFF` with `IFF_MULTI_QUEUE`), not
//! through tokio-tun: the dataplane worker owns its queue on a dedicated thread and reads it
//! directly, waiting in `poll(2)` only when it is idle, so a packet never takes a hop through
//! the async runtime's reactor (measured: that hop — an epoll wakeup in the reactor thread,
//! a futex wake of the worker task, an extra EAGAIN read — was the largest per-packet cost).
//! tokio-tun registers every queue with the reactor and cannot hand one over. The same ioctls
//! add `IFF_VNET_HDR` when the offload work needs it; the read/write API stays the same.
//!
//! Writes may come from several threads at once (the worker, UDP reply tasks): a write of one
//! packet to a TUN queue is atomic.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;

use super::packet::Checksum;

const TUN_PATH: &[u8] = b"/dev/net/tun\0";
// From <linux/if_tun.h>.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_MULTI_QUEUE: libc::c_short = 0x0100;

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
    #[error("cannot open /dev/net/tun: {0} (is the tun module loaded, and is /dev/net/tun passed to the container?)")]
    Open(#[source] io::Error),
    #[error("cannot create TUN device {name}: {source} (this needs CAP_NET_ADMIN)")]
    Create {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("TUN device {name} has no interface index: {source}")]
    Index {
        name: String,
        #[source]
        source: io::Error,
    },
}

/// One queue of the device.
#[derive(Debug)]
pub struct TunQueue {
    fd: OwnedFd,
}

/// What a read delivered: the packet is `buf[..len]`.
#[derive(Debug, Clone, Copy)]
pub struct Received {
    pub len: usize,
    pub checksum: Checksum,
}

impl TunQueue {
    /// A packet if one is waiting (`WouldBlock` otherwise). Never blocks.
    pub fn try_recv(&self, buf: &mut [u8]) -> io::Result<Received> {
        // SAFETY: reading into a buffer we own, of the length we pass.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Received {
            len: n as usize,
            checksum: Checksum::Full,
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

    /// Write one packet whose checksums are as `checksum` says. A TUN write hands the packet
    /// to the kernel's receive path and does not wait for buffer space.
    pub fn send(&self, packet: &[u8], checksum: Checksum) -> io::Result<()> {
        debug_assert_eq!(
            checksum,
            Checksum::Full,
            "this queue has no virtio-net header"
        );
        loop {
            // SAFETY: writing from a buffer we borrow, of its length.
            let n =
                unsafe { libc::write(self.fd.as_raw_fd(), packet.as_ptr().cast(), packet.len()) };
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
    /// True when the queues carry a virtio-net header (offloads on).
    pub offload: bool,
}

impl TunDevice {
    /// Create the device `name` with `queues` queues (at least one).
    pub fn open(name: &str, queues: usize) -> Result<TunDevice, TunError> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('/') {
            return Err(TunError::BadName(name.to_string()));
        }
        let cname = CString::new(name).map_err(|_| TunError::BadName(name.to_string()))?;
        let mut opened = Vec::with_capacity(queues.max(1));
        for _ in 0..queues.max(1) {
            opened.push(Arc::new(open_queue(name)?));
        }
        // SAFETY: a NUL-terminated name.
        let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
        if index == 0 {
            return Err(TunError::Index {
                name: name.to_string(),
                source: io::Error::last_os_error(),
            });
        }
        Ok(TunDevice {
            name: name.to_string(),
            index,
            queues: opened,
            offload: false,
        })
    }
}

fn open_queue(name: &str) -> Result<TunQueue, TunError> {
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
        flags: IFF_TUN | IFF_NO_PI | IFF_MULTI_QUEUE,
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
            source: io::Error::last_os_error(),
        });
    }
    Ok(TunQueue { fd })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_names_are_refused_before_any_syscall() {
        assert!(matches!(TunDevice::open("", 1), Err(TunError::BadName(_))));
        assert!(matches!(
            TunDevice::open("a-very-long-name-x", 1),
            Err(TunError::BadName(_))
        ));
        assert!(matches!(
            TunDevice::open("a/b", 1),
            Err(TunError::BadName(_))
        ));
    }

    #[test]
    fn ifreq_has_the_kernel_layout() {
        assert_eq!(std::mem::size_of::<IfReq>(), 40);
    }
}
