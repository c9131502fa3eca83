//! One connection as its task and its registry see it: the phase it is in
//! (idle, head, body, working), since when, and the bytes it has read
//! ([`Counted`] counts them at the socket), so the registry can tell the
//! slowest and a session can hold its client to a minimum rate.

use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use super::client::Held;

/// When a connection is too slow: it gets `grace` plus one second per
/// `per_second` bytes it has sent since `since` (Apache mod_reqtimeout's
/// MinRate, Postfix's smtpd_min_data_rate).
pub fn rate_deadline(since: Instant, grace: Duration, bytes: u64, per_second: u64) -> Instant {
    // A year is as good as never here, and keeps the sum from overflowing.
    let year = 365.0 * 24.0 * 3600.0;
    let earned = Duration::from_secs_f64((bytes as f64 / per_second.max(1) as f64).min(year));
    since + grace.min(Duration::from_secs_f64(year)) + earned
}

/// What a connection is doing, in the order it is shed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Kept alive with no request, or waiting for a command (LMTP), or
    /// new and silent.
    Idle,
    /// Bytes of a request head (or a command line) have come in.
    Head,
    /// Reading a request body or a message after DATA.
    Body,
    /// The item is in the pipeline: never shed, so a stored item's answer
    /// is not cut off.
    Working,
}

impl Phase {
    pub fn label(self) -> &'static str {
        match self {
            Phase::Idle => "idle",
            Phase::Head => "head",
            Phase::Body => "body",
            Phase::Working => "working",
        }
    }
}

/// One open connection, as its task and the registry see it.
pub struct Conn {
    pub(super) id: u64,
    pub(super) client: IpAddr,
    /// What its client holds in the registry.
    pub(super) holder: Arc<Held>,
    /// The registry's epoch, moved on when this connection leaves `Working`.
    epoch: Arc<AtomicU64>,
    /// Bytes read from the socket so far (see [`Counted`]).
    bytes: AtomicU64,
    progress: Mutex<Progress>,
    pub(super) shed: CancellationToken,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Progress {
    pub(super) phase: Phase,
    /// When the phase began, and the bytes read by then.
    pub(super) since: Instant,
    pub(super) bytes_at: u64,
    /// HTTP requests reading their body, and requests past it.
    reading: u32,
    working: u32,
}

impl Conn {
    pub(super) fn new(
        id: u64,
        client: IpAddr,
        holder: Arc<Held>,
        epoch: Arc<AtomicU64>,
        now: Instant,
    ) -> Conn {
        Conn {
            id,
            client,
            holder,
            epoch,
            bytes: AtomicU64::new(0),
            progress: Mutex::new(Progress {
                phase: Phase::Idle,
                since: now,
                bytes_at: 0,
                reading: 0,
                working: 0,
            }),
            shed: CancellationToken::new(),
        }
    }
}

impl Conn {
    fn lock(&self) -> MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn snapshot(&self) -> Progress {
        *self.lock()
    }

    pub fn phase(&self) -> Phase {
        self.lock().phase
    }

    /// Bytes read from the socket so far.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Starts `phase` now (LMTP: each command wait, DATA, the store).
    pub fn begin(&self, phase: Phase) {
        let bytes = self.bytes();
        let mut p = self.lock();
        let was = p.phase;
        p.set(phase, bytes);
        self.left_working(was, phase);
    }

    /// An HTTP request's head is in; its body is being read.
    pub fn request_started(&self) {
        let bytes = self.bytes();
        let mut p = self.lock();
        p.reading += 1;
        if p.phase < Phase::Body {
            p.set(Phase::Body, bytes);
        }
    }

    /// An HTTP request's body is in: the request is working.
    pub fn body_finished(&self) {
        let bytes = self.bytes();
        let mut p = self.lock();
        p.reading = p.reading.saturating_sub(1);
        p.working += 1;
        if p.phase != Phase::Working {
            p.set(Phase::Working, bytes);
        }
    }

    /// An HTTP request was answered (or given up).
    pub fn request_finished(&self, body_finished: bool) {
        let bytes = self.bytes();
        let mut p = self.lock();
        if body_finished {
            p.working = p.working.saturating_sub(1);
        } else {
            p.reading = p.reading.saturating_sub(1);
        }
        let phase = if p.working > 0 {
            Phase::Working
        } else if p.reading > 0 {
            Phase::Body
        } else {
            Phase::Idle
        };
        if phase != p.phase {
            let was = p.phase;
            p.set(phase, bytes);
            self.left_working(was, phase);
        }
    }

    fn left_working(&self, was: Phase, now: Phase) {
        if was == Phase::Working && now != Phase::Working {
            self.epoch.fetch_add(1, Ordering::SeqCst);
        }
    }

    pub(super) fn add_bytes(&self, n: usize) {
        let bytes = self.bytes.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
        let mut p = self.lock();
        if p.phase == Phase::Idle {
            // The first bytes of a head or command: counted from here.
            p.set(Phase::Head, bytes - n as u64);
        }
    }

    /// Completes when the registry shed this connection to make room; the
    /// connection's task then closes it at once.
    pub fn shed_requested(&self) -> WaitForCancellationFuture<'_> {
        self.shed.cancelled()
    }

    pub fn is_shed(&self) -> bool {
        self.shed.is_cancelled()
    }

    /// Completes once the bytes read in the current phase fall behind
    /// `per_second` after `grace` (see [`rate_deadline`]).
    pub async fn below_rate(&self, per_second: u64, grace: Duration) {
        loop {
            let p = self.snapshot();
            let sent = self.bytes().saturating_sub(p.bytes_at);
            let deadline = rate_deadline(p.since, grace, sent, per_second);
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

impl Progress {
    fn set(&mut self, phase: Phase, bytes: u64) {
        self.phase = phase;
        self.since = Instant::now();
        self.bytes_at = bytes;
    }
}

/// A socket (or its read half) that counts the bytes read into its
/// connection's progress.
pub struct Counted<S> {
    inner: S,
    conn: Arc<Conn>,
}

impl<S> Counted<S> {
    pub fn new(inner: S, conn: Arc<Conn>) -> Self {
        Counted { inner, conn }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        if read > 0 {
            self.conn.add_bytes(read);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
