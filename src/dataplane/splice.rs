//! The bytes of one proxied TCP connection: both directions at once, kernel to kernel with
//! `splice(2)` through a pipe, and the pool those pipes come from.
//!
//! A direction waits for its source to be readable, then moves what the source holds (a
//! burst) and waits again. A burst starts as a copy through a 16 KiB buffer allocated for it;
//! once a read fills that buffer, the rest of the burst takes a pipe from the [`PipePool`],
//! splices into it and out of it until it is empty, and gives it back as soon as the source
//! would block; a direction whose last burst was that large splices the next from the start.
//! Small bursts (a request, a response) are copied because splicing them cost more: on the
//! benchmark's path (bench/run.sh, 5 s runs), splicing every burst gave ~15 % fewer HTTP
//! keep-alive requests/s than the old copy loop (median 68k over 12 runs, against 80k over
//! 9); copying first brought it within noise (74k over 6 runs, spread 64–82k).
//!
//! An idle connection holds no pipe and no buffer, only its two sockets and its task: with
//! 8,000 idle flows through it the gateway's RSS was 42 MB (182 MB with the two 16 KiB copy
//! buffers per connection it used to hold). When the pool has no pipe left, or the kernel
//! refuses splice for these sockets (`EINVAL`, `ENOSYS`, `EOPNOTSUPP`), bursts are copied
//! whole. Tokio's readiness drives both: every splice runs in `try_io`, so an `EAGAIN`
//! clears the readiness it was made under; copies read through tokio's `poll_read`, which
//! also clears it after a short read (the socket is drained), so the read that would only
//! say `EAGAIN` is never made. Each chunk moved consumes task budget so a busy connection
//! yields like any tokio I/O.
//!
//! The contract is the one `copy_bidirectional` had: EOF from one side is passed on as
//! `shutdown(Write)` on the other (half-close), the connection is done when both directions
//! are, and an error on either side ends both. The second EOF is not passed on by a
//! shutdown: both sockets are closed right after it, and the close sends that FIN (a socket
//! closed with unread bytes would send a RST instead, but both have been read to EOF).
//! When the source's FIN has already arrived as a copied burst is read, the burst is written
//! with `MSG_MORE` so that FIN, passed on next, leaves in the same segment (one packet less
//! each way per short connection through the TUN; see bench/README.md).
//! Bytes are counted once per splice or read call, when they leave the source.
//!
//! Sizes, measured on loopback with the gateway's half on a thread of its own (1 GiB each
//! way at once, 5 runs, CPU of that thread per GiB moved; the 2-core VM was loaded by other
//! builds, so only large differences count):
//! - splice against the 16 KiB copy: 290–370 ms/GiB against 650–830 ms/GiB (18 against
//!   10 Gbit/s when the machine was quiet).
//! - pipe size ([`PIPE_SIZE`]): 64, 128 and 256 KiB are within noise of each other
//!   (284–374 ms/GiB, throughput alike); 1 MiB saves ~15 % CPU but not throughput, and four
//!   times the bytes a pipe may pin. 128 KiB: a full pool of 256 pipes is 8,192 pages, half of
//!   the default `fs.pipe-user-pages-soft`, so a gateway without `CAP_SYS_RESOURCE` still gets
//!   full-size pipes. When `F_SETPIPE_SZ` is refused anyway, the pipe keeps its default size.
//! - socket buffers: left to the kernel's autotuning. Fixed 1 MiB `SO_RCVBUF`/`SO_SNDBUF`
//!   (which turns autotuning off) cost more with splice (~410 ms/GiB) and did not help
//!   throughput.
//!
//! Descriptors: a pooled pipe holds two. The pool opens pipes lazily up to its capacity and
//! keeps the idle ones open; `config::RunArgs::limits` counts the capacity in the
//! `RLIMIT_NOFILE` budget. A pipe whose splice failed may hold bytes of a dead connection:
//! it is closed, never pooled, and its place freed for a new one.
//!
//! Owns: the pipe pool and the copy loop of a connection. Must not touch: the NAT, the
//! ServiceTable, the flow list (it reports counts through the closures it is given, and
//! splice/copy/pool counters into the pool's [`SpliceStats`]).

use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;

use tokio::io::{AsyncRead, Interest, ReadBuf};
use tokio::net::tcp::ReadHalf;
use tokio::net::TcpStream;

use super::shared::lock;
use super::stats::SpliceStats;

/// Most pipes in a gateway's pool (`config` derives the count from `RLIMIT_NOFILE`, up to
/// this). A pipe is held only while a direction has bytes in flight, so this bounds the
/// directions spliced at once, not the flows; beyond it bursts are copied.
pub const MAX_POOL_PIPES: u64 = 256;

/// Capacity asked of each pipe with `F_SETPIPE_SZ`: how much one splice call moves.
pub const PIPE_SIZE: usize = 128 * 1024;

/// The copy fallback's buffer, allocated per burst (as the old copy loop's buffers).
const COPY_BUFFER: usize = 16 * 1024;

/// A pipe with both ends non-blocking.
#[derive(Debug)]
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// Its capacity: the most one splice into it moves.
    size: usize,
}

impl Pipe {
    fn open(size: usize) -> io::Result<Pipe> {
        let mut fds: [libc::c_int; 2] = [-1; 2];
        // SAFETY: pipe2 writes two descriptors into the array we pass.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both descriptors were just opened and nothing else owns them.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let want = libc::c_int::try_from(size).unwrap_or(libc::c_int::MAX);
        // SAFETY: fcntl on a descriptor we own; F_SETPIPE_SZ/F_GETPIPE_SZ take and return ints.
        // Refused (EPERM) when the user's pipe pages are over `fs.pipe-user-pages-soft`: the
        // pipe keeps its default size and still works.
        let mut got = unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, want) };
        if got <= 0 {
            // SAFETY: as above.
            got = unsafe { libc::fcntl(write.as_raw_fd(), libc::F_GETPIPE_SZ) };
        }
        let size = usize::try_from(got).ok().filter(|&s| s > 0).unwrap_or(4096);
        Ok(Pipe { read, write, size })
    }
}

/// A bounded pool of pipes shared by all connections. Its lock is taken twice per burst
/// (take, give back), never per packet, and held only for a push or pop of the idle list.
#[derive(Debug)]
pub struct PipePool {
    idle: Mutex<Vec<Pipe>>,
    /// Pipes open, idle or lent; never more than `capacity`.
    open: AtomicUsize,
    capacity: usize,
    pipe_size: usize,
    /// Where the pool and the connections using it count (the gateway's metrics).
    stats: Arc<SpliceStats>,
    /// Tests make the kernel's refusal happen on loopback, where it never does.
    #[cfg(test)]
    fault: tests::Fault,
}

impl PipePool {
    /// A pool of at most `capacity` pipes of `pipe_size` bytes, opened on first use.
    pub fn new(capacity: usize, pipe_size: usize) -> PipePool {
        PipePool::with_stats(capacity, pipe_size, Arc::default())
    }

    /// As [`PipePool::new`], counting into `stats`.
    pub fn with_stats(capacity: usize, pipe_size: usize, stats: Arc<SpliceStats>) -> PipePool {
        stats
            .pipes_capacity
            .store(capacity as u64, Ordering::Relaxed);
        PipePool {
            idle: Mutex::new(Vec::with_capacity(capacity)),
            open: AtomicUsize::new(0),
            capacity,
            pipe_size,
            stats,
            #[cfg(test)]
            fault: tests::Fault::default(),
        }
    }

    /// `splice(2)` for a burst: from a socket into a pipe (`into_pipe`) or out of it.
    fn splice(&self, from: RawFd, to: RawFd, len: usize, into_pipe: bool) -> io::Result<usize> {
        // Only the tests' fault tells the two directions apart.
        #[cfg(test)]
        let len = match self.fault.inject(len, into_pipe) {
            Some(r) => r?,
            None => len,
        };
        #[cfg(not(test))]
        let _ = into_pipe;
        splice(from, to, len)
    }

    /// The counters this pool and its connections keep.
    pub fn stats(&self) -> &SpliceStats {
        &self.stats
    }

    /// Pipes open now (idle or lent).
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Pipes open and not lent to any connection.
    pub fn idle(&self) -> usize {
        lock(&self.idle).len()
    }

    /// An idle pipe, or a new one while under capacity; `None` when all are lent (or no
    /// pipe can be opened): the caller copies instead.
    fn take(&self) -> Option<Lent<'_>> {
        let lent = self.take_pipe();
        if lent.is_none() {
            self.stats.pool_exhausted.fetch_add(1, Ordering::Relaxed);
        }
        lent
    }

    fn take_pipe(&self) -> Option<Lent<'_>> {
        let idle = lock(&self.idle).pop();
        if let Some(pipe) = idle {
            return Some(Lent::new(self, pipe));
        }
        let room = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.capacity).then_some(n + 1)
            });
        if room.is_err() {
            return None;
        }
        match Pipe::open(self.pipe_size) {
            Ok(pipe) => Some(Lent::new(self, pipe)),
            Err(e) => {
                self.open.fetch_sub(1, Ordering::AcqRel);
                tracing::debug!(error = %e, "cannot open a pipe for splice; copying instead");
                None
            }
        }
    }
}

/// A pipe lent to one direction. [`Lent::give_back`] returns it (empty) to the pool;
/// dropped otherwise (an error, or the connection ended with bytes in it), it is closed and
/// its place freed.
struct Lent<'a> {
    pool: &'a PipePool,
    /// Always `Some` until dropped.
    pipe: Option<Pipe>,
    /// Its descriptors and size, copied out so the splice loop need not unwrap.
    read: RawFd,
    write: RawFd,
    size: usize,
    reusable: bool,
}

impl<'a> Lent<'a> {
    fn new(pool: &'a PipePool, pipe: Pipe) -> Lent<'a> {
        pool.stats.pipes_lent.fetch_add(1, Ordering::Relaxed);
        Lent {
            pool,
            read: pipe.read.as_raw_fd(),
            write: pipe.write.as_raw_fd(),
            size: pipe.size,
            pipe: Some(pipe),
            reusable: false,
        }
    }

    /// Back to the pool; only for an empty pipe that never failed.
    fn give_back(mut self) {
        self.reusable = true;
    }
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        let Some(pipe) = self.pipe.take() else { return };
        self.pool.stats.pipes_lent.fetch_sub(1, Ordering::Relaxed);
        if self.reusable {
            let mut idle = lock(&self.pool.idle);
            idle.push(pipe);
        } else {
            drop(pipe);
            self.pool.open.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// What a connection moved, and why it ended if not by two clean EOFs.
#[derive(Debug)]
pub struct Moved {
    /// Bytes written to the endpoint (read from the client).
    pub to_endpoint: u64,
    /// Bytes written to the client (read from the endpoint).
    pub to_client: u64,
    /// The error that ended both directions.
    pub error: Option<io::Error>,
}

/// Move bytes both ways between `client` and `upstream` until both directions have seen EOF
/// (each passed on as a half-close) or either fails. `sent` and `received` count the bytes
/// read from the client and from the endpoint, once per call that read them.
pub async fn splice_both(
    client: &mut TcpStream,
    upstream: &mut TcpStream,
    pool: &PipePool,
    sent: impl Fn(u64) + Sync,
    received: impl Fn(u64) + Sync,
) -> Moved {
    // Atomics only so the futures stay `Send`; both directions run in this one task.
    let to_endpoint = AtomicU64::new(0);
    let to_client = AtomicU64::new(0);
    let (client_eof, upstream_eof) = (AtomicBool::new(false), AtomicBool::new(false));
    let (client_read, client_write) = client.split();
    let (upstream_read, upstream_write) = upstream.split();
    let up = one_way(
        client_read,
        upstream_write.as_ref(),
        pool,
        Ends {
            from: &client_eof,
            to: &upstream_eof,
        },
        &to_endpoint,
        &sent,
    );
    let down = one_way(
        upstream_read,
        client_write.as_ref(),
        pool,
        Ends {
            from: &upstream_eof,
            to: &client_eof,
        },
        &to_client,
        &received,
    );
    let error = tokio::try_join!(up, down).err();
    Moved {
        to_endpoint: to_endpoint.load(Ordering::Relaxed),
        to_client: to_client.load(Ordering::Relaxed),
        error,
    }
}

/// How a burst ended.
enum Burst {
    /// The source would block; nothing is held.
    Idle,
    /// The source is at EOF and everything read is written.
    Eof,
    /// The kernel refused splice for these sockets; everything read is written.
    Refused,
    /// A read filled the copy buffer (written out since): the source likely holds more, and
    /// its readiness is still set.
    Full,
}

/// Which sockets of a connection have been read to EOF: this direction's source, and the
/// socket it writes to (the other direction's source).
struct Ends<'a> {
    from: &'a AtomicBool,
    to: &'a AtomicBool,
}

/// One direction, from EOF to a half-close of `to`. A burst starts as a copy unless the
/// previous one was large; once a read fills the copy buffer, it goes on with splice.
async fn one_way(
    mut reader: ReadHalf<'_>,
    to: &TcpStream,
    pool: &PipePool,
    ends: Ends<'_>,
    moved: &AtomicU64,
    count: &(impl Fn(u64) + Sync),
) -> io::Result<()> {
    let mut splice_refused = false;
    let mut last_large = false;
    loop {
        reader.readable().await?;
        let start = moved.load(Ordering::Relaxed);
        let mut burst = if last_large && !splice_refused {
            Burst::Full
        } else {
            copy_burst(&mut reader, to, pool.stats(), moved, count, !splice_refused).await?
        };
        if let Burst::Full = burst {
            burst = match pool.take() {
                Some(pipe) => splice_burst(reader.as_ref(), to, pipe, moved, count).await?,
                None => copy_burst(&mut reader, to, pool.stats(), moved, count, false).await?,
            };
        }
        last_large = moved.load(Ordering::Relaxed) - start >= COPY_BUFFER as u64;
        match burst {
            Burst::Idle => {}
            Burst::Eof => {
                ends.from.store(true, Ordering::Relaxed);
                // Both directions run in one task: the other one's EOF is already known.
                if !ends.to.load(Ordering::Relaxed) {
                    socket2::SockRef::from(to).shutdown(std::net::Shutdown::Write)?;
                }
                return Ok(());
            }
            Burst::Refused => {
                tracing::debug!("splice refused for a connection; copying its bytes instead");
                pool.stats.refused.fetch_add(1, Ordering::Relaxed);
                splice_refused = true;
            }
            // Only a copy that stops when full returns it, and its result was replaced.
            Burst::Full => {}
        }
    }
}

/// Splice from `from` into the pipe and out to `to` until `from` would block or ends.
async fn splice_burst(
    from: &TcpStream,
    to: &TcpStream,
    pipe: Lent<'_>,
    moved: &AtomicU64,
    count: &impl Fn(u64),
) -> io::Result<Burst> {
    let (source, sink) = (from.as_raw_fd(), to.as_raw_fd());
    let (pipe_in, pipe_out) = (pipe.write, pipe.read);
    loop {
        // The pipe is empty here, so EAGAIN can only mean the socket has nothing to read.
        let into_pipe = || pipe.pool.splice(source, pipe_in, pipe.size, true);
        let n = match from.try_io(Interest::READABLE, into_pipe) {
            Ok(0) => {
                pipe.give_back();
                return Ok(Burst::Eof);
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                pipe.give_back();
                return Ok(Burst::Idle);
            }
            Err(e) if refused(&e) => return Ok(Burst::Refused),
            Err(e) => return Err(e),
        };
        count(n as u64);
        let mut left = n;
        while left > 0 {
            to.writable().await?;
            // The pipe holds bytes, so EAGAIN can only mean the socket's send buffer is full.
            match to.try_io(Interest::WRITABLE, || {
                pipe.pool.splice(pipe_out, sink, left, false)
            }) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(k) => {
                    left -= k;
                    moved.fetch_add(k as u64, Ordering::Relaxed);
                    pipe.pool
                        .stats
                        .bytes_spliced
                        .fetch_add(k as u64, Ordering::Relaxed);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if refused(&e) => {
                    drain_pipe(pipe_out, left, to, moved, &pipe.pool.stats.bytes_copied).await?;
                    return Ok(Burst::Refused);
                }
                Err(e) => return Err(e),
            }
        }
        // Readiness futures do not count against tokio's task budget: without this, a
        // source that never runs dry would starve the other direction and other tasks.
        tokio::task::coop::consume_budget().await;
    }
}

/// Copy from `from` to `to` through a buffer that lives for this burst only, until `from`
/// would block or ends, or (with `stop_when_full`) a read fills the buffer.
async fn copy_burst(
    from: &mut ReadHalf<'_>,
    to: &TcpStream,
    stats: &SpliceStats,
    moved: &AtomicU64,
    count: &impl Fn(u64),
    stop_when_full: bool,
) -> io::Result<Burst> {
    let mut buf = Vec::with_capacity(COPY_BUFFER);
    loop {
        buf.clear();
        match read_now(from, &mut buf).await {
            Ok(0) => return Ok(Burst::Eof),
            Ok(n) => {
                count(n as u64);
                // The source's FIN is already here: hold these bytes back (`MSG_MORE`) so the
                // FIN this direction passes on next leaves in the same segment.
                let more = n < buf.capacity() && read_closed(from).await;
                write_all(to, &buf, more, moved, &stats.bytes_copied).await?;
                if stop_when_full && n == buf.capacity() {
                    return Ok(Burst::Full);
                }
                // As in `splice_burst`.
                tokio::task::coop::consume_budget().await;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Burst::Idle),
            Err(e) => return Err(e),
        }
    }
}

/// Read what `from` holds now into `buf`'s spare capacity, or `WouldBlock`. Through tokio's
/// `poll_read`, polled once: unlike `try_read`, it marks the socket not readable after a
/// short read, so the next call answers `WouldBlock` without a syscall.
async fn read_now(from: &mut ReadHalf<'_>, buf: &mut Vec<u8>) -> io::Result<usize> {
    // `poll_read` also answers `Pending` when the task's budget is spent, which this
    // single poll would take for "nothing to read" while `readable()` (free of budget) says
    // there is: the direction would spin without ever yielding. Yield first instead.
    if !tokio::task::coop::has_budget_remaining() {
        tokio::task::coop::consume_budget().await;
    }
    let mut read = ReadBuf::uninit(buf.spare_capacity_mut());
    let polled =
        std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *from).poll_read(cx, &mut read))).await;
    match polled {
        Poll::Ready(Ok(())) => {
            let n = read.filled().len();
            // SAFETY: `poll_read` initialised and filled these `n` bytes of spare capacity.
            unsafe { buf.set_len(n) };
            Ok(n)
        }
        Poll::Ready(Err(e)) => Err(e),
        Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
    }
}

/// The kernel would not splice out of the pipe: read its `left` bytes back and write them.
async fn drain_pipe(
    pipe: RawFd,
    left: usize,
    to: &TcpStream,
    moved: &AtomicU64,
    copied: &AtomicU64,
) -> io::Result<()> {
    let mut buf = vec![0u8; left];
    let mut filled = 0;
    while filled < left {
        let rest = &mut buf[filled..];
        // SAFETY: reads into the unfilled part of our buffer, at most its length.
        let n = unsafe { libc::read(pipe, rest.as_mut_ptr().cast(), rest.len()) };
        match n {
            // The pipe holds `left` bytes and only we read it: it cannot be empty or block.
            n if n > 0 => filled += n as usize,
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    write_all(to, &buf, false, moved, copied).await
}

/// Whether `from` has received its peer's FIN (tokio saw `EPOLLRDHUP`): the reads to come
/// return what is left and then EOF. No syscall; `false` when tokio has not seen it yet.
async fn read_closed(from: &ReadHalf<'_>) -> bool {
    let mut ready = std::pin::pin!(from.as_ref().ready(Interest::READABLE));
    let polled = std::future::poll_fn(|cx| Poll::Ready(ready.as_mut().poll(cx)));
    matches!(polled.await, Poll::Ready(Ok(r)) if r.is_read_closed())
}

/// Write all of `buf`, counting what is written in `moved` and `copied`. With `more`, the
/// last segment waits for what follows (`MSG_MORE`): only when a FIN (a shutdown or the
/// close) surely comes next, which sends it.
async fn write_all(
    to: &TcpStream,
    mut buf: &[u8],
    more: bool,
    moved: &AtomicU64,
    copied: &AtomicU64,
) -> io::Result<()> {
    let flags = if more { libc::MSG_MORE } else { 0 };
    while !buf.is_empty() {
        to.writable().await?;
        let sent = to.try_io(Interest::WRITABLE, || {
            socket2::SockRef::from(to).send_with_flags(buf, flags)
        });
        match sent {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(k) => {
                buf = &buf[k..];
                moved.fetch_add(k as u64, Ordering::Relaxed);
                copied.fetch_add(k as u64, Ordering::Relaxed);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Errors by which the kernel says it will not splice between these descriptors.
fn refused(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP)
    )
}

/// One non-blocking `splice(2)` of up to `len` bytes (a socket or pipe has no offset).
fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    loop {
        // SAFETY: both descriptors are open for the duration of the call (their owners are
        // borrowed by the caller); null offsets are what splice takes for pipes and sockets.
        let n = unsafe {
            libc::splice(
                from,
                std::ptr::null_mut(),
                to,
                std::ptr::null_mut(),
                len,
                libc::SPLICE_F_NONBLOCK | libc::SPLICE_F_MOVE,
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A connected loopback pair.
    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (a, b)
    }

    /// A client app, the gateway's two sockets, and the endpoint app.
    struct Proxied {
        client: TcpStream,
        gw_client: TcpStream,
        gw_upstream: TcpStream,
        endpoint: TcpStream,
    }

    async fn proxied() -> Proxied {
        let (client, gw_client) = pair().await;
        let (gw_upstream, endpoint) = pair().await;
        Proxied {
            client,
            gw_client,
            gw_upstream,
            endpoint,
        }
    }

    /// Run the gateway half of `p` with `pool` on a task of its own; returns what it moved
    /// and what it counted (sent, received), after both sockets are closed.
    fn spawn_gateway(
        mut gw_client: TcpStream,
        mut gw_upstream: TcpStream,
        pool: Arc<PipePool>,
    ) -> tokio::task::JoinHandle<(Moved, u64, u64)> {
        tokio::spawn(async move {
            let (sent, received) = (AtomicU64::new(0), AtomicU64::new(0));
            let moved = splice_both(
                &mut gw_client,
                &mut gw_upstream,
                &pool,
                |n| {
                    sent.fetch_add(n, Ordering::Relaxed);
                },
                |n| {
                    received.fetch_add(n, Ordering::Relaxed);
                },
            )
            .await;
            (moved, sent.into_inner(), received.into_inner())
        })
    }

    /// Pseudo-random bytes (xorshift), the same for the same seed.
    fn stream_bytes(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// FNV-1a: a hash that does not depend on how the bytes were chunked.
    fn fnv(bytes: &[u8]) -> u64 {
        bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
    }

    /// Write `data` then half-close; read to EOF meanwhile. Returns the hash of what came in.
    async fn exchange(s: TcpStream, data: Vec<u8>) -> (u64, usize) {
        let (mut r, mut w) = s.into_split();
        let writer = tokio::spawn(async move {
            w.write_all(&data).await.unwrap();
            w.shutdown().await.unwrap();
        });
        let mut got = Vec::new();
        r.read_to_end(&mut got).await.unwrap();
        writer.await.unwrap();
        (fnv(&got), got.len())
    }

    const LIMIT: Duration = Duration::from_secs(30);

    /// Write `msg`, then half-close.
    async fn say_and_close(s: &mut TcpStream, msg: &[u8]) {
        s.write_all(msg).await.unwrap();
        s.shutdown().await.unwrap();
    }

    /// Everything `s` receives up to EOF, which must come within `limit` (`what` if not).
    async fn read_all(s: &mut TcpStream, limit: Duration, what: &str) -> Vec<u8> {
        let mut got = Vec::new();
        tokio::time::timeout(limit, s.read_to_end(&mut got))
            .await
            .expect(what)
            .unwrap();
        got
    }

    /// `len` pseudo-random bytes each way at once through a gateway half using `pool`.
    struct Transfer {
        gw: tokio::task::JoinHandle<(Moved, u64, u64)>,
        client: tokio::task::JoinHandle<(u64, usize)>,
        endpoint: tokio::task::JoinHandle<(u64, usize)>,
        /// Hashes of what the client and the endpoint send.
        sent: (u64, u64),
        len: usize,
    }

    fn start_transfer(p: Proxied, pool: &Arc<PipePool>, seed: u64, len: usize) -> Transfer {
        let gw = spawn_gateway(p.gw_client, p.gw_upstream, pool.clone());
        let (up, down) = (stream_bytes(seed, len), stream_bytes(seed + 1000, len));
        let sent = (fnv(&up), fnv(&down));
        Transfer {
            gw,
            client: tokio::spawn(exchange(p.client, up)),
            endpoint: tokio::spawn(exchange(p.endpoint, down)),
            sent,
            len,
        }
    }

    impl Transfer {
        /// Wait for it to end: every byte arrived, in order, both ways, and the gateway
        /// moved and counted each once and ended without an error.
        async fn check(self, what: &str) {
            let (at_client, at_endpoint, (moved, sent, received)) =
                tokio::time::timeout(LIMIT, async {
                    (
                        self.client.await.unwrap(),
                        self.endpoint.await.unwrap(),
                        self.gw.await.unwrap(),
                    )
                })
                .await
                .expect("transfer finished");
            let len = self.len as u64;
            assert_eq!(at_endpoint, (self.sent.0, self.len), "{what}");
            assert_eq!(at_client, (self.sent.1, self.len), "{what}");
            assert!(moved.error.is_none(), "{what}: {:?}", moved.error);
            assert_eq!((moved.to_endpoint, moved.to_client), (len, len), "{what}");
            assert_eq!((sent, received), (len, len), "{what}");
        }
    }

    /// A refusal to inject (`EINVAL`, as for sockets that cannot splice): none (the default),
    /// every splice into a pipe, or every splice out of one once a first has moved only
    /// part of a burst, which leaves bytes in the pipe to drain.
    #[derive(Debug, Default)]
    pub(super) struct Fault {
        mode: std::sync::atomic::AtomicU8,
        partial_done: std::sync::atomic::AtomicBool,
    }

    const REFUSE_INTO_PIPE: u8 = 1;
    const REFUSE_OUT_AFTER_PART: u8 = 2;
    /// What the one partial splice out of a pipe may move.
    const PART: usize = 1000;

    impl Fault {
        /// None: splice as asked. `Some(Ok(len))`: splice at most `len`. `Some(Err)`: refused.
        pub(super) fn inject(&self, len: usize, into_pipe: bool) -> Option<io::Result<usize>> {
            let refused = || Some(Err(io::Error::from_raw_os_error(libc::EINVAL)));
            match (self.mode.load(Ordering::Relaxed), into_pipe) {
                (REFUSE_INTO_PIPE, true) => refused(),
                (REFUSE_OUT_AFTER_PART, false) => {
                    if self.partial_done.swap(true, Ordering::Relaxed) {
                        refused()
                    } else {
                        Some(Ok(len.min(PART)))
                    }
                }
                _ => None,
            }
        }
    }

    /// 4 MiB each way through a pool whose splices the kernel refuses in `mode`: every byte
    /// arrives, in order; returns the pool's (spliced, copied, refused) counts.
    async fn transfer_with_refusal(mode: u8) -> (u64, u64, u64) {
        let pool = Arc::new(PipePool::new(4, PIPE_SIZE));
        pool.fault.mode.store(mode, Ordering::Relaxed);
        let len = 4 << 20;
        start_transfer(proxied().await, &pool, 31, len)
            .check(&format!("refusal mode {mode}"))
            .await;
        // A pipe that failed is closed, never pooled; the others came back.
        assert_eq!(pool.idle(), pool.open(), "pipes not given back");
        let stats = pool.stats();
        assert_eq!(stats.pipes_lent.load(Ordering::Relaxed), 0);
        let spliced = stats.bytes_spliced.load(Ordering::Relaxed);
        let copied = stats.bytes_copied.load(Ordering::Relaxed);
        assert_eq!(spliced + copied, 2 * len as u64, "every byte counted once");
        (spliced, copied, stats.refused.load(Ordering::Relaxed))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_splice_into_the_pipe_falls_back_to_copying() {
        let (spliced, _, refused) = transfer_with_refusal(REFUSE_INTO_PIPE).await;
        assert_eq!(spliced, 0);
        // Once per direction: after a refusal the connection only copies.
        assert!((1..=2).contains(&refused), "refused {refused} times");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_splice_out_of_the_pipe_drains_it_and_copies() {
        let (spliced, _, refused) = transfer_with_refusal(REFUSE_OUT_AFTER_PART).await;
        // The one partial splice out moved at most its part; the bytes it left in the pipe
        // were read back and written, and everything after was copied.
        assert!(spliced <= PART as u64, "spliced {spliced}");
        assert!((1..=2).contains(&refused), "refused {refused} times");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sixteen_mib_each_way_at_once_arrive_intact() {
        let pool = Arc::new(PipePool::new(4, PIPE_SIZE));
        let len = 16 << 20;
        start_transfer(proxied().await, &pool, 1, len)
            .check("16 MiB")
            .await;
        assert!(pool.open() > 0, "no pipe was used");
        assert_eq!(pool.idle(), pool.open(), "pipes not given back");
        let stats = pool.stats();
        let spliced = stats.bytes_spliced.load(Ordering::Relaxed);
        let copied = stats.bytes_copied.load(Ordering::Relaxed);
        assert_eq!(spliced + copied, 2 * len as u64, "every byte counted once");
        assert!(
            spliced > copied,
            "bulk goes by splice: {spliced} vs {copied}"
        );
        assert_eq!(stats.pipes_lent.load(Ordering::Relaxed), 0);
        assert_eq!(stats.pipes_capacity.load(Ordering::Relaxed), 4);
    }

    #[tokio::test]
    async fn half_close_is_passed_on_and_the_answer_still_comes_back() {
        let mut p = proxied().await;
        let pool = Arc::new(PipePool::new(2, PIPE_SIZE));
        let gw = spawn_gateway(p.gw_client, p.gw_upstream, pool.clone());
        say_and_close(&mut p.client, b"question").await;
        let asked = read_all(&mut p.endpoint, LIMIT, "endpoint sees EOF").await;
        assert_eq!(asked, b"question");
        say_and_close(&mut p.endpoint, b"the answer").await;
        // The second EOF is passed on by the close, not a shutdown: a clean EOF, no reset.
        let answer = read_all(&mut p.client, LIMIT, "client sees the answer and EOF").await;
        assert_eq!(answer, b"the answer");
        let (moved, sent, received) = tokio::time::timeout(LIMIT, gw).await.unwrap().unwrap();
        assert!(moved.error.is_none(), "{:?}", moved.error);
        assert_eq!((moved.to_endpoint, moved.to_client), (8, 10));
        assert_eq!((sent, received), (8, 10));
        assert_eq!(
            pool.open(),
            0,
            "messages this small are copied, not spliced"
        );
        assert_eq!(pool.stats().bytes_copied.load(Ordering::Relaxed), 18);
        assert_eq!(pool.stats().bytes_spliced.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn an_idle_connection_holds_no_pipe() {
        let mut p = proxied().await;
        let pool = Arc::new(PipePool::new(2, PIPE_SIZE));
        let gw = spawn_gateway(p.gw_client, p.gw_upstream, pool.clone());
        let mut buf = vec![0u8; 300_000];
        for round in 0..3u8 {
            let data = stream_bytes(u64::from(round) + 7, buf.len());
            p.client.write_all(&data).await.unwrap();
            p.endpoint.read_exact(&mut buf).await.unwrap();
            assert_eq!(buf, data);
            p.endpoint.write_all(&data).await.unwrap();
            p.client.read_exact(&mut buf).await.unwrap();
            assert_eq!(buf, data);
        }
        // Everything arrived; the connection stays open and idle.
        let returned = async {
            while pool.idle() != pool.open() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), returned)
            .await
            .expect("an idle connection gave its pipes back");
        assert!(pool.open() > 0, "no pipe was used");
        assert!(!gw.is_finished());
        drop(p.client);
        drop(p.endpoint);
        let (moved, ..) = tokio::time::timeout(LIMIT, gw).await.unwrap().unwrap();
        assert_eq!(moved.to_endpoint, 900_000);
        assert_eq!(moved.to_client, 900_000);
    }

    /// With fewer pipes than directions in flight (none at all, or one), bursts are copied.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_exhausted_pool_falls_back_to_copying() {
        for pipes in [0, 1] {
            let pool = Arc::new(PipePool::new(pipes, PIPE_SIZE));
            let mut flows = Vec::new();
            for i in 0..4u64 {
                flows.push(start_transfer(proxied().await, &pool, 10 + i, 2 << 20));
            }
            for flow in flows {
                flow.check(&format!("pool of {pipes}")).await;
            }
            assert!(pool.open() <= pipes);
            assert_eq!(pool.idle(), pool.open());
            // Without pipes every burst that would splice is copied, and counted so.
            if pipes == 0 {
                assert!(pool.stats().pool_exhausted.load(Ordering::Relaxed) > 0);
            }
            assert_eq!(pool.stats().pipes_lent.load(Ordering::Relaxed), 0);
        }
    }

    /// A peer's FIN that tokio has seen is reported; before it, nothing is.
    #[tokio::test]
    async fn read_closed_tells_a_fin_that_arrived() {
        let (mut a, mut b) = pair().await;
        let (reader, _) = a.split();
        assert!(!read_closed(&reader).await, "open connection");
        b.write_all(b"last words").await.unwrap();
        b.shutdown().await.unwrap();
        let seen = async {
            while !read_closed(&reader).await {
                reader.readable().await.unwrap();
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        tokio::time::timeout(LIMIT, seen)
            .await
            .expect("the FIN is seen");
    }

    /// An answer whose FIN is already there when the gateway reads it goes out held back
    /// (`MSG_MORE`) for the FIN to join it: it must still arrive, at once and whole, both
    /// when the FIN leaves by a shutdown (the client still sends) and by the close (the
    /// client had already finished).
    #[tokio::test]
    async fn an_answer_held_for_its_fin_still_arrives_at_once() {
        for client_done_first in [false, true] {
            let mut p = proxied().await;
            if client_done_first {
                say_and_close(&mut p.client, b"question").await;
            }
            say_and_close(&mut p.endpoint, b"the answer").await;
            // The gateway starts with the answer and its FIN both waiting.
            tokio::time::sleep(Duration::from_millis(20)).await;
            let pool = Arc::new(PipePool::new(2, PIPE_SIZE));
            let gw = spawn_gateway(p.gw_client, p.gw_upstream, pool);
            let within = Duration::from_secs(2);
            let what = "the held answer and the FIN arrive within 2 s";
            let answer = read_all(&mut p.client, within, what).await;
            assert_eq!(answer, b"the answer");
            if !client_done_first {
                say_and_close(&mut p.client, b"question").await;
            }
            let what = "endpoint sees the question and EOF";
            let asked = read_all(&mut p.endpoint, LIMIT, what).await;
            assert_eq!(asked, b"question");
            let (moved, ..) = tokio::time::timeout(LIMIT, gw).await.unwrap().unwrap();
            assert!(moved.error.is_none(), "{:?}", moved.error);
            assert_eq!((moved.to_endpoint, moved.to_client), (8, 10));
        }
    }

    #[tokio::test]
    async fn a_reset_ends_both_directions() {
        let mut p = proxied().await;
        let pool = Arc::new(PipePool::new(2, PIPE_SIZE));
        let gw = spawn_gateway(p.gw_client, p.gw_upstream, pool.clone());
        p.client.write_all(b"hello").await.unwrap();
        let mut got = [0u8; 5];
        p.endpoint.read_exact(&mut got).await.unwrap();
        // The endpoint dies with a RST while the client still waits for an answer.
        socket2::SockRef::from(&p.endpoint)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(p.endpoint);
        let (moved, ..) = tokio::time::timeout(LIMIT, gw)
            .await
            .expect("the reset ended the connection")
            .unwrap();
        assert!(moved.error.is_some(), "{moved:?}");
        assert_eq!(moved.to_endpoint, 5);
        // The gateway closed its client socket: the client sees the end, not a hang.
        let mut rest = Vec::new();
        let end = tokio::time::timeout(LIMIT, p.client.read_to_end(&mut rest))
            .await
            .expect("client not left hanging");
        assert!(rest.is_empty(), "{end:?}");
        // A failed splice does not give its pipe back broken; all open pipes are idle.
        assert_eq!(pool.idle(), pool.open());
    }
}
