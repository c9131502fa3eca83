//! Events of the IMAP source: mails by outcome, failures, wake-ups, the
//! lease and the backlog.

use std::fmt::Display;

use super::Event;

/// Mails of one mailbox by outcome: `fetched`, `stored`,
/// `already_stored`, `oversize`, `unreadable`, `half_moved`.
pub struct Mails {
    pub outcome: &'static str,
    pub count: u64,
}

impl Event for Mails {
    fn emit(self) {
        metrics::counter!("intake_imap_mails_total", "outcome" => self.outcome)
            .increment(self.count);
    }
}

/// A failure, by kind (`connect`, `timeout`, `tls`, `auth`, `protocol`,
/// `store`, `redis`); `reconnect` when the session is given up for it.
pub struct Failed {
    pub kind: &'static str,
    pub reconnect: bool,
}

impl Event for Failed {
    fn emit(self) {
        metrics::counter!("intake_imap_errors_total", "kind" => self.kind).increment(1);
        if self.reconnect {
            metrics::counter!("intake_imap_reconnects_total").increment(1);
        }
    }
}

/// A look for new mail after waiting, by how: `idle` or `poll`.
pub struct WokeUp {
    pub via: &'static str,
}

impl Event for WokeUp {
    fn emit(self) {
        metrics::counter!("intake_imap_wakeups_total", "via" => self.via).increment(1);
    }
}

/// A mailbox found with a new UIDVALIDITY: read again from the start.
pub struct UidValidityChanged<'a> {
    pub mailbox: &'a dyn Display,
    pub old: u32,
    pub new: u32,
}

impl Event for UidValidityChanged<'_> {
    fn emit(self) {
        metrics::counter!("intake_imap_uidvalidity_changes_total").increment(1);
        tracing::warn!(
            mailbox = %self.mailbox,
            old = self.old,
            new = self.new,
            "UIDVALIDITY changed (mailbox re-created or restored): reading it again from the start; mail already acknowledged is not in it"
        );
    }
}

/// Whether this replica holds the mailbox's lease.
pub struct LeaseHeld<'a> {
    pub mailbox: &'a str,
    pub held: bool,
}

impl Event for LeaseHeld<'_> {
    fn emit(self) {
        metrics::gauge!("intake_imap_lease_held", "mailbox" => self.mailbox.to_string())
            .set(if self.held { 1.0 } else { 0.0 });
    }
}
