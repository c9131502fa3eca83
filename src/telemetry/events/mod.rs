//! What happened, counted and logged together: one type per outcome, whose
//! [`Event::emit`] records its metrics and writes its log line, so a call
//! site is one line (`emit(ItemStored { .. })`) and a count can never
//! drift from its log. Error logs that repeat during an outage go through
//! [`super::log_limit`] here, not at each call site.
//!
//! Events carry plain values (labels, ids as text), never the stages'
//! types: telemetry sits below every stage. The metrics they record are
//! described once, in [`super::catalogue`].

pub mod acknowledge;
pub mod auth;
pub mod delivery;
pub mod guard;
pub mod http;
pub mod imap;
pub mod lmtp;
pub mod pipeline;
pub mod scan;

/// Something that happened, for the metrics and the log.
pub trait Event {
    fn emit(self);
}

/// Emits one event.
pub fn emit(event: impl Event) {
    event.emit();
}

/// `Some(n)` when an error of `kind` is to be logged now, `n` being the
/// repeats left out since the last one logged; `None` to leave it out.
fn log_now(kind: &str) -> Option<u64> {
    super::log_limit::errors().check(kind)
}
