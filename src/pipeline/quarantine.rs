//! The operator's side of `intake:quarantine`: list what is there (no
//! bodies, no secrets) and release an entry to the desk.
//!
//! A release scans the item again first and fails closed: infected stays,
//! an unreachable scanner stays (retry later), and only a clean item is
//! written to the desk, under its original receipt id, with the tag
//! `released`. The quarantine entry is removed only after that write
//! returned, and the write happens at most once (the XADD-once key), so a
//! double release or a crash between the two steps makes one desk item.

use std::sync::Arc;

use serde::Serialize;

use super::write::{write, EntryKey, Purpose};
use crate::envelope::{Channel, Envelope, ScanStatus};
use crate::parse::{Message, ScanTarget};
use crate::route::{self, Stream};
use crate::scan::{ScanError, Scanner};
use crate::sink::{Appended, Sink, SinkError, StoredEntry};
use crate::verdict::{GuardVerdict, ScanVerdict};

/// The tag a released item carries to the desk.
pub const RELEASED_TAG: &str = "released";
/// Entries per page when the client does not say.
pub const DEFAULT_PAGE: usize = 50;
/// Most entries one page may ask for: a listing stays one bounded read.
pub const MAX_PAGE: usize = 500;

/// Lists and releases quarantined items.
pub struct Quarantine {
    pub scanner: Scanner,
    pub sink: Arc<dyn Sink>,
}

/// One quarantined entry as an operator sees it: what, why, from whom;
/// never a body, an attachment's content or a raw message.
#[derive(Debug, Serialize, PartialEq)]
pub struct Listed {
    /// The stream entry id, for `POST /v1/quarantine/{entry_id}/release`.
    pub entry_id: String,
    /// The receipt id the customer or mail server was given.
    pub id: String,
    pub kind: String,
    pub reason: Option<String>,
    pub received_at: Option<String>,
    pub channel: Option<Channel>,
    pub customer_email: Option<String>,
    pub subject: Option<String>,
    /// Bytes of content: the raw message when kept, else bodies and
    /// attachments together.
    pub size: Option<u64>,
    pub scan: Option<ListedScan>,
    pub attachments: Vec<ListedAttachment>,
    pub tags: Vec<String>,
    /// False when the entry's envelope cannot be read back; an operator
    /// then reads the stream entry itself.
    pub readable: bool,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct ListedScan {
    pub status: ScanStatus,
    pub engine: Option<String>,
    pub signatures: Vec<String>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct ListedAttachment {
    pub filename: Option<String>,
    pub content_type: String,
    pub size: u64,
    pub sha256: String,
}

/// One page of the listing.
#[derive(Debug, Serialize)]
pub struct Page {
    pub entries: Vec<Listed>,
    /// Pass as `after` for the next page; `None` when this was the last.
    pub next: Option<String>,
}

/// A release that happened (or had happened before).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Released {
    /// The receipt id, unchanged from the quarantined item.
    pub id: String,
    /// The desk entry id.
    pub desk_entry_id: String,
    /// The desk item had been written by an earlier attempt (a double
    /// release, or a crash before the quarantine entry was removed).
    pub already_released: bool,
}

/// Why an entry was not released. Each keeps the entry in quarantine.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("no quarantine entry {0} (unknown, or already released)")]
    NotFound(String),
    #[error("the re-scan found a virus ({}); the item stays in quarantine", signatures.join(", "))]
    Infected { signatures: Vec<String> },
    #[error("the item cannot be scanned ({0}); an unscanned item is not released")]
    Unscannable(String),
    #[error(
        "virus scanning is off ([scan] missing or disabled); an item is released only after a scan"
    )]
    ScannerOff,
    #[error("{0}")]
    NotReleasable(String),
    #[error("the virus scanner could not decide; the item stays in quarantine, retry later")]
    Scan(#[source] ScanError),
    #[error("Redis failed; the item stays in quarantine, retry later")]
    Sink(#[from] SinkError),
    #[error("the envelope could not be encoded")]
    Encode(#[from] serde_json::Error),
}

impl ReleaseError {
    /// A bounded label for the releases metric.
    pub fn label(&self) -> &'static str {
        match self {
            ReleaseError::NotFound(_) => "not_found",
            ReleaseError::Infected { .. } => "infected",
            ReleaseError::Unscannable(_) => "unscannable",
            ReleaseError::ScannerOff => "scanner_off",
            ReleaseError::NotReleasable(_) => "not_releasable",
            ReleaseError::Scan(_) => "scanner_unavailable",
            ReleaseError::Sink(_) => "redis_unavailable",
            ReleaseError::Encode(_) => "error",
        }
    }
}

/// Whether `text` is a Redis stream entry id (`<ms>-<seq>`, each a u64):
/// anything else is refused before it reaches Redis, which would answer
/// with an error.
pub fn is_entry_id(text: &str) -> bool {
    entry_id_parts(text).is_some()
}

/// `<ms>-<seq>` as numbers; only plain digits (no sign), each fitting a u64.
fn entry_id_parts(text: &str) -> Option<(u64, u64)> {
    let number = |s: &str| {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    let (ms, seq) = text.split_once('-')?;
    Some((number(ms)?, number(seq)?))
}

impl Quarantine {
    /// Up to `count` entries after `after`, oldest first.
    pub async fn list(&self, after: Option<&str>, count: usize) -> Result<Page, SinkError> {
        let count = count.clamp(1, MAX_PAGE);
        // Nothing can follow the largest id, and Redis refuses it as an
        // exclusive start rather than answering with no entries.
        if after.and_then(entry_id_parts) == Some((u64::MAX, u64::MAX)) {
            return Ok(Page {
                entries: Vec::new(),
                next: None,
            });
        }
        let entries = self.sink.read(Stream::Quarantine, after, count).await?;
        let next = (entries.len() == count)
            .then(|| entries.last().map(|e| e.entry_id.clone()))
            .flatten();
        Ok(Page {
            entries: entries.iter().map(listed).collect(),
            next,
        })
    }

    /// Scans the entry and moves it to the desk when it is clean.
    pub async fn release(&self, entry_id: &str) -> Result<Released, ReleaseError> {
        let result = self.release_inner(entry_id).await;
        let label = match &result {
            Ok(r) if r.already_released => "already_released",
            Ok(_) => "released",
            Err(e) => e.label(),
        };
        crate::telemetry::events::emit(crate::telemetry::events::pipeline::QuarantineRelease {
            result: label,
        });
        result
    }

    async fn release_inner(&self, entry_id: &str) -> Result<Released, ReleaseError> {
        let stored = self
            .sink
            .get(Stream::Quarantine, entry_id)
            .await?
            .ok_or_else(|| ReleaseError::NotFound(entry_id.to_string()))?;
        let envelope = releasable(&stored)?;
        if !self.scanner.is_enabled() {
            return Err(ReleaseError::ScannerOff);
        }
        let targets = release_targets(&envelope);
        let verdict = self
            .scanner
            .scan_targets(&targets)
            .await
            .map_err(ReleaseError::Scan)?;
        self.finish(&stored, envelope, verdict).await
    }

    /// Acts on the re-scan's verdict: refuse, or write to the desk once
    /// and then remove the quarantine entry.
    async fn finish(
        &self,
        stored: &StoredEntry,
        envelope: Envelope,
        verdict: ScanVerdict,
    ) -> Result<Released, ReleaseError> {
        let mut message = Message {
            envelope,
            scan_targets: Vec::new(),
            trap: None,
            mime: Default::default(),
            idempotency_key: None,
        };
        // The operator's release stands in for the guard's verdict; the
        // rules' tags from the first pass are in the envelope already.
        let route = route::route(&mut message, GuardVerdict::Pass, verdict.clone());
        match verdict {
            ScanVerdict::Infected { signatures, .. } => {
                return Err(ReleaseError::Infected { signatures })
            }
            ScanVerdict::Unscannable { reason, .. } => {
                return Err(ReleaseError::Unscannable(reason))
            }
            ScanVerdict::Unscanned { .. } => return Err(ReleaseError::ScannerOff),
            ScanVerdict::Clean { .. } | ScanVerdict::PassedUnscanned { .. } => {}
        }
        debug_assert_eq!(route.stream, Stream::Desk);
        let envelope = &mut message.envelope;
        if !envelope.abuse.tags.iter().any(|t| t == RELEASED_TAG) {
            envelope.abuse.tags.push(RELEASED_TAG.to_string());
        }
        let id = envelope.id;
        // The customer's receipt keeps matching the desk item; a second
        // release, or a retry after a crash, meets the first by its key.
        let key = EntryKey::carried(stored, "release", id);
        let (desk_entry_id, already_released) = match write(
            &*self.sink,
            message.envelope,
            &route,
            Some(key),
            Purpose::Released,
        )
        .await?
        {
            Appended::Written { entry_id } => (entry_id, false),
            Appended::AlreadyStored { entry_id, .. } => (entry_id, true),
        };
        // Only now: a crash before this line leaves the entry in
        // quarantine, and the next release finds the desk item by its key.
        self.sink
            .remove(Stream::Quarantine, &stored.entry_id)
            .await?;
        tracing::info!(
            id = %id,
            quarantine_entry = %stored.entry_id,
            desk_entry = %desk_entry_id,
            already_released,
            "quarantined item released to the desk"
        );
        Ok(Released {
            id: id.to_string(),
            desk_entry_id,
            already_released,
        })
    }
}

/// The envelope of an entry that can go to the desk, or why it cannot.
fn releasable(stored: &StoredEntry) -> Result<Envelope, ReleaseError> {
    let kind = stored.fields.get("kind").map_or("", String::as_str);
    match kind {
        "oversize" => {
            return Err(ReleaseError::NotReleasable(
                "only the headers of this mail were stored (it is over imap max_size); \
                 the whole mail is in the mailbox's quarantine folder on the IMAP server"
                    .into(),
            ))
        }
        "mime-limit" => {
            return Err(ReleaseError::NotReleasable(
                "this mail is beyond a [mime] limit and was never parsed and scanned whole; \
                 it cannot go to the desk as it is (read it from the entry, or raise the limit \
                 and have the sender deliver it again)"
                    .into(),
            ))
        }
        _ => {}
    }
    stored
        .fields
        .get("envelope")
        .and_then(|e| serde_json::from_str(e).ok())
        .ok_or_else(|| {
            ReleaseError::NotReleasable(
                "the entry's envelope cannot be read back; read the stream entry itself".into(),
            )
        })
}

/// Everything that would reach the desk: the raw message and attachments,
/// and, when no raw copy is kept, the bodies themselves.
fn release_targets(envelope: &Envelope) -> Vec<ScanTarget> {
    let mut targets = crate::scan::envelope_targets(envelope);
    if envelope.raw.is_none() {
        for (name, body) in [("text body", &envelope.text), ("html body", &envelope.html)] {
            if let Some(body) = body {
                targets.push(ScanTarget {
                    name: name.into(),
                    data: bytes::Bytes::copy_from_slice(body.as_bytes()),
                    whole_message: false,
                });
            }
        }
    }
    targets
}

fn listed(stored: &StoredEntry) -> Listed {
    let field = |name: &str| stored.fields.get(name).cloned();
    let envelope: Option<Envelope> = stored
        .fields
        .get("envelope")
        .and_then(|e| serde_json::from_str(e).ok());
    let mut listed = Listed {
        entry_id: stored.entry_id.clone(),
        id: field("id").unwrap_or_default(),
        kind: field("kind").unwrap_or_default(),
        reason: field("reason"),
        received_at: None,
        channel: None,
        customer_email: None,
        subject: None,
        size: None,
        scan: None,
        attachments: Vec::new(),
        tags: Vec::new(),
        readable: envelope.is_some(),
    };
    let Some(envelope) = envelope else {
        return listed;
    };
    listed.received_at = envelope
        .received_at
        .format(&time::format_description::well_known::Rfc3339)
        .ok();
    listed.channel = Some(envelope.channel);
    listed.customer_email = envelope.customer.email.clone();
    listed.subject = envelope.subject.clone();
    listed.size = Some(match &envelope.raw {
        Some(raw) => raw.bytes().len() as u64,
        None => {
            let body = |b: &Option<String>| b.as_ref().map_or(0, |b| b.len() as u64);
            body(&envelope.text)
                + body(&envelope.html)
                + envelope.attachments.iter().map(|a| a.size).sum::<u64>()
        }
    });
    listed.scan = Some(ListedScan {
        status: envelope.scan.status,
        engine: envelope.scan.engine.clone(),
        signatures: envelope.scan.signatures.clone(),
    });
    listed.attachments = envelope
        .attachments
        .iter()
        .map(|a| ListedAttachment {
            filename: a.filename.clone(),
            content_type: a.content_type.clone(),
            size: a.size,
            sha256: a.sha256.clone(),
        })
        .collect();
    listed.tags = envelope.abuse.tags;
    listed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Source;
    use crate::parse::{self, ParseOptions};
    use crate::sink::memory::MemorySink;
    use crate::sink::Entry;
    use crate::submission::{Payload, Submission};

    async fn quarantined(sink: &MemorySink, kind: &'static str, key: Option<&str>) -> String {
        let submission = Submission::new(
            Source::Mailgate {
                sender: None,
                recipients: vec![],
                ip: "127.0.0.1".into(),
                client: None,
            },
            Payload::Mail(bytes::Bytes::from_static(
                b"From: a@example.com\r\nSubject: held back\r\n\r\nhello\r\n",
            )),
        );
        let message = parse::parse(
            submission,
            ParseOptions {
                form: None,
                keep_raw: false,
            },
        )
        .unwrap();
        let appended = sink
            .append(&Entry {
                stream: Stream::Quarantine,
                id: message.envelope.id,
                kind,
                envelope: serde_json::to_string(&message.envelope).unwrap().into(),
                reason: Some("test".into()),
                duplicate_of: None,
                count: None,
                idempotency_key: key.map(str::to_string),
                key_digest: None,
                key_ttl: None,
            })
            .await
            .unwrap();
        match appended {
            Appended::Written { entry_id } => entry_id,
            other => panic!("{other:?}"),
        }
    }

    fn quarantine(sink: Arc<MemorySink>) -> Quarantine {
        Quarantine {
            scanner: Scanner::disabled(),
            sink,
        }
    }

    fn clean() -> ScanVerdict {
        ScanVerdict::Clean {
            engine: "ClamAV test".into(),
        }
    }

    fn desk(sink: &MemorySink) -> Vec<Entry> {
        sink.entries()
            .into_iter()
            .filter(|e| e.stream == Stream::Desk)
            .collect()
    }

    #[tokio::test]
    async fn a_crash_between_desk_write_and_remove_makes_one_desk_item() {
        let sink = Arc::new(MemorySink::default());
        let entry_id = quarantined(&sink, "quarantined", None).await;
        let q = quarantine(sink.clone());
        let stored = sink
            .get(Stream::Quarantine, &entry_id)
            .await
            .unwrap()
            .unwrap();
        let envelope = releasable(&stored).unwrap();
        let first = q.finish(&stored, envelope.clone(), clean()).await.unwrap();
        assert!(!first.already_released);
        // As if the first attempt had crashed before its remove: the same
        // quarantine entry is released again.
        let second = q.finish(&stored, envelope, clean()).await.unwrap();
        assert!(second.already_released, "the second write is recognised");
        assert_eq!(first.desk_entry_id, second.desk_entry_id);
        let desk = desk(&sink);
        assert_eq!(desk.len(), 1, "one desk item, not two");
        assert_eq!(desk[0].id.to_string(), first.id, "receipt id kept");
        let envelope: Envelope =
            serde_json::from_str(&desk[0].envelope.to_json().unwrap()).unwrap();
        assert!(envelope.abuse.tags.iter().any(|t| t == RELEASED_TAG));
        assert_eq!(envelope.scan.status, ScanStatus::Clean);
        assert_eq!(sink.len(Stream::Quarantine).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn infected_and_unscannable_stay_in_quarantine() {
        let sink = Arc::new(MemorySink::default());
        let entry_id = quarantined(&sink, "infected", None).await;
        let q = quarantine(sink.clone());
        let stored = sink
            .get(Stream::Quarantine, &entry_id)
            .await
            .unwrap()
            .unwrap();
        let envelope = releasable(&stored).unwrap();
        let result = q
            .finish(
                &stored,
                envelope.clone(),
                ScanVerdict::Infected {
                    engine: "x".into(),
                    signatures: vec!["Sig".into()],
                },
            )
            .await;
        assert!(
            matches!(result, Err(ReleaseError::Infected { .. })),
            "{result:?}"
        );
        let result = q
            .finish(
                &stored,
                envelope,
                ScanVerdict::Unscannable {
                    engine: "x".into(),
                    reason: "too large".into(),
                },
            )
            .await;
        assert!(
            matches!(result, Err(ReleaseError::Unscannable(_))),
            "{result:?}"
        );
        assert!(desk(&sink).is_empty(), "nothing reached the desk");
        assert_eq!(
            sink.len(Stream::Quarantine).await.unwrap(),
            1,
            "still there"
        );
    }

    #[tokio::test]
    async fn headers_only_and_mime_limit_entries_are_refused_with_a_reason() {
        let sink = Arc::new(MemorySink::default());
        for kind in ["oversize", "mime-limit"] {
            let entry_id = quarantined(&sink, kind, None).await;
            let result = quarantine(sink.clone()).release(&entry_id).await;
            assert!(
                matches!(result, Err(ReleaseError::NotReleasable(ref why)) if !why.is_empty()),
                "{kind}: {result:?}"
            );
        }
        assert!(desk(&sink).is_empty());
    }

    #[tokio::test]
    async fn a_disabled_scanner_releases_nothing() {
        let sink = Arc::new(MemorySink::default());
        let entry_id = quarantined(&sink, "quarantined", None).await;
        let result = quarantine(sink.clone()).release(&entry_id).await;
        assert!(
            matches!(result, Err(ReleaseError::ScannerOff)),
            "{result:?}"
        );
        assert!(desk(&sink).is_empty());
    }

    #[tokio::test]
    async fn unknown_entries_are_not_found() {
        let sink = Arc::new(MemorySink::default());
        let result = quarantine(sink).release("99-0").await;
        assert!(
            matches!(result, Err(ReleaseError::NotFound(_))),
            "{result:?}"
        );
    }

    #[tokio::test]
    async fn the_listing_shows_metadata_and_no_bodies() {
        let sink = Arc::new(MemorySink::default());
        for _ in 0..3 {
            quarantined(&sink, "quarantined", None).await;
        }
        let q = quarantine(sink);
        let page = q.list(None, 2).await.unwrap();
        assert_eq!(page.entries.len(), 2);
        let next = page.next.expect("a second page");
        let rest = q.list(Some(&next), 2).await.unwrap();
        assert_eq!(rest.entries.len(), 1);
        assert_eq!(rest.next, None, "last page");
        let first = &page.entries[0];
        assert_eq!(first.subject.as_deref(), Some("held back"));
        assert_eq!(first.kind, "quarantined");
        let json = serde_json::to_string(&page.entries).unwrap();
        assert!(!json.contains("hello"), "a body leaked: {json}");
    }

    #[test]
    fn entry_ids_are_checked_before_redis_sees_them() {
        assert!(is_entry_id("1700000000000-0"));
        assert!(!is_entry_id("1700000000000"));
        assert!(!is_entry_id("-0"));
        assert!(!is_entry_id("a-b"));
        assert!(!is_entry_id("1-2-3"));
        assert!(!is_entry_id("+1-0"), "a sign is not an id");
        assert!(
            !is_entry_id("18446744073709551616-0"),
            "over a u64: Redis would refuse it"
        );
        assert!(is_entry_id("18446744073709551615-18446744073709551615"));
    }
}
