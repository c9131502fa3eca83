//! The memory budget for bodies in flight: one count of bytes for the whole
//! process, shared by every source that holds a whole item in memory (form
//! posts, `POST /v1/messages` with or without the mailgate token, LMTP DATA).
//!
//! A body takes its bytes before it is read (its declared length), or as it
//! arrives when no length was declared, and gives them back when its answer
//! is written: a [`Reservation`] returns them when dropped, on every path.
//! A body that cannot get its bytes within `memory.body_wait` is refused with
//! "retry later" (HTTP 503 with `Retry-After`, LMTP `451 4.3.1`), so many big
//! mails at once wait their turn instead of exhausting the machine.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncBufRead, AsyncRead, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::telemetry::events::emit;
use crate::telemetry::events::scan::{BodiesInFlight, BodyRefused, BodyWaits};
use crate::units::{ByteSize, HumanDuration};

/// `[memory]`: how much body data the gateway holds at once.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryConfig {
    /// Body bytes held in memory at once, over every source (forms,
    /// `/v1/messages`, LMTP). An item costs the process about two to three
    /// times its size while it is parsed and stored, so the gateway's memory
    /// for items stays under about three times this. At least the largest
    /// `max_size` of forms, messages and LMTP, or that item could never pass.
    #[serde(default = "default_body_budget")]
    pub body_budget: ByteSize,
    /// How long a body waits for room in the budget before it is refused
    /// with "retry later" (HTTP 503 + `Retry-After`, LMTP 451 4.3.1).
    #[serde(default = "default_body_wait")]
    pub body_wait: HumanDuration,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            body_budget: default_body_budget(),
            body_wait: default_body_wait(),
        }
    }
}

impl MemoryConfig {
    /// Whether the budget fits every body limit (`limits` names each, like
    /// `messages.max_size`, with its size): a body above the budget could
    /// never be taken in. A check across sections, made by `config.rs`.
    pub fn check_limits(
        &self,
        at: &str,
        limits: &[(String, ByteSize)],
        problems: &mut Vec<String>,
    ) {
        for (key, size) in limits {
            if size.bytes() > self.body_budget.bytes() {
                problems.push(format!(
                    "{at}.body_budget: {} is less than {key} ({size}); such a body could never be taken in",
                    self.body_budget
                ));
            }
        }
    }
}

impl crate::validate::Validate for MemoryConfig {
    fn validate(&self, at: &str, problems: &mut Vec<String>) {
        if self.body_wait.0 < Duration::from_millis(10) {
            problems.push(format!("{at}.body_wait: must be at least 10ms"));
        }
    }
}

fn default_body_budget() -> ByteSize {
    ByteSize(256_000_000)
}
fn default_body_wait() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}

/// Which source asked, for the metrics' `source` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Forms,
    Messages,
    Lmtp,
}

impl Source {
    fn label(self) -> &'static str {
        match self {
            Source::Forms => "forms",
            Source::Messages => "messages",
            Source::Lmtp => "lmtp",
        }
    }
}

/// Why a body did not get its bytes. Both mean "not now": the client is
/// told to retry, nothing was taken.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum BudgetError {
    /// More than the whole budget; it would wait in vain.
    #[error("{wanted} bytes are more than the whole body budget of {budget} bytes")]
    OverBudget { wanted: u64, budget: u64 },
    /// The budget stayed full for the whole wait.
    #[error("no room for {wanted} more bytes in the body budget within {waited:?}")]
    NoRoom { wanted: u64, waited: Duration },
}

/// The process's budget; cheap to clone, every clone counts the same bytes.
#[derive(Clone)]
pub struct BodyBudget(Arc<Inner>);

struct Inner {
    capacity: u64,
    wait: Duration,
    /// Bytes reserved now.
    in_flight: Mutex<u64>,
    /// Told whenever bytes come back.
    released: Notify,
    /// Bodies that have to wait queue here, in order of arrival, so a big
    /// body is not overtaken forever by later big ones; a body that fits at
    /// once never queues.
    queue: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for BodyBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BodyBudget")
            .field("capacity", &self.0.capacity)
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

impl BodyBudget {
    pub fn new(capacity: u64, wait: Duration) -> Self {
        BodyBudget(Arc::new(Inner {
            capacity,
            wait,
            in_flight: Mutex::new(0),
            released: Notify::new(),
            queue: tokio::sync::Mutex::new(()),
        }))
    }

    pub fn from_config(config: &MemoryConfig) -> Self {
        BodyBudget::new(config.body_budget.bytes(), config.body_wait.0)
    }

    /// Bytes reserved now.
    pub fn in_flight(&self) -> u64 {
        *self.lock()
    }

    pub fn capacity(&self) -> u64 {
        self.0.capacity
    }

    /// Reserves `bytes`, waiting up to `memory.body_wait` for room.
    pub async fn reserve(&self, bytes: u64, source: Source) -> Result<Reservation, BudgetError> {
        self.take(bytes, source).await?;
        Ok(Reservation {
            budget: self.clone(),
            bytes,
            source,
        })
    }

    async fn take(&self, bytes: u64, source: Source) -> Result<(), BudgetError> {
        if bytes == 0 || self.try_take(bytes) {
            return Ok(());
        }
        if bytes > self.0.capacity {
            return Err(self.refused(
                source,
                BudgetError::OverBudget {
                    wanted: bytes,
                    budget: self.0.capacity,
                },
            ));
        }
        emit(BodyWaits {
            source: source.label(),
            bytes,
            in_flight: self.in_flight(),
        });
        let deadline = Instant::now() + self.0.wait;
        let no_room = || BudgetError::NoRoom {
            wanted: bytes,
            waited: self.0.wait,
        };
        let Ok(_turn) = tokio::time::timeout_at(deadline, self.0.queue.lock()).await else {
            return Err(self.refused(source, no_room()));
        };
        loop {
            // Listen before looking, so bytes given back in between are not missed.
            let released = self.0.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if self.try_take(bytes) {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, released).await.is_err() {
                return Err(self.refused(source, no_room()));
            }
        }
    }

    fn refused(&self, source: Source, error: BudgetError) -> BudgetError {
        emit(BodyRefused {
            source: source.label(),
            in_flight: self.in_flight(),
            budget: self.0.capacity,
            error: &error,
        });
        error
    }

    fn try_take(&self, bytes: u64) -> bool {
        let mut in_flight = self.lock();
        if *in_flight + bytes > self.0.capacity {
            return false;
        }
        *in_flight += bytes;
        emit(BodiesInFlight { bytes: *in_flight });
        true
    }

    fn give_back(&self, bytes: u64) {
        if bytes == 0 {
            return;
        }
        {
            let mut in_flight = self.lock();
            *in_flight = in_flight.saturating_sub(bytes);
            emit(BodiesInFlight { bytes: *in_flight });
        }
        self.0.released.notify_waiters();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, u64> {
        self.0.in_flight.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Bodies at least this large hand the memory they freed back to the
/// system when they are done (see [`set_memory_return`]).
const RETURN_AFTER: u64 = 4 << 20;

/// How the process hands freed memory back to the system.
static RETURN_MEMORY: OnceLock<fn()> = OnceLock::new();

/// Sets how freed memory goes back to the system once a large body is done.
/// The binary's allocator (mimalloc, src/main.rs) keeps freed memory until
/// its next collection, which an idle gateway may not reach for a long
/// time: after a round of big mails the process would stay at its peak.
/// Set once, before serving; later calls are ignored.
pub fn set_memory_return(hand_back: fn()) {
    let _ = RETURN_MEMORY.set(hand_back);
}

/// Bytes of the budget held by one body; given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: BodyBudget,
    bytes: u64,
    source: Source,
}

impl Reservation {
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Holds at least `bytes` in all, waiting up to `memory.body_wait` for
    /// the difference (a body whose length was not declared, as it arrives).
    pub async fn grow_to(&mut self, bytes: u64) -> Result<(), BudgetError> {
        if bytes <= self.bytes {
            return Ok(());
        }
        self.budget.take(bytes - self.bytes, self.source).await?;
        self.bytes = bytes;
        Ok(())
    }

    /// Gives back what is held beyond `bytes` (a body that came in smaller
    /// than reserved).
    pub fn shrink_to(&mut self, bytes: u64) {
        if bytes < self.bytes {
            self.budget.give_back(self.bytes - bytes);
            self.bytes = bytes;
        }
    }

    /// Adds another reservation's bytes to this one.
    fn absorb(&mut self, mut other: Reservation) {
        self.bytes += std::mem::take(&mut other.bytes);
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.give_back(self.bytes);
        // Dropped when the item's answer is made: its buffers are freed by now.
        if self.bytes >= RETURN_AFTER {
            if let Some(hand_back) = RETURN_MEMORY.get() {
                hand_back();
            }
        }
    }
}

/// A [`Metered`] reader's request for more room, under way.
type Growing = Pin<Box<dyn Future<Output = Result<Reservation, BudgetError>> + Send>>;

/// How much more a [`Metered`] reader asks for when its bytes run out.
const GROWTH_STEP: u64 = 1 << 20;

/// A reader that lets bytes through only as far as its reservation covers,
/// growing it (waiting up to `memory.body_wait`) as data arrives. Past
/// `cap` bytes it stops asking: the caller keeps no more than that (the
/// LMTP reader throws away what is over `lmtp.max_size`).
///
/// When the budget has no room, reads fail with an error for which
/// [`is_budget_error`] is true.
pub struct Metered<'a, R> {
    inner: R,
    reservation: &'a mut Reservation,
    /// Bytes handed on so far.
    passed: u64,
    cap: u64,
    growing: Option<Growing>,
}

impl<'a, R: AsyncBufRead + Unpin> Metered<'a, R> {
    pub fn new(inner: R, reservation: &'a mut Reservation, cap: u64) -> Self {
        Metered {
            inner,
            reservation,
            passed: 0,
            cap,
            growing: None,
        }
    }

    /// How many more bytes may pass now; asks for more when none may.
    fn poll_allowance(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        loop {
            if self.passed >= self.cap {
                return Poll::Ready(Ok(u64::MAX));
            }
            if let Some(growing) = self.growing.as_mut() {
                let grown = ready!(growing.as_mut().poll(cx));
                self.growing = None;
                match grown {
                    Ok(more) => self.reservation.absorb(more),
                    Err(e) => return Poll::Ready(Err(io::Error::other(e))),
                }
            }
            let allowed = self.reservation.bytes().saturating_sub(self.passed);
            if allowed > 0 {
                return Poll::Ready(Ok(allowed));
            }
            let budget = self.reservation.budget.clone();
            let source = self.reservation.source;
            let step = GROWTH_STEP.min(self.cap - self.passed);
            self.growing = Some(Box::pin(async move { budget.reserve(step, source).await }));
        }
    }
}

/// Whether a [`Metered`] read failed because the budget had no room.
pub fn is_budget_error(error: &io::Error) -> bool {
    error
        .get_ref()
        .is_some_and(|inner| inner.is::<BudgetError>())
}

impl<R: AsyncBufRead + Unpin> AsyncRead for Metered<'_, R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let available = ready!(self.as_mut().poll_fill_buf(cx))?;
        let n = available.len().min(buf.remaining());
        buf.put_slice(&available[..n]);
        self.consume(n);
        Poll::Ready(Ok(()))
    }
}

impl<R: AsyncBufRead + Unpin> AsyncBufRead for Metered<'_, R> {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        let this = self.get_mut();
        // Ask the budget first: a reader that gets nothing does not read
        // ahead of its room either (what the socket holds stays there).
        let allowed = ready!(this.poll_allowance(cx))?;
        let available = ready!(Pin::new(&mut this.inner).poll_fill_buf(cx))?;
        let n = usize::try_from(allowed)
            .unwrap_or(usize::MAX)
            .min(available.len());
        Poll::Ready(Ok(&available[..n]))
    }

    fn consume(self: Pin<&mut Self>, amt: usize) {
        let this = self.get_mut();
        this.passed += amt as u64;
        Pin::new(&mut this.inner).consume(amt);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// Waits are real but short: the tests check what happens, not when.
    fn budget(capacity: u64) -> BodyBudget {
        BodyBudget::new(capacity, Duration::from_millis(200))
    }

    #[tokio::test]
    async fn a_body_that_fits_gets_its_bytes_at_once_and_gives_them_back_when_dropped() {
        let budget = budget(100);
        let first = budget.reserve(60, Source::Messages).await.unwrap();
        let second = budget.reserve(40, Source::Forms).await.unwrap();
        assert_eq!(budget.in_flight(), 100, "both are held");
        drop(first);
        assert_eq!(budget.in_flight(), 40, "the first gave its bytes back");
        drop(second);
        assert_eq!(budget.in_flight(), 0, "nothing is held after both");
    }

    #[tokio::test]
    async fn a_body_waits_for_room_and_is_served_when_bytes_come_back() {
        let budget = BodyBudget::new(100, Duration::from_secs(30));
        let held = budget.reserve(80, Source::Messages).await.unwrap();
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move { budget.reserve(50, Source::Lmtp).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !waiting.is_finished(),
            "50 bytes do not fit beside 80 of 100"
        );
        drop(held);
        let served = waiting
            .await
            .unwrap()
            .expect("served once the 80 came back");
        assert_eq!(served.bytes(), 50);
        assert_eq!(budget.in_flight(), 50);
    }

    #[tokio::test]
    async fn a_body_that_finds_no_room_within_the_wait_is_refused_and_holds_nothing() {
        let budget = budget(100);
        let _held = budget.reserve(80, Source::Messages).await.unwrap();
        let refused = budget.reserve(50, Source::Messages).await.unwrap_err();
        assert_eq!(
            refused,
            BudgetError::NoRoom {
                wanted: 50,
                waited: Duration::from_millis(200)
            }
        );
        assert_eq!(budget.in_flight(), 80, "the refused body holds nothing");
    }

    #[tokio::test]
    async fn a_body_over_the_whole_budget_is_refused_without_waiting() {
        let budget = budget(100);
        let _held = budget.reserve(10, Source::Messages).await.unwrap();
        let refused = budget.reserve(101, Source::Messages).await.unwrap_err();
        assert_eq!(
            refused,
            BudgetError::OverBudget {
                wanted: 101,
                budget: 100
            }
        );
    }

    #[tokio::test]
    async fn a_small_body_that_fits_passes_a_big_one_waiting() {
        let budget = BodyBudget::new(100, Duration::from_secs(30));
        let held = budget.reserve(70, Source::Messages).await.unwrap();
        let big = tokio::spawn({
            let budget = budget.clone();
            async move { budget.reserve(60, Source::Messages).await }
        });
        tokio::task::yield_now().await;
        let small =
            tokio::time::timeout(Duration::from_millis(1), budget.reserve(5, Source::Forms))
                .await
                .expect("a small body that fits does not queue behind the big one")
                .unwrap();
        drop(small);
        drop(held);
        assert_eq!(big.await.unwrap().unwrap().bytes(), 60);
    }

    #[tokio::test]
    async fn a_reservation_grows_and_shrinks_and_gives_back_all_it_holds() {
        let budget = budget(100);
        let mut reservation = budget.reserve(10, Source::Forms).await.unwrap();
        reservation.grow_to(90).await.unwrap();
        assert_eq!(budget.in_flight(), 90);
        assert!(
            reservation.grow_to(101).await.is_err(),
            "no growth past the budget"
        );
        assert_eq!(
            budget.in_flight(),
            90,
            "a failed growth keeps what was held"
        );
        reservation.shrink_to(30);
        assert_eq!(budget.in_flight(), 30);
        drop(reservation);
        assert_eq!(budget.in_flight(), 0);
    }

    #[tokio::test]
    async fn a_metered_reader_passes_what_the_budget_allows_and_fails_when_it_is_spent() {
        let budget = budget(3 << 20);
        let _other = budget.reserve(1 << 20, Source::Messages).await.unwrap();
        let data = vec![7u8; 3 << 20];
        let mut reservation = budget.reserve(0, Source::Lmtp).await.unwrap();
        let mut metered = Metered::new(&data[..], &mut reservation, u64::MAX);
        let mut read = Vec::new();
        let error = metered.read_to_end(&mut read).await.unwrap_err();
        assert!(is_budget_error(&error), "{error}");
        assert_eq!(
            read.len(),
            2 << 20,
            "exactly the two MiB the budget had room for passed"
        );
        assert_eq!(reservation.bytes(), 2 << 20);
    }

    #[tokio::test]
    async fn a_metered_reader_stops_asking_past_its_cap() {
        let budget = budget(1 << 20);
        let data = vec![1u8; 5 << 20];
        let mut reservation = budget.reserve(0, Source::Lmtp).await.unwrap();
        let mut metered = Metered::new(&data[..], &mut reservation, 1 << 20);
        let mut read = Vec::new();
        metered.read_to_end(&mut read).await.unwrap();
        assert_eq!(read.len(), 5 << 20, "bytes past the cap pass unmetered");
        assert_eq!(reservation.bytes(), 1 << 20, "only the cap was reserved");
    }

    #[test]
    fn a_budget_below_a_body_limit_is_named_with_the_limit() {
        let config = MemoryConfig {
            body_budget: ByteSize(10_000_000),
            body_wait: HumanDuration(Duration::ZERO),
        };
        let mut problems = Vec::new();
        let limits = [
            ("messages.max_size".into(), ByteSize(50_000_000)),
            ("form `contact`.max_size".into(), ByteSize(1_000_000)),
        ];
        config.check_limits("memory", &limits, &mut problems);
        crate::validate::Validate::validate(&config, "memory", &mut problems);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("messages.max_size"), "{problems:?}");
        assert!(problems[1].contains("memory.body_wait"), "{problems:?}");
    }
}
