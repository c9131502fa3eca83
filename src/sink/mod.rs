//! Stage 5, sink: the write that makes an item "accepted". A source
//! acknowledges only after [`Sink::append`] returned `Ok`.

pub mod json;
pub mod memory;
pub mod redis;
mod resp;

use std::future::Future;
use std::pin::Pin;

use crate::route::Stream;
use crate::submission::ReceiptId;

pub use json::EnvelopeJson;

/// One stream entry, ready to write.
#[derive(Debug, Clone)]
pub struct Entry {
    pub stream: Stream,
    /// The receipt id (entry field `id`).
    pub id: ReceiptId,
    /// Entry field `kind`: `message`, `infected`, `collapsed`, ...
    pub kind: &'static str,
    /// Entry field `envelope`: envelope v1 as JSON, or the envelope for
    /// the sink to encode as it writes (a large one is never held whole).
    pub envelope: EnvelopeJson,
    /// Entry field `reason`, for everything not on the desk.
    pub reason: Option<String>,
    /// Entry field `duplicate_of`, for collapsed items.
    pub duplicate_of: Option<ReceiptId>,
    /// Entry field `count`, for `events` updates: how many items are now
    /// folded into the desk item `id`.
    pub count: Option<u64>,
    /// Makes the write happen at most once per key: a source that may read
    /// the same item twice (IMAP after a crash) sets it, and the second
    /// write returns the first one's receipt instead of a new entry.
    pub idempotency_key: Option<String>,
    /// What the key stands for (a digest of the payload a client first
    /// sent with it), remembered beside it so the same key with another
    /// payload is told apart from a retry. `None`: the key names its
    /// payload by itself (derived from it, or an IMAP message's identity).
    pub key_digest: Option<String>,
    /// How long the key is remembered; the sink's default when `None`.
    pub key_ttl: Option<std::time::Duration>,
}

/// An entry as read back from a stream (the re-drive of held items).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEntry {
    /// The Redis stream entry id.
    pub entry_id: String,
    pub fields: std::collections::HashMap<String, String>,
}

/// What a successful append did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Appended {
    /// A new entry was written.
    Written { entry_id: String },
    /// The idempotency key was seen before: nothing was written, and this
    /// is the earlier entry, with the payload digest the key was first
    /// written with (if any).
    AlreadyStored {
        receipt: String,
        entry_id: String,
        digest: Option<String>,
    },
}

/// Why an entry was not written. Every variant means "not stored": the
/// source must not acknowledge, and tells its client to retry.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("Redis is unreachable")]
    Unavailable(#[source] ::redis::RedisError),
    #[error("Redis did not answer within {0:?}")]
    Timeout(std::time::Duration),
    #[error("Redis refused the write")]
    Refused(#[source] ::redis::RedisError),
}

pub type SinkFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, SinkError>> + Send + 'a>>;

/// Where entries are written: Redis in production, memory in unit tests.
pub trait Sink: Send + Sync + 'static {
    /// Appends one entry, at most once per idempotency key.
    fn append<'a>(&'a self, entry: &'a Entry) -> SinkFuture<'a, Appended>;
    /// Whether a write would succeed now (for `/readyz`).
    fn ping(&self) -> SinkFuture<'_, ()>;
    /// Up to `count` entries of `stream` with ids above `after` (`None`:
    /// from the start), oldest first.
    fn read<'a>(
        &'a self,
        stream: Stream,
        after: Option<&'a str>,
        count: usize,
    ) -> SinkFuture<'a, Vec<StoredEntry>>;
    /// The entry `entry_id` of `stream`, if it is there.
    fn get<'a>(&'a self, stream: Stream, entry_id: &'a str) -> SinkFuture<'a, Option<StoredEntry>>;
    /// Deletes one entry (once it has been written elsewhere).
    fn remove<'a>(&'a self, stream: Stream, entry_id: &'a str) -> SinkFuture<'a, ()>;
    /// The number of entries in `stream`.
    fn len(&self, stream: Stream) -> SinkFuture<'_, u64>;
    /// Where an item with this idempotency key was stored before, if it
    /// was: the stream and the earlier receipt and entry id. Sources that
    /// re-read (IMAP after a crash) ask first, so a re-read is recognised
    /// before the abuse checks count it as a new duplicate.
    fn seen<'a>(&'a self, key: &'a str) -> SinkFuture<'a, Option<Seen>>;
    /// [`Sink::seen`] for many keys, answered in their order: a source
    /// holding a batch (IMAP) asks once, in one round trip where the store
    /// allows it, instead of once per item.
    fn seen_many<'a>(&'a self, keys: &'a [String]) -> SinkFuture<'a, Vec<Option<Seen>>> {
        Box::pin(async move {
            let mut found = Vec::with_capacity(keys.len());
            for key in keys {
                found.push(self.seen(key).await?);
            }
            Ok(found)
        })
    }
}

/// An idempotency key found in a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub stream: Stream,
    pub receipt: String,
    pub entry_id: String,
    /// The payload digest the key was written with, if any.
    pub digest: Option<String>,
}

/// What an idempotency key's value holds: `"<receipt> <entry id>[ <digest>]"`
/// (the entry id is `-` while a large write has not learnt it yet). Values
/// written before digests were kept have two parts and read as no digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub receipt: String,
    pub entry_id: String,
    pub digest: Option<String>,
}

/// The earlier entry a key's value names.
impl From<KeyValue> for Appended {
    fn from(value: KeyValue) -> Self {
        let KeyValue {
            receipt,
            entry_id,
            digest,
        } = value;
        Appended::AlreadyStored {
            receipt,
            entry_id,
            digest,
        }
    }
}

impl KeyValue {
    pub fn parse(value: &str) -> KeyValue {
        let mut parts = value.split(' ');
        let receipt = parts.next().unwrap_or_default().to_string();
        let entry_id = match parts.next() {
            None | Some("-") => String::new(),
            Some(id) => id.to_string(),
        };
        let digest = parts.next().filter(|d| !d.is_empty()).map(str::to_string);
        KeyValue {
            receipt,
            entry_id,
            digest,
        }
    }

    /// The value as stored.
    pub fn encode(receipt: &str, entry_id: Option<&str>, digest: Option<&str>) -> String {
        let entry_id = entry_id.filter(|e| !e.is_empty()).unwrap_or("-");
        match digest {
            Some(digest) => format!("{receipt} {entry_id} {digest}"),
            None => format!("{receipt} {entry_id}"),
        }
    }
}

/// The streams a source's item can land in directly (events never hold
/// one), in the order they are checked for an idempotency key.
pub const ITEM_STREAMS: [Stream; 4] = [
    Stream::Desk,
    Stream::Suppressed,
    Stream::Quarantine,
    Stream::Held,
];
