//! Events of the delivery workers: entries delivered, retried and dead,
//! the delivery lag, and Redis failures (rate-limited in the log).

use std::time::Duration;

use super::{log_now, Event};

/// An entry the target accepted.
pub struct Delivered<'a> {
    pub delivery: &'a str,
    pub target: &'static str,
    pub key: &'a str,
    pub attempt: u32,
}

impl Event for Delivered<'_> {
    fn emit(self) {
        metrics::counter!("intake_delivery_delivered_total", "delivery" => self.delivery.to_string(), "target" => self.target).increment(1);
        tracing::debug!(
            delivery = self.delivery,
            key = self.key,
            attempt = self.attempt,
            "delivered"
        );
    }
}

/// A failed attempt that will be retried, by status (`503`, `timeout`,
/// `unreachable`).
pub struct Retried<'a> {
    pub delivery: &'a str,
    pub target: &'static str,
    pub key: &'a str,
    pub attempt: u32,
    pub status: &'a str,
    pub delay: Duration,
}

impl Event for Retried<'_> {
    fn emit(self) {
        metrics::counter!("intake_delivery_retries_total", "delivery" => self.delivery.to_string(), "target" => self.target, "status" => self.status.to_string()).increment(1);
        tracing::info!(delivery = self.delivery, key = self.key, attempt = self.attempt, status = self.status, retry_in = ?self.delay, "delivery failed; will retry");
    }
}

/// An entry moved to the dead stream, by reason (`refused`, `max_age`).
pub struct DeadLettered<'a> {
    pub delivery: &'a str,
    pub target: &'static str,
    pub id: &'a str,
    pub status: &'a str,
    pub reason: &'a str,
    pub attempts: u32,
}

impl Event for DeadLettered<'_> {
    fn emit(self) {
        metrics::counter!("intake_delivery_dead_total", "delivery" => self.delivery.to_string(), "target" => self.target, "reason" => self.reason.to_string()).increment(1);
        tracing::warn!(
            delivery = self.delivery,
            id = self.id,
            status = self.status,
            reason = self.reason,
            attempts = self.attempts,
            "delivery gave up: the entry is in the dead stream"
        );
    }
}

/// The age of the oldest entry the delivery has not delivered yet.
pub struct Lag<'a> {
    pub delivery: &'a str,
    pub target: &'static str,
    pub seconds: f64,
}

impl Event for Lag<'_> {
    fn emit(self) {
        metrics::gauge!("intake_delivery_lag_seconds", "delivery" => self.delivery.to_string(), "target" => self.target).set(self.seconds);
    }
}

/// Redis did not answer a delivery's command; the entry stays pending.
pub struct RedisFailed<'a> {
    pub delivery: &'a str,
    pub error: &'a dyn std::fmt::Display,
}

impl Event for RedisFailed<'_> {
    fn emit(self) {
        metrics::counter!("intake_delivery_redis_errors_total", "delivery" => self.delivery.to_string()).increment(1);
        if let Some(left_out) = log_now("delivery_redis") {
            tracing::warn!(delivery = self.delivery, error = %self.error, left_out, "delivery: Redis did not answer; entries stay pending");
        }
    }
}
