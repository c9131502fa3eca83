//! Events of the LMTP listener: connections, recipients, messages and the
//! limits that closed a session.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::{log_now, Event};

/// A connection taken into a session.
pub struct ConnectionAccepted;

impl Event for ConnectionAccepted {
    fn emit(self) {
        metrics::counter!("intake_lmtp_connections_total", "result" => "accepted").increment(1);
    }
}

/// A connection answered 421 and closed: `refused_per_ip` or `refused`.
pub struct ConnectionRefused<'a> {
    pub result: &'static str,
    pub peer: SocketAddr,
    pub why: &'a str,
}

impl Event for ConnectionRefused<'_> {
    fn emit(self) {
        metrics::counter!("intake_lmtp_connections_total", "result" => self.result).increment(1);
        if let Some(suppressed) = log_now(self.result) {
            tracing::info!(peer = %self.peer, suppressed, "LMTP connection refused: {}", self.why);
        }
    }
}

/// A session closed for slowness, by phase: `command`, `data`, or
/// `data_rate` (below `lmtp.min_data_rate`, logged with the rate).
pub struct TimedOut {
    pub phase: &'static str,
    pub peer: SocketAddr,
    pub min_rate: u64,
}

impl Event for TimedOut {
    fn emit(self) {
        metrics::counter!("intake_lmtp_timeouts_total", "phase" => self.phase).increment(1);
        if self.phase == "data_rate" {
            tracing::info!(peer = %self.peer, min_rate = self.min_rate, "LMTP message slower than lmtp.min_data_rate; closing");
        }
    }
}

/// A RCPT answered: accepted or refused (not a mailbox here).
pub struct Recipient {
    pub accepted: bool,
}

impl Event for Recipient {
    fn emit(self) {
        let result = if self.accepted { "accepted" } else { "refused" };
        metrics::counter!("intake_lmtp_recipients_total", "result" => result).increment(1);
    }
}

/// A message answered, by outcome (`stored`, `rejected`, `deferred`, ...).
pub struct Message {
    pub outcome: &'static str,
}

impl Event for Message {
    fn emit(self) {
        metrics::counter!("intake_lmtp_messages_total", "outcome" => self.outcome).increment(1);
    }
}

/// Time from the end of DATA to the replies.
pub struct MessageHandled {
    pub took: Duration,
}

impl Event for MessageHandled {
    fn emit(self) {
        metrics::histogram!("intake_lmtp_message_duration_seconds").record(self.took.as_secs_f64());
    }
}

/// A command answered with an error.
pub struct CommandError;

impl Event for CommandError {
    fn emit(self) {
        metrics::counter!("intake_lmtp_command_errors_total").increment(1);
    }
}

/// An XFORWARD from a peer outside `lmtp.xforward_from`, refused 550: a
/// mail server missing from the list (its mail loses the client SPF
/// checks) or someone trying to pass as another client. Counted as a
/// command error; logged here, at most once a minute per kind.
pub struct XforwardRefused {
    pub peer: IpAddr,
}

impl Event for XforwardRefused {
    fn emit(self) {
        if let Some(suppressed) = log_now("lmtp-xforward-refused") {
            tracing::warn!(peer = %self.peer, suppressed, "LMTP XFORWARD refused: the peer is not in lmtp.xforward_from");
        }
    }
}
