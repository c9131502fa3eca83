//! Events of the acknowledgements (src/acknowledge): each decision, each
//! hand-over to the relay, and the relay or Redis failing (rate-limited in
//! the log).

use std::time::Duration;

use super::{log_now, Event};

/// One step of one acknowledgement: `result` is `queued`, `skipped` (with
/// the reason), `sent`, `refused` (the relay said 5xx), `duplicate` (a
/// queued copy already sent) or `retry` (the relay failed).
pub struct Acknowledgement<'a> {
    pub result: &'static str,
    pub reason: &'static str,
    pub receipt: &'a str,
}

impl Event for Acknowledgement<'_> {
    fn emit(self) {
        metrics::counter!(
            "intake_acknowledgements_total",
            "result" => self.result,
            "reason" => self.reason
        )
        .increment(1);
        tracing::debug!(
            receipt = self.receipt,
            result = self.result,
            reason = self.reason,
            "acknowledgement"
        );
    }
}

/// The relay refused an acknowledgement for good.
pub struct Refused<'a> {
    pub receipt: &'a str,
    pub to: &'a str,
    pub answer: &'a str,
}

impl Event for Refused<'_> {
    fn emit(self) {
        tracing::warn!(
            receipt = self.receipt,
            to = self.to,
            answer = self.answer,
            "the relay refused an acknowledgement for good; it is not retried"
        );
    }
}

/// The relay could not take an acknowledgement; it is tried again.
pub struct RelayFailed<'a> {
    pub relay: &'a str,
    pub error: &'a str,
    pub delay: Duration,
}

impl Event for RelayFailed<'_> {
    fn emit(self) {
        if let Some(suppressed) = log_now("acknowledge-relay") {
            tracing::warn!(relay = self.relay, error = self.error, retry_in = ?self.delay, suppressed, "the SMTP relay did not take an acknowledgement; it waits in the outbox and is tried again");
        }
    }
}

/// Redis failed under an acknowledgement step; it is tried again.
pub struct RedisFailed<'a> {
    pub step: &'static str,
    pub error: &'a dyn std::fmt::Display,
}

impl Event for RedisFailed<'_> {
    fn emit(self) {
        if let Some(suppressed) = log_now("acknowledge-redis") {
            tracing::warn!(step = self.step, error = %self.error, suppressed, "Redis failed under the acknowledgements; they are tried again");
        }
    }
}
