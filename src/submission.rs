//! What a source hands to the pipeline: the bytes it accepted, where they came
//! from, and the receipt id the source will give back once they are stored.
//!
//! A source acknowledges (HTTP 202, IMAP flag, mailgate exit 0) only after
//! [`crate::pipeline::Pipeline::process`] returned `Ok`: that is the ack
//! discipline the top-level README.md states, kept in one place.

use std::collections::BTreeMap;

use bytes::Bytes;
use time::OffsetDateTime;

pub use crate::envelope::ReceiptId;
use crate::envelope::{FieldValue, Source};
use crate::verdict::BotCheck;

/// One item a source has taken in and not yet acknowledged.
#[derive(Debug, Clone)]
pub struct Submission {
    pub id: ReceiptId,
    pub received_at: OffsetDateTime,
    /// Where it came in; becomes the envelope's `source`.
    pub source: Source,
    pub payload: Payload,
    /// Set by sources that may hand in the same item twice (IMAP re-reads
    /// after a crash, a client's retry): the item is then stored at most
    /// once, and the retry gets the first receipt.
    pub idempotency_key: Option<IdempotencyKey>,
    /// Set by sources that tell their client about a refusal (HTTP 422,
    /// 429): a refused item is not acknowledged and its client may send it
    /// again, so the retry is judged afresh instead of being answered as
    /// accepted. The refusal is remembered under its own key (see
    /// [`refused_key`]): a retry refused again is not audited twice, and
    /// one accepted later still reaches the desk. IMAP leaves it unset: a
    /// quarantined mail re-read after a crash must still be stored once.
    pub refusal_judged_again: bool,
    /// The source has just asked [`crate::pipeline::Pipeline::recognise`]
    /// about the key and it was not stored: the pipeline does not ask
    /// again.
    pub idempotency_checked: bool,
}

impl Submission {
    pub fn new(source: Source, payload: Payload) -> Self {
        Submission {
            id: ReceiptId::new(),
            received_at: OffsetDateTime::now_utc(),
            source,
            payload,
            idempotency_key: None,
            refusal_judged_again: false,
            idempotency_checked: false,
        }
    }
}

/// What makes a second hand-in of the same item find its first receipt
/// instead of becoming a second item: a key the retry repeats, and what
/// the key stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    /// The key, scoped to its source and endpoint (`http:form:contact:...`,
    /// `imap:...`), so two sources never share one.
    pub key: String,
    /// A digest of the payload the key was given with, for keys a client
    /// chose: the same key with another payload is refused, never answered
    /// with the first item's receipt. `None` for keys that name their
    /// payload by themselves (derived from its bytes, or an IMAP message's
    /// account, UIDVALIDITY, UID and Message-ID).
    pub digest: Option<String>,
    /// How long the key is remembered; `None` for the sink's default (long
    /// enough for any restart or mail-server retry). Keys derived from a
    /// form post hold only for the form's retry window.
    pub ttl: Option<std::time::Duration>,
}

impl IdempotencyKey {
    /// A key that names its payload by itself.
    pub fn named(key: impl Into<String>) -> Self {
        IdempotencyKey {
            key: key.into(),
            digest: None,
            ttl: None,
        }
    }

    /// The key of one mail delivery through `source` (`mailgate`, `lmtp`):
    /// the same message bytes for the same envelope sender and recipients
    /// are the same delivery, retried by a mail server that lost the
    /// answer. A copy for another recipient (a separate transaction) stays
    /// a delivery of its own.
    pub fn of_delivery(
        source: &str,
        sender: Option<&str>,
        recipients: &[String],
        raw: &[u8],
    ) -> Self {
        use sha2::{Digest, Sha256};
        let mut hasher = Sha256::new();
        hasher.update(sender.unwrap_or("").as_bytes());
        for recipient in recipients {
            hasher.update(b"\0");
            hasher.update(recipient.as_bytes());
        }
        // The separator cannot occur in an address, so the envelope and the
        // bytes cannot be shifted into each other.
        hasher.update(b"\0\0");
        hasher.update(raw);
        IdempotencyKey::named(format!("{source}:{:x}", hasher.finalize()))
    }
}

/// The idempotency key a refusal of an item keyed `key` is written under.
/// Apart from the item's own key, which the pipeline looks up before
/// judging: a retried refusal is judged again, not answered from it.
pub fn refused_key(key: &str) -> String {
    format!("refused:{key}")
}

/// The accepted bytes, in the form the source could give them.
#[derive(Debug, Clone)]
pub enum Payload {
    /// A raw RFC 5322 message, exactly as received.
    Mail(Bytes),
    /// A web-form post, already decoded from its wire format.
    Form(FormPost),
}

/// A decoded form post: every field as posted (reserved `_` fields
/// included; the parse stage takes those out) and the uploaded files.
#[derive(Debug, Clone, Default)]
pub struct FormPost {
    pub fields: BTreeMap<String, FieldValue>,
    pub files: Vec<Upload>,
    /// Why the form's bot checks took this post for a bot (decided by
    /// the HTTP source's `bots` module); the guard traps it.
    pub bot_check: Option<BotCheck>,
}

impl FormPost {
    /// Adds a field, keeping earlier values posted under the same name.
    pub fn add_field(&mut self, name: String, value: String) {
        match self.fields.get_mut(&name) {
            Some(existing) => existing.push(value),
            None => {
                self.fields.insert(name, FieldValue::One(value));
            }
        }
    }

    /// Whether any value posted under `name` is not blank, or a file was
    /// uploaded under it: a honeypot is filled by `_gotcha=&_gotcha=x` too.
    pub fn filled(&self, name: &str) -> bool {
        let values: &[String] = match self.fields.get(name) {
            Some(FieldValue::One(v)) => std::slice::from_ref(v),
            Some(FieldValue::Many(vs)) => vs,
            None => &[],
        };
        values.iter().any(|v| !v.trim().is_empty()) || self.files.iter().any(|f| f.field == name)
    }

    /// The first value of a field, if posted and not blank.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .get(name)
            .and_then(FieldValue::first)
            .map(str::trim)
            .filter(|v| !v.is_empty())
    }
}

/// One uploaded file of a multipart form post.
#[derive(Debug, Clone)]
pub struct Upload {
    /// The form field it was posted under.
    pub field: String,
    pub filename: Option<String>,
    pub content_type: String,
    pub data: Bytes,
}
