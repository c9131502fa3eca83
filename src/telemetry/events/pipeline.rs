//! Events of the pipeline: items stored, recognised, refused, held,
//! re-driven, released and audited.

use std::fmt::Display;

use super::{log_now, Event};

/// New items refused under backpressure (nothing taken).
pub struct BackpressureRefused;

impl Event for BackpressureRefused {
    fn emit(self) {
        metrics::counter!("intake_backpressure_refusals_total").increment(1);
    }
}

/// Whether backpressure is on (`reason`) or off.
pub struct BackpressureState<'a> {
    pub reason: Option<&'a str>,
}

impl Event for BackpressureState<'_> {
    fn emit(self) {
        metrics::gauge!("intake_backpressure").set(if self.reason.is_some() { 1.0 } else { 0.0 });
    }
}

/// A mail beyond a `[mime]` limit, quarantined unscanned.
pub struct MimeLimitExceeded<'a> {
    pub id: &'a dyn Display,
    pub reason: &'a str,
}

impl Event for MimeLimitExceeded<'_> {
    fn emit(self) {
        metrics::counter!("intake_mime_limit_total").increment(1);
        tracing::warn!(id = %self.id, reason = %self.reason, "item quarantined: beyond a MIME limit");
    }
}

/// An item held because the virus scanner could not decide.
pub struct ItemHeld<'a> {
    pub id: &'a dyn Display,
    pub error: &'a dyn Display,
}

impl Event for ItemHeld<'_> {
    fn emit(self) {
        if let Some(suppressed) = log_now("scanner-held") {
            tracing::warn!(id = %self.id, error = %self.error, suppressed, "item held: the virus scanner could not decide");
        }
    }
}

/// A new item written to its stream.
pub struct ItemStored<'a> {
    pub id: &'a dyn Display,
    pub stream: &'static str,
    pub kind: &'static str,
    pub channel: &'static str,
}

impl Event for ItemStored<'_> {
    fn emit(self) {
        metrics::counter!(
            "intake_items_total",
            "stream" => self.stream,
            "kind" => self.kind,
            "channel" => self.channel
        )
        .increment(1);
        tracing::info!(id = %self.id, stream = self.stream, kind = self.kind, channel = self.channel, "item stored");
    }
}

/// An item handed in again, recognised by its key: nothing written again.
pub struct ItemRecognised<'a> {
    pub id: &'a dyn Display,
    pub stream: &'static str,
}

impl Event for ItemRecognised<'_> {
    fn emit(self) {
        metrics::counter!("intake_items_already_stored_total", "stream" => self.stream)
            .increment(1);
        tracing::info!(id = %self.id, stream = self.stream, "item was stored before; not written again");
    }
}

/// A copy of a stored mail for more recipients (a mail server's
/// per-recipient delivery), folded into its first item.
pub struct CopyFolded<'a> {
    pub into: &'a dyn Display,
    pub recipients: usize,
}

impl Event for CopyFolded<'_> {
    fn emit(self) {
        metrics::counter!("intake_mail_copies_folded_total").increment(1);
        tracing::info!(
            into = %self.into,
            recipients = self.recipients,
            "a copy of a stored mail for more recipients: added to its first item"
        );
    }
}

/// An idempotency key first used for another payload (422).
pub struct KeyReused;

impl Event for KeyReused {
    fn emit(self) {
        metrics::counter!("intake_idempotency_key_reused_total").increment(1);
    }
}

/// An item not stored (its source does not acknowledge it), by cause:
/// `lookup`, `unavailable`, `timeout`, `refused`.
pub struct StoreFailed {
    pub cause: &'static str,
}

impl Event for StoreFailed {
    fn emit(self) {
        metrics::counter!("intake_store_failures_total", "cause" => self.cause).increment(1);
    }
}

/// A write whose answer did not come, and what looking up its key found:
/// `stored`, `not_found`, `unknown`.
pub struct UnknownWrite {
    pub result: &'static str,
}

impl Event for UnknownWrite {
    fn emit(self) {
        metrics::counter!("intake_unknown_writes_total", "result" => self.result).increment(1);
    }
}

/// A fold that could not be counted or announced in `events` (the item
/// itself is stored).
pub struct FoldNotAnnounced<'a> {
    pub into: &'a dyn Display,
    pub error: &'a dyn Display,
}

impl Event for FoldNotAnnounced<'_> {
    fn emit(self) {
        metrics::counter!("intake_events_failures_total").increment(1);
        tracing::warn!(error = %self.error, into = %self.into, "events update not written");
    }
}

/// A held item re-scanned and written to `stream`.
pub struct Redriven<'a> {
    pub id: &'a dyn Display,
    pub stream: &'static str,
    pub kind: &'static str,
}

impl Event for Redriven<'_> {
    fn emit(self) {
        metrics::counter!("intake_redriven_items_total", "stream" => self.stream).increment(1);
        tracing::info!(id = %self.id, stream = self.stream, kind = self.kind, "held item re-scanned and stored");
    }
}

/// A held entry that cannot be read back: left for an operator.
pub struct HeldUnreadable<'a> {
    pub entry: &'a str,
}

impl Event for HeldUnreadable<'_> {
    fn emit(self) {
        metrics::counter!("intake_redriven_items_total", "stream" => "unreadable").increment(1);
        tracing::error!(
            entry = self.entry,
            "held entry cannot be read back; left in held for an operator"
        );
    }
}

/// Entries waiting in `held`, as last counted.
pub struct HeldItems {
    pub count: u64,
}

impl Event for HeldItems {
    fn emit(self) {
        metrics::gauge!("intake_held_items").set(self.count as f64);
    }
}

/// A release asked for on the admin listener, by result.
pub struct QuarantineRelease {
    pub result: &'static str,
}

impl Event for QuarantineRelease {
    fn emit(self) {
        metrics::counter!("intake_quarantine_releases_total", "result" => self.result).increment(1);
    }
}

/// An item kept off the desk, by how much of it is kept: `whole`,
/// `metadata`, `counted`.
pub struct AuditCopy {
    pub kept: &'static str,
}

impl Event for AuditCopy {
    fn emit(self) {
        metrics::counter!("intake_audit_copies_total", "kept" => self.kept).increment(1);
    }
}

/// Card numbers masked in one item.
pub struct CardsRedacted {
    pub count: usize,
}

impl Event for CardsRedacted {
    fn emit(self) {
        metrics::counter!("intake_cards_redacted_total").increment(self.count as u64);
    }
}
