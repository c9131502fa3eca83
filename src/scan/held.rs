//! The re-drive of held items: every `redrive_interval` the task checks
//! clamd; when it answers, it reads `intake:held` oldest first, re-scans
//! each item and routes it as the pipeline would have, then deletes it
//! from `held`. While clamd stays down the pause doubles up to
//! `redrive_max_backoff`.
//!
//! Exactly once: the routed write carries the idempotency key
//! `held:<receipt id>`, so a crash (or a second replica) between the write
//! and the `XDEL` finds the key, writes nothing new, and only deletes.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use super::{ScanError, Scanner};
use crate::envelope::Envelope;
use crate::parse::{Message, ScanTarget};
use crate::route::{self, Stream};
use crate::sink::{Entry, Sink, SinkError, StoredEntry};
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
    #[error("the envelope could not be encoded")]
    Encode(#[from] serde_json::Error),
}

/// What one drain did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    pub routed: usize,
    /// Entries left in `held` because they cannot be read back.
    pub unreadable: usize,
}

impl Redrive {
    /// Runs until `stop` is cancelled. The first tick is immediate, so the
    /// ClamAV version is logged at start.
    pub async fn run(self, stop: CancellationToken) {
        let mut pause = self.interval;
        loop {
            let healthy = match self.scanner.check().await {
                super::ScannerState::Up => match self.drain(&stop).await {
                    Ok(drained) => {
                        if drained.routed > 0 {
                            tracing::info!(routed = drained.routed, "held items re-driven");
                        }
                        true
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, cause = ?std::error::Error::source(&e).map(ToString::to_string), "re-drive of held items stopped; retrying later");
                        false
                    }
                },
                _ => false,
            };
            if let Ok(held) = self.sink.len(Stream::Held).await {
                metrics::gauge!("intake_held_items").set(held as f64);
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
            metrics::counter!("intake_redriven_items_total", "stream" => "unreadable").increment(1);
            tracing::error!(entry = %held.entry_id, "held entry cannot be read back; left in held for an operator");
            return Ok(false);
        };
        let verdict = self.scanner.scan(&message).await?;
        // The guard let it through before it was held (its tags are in the
        // envelope already); only the scanner's verdict is new.
        let route = route::route(&mut message, GuardVerdict::Pass, verdict);
        let envelope = &mut message.envelope;
        let unparsed = envelope.abuse.tags.iter().any(|t| t == "unparsed");
        if !self.keep_raw && !unparsed {
            envelope.raw = None;
        }
        let entry = Entry {
            stream: route.stream,
            id: envelope.id,
            kind: route.kind,
            envelope: serde_json::to_string(&envelope)?,
            reason: route.reason,
            folded_into: route.folded_into,
            idempotency_key: Some(format!("held:{}", envelope.id)),
        };
        self.sink.append(&entry).await?;
        self.sink.remove(Stream::Held, &held.entry_id).await?;
        metrics::counter!("intake_redriven_items_total", "stream" => route.stream.name())
            .increment(1);
        tracing::info!(id = %entry.id, stream = %route.stream, kind = route.kind, "held item re-scanned and stored");
        Ok(true)
    }

    /// The message a held entry describes, with what there is to scan:
    /// the raw message when the entry carries it (mail), and every
    /// attachment or upload.
    fn message_of(&self, held: &StoredEntry) -> Option<Message> {
        let envelope: Envelope = serde_json::from_str(held.fields.get("envelope")?).ok()?;
        let engine = base64::engine::general_purpose::STANDARD;
        let mut scan_targets = Vec::with_capacity(envelope.attachments.len() + 1);
        if let Some(raw) = &envelope.raw {
            scan_targets.push(ScanTarget {
                name: "message".into(),
                data: Bytes::from(engine.decode(raw).ok()?),
                whole_message: true,
            });
        }
        for (i, attachment) in envelope.attachments.iter().enumerate() {
            scan_targets.push(ScanTarget {
                name: attachment
                    .filename
                    .clone()
                    .unwrap_or_else(|| format!("part {}", i + 1)),
                data: Bytes::from(engine.decode(&attachment.content_base64).ok()?),
                whole_message: false,
            });
        }
        Some(Message {
            envelope,
            scan_targets,
            trap: None,
        })
    }
}
