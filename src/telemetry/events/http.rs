//! Events of the public HTTP listener: requests answered, limits that
//! refused a request or a connection, bot checks.

use std::fmt::Display;
use std::net::SocketAddr;
use std::time::Duration;

use super::{log_now, Event};

/// One request answered.
pub struct RequestAnswered<'a> {
    pub endpoint: &'static str,
    pub method: &'a dyn Display,
    pub path: &'a str,
    pub status: u16,
    pub peer: SocketAddr,
    pub took: Duration,
}

impl Event for RequestAnswered<'_> {
    fn emit(self) {
        metrics::counter!("intake_http_requests_total", "endpoint" => self.endpoint, "status" => self.status.to_string())
            .increment(1);
        metrics::histogram!("intake_http_request_duration_seconds", "endpoint" => self.endpoint)
            .record(self.took.as_secs_f64());
        tracing::debug!(method = %self.method, path = self.path, status = self.status, peer = %self.peer, "request answered");
    }
}

/// A request refused (429) because its address has
/// `http.max_requests_per_ip` in flight.
pub struct TooManyInFlight {
    pub peer: SocketAddr,
}

impl Event for TooManyInFlight {
    fn emit(self) {
        metrics::counter!("intake_http_limit_refusals_total", "limit" => "requests_per_ip")
            .increment(1);
        tracing::info!(peer = %self.peer, "too many requests in flight from this address");
    }
}

/// A connection closed before a byte was read: `connections_per_ip` or
/// `connections` (every slot taken, none could be shed).
pub struct ConnectionRefused<'a> {
    pub limit: &'static str,
    pub peer: SocketAddr,
    pub why: &'a str,
}

impl Event for ConnectionRefused<'_> {
    fn emit(self) {
        metrics::counter!("intake_http_limit_refusals_total", "limit" => self.limit).increment(1);
        if let Some(suppressed) = log_now(self.limit) {
            tracing::info!(peer = %self.peer, suppressed, "connection closed: {}", self.why);
        }
    }
}

/// A request head hyper refused: `headers` (too large) or
/// `header_timeout` (too slow).
pub struct HeadRefused {
    pub limit: &'static str,
}

impl Event for HeadRefused {
    fn emit(self) {
        metrics::counter!("intake_http_limit_refusals_total", "limit" => self.limit).increment(1);
    }
}

/// A body slower than `http.min_body_rate`: answered 408.
pub struct BodyTooSlow {
    pub received: u64,
    pub elapsed: Duration,
}

impl Event for BodyTooSlow {
    fn emit(self) {
        metrics::counter!("intake_http_limit_refusals_total", "limit" => "min_body_rate")
            .increment(1);
        tracing::debug!(
            received = self.received,
            elapsed = ?self.elapsed,
            "request body slower than http.min_body_rate; answering 408"
        );
    }
}

/// A kept-alive connection closed after `http.idle_timeout`.
pub struct IdleClosed {
    pub peer: SocketAddr,
}

impl Event for IdleClosed {
    fn emit(self) {
        metrics::counter!("intake_http_idle_closed_total").increment(1);
        tracing::debug!(peer = %self.peer, "idle connection closed");
    }
}

/// A form post taken for a bot (answered like a success, trapped).
pub struct BotTaken<'a> {
    pub form: &'a str,
    pub check: &'static str,
}

impl Event for BotTaken<'_> {
    fn emit(self) {
        metrics::counter!("intake_form_bot_checks_total", "check" => self.check).increment(1);
        tracing::info!(
            form = self.form,
            check = self.check,
            "form post taken for a bot"
        );
    }
}

/// Whether Redis answered the last readiness check.
pub struct RedisUp {
    pub up: bool,
}

impl Event for RedisUp {
    fn emit(self) {
        metrics::gauge!("intake_redis_up").set(if self.up { 1.0 } else { 0.0 });
    }
}

/// A connection closed to make room for a newcomer.
pub struct ConnectionShed<'a> {
    pub listener: &'static str,
    pub client: &'a dyn Display,
    pub phase: &'static str,
    pub age: Duration,
    pub bytes: u64,
}

impl Event for ConnectionShed<'_> {
    fn emit(self) {
        metrics::counter!("intake_connections_shed_total", "listener" => self.listener, "phase" => self.phase)
            .increment(1);
        tracing::debug!(
            listener = self.listener,
            client = %self.client,
            phase = self.phase,
            age = ?self.age,
            bytes = self.bytes,
            "connection shed to make room"
        );
    }
}
