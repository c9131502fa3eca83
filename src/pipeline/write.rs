//! The write that stores an item: the one place an item's `sink::Entry` is
//! made and appended, for a new item ([`super::Pipeline::process`]), a held
//! item re-scanned ([`super::held`]) and a quarantined item released
//! ([`super::quarantine`]) alike. What differs between them (the key, what
//! is counted and logged) is an argument, so the three can never drift
//! apart in how they key, retry or report a write.

use std::time::Duration;

use crate::envelope::{Channel, Envelope, ReceiptId};
use crate::route::{Route, Stream};
use crate::sink::{Appended, Entry, Seen, Sink, SinkError, StoredEntry};
use crate::submission::IdempotencyKey;
use crate::telemetry::events::emit;
use crate::telemetry::events::pipeline::{ItemRecognised, ItemStored, Redriven, UnknownWrite};

/// The key an entry is written under: a second write with it returns the
/// first one's receipt instead of a new entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryKey {
    pub key: String,
    /// What the key stands for (a digest of the payload a client first
    /// sent with it), so the same key with another payload is told apart.
    pub digest: Option<String>,
    /// How long the key is remembered; the sink's default when `None`.
    pub ttl: Option<Duration>,
}

impl From<IdempotencyKey> for EntryKey {
    fn from(key: IdempotencyKey) -> Self {
        EntryKey {
            key: key.key,
            digest: key.digest,
            ttl: key.ttl,
        }
    }
}

impl EntryKey {
    /// The key of an item rewritten from a stream (held, quarantine): the
    /// source's own key when it had one, so an IMAP re-read that reached
    /// the desk meanwhile is recognised, else `<prefix>:<receipt>`, so a
    /// second re-drive or release (or a retry after a crash) writes nothing
    /// new. The digest it was first written with comes along, so a client's
    /// retry with another payload is still told apart.
    pub fn carried(stored: &StoredEntry, prefix: &str, id: ReceiptId) -> Self {
        EntryKey {
            key: stored
                .fields
                .get("idempotency_key")
                .cloned()
                .unwrap_or_else(|| format!("{prefix}:{id}")),
            digest: stored.fields.get("idempotency_digest").cloned(),
            ttl: None,
        }
    }
}

/// Why an item is written: what its write counts and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A new item from a source.
    New,
    /// A held item, re-scanned now that clamd answers.
    Redriven,
    /// A quarantined item an operator released to the desk (its caller
    /// logs the release once the quarantine entry is gone).
    Released,
}

/// Builds the entry of a routed item and appends it. A write whose
/// outcome is unknown (a timeout, a connection lost mid-command) is looked
/// up by its key before the answer: it may have landed, and then it is
/// stored, not failed. `Err` only when it certainly was not written, or
/// nobody can tell.
pub async fn write(
    sink: &dyn Sink,
    envelope: Envelope,
    route: &Route,
    key: Option<EntryKey>,
    purpose: Purpose,
) -> Result<Appended, SinkError> {
    let id = envelope.id;
    let channel = envelope.channel;
    let (idempotency_key, key_digest, key_ttl) = match key {
        Some(k) => (Some(k.key), k.digest, k.ttl),
        None => (None, None, None),
    };
    let entry = Entry {
        stream: route.stream,
        id,
        kind: route.kind,
        // Encoded by the sink as it writes: a large mail's JSON (raw and
        // attachments in base64) is never held whole.
        envelope: envelope.into(),
        reason: route.reason.clone(),
        duplicate_of: route.duplicate_of,
        count: None,
        idempotency_key,
        key_digest,
        key_ttl,
    };
    let appended = match sink.append(&entry).await {
        Ok(appended) => appended,
        Err(e) => match look_up_unknown_write(sink, &entry, &e).await {
            Some(seen) if seen.receipt == id.to_string() => Appended::Written {
                entry_id: seen.entry_id,
            },
            Some(seen) => Appended::AlreadyStored {
                receipt: seen.receipt,
                entry_id: seen.entry_id,
                digest: seen.digest,
            },
            None => return Err(e),
        },
    };
    report(&appended, route, id, channel, purpose);
    Ok(appended)
}

/// Counts and logs a write, by what it was for.
fn report(appended: &Appended, route: &Route, id: ReceiptId, channel: Channel, purpose: Purpose) {
    let stream = route.stream;
    let kind = route.kind;
    match (purpose, appended) {
        (Purpose::New, Appended::Written { .. }) => emit(ItemStored {
            id: &id,
            stream: stream.name(),
            kind,
            channel: channel_label(channel),
        }),
        (Purpose::New, Appended::AlreadyStored { receipt, .. }) => emit(ItemRecognised {
            id: receipt,
            stream: stream.name(),
        }),
        (Purpose::Redriven, _) => emit(Redriven {
            id: &id,
            stream: stream.name(),
            kind,
        }),
        (Purpose::Released, _) => {}
    }
}

/// After a write that failed without a clear answer, whether the entry's
/// key is stored after all. `None`: a refusal (certainly not written), no
/// key, not found, or the look-up failed too.
async fn look_up_unknown_write(sink: &dyn Sink, entry: &Entry, error: &SinkError) -> Option<Seen> {
    if matches!(error, SinkError::Refused(_)) {
        return None;
    }
    let key = entry.idempotency_key.as_deref()?;
    let (seen, result) = match sink.seen(key).await {
        Ok(Some(seen)) => (Some(seen), "stored"),
        Ok(None) => (None, "not_found"),
        Err(_) => (None, "unknown"),
    };
    emit(UnknownWrite { result });
    seen
}

/// "N more like this" for the desk item `into`, in `events`: the update a
/// folded item makes.
pub struct FoldUpdate {
    pub into: ReceiptId,
    /// Items now folded into `into`.
    pub count: u64,
    /// The item folded last.
    pub latest: ReceiptId,
    pub rule: String,
}

/// Writes a fold update to `events`.
pub async fn write_fold_update(sink: &dyn Sink, update: &FoldUpdate) -> Result<(), SinkError> {
    let body = serde_json::json!({
        "id": update.into,
        "kind": "duplicates",
        "count": update.count,
        "latest": update.latest,
        "rule": update.rule,
    });
    let entry = Entry {
        stream: Stream::Events,
        id: update.into,
        kind: "duplicates",
        envelope: body.to_string().into(),
        reason: Some(format!(
            "{} more like this from this customer",
            update.count
        )),
        duplicate_of: None,
        count: Some(update.count),
        idempotency_key: None,
        key_digest: None,
        key_ttl: None,
    };
    sink.append(&entry).await.map(|_| ())
}

/// "Also sent to these recipients" for the desk item `into`, in `events`:
/// what a copy of its mail for more recipients makes (see
/// [`crate::submission::IdempotencyKey::of_delivery`]).
pub struct RecipientsUpdate<'a> {
    pub into: ReceiptId,
    /// The copy's receipt (what its hand-in was answered with is `into`).
    pub latest: ReceiptId,
    pub recipients: &'a [String],
    /// The copy's key: the update is written once per copy and recipient
    /// set, however often the mail server retries that copy.
    pub copy_key: &'a str,
}

/// Writes a recipients update to `events`, at most once per copy.
pub async fn write_recipients_update(
    sink: &dyn Sink,
    update: &RecipientsUpdate<'_>,
) -> Result<(), SinkError> {
    use sha2::{Digest, Sha256};
    let body = serde_json::json!({
        "id": update.into,
        "kind": "recipients",
        "recipients": update.recipients,
        "latest": update.latest,
    });
    let mut hasher = Sha256::new();
    for recipient in update.recipients {
        hasher.update(recipient.as_bytes());
        hasher.update(b"\0");
    }
    let entry = Entry {
        stream: Stream::Events,
        id: update.into,
        kind: "recipients",
        envelope: body.to_string().into(),
        reason: Some(format!(
            "the same mail also went to {}",
            update.recipients.join(", ")
        )),
        duplicate_of: None,
        count: None,
        idempotency_key: Some(format!(
            "recipients:{}:{:x}",
            update.copy_key,
            hasher.finalize()
        )),
        key_digest: None,
        key_ttl: Some(crate::submission::COPY_WINDOW),
    };
    sink.append(&entry).await.map(|_| ())
}

fn channel_label(channel: Channel) -> &'static str {
    match channel {
        Channel::Email => "email",
        Channel::Form => "form",
    }
}
