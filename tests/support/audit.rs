//! The one rule, checked after an attack or a fault: every receipt a client
//! was given (HTTP 202, mailgate exit 0, LMTP 250) names an item that is in
//! exactly one item stream, once; and every `duplicate_of` and every
//! `events` update names an item some stream holds. Attack tests end with
//! [`assert_receipts_stored_once`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::read_stream;

/// The streams an accepted item may land in (events never hold one).
pub const ITEM_STREAMS: [&str; 4] = ["desk", "suppressed", "quarantine", "held"];

/// Receipts the clients of one test were given, shared by their tasks.
#[derive(Debug, Clone, Default)]
pub struct Receipts(Arc<Mutex<Vec<String>>>);

impl Receipts {
    pub fn add(&self, receipt: impl Into<String>) {
        self.0.lock().unwrap().push(receipt.into());
    }

    pub fn all(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    pub fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What the item streams of one prefix hold, by receipt id.
#[derive(Debug, Default)]
pub struct Stored {
    /// receipt id -> (stream, entry id) of every entry carrying it.
    pub by_receipt: HashMap<String, Vec<(String, String)>>,
    /// (stream, receipt) of every entry with a `duplicate_of`, and the id it names.
    pub folds: Vec<(String, String, String)>,
    /// The desk item each `events` update names.
    pub events: Vec<String>,
    /// Entries per stream.
    pub counts: HashMap<String, usize>,
}

impl Stored {
    pub async fn read(redis_url: &str, prefix: &str) -> Stored {
        let mut stored = Stored::default();
        for stream in ITEM_STREAMS {
            let mut count = 0;
            let mut pages = Pages::new(redis_url, &format!("{prefix}:{stream}")).await;
            while let Some(entries) = pages.next().await {
                count += entries.len();
                for entry in entries {
                    let id = entry.field("id").to_string();
                    if let Some(into) = entry.fields.get("duplicate_of") {
                        stored
                            .folds
                            .push((stream.to_string(), id.clone(), into.clone()));
                    }
                    stored
                        .by_receipt
                        .entry(id)
                        .or_default()
                        .push((stream.to_string(), entry.entry_id.clone()));
                }
            }
            stored.counts.insert(stream.to_string(), count);
        }
        let events = read_stream(redis_url, &format!("{prefix}:events")).await;
        stored.counts.insert("events".into(), events.len());
        stored.events = events.iter().map(|e| e.field("id").to_string()).collect();
        stored
    }

    /// Entries in `stream`.
    pub fn count(&self, stream: &str) -> usize {
        self.counts.get(stream).copied().unwrap_or(0)
    }
}

/// A stream read a few entries at a time: the audit keeps only ids, and a
/// stream of big mails (tests/memory_budget.rs) is gigabytes of envelopes.
struct Pages {
    conn: redis::aio::MultiplexedConnection,
    key: String,
    after: Option<String>,
    done: bool,
}

impl Pages {
    const SIZE: usize = 4;

    async fn new(redis_url: &str, key: &str) -> Pages {
        Pages {
            conn: super::test_connection(redis_url).await,
            key: key.to_string(),
            after: None,
            done: false,
        }
    }

    async fn next(&mut self) -> Option<Vec<super::Entry>> {
        if self.done {
            return None;
        }
        let start = self
            .after
            .as_ref()
            .map_or_else(|| "-".to_string(), |after| format!("({after}"));
        let reply: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
            .arg(&self.key)
            .arg(start)
            .arg("+")
            .arg("COUNT")
            .arg(Self::SIZE)
            .query_async(&mut self.conn)
            .await
            .expect("XRANGE");
        self.done = reply.len() < Self::SIZE;
        self.after = reply.last().map(|(id, _)| id.clone());
        Some(
            reply
                .into_iter()
                .map(|(entry_id, pairs)| super::Entry {
                    entry_id,
                    fields: pairs.into_iter().filter(|(k, _)| k != "envelope").collect(),
                })
                .collect(),
        )
    }
}

/// Asserts the one rule for `receipts` and for every fold and update in
/// the prefix's streams; returns what the streams hold, for the test's
/// own figures.
pub async fn assert_receipts_stored_once(
    redis_url: &str,
    prefix: &str,
    receipts: &[String],
) -> Stored {
    let stored = Stored::read(redis_url, prefix).await;
    let mut lost = Vec::new();
    let mut doubled = Vec::new();
    // A receipt handed out twice (an idempotent retry's answer) is still
    // one item, checked once.
    let mut given = std::collections::HashSet::new();
    for receipt in receipts {
        if !given.insert(receipt.as_str()) {
            continue;
        }
        match stored.by_receipt.get(receipt).map(Vec::len) {
            None | Some(0) => lost.push(receipt.clone()),
            Some(1) => {}
            Some(_) => doubled.push(format!("{receipt}: {:?}", stored.by_receipt[receipt])),
        }
    }
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged receipts are in no stream (a false acknowledgement): {:?}",
        lost.len(),
        receipts.len(),
        &lost[..lost.len().min(5)]
    );
    assert!(
        doubled.is_empty(),
        "{} receipts are stored more than once: {:?}",
        doubled.len(),
        &doubled[..doubled.len().min(5)]
    );
    let dangling_folds: Vec<_> = stored
        .folds
        .iter()
        .filter(|(_, _, into)| !stored.by_receipt.contains_key(into))
        .collect();
    assert!(
        dangling_folds.is_empty(),
        "{} items are folded into a receipt no stream holds: {:?}",
        dangling_folds.len(),
        &dangling_folds[..dangling_folds.len().min(5)]
    );
    let dangling_events: Vec<_> = stored
        .events
        .iter()
        .filter(|into| !stored.by_receipt.contains_key(*into))
        .collect();
    assert!(
        dangling_events.is_empty(),
        "{} events updates name a receipt no stream holds: {:?}",
        dangling_events.len(),
        &dangling_events[..dangling_events.len().min(5)]
    );
    stored
}
