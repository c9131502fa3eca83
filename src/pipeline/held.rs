//! The re-drive of held items: every `redrive_interval` the task checks
//! clamd; when it answers, it reads `intake:held` oldest first, re-scans
//! each item and routes it as the pipeline would have, then deletes it
//! from `held`. While clamd stays down the pause doubles up to
//! `redrive_max_backoff`.
//!
//! Exactly once: the routed write carries an idempotency key (the
//! source's own, kept on the held entry, or else `held:<receipt id>`), so a
//! crash (or a second replica) between the write and the `XDEL` finds the
//! key, writes nothing new, and only deletes; and an IMAP mail re-read
//! after a crash, once held and once routed straight to the desk, still
//! makes one desk item.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::write::{write, EntryKey, Purpose};
use crate::envelope::Envelope;
use crate::parse::Message;
use crate::route::{self, Stream};
use crate::scan::{self, ScanError, Scanner, ScannerState};
use crate::sink::{Sink, SinkError, StoredEntry};
use crate::telemetry::events::emit;
use crate::telemetry::events::pipeline::{HeldItems, HeldUnreadable};
use crate::verdict::GuardVerdict;

/// The re-drive task's settings and handles.
pub struct Redrive {
    pub scanner: Scanner,
    pub sink: Arc<dyn Sink>,
    /// `messages.keep_raw`: the raw message added for the hold is taken
    /// out again when this is false.
    pub keep_raw: bool,
    pub interval: Duration,
    pub max_backoff: Duration,
    pub batch: usize,
}

/// Why one step of the re-drive stopped; the next tick tries again.
#[derive(Debug, thiserror::Error)]
pub enum RedriveError {
    #[error("the scanner could not decide")]
    Scan(#[from] ScanError),
    #[error("Redis failed")]
    Sink(#[from] SinkError),
}

/// What one drain did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    pub routed: usize,
    /// Entries left in `held` because they cannot be read back.
    pub unreadable: usize,
    /// Entries left in `held` because their own scan failed while clamd
    /// kept answering (one that always times out, say); retried next round.
    pub skipped: usize,
}

impl Redrive {
    /// Runs until `stop` is cancelled. The first tick is immediate, so the
    /// ClamAV version is logged at start.
    pub async fn run(self, stop: CancellationToken) {
        let mut pause = self.interval;
        loop {
            let healthy = match self.scanner.check().await {
                ScannerState::Up => match self.drain(&stop).await {
                    Ok(drained) => {
                        if drained.routed > 0 || drained.skipped > 0 {
                            tracing::info!(
                                routed = drained.routed,
                                skipped = drained.skipped,
                                unreadable = drained.unreadable,
                                "held items re-driven"
                            );
                        }
                        true
                    }
                    Err(e) => {
                        if let Some(suppressed) =
                            crate::telemetry::log_limit::errors().check("redrive")
                        {
                            tracing::warn!(error = %crate::telemetry::error_chain(&e), suppressed, "re-drive of held items stopped; retrying later");
                        }
                        false
                    }
                },
                _ => false,
            };
            if let Ok(held) = self.sink.len(Stream::Held).await {
                emit(HeldItems { count: held });
            }
            let wait = if healthy {
                pause = self.interval;
                self.interval
            } else {
                let wait = pause;
                pause = (pause * 2).min(self.max_backoff);
                wait
            };
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(wait) => {}
            }
        }
        tracing::info!("re-drive of held items stopped");
    }

    /// Re-scans and routes held items until `held` is empty (or only
    /// unreadable entries are left), an error stops it, or shutdown.
    pub async fn drain(&self, stop: &CancellationToken) -> Result<Drained, RedriveError> {
        let mut drained = Drained::default();
        let mut after: Option<String> = None;
        while !stop.is_cancelled() {
            let batch = self
                .sink
                .read(Stream::Held, after.as_deref(), self.batch)
                .await?;
            let Some(last) = batch.last() else { break };
            after = Some(last.entry_id.clone());
            for entry in batch {
                if stop.is_cancelled() {
                    break;
                }
                match self.redrive_one(&entry).await {
                    Ok(true) => drained.routed += 1,
                    Ok(false) => drained.unreadable += 1,
                    // One item that cannot be scanned must not hold up the
                    // rest: if clamd still answers a PING, skip it for now.
                    Err(RedriveError::Scan(e))
                        if self.scanner.check().await == ScannerState::Up =>
                    {
                        tracing::warn!(entry = %entry.entry_id, error = %e, "held item could not be re-scanned; skipped until the next round");
                        drained.skipped += 1;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(drained)
    }

    /// One held entry: re-scan, route, write (once), delete from `held`.
    /// `Ok(false)` when the entry cannot be read back; it stays for an
    /// operator.
    async fn redrive_one(&self, held: &StoredEntry) -> Result<bool, RedriveError> {
        let Some(mut message) = self.message_of(held) else {
            emit(HeldUnreadable {
                entry: &held.entry_id,
            });
            return Ok(false);
        };
        let verdict = self.scanner.scan(&message).await?;
        // The guard let it through before it was held (its tags are in the
        // envelope already); only the scanner's verdict is new.
        let route = route::route(&mut message, GuardVerdict::Pass, verdict);
        let envelope = &mut message.envelope;
        let unparsed = envelope.abuse.tags.iter().any(|t| t == "unparsed");
        // A card number was masked: the raw copy kept only for the
        // re-scan must not reach the desk.
        let redacted = envelope
            .abuse
            .tags
            .iter()
            .any(|t| t == crate::parse::redact::TAG_RAW_DROPPED);
        if (!self.keep_raw && !unparsed) || redacted {
            envelope.raw = None;
        }
        let id = envelope.id;
        let key = EntryKey::carried(held, "held", id);
        write(
            &*self.sink,
            message.envelope,
            &route,
            Some(key),
            Purpose::Redriven,
        )
        .await?;
        self.sink.remove(Stream::Held, &held.entry_id).await?;
        Ok(true)
    }

    /// The message a held entry describes, with what there is to scan:
    /// the raw message when the entry carries it (mail), and every
    /// attachment or upload.
    fn message_of(&self, held: &StoredEntry) -> Option<Message> {
        let envelope: Envelope = serde_json::from_str(held.fields.get("envelope")?).ok()?;
        let scan_targets = scan::envelope_targets(&envelope);
        Some(Message {
            envelope,
            scan_targets,
            trap: None,
            mime: Default::default(),
            idempotency_key: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Source;
    use crate::parse::{self, ParseOptions};
    use crate::sink::memory::MemorySink;
    use crate::sink::Entry;
    use crate::submission::{Payload, Submission};
    use bytes::Bytes;

    fn redrive(sink: Arc<MemorySink>) -> Redrive {
        Redrive {
            // Disabled: every re-scan says `unscanned`, which routes to the
            // desk; the exactly-once logic does not depend on the verdict.
            scanner: Scanner::disabled(),
            sink,
            keep_raw: false,
            interval: Duration::from_millis(10),
            max_backoff: Duration::from_millis(10),
            batch: 2,
        }
    }

    /// Writes a held entry as the pipeline does and returns its receipt.
    async fn hold(sink: &MemorySink, subject: &str) -> crate::submission::ReceiptId {
        hold_keyed(sink, subject, None).await
    }

    async fn hold_keyed(
        sink: &MemorySink,
        subject: &str,
        key: Option<&str>,
    ) -> crate::submission::ReceiptId {
        let submission = Submission::new(
            Source::Mailgate {
                sender: None,
                recipients: vec![],
                ip: "127.0.0.1".into(),
                client: None,
            },
            Payload::Mail(Bytes::from(format!(
                "From: a@example.com\r\nSubject: {subject}\r\n\r\nhello\r\n"
            ))),
        );
        let mut message = parse::parse(
            submission,
            ParseOptions {
                form: None,
                keep_raw: false,
            },
        )
        .unwrap();
        crate::scan::prepare_for_hold(&mut message);
        let entry = Entry {
            stream: Stream::Held,
            id: message.envelope.id,
            kind: "held",
            envelope: serde_json::to_string(&message.envelope).unwrap().into(),
            reason: Some("test".into()),
            duplicate_of: None,
            count: None,
            idempotency_key: key.map(str::to_string),
            key_digest: None,
            key_ttl: None,
        };
        sink.append(&entry).await.unwrap();
        message.envelope.id
    }

    #[tokio::test]
    async fn a_reread_routed_straight_to_the_desk_meets_its_held_copy() {
        // An IMAP mail was held (scanner down), the gateway died before
        // flagging it, and the re-read after restart went straight to the
        // desk under the same source key. The re-drive must not add a
        // second desk item.
        let sink = Arc::new(MemorySink::default());
        hold_keyed(&sink, "twice read", Some("imap:acct:7:42:<m@x>")).await;
        sink.append(&Entry {
            stream: Stream::Desk,
            id: crate::submission::ReceiptId::new(),
            kind: "message",
            envelope: "{}".into(),
            reason: None,
            duplicate_of: None,
            count: None,
            idempotency_key: Some("imap:acct:7:42:<m@x>".into()),
            key_digest: None,
            key_ttl: None,
        })
        .await
        .unwrap();
        redrive(sink.clone())
            .drain(&CancellationToken::new())
            .await
            .unwrap();
        let desk = sink
            .entries()
            .into_iter()
            .filter(|e| e.stream == Stream::Desk)
            .count();
        assert_eq!(desk, 1, "the held copy is recognised, not added");
        assert_eq!(
            sink.len(Stream::Held).await.unwrap(),
            0,
            "and it leaves held"
        );
    }

    #[tokio::test]
    async fn every_held_item_is_routed_once_and_removed() {
        let sink = Arc::new(MemorySink::default());
        for n in 0..5 {
            hold(&sink, &format!("item {n}")).await;
        }
        let drained = redrive(sink.clone())
            .drain(&CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(drained.routed, 5, "all five, across batches of two");
        let entries = sink.entries();
        assert!(
            entries.iter().all(|e| e.stream == Stream::Desk),
            "held is empty"
        );
        assert_eq!(entries.len(), 5);
        let envelope: Envelope =
            serde_json::from_str(&entries[0].envelope.to_json().unwrap()).unwrap();
        assert_eq!(envelope.raw, None, "keep_raw = false: raw taken out again");
    }

    #[tokio::test]
    async fn a_crash_between_write_and_delete_makes_no_second_desk_item() {
        let sink = Arc::new(MemorySink::default());
        let id = hold(&sink, "once").await;
        let redrive = redrive(sink.clone());
        // First attempt: the routed entry was written, then the process
        // died before the XDEL. Simulate by writing it with the same key.
        let held = sink.read(Stream::Held, None, 10).await.unwrap();
        let first = redrive.message_of(&held[0]).unwrap();
        sink.append(&Entry {
            stream: Stream::Desk,
            id,
            kind: "message",
            envelope: serde_json::to_string(&first.envelope).unwrap().into(),
            reason: None,
            duplicate_of: None,
            count: None,
            idempotency_key: Some(format!("held:{id}")),
            key_digest: None,
            key_ttl: None,
        })
        .await
        .unwrap();
        // After the restart the re-drive sees the same held entry again.
        redrive.drain(&CancellationToken::new()).await.unwrap();
        let desk: Vec<_> = sink
            .entries()
            .into_iter()
            .filter(|e| e.stream == Stream::Desk)
            .collect();
        assert_eq!(desk.len(), 1, "one desk item, not two");
        assert_eq!(
            sink.len(Stream::Held).await.unwrap(),
            0,
            "the held entry is removed"
        );
    }

    #[tokio::test]
    async fn redis_down_stops_the_drain_and_keeps_the_item() {
        let sink = Arc::new(MemorySink::default());
        hold(&sink, "kept").await;
        sink.set_down(true);
        let result = redrive(sink.clone()).drain(&CancellationToken::new()).await;
        assert!(matches!(result, Err(RedriveError::Sink(_))), "{result:?}");
        sink.set_down(false);
        assert_eq!(sink.len(Stream::Held).await.unwrap(), 1, "still held");
    }
}
