//! The request body a handler reads. It tells the connection registry when
//! the body is in (the request is then working and never shed), and holds
//! the client to `http.min_body_rate`: a body gets `http.body_rate_grace`
//! plus one second per `min_body_rate` bytes sent (mod_reqtimeout's
//! MinRate), then fails with [`BodyError::TooSlow`], which `read_body`
//! answers 408.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::sources::connections::{rate_deadline, Conn};

/// `http.min_body_rate` and its grace; `per_second == 0` is off.
#[derive(Debug, Clone, Copy)]
pub struct MinBodyRate {
    pub per_second: u64,
    pub grace: Duration,
}

/// Why a body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the request body could not be read")]
    Read(#[source] hyper::Error),
    #[error("the request body came slower than http.min_body_rate")]
    TooSlow,
}

/// Whether `error` (or a cause of it) is a body cut off for its rate.
pub fn is_too_slow(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(error);
    while let Some(e) = source {
        if matches!(e.downcast_ref::<BodyError>(), Some(BodyError::TooSlow)) {
            return true;
        }
        source = e.source();
    }
    false
}

/// One request on a connection, from its head to its answer.
pub struct RequestProgress {
    conn: Arc<Conn>,
    body_done: AtomicBool,
    too_slow: AtomicBool,
}

impl RequestProgress {
    pub fn start(conn: Arc<Conn>) -> Arc<RequestProgress> {
        conn.request_started();
        Arc::new(RequestProgress {
            conn,
            body_done: AtomicBool::new(false),
            too_slow: AtomicBool::new(false),
        })
    }

    fn body_done(&self) {
        if !self.body_done.swap(true, Ordering::SeqCst) {
            self.conn.body_finished();
        }
    }

    /// The body was cut off for its rate: the connection is to close.
    pub fn was_too_slow(&self) -> bool {
        self.too_slow.load(Ordering::SeqCst)
    }
}

impl Drop for RequestProgress {
    fn drop(&mut self) {
        self.conn
            .request_finished(self.body_done.load(Ordering::SeqCst));
    }
}

/// hyper's body, watched.
pub struct RequestBody {
    inner: Incoming,
    request: Arc<RequestProgress>,
    rate: Option<RateClock>,
}

struct RateClock {
    rate: MinBodyRate,
    /// When the server first read the body: a body waiting for the
    /// memory budget is not the client's delay.
    started: Instant,
    begun: bool,
    received: u64,
    timer: Pin<Box<Sleep>>,
}

impl RequestBody {
    pub fn new(inner: Incoming, request: Arc<RequestProgress>, rate: MinBodyRate) -> Self {
        if inner.is_end_stream() {
            request.body_done();
        }
        let rate = (rate.per_second > 0).then(|| {
            let started = Instant::now();
            RateClock {
                rate,
                started,
                begun: false,
                received: 0,
                timer: Box::pin(tokio::time::sleep_until(started + rate.grace)),
            }
        });
        RequestBody {
            inner,
            request,
            rate,
        }
    }
}

impl RateClock {
    /// True once the body is behind its rate; otherwise the timer wakes
    /// the task at the deadline.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let deadline = rate_deadline(
            self.started,
            self.rate.grace,
            self.received,
            self.rate.per_second,
        );
        if self.timer.deadline() != deadline {
            self.timer.as_mut().reset(deadline);
        }
        self.timer.as_mut().poll(cx).is_ready()
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        if let Some(clock) = this.rate.as_mut().filter(|clock| !clock.begun) {
            clock.begun = true;
            clock.started = Instant::now();
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(clock)) = (frame.data_ref(), this.rate.as_mut()) {
                    clock.received += data.len() as u64;
                }
                if this.inner.is_end_stream() {
                    this.request.body_done();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(BodyError::Read(e)))),
            Poll::Ready(None) => {
                this.request.body_done();
                Poll::Ready(None)
            }
            Poll::Pending => {
                let Some(clock) = this.rate.as_mut() else {
                    return Poll::Pending;
                };
                if !clock.expired(cx) {
                    return Poll::Pending;
                }
                if !this.request.too_slow.swap(true, Ordering::SeqCst) {
                    crate::telemetry::events::emit(crate::telemetry::events::http::BodyTooSlow {
                        received: clock.received,
                        elapsed: clock.started.elapsed(),
                    });
                }
                Poll::Ready(Some(Err(BodyError::TooSlow)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
