//! The flow of one item, in its fixed order: parse, authenticate, guard,
//! scan, route, reserve, audit copy, sink. Every source calls [`Pipeline::process`] and
//! acknowledges only when it returned `Ok`: the item is then stored in
//! exactly one stream.

pub mod audit;
pub mod held;
pub mod quarantine;
mod write;

use std::sync::Arc;

use crate::guard::{Guard, GuardError, Ticket};
use crate::parse::{self, ParseError, ParseOptions};
use crate::route::{self, Answer, Route, Stream};
use crate::scan::Scanner;
use crate::sink::{Appended, Seen, Sink, SinkError};
use crate::submission::{IdempotencyKey, ReceiptId, Submission};
use crate::telemetry::events::emit;
use crate::telemetry::events::pipeline::{
    BackpressureRefused, CopyFolded, FoldNotAnnounced, ItemHeld, ItemRecognised, KeyReused,
    MimeLimitExceeded, StoreFailed,
};
use crate::verdict::{GuardVerdict, ScanVerdict};
use audit::Audit;
pub use audit::Kept;
use write::{EntryKey, FoldUpdate, Purpose};

/// The stages, shared by every source and request.
pub struct Pipeline {
    guard: Guard,
    scanner: Scanner,
    sink: Arc<dyn Sink>,
    privacy: crate::parse::redact::PrivacyConfig,
    mime: crate::parse::limits::MimeConfig,
    /// What is kept of items that do not reach the desk.
    audit: Audit,
    /// When set and active, new items are refused before anything is done.
    backpressure: Option<Arc<crate::backpressure::Backpressure>>,
    /// Sender authentication (`[auth]`); mail is not checked without it.
    auth: Option<crate::auth::Authenticator>,
}

/// An item that is stored: the source may acknowledge it now.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub id: ReceiptId,
    pub stream: Stream,
    /// The Redis stream entry id (empty when nothing was written, see
    /// [`Kept::Counted`]).
    pub entry_id: String,
    /// True when the idempotency key had been seen: this is the earlier
    /// item's receipt, and nothing new was written.
    pub already_stored: bool,
    /// What the source tells its client.
    pub answer: Answer,
    /// How much of the item the stream holds. Only a refused item (its
    /// client was told no, and keeps its post) can be [`Kept::Counted`]:
    /// past its sender's audit allowance it is counted, not written.
    pub kept: Kept,
}

/// Why an item was not stored. The source must not acknowledge it.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The item itself is unusable; retrying will not help.
    #[error("the item cannot be read")]
    Parse(#[from] ParseError),
    /// The guard could not decide; retry later.
    #[error("the abuse checks could not run")]
    Guard(#[from] GuardError),
    /// The write failed; retry later. After a timeout the write may still
    /// land: see [`PipelineError::maybe_stored`].
    #[error("the item could not be stored")]
    Sink(#[from] SinkError),
    #[error("the envelope could not be encoded")]
    Encode(#[from] serde_json::Error),
    /// The idempotency key could not be looked up; retry later (nothing
    /// was written).
    #[error("the idempotency key could not be looked up")]
    Lookup(#[source] SinkError),
    /// The desk or Redis is over its limit; retry later (nothing taken).
    #[error("the gateway is under backpressure: {0}")]
    Busy(String),
    /// The client's idempotency key was first used for another payload:
    /// answering with that item's receipt would acknowledge an item stored
    /// nowhere. Nothing was written; the client must use a new key.
    #[error("the idempotency key was used before for a different request")]
    KeyReused,
}

impl PipelineError {
    /// Whether the item may have been stored all the same: a write whose
    /// answer did not come (a timeout, a connection lost mid-command) and
    /// whose key could not be looked up either. The client is told to
    /// retry with the same key (or the same post), which then finds it.
    pub fn maybe_stored(&self) -> bool {
        matches!(
            self,
            PipelineError::Sink(SinkError::Timeout(_) | SinkError::Unavailable(_))
        )
    }
}

impl Pipeline {
    pub fn new(guard: Guard, scanner: Scanner, sink: Arc<dyn Sink>) -> Self {
        Pipeline {
            guard,
            scanner,
            sink,
            privacy: Default::default(),
            mime: Default::default(),
            audit: Audit::new(Default::default(), None),
            backpressure: None,
            auth: None,
        }
    }

    /// Checks who sent each mail before the guard judges it (`[auth]`).
    pub fn with_authentication(mut self, auth: Option<crate::auth::Authenticator>) -> Self {
        self.auth = auth;
        self
    }

    /// Refuses new items while `backpressure` says so.
    pub fn with_backpressure(
        mut self,
        backpressure: Arc<crate::backpressure::Backpressure>,
    ) -> Self {
        self.backpressure = Some(backpressure);
        self
    }

    /// Sets the `[privacy]` rules (card redaction is on by default).
    pub fn with_privacy(mut self, privacy: crate::parse::redact::PrivacyConfig) -> Self {
        self.privacy = privacy;
        self
    }

    /// Sets the `[mime]` limits (safe defaults otherwise).
    pub fn with_mime_limits(mut self, mime: crate::parse::limits::MimeConfig) -> Self {
        self.mime = mime;
        self
    }

    /// Sets what is kept of items that do not reach the desk (`[audit]`),
    /// counting the allowances in `store`'s Redis.
    pub fn with_audit(mut self, audit: Audit) -> Self {
        self.audit = audit;
        self
    }

    pub fn sink(&self) -> &Arc<dyn Sink> {
        &self.sink
    }

    pub fn guard(&self) -> &Guard {
        &self.guard
    }

    pub fn scanner(&self) -> &Scanner {
        &self.scanner
    }

    /// Takes one item from submission to stored stream entry.
    pub async fn process(
        &self,
        submission: Submission,
        options: ParseOptions<'_>,
    ) -> Result<Stored, PipelineError> {
        // Under backpressure nothing new is taken: the source keeps the item
        // and its client retries (503, mailgate 75, IMAP leaves the mail).
        if let Some(reason) = self.backpressure.as_ref().and_then(|bp| bp.active()) {
            emit(BackpressureRefused);
            return Err(PipelineError::Busy(reason));
        }
        let key = submission.idempotency_key.clone();
        let refusal_judged_again = submission.refusal_judged_again;
        // 0. A source handing in an item it may have stored (IMAP after a
        //    crash, a client's retry) learns so before the item is counted
        //    again; the same key with another payload is refused.
        if let Some(key) = key.as_ref().filter(|_| !submission.idempotency_checked) {
            if let Some(seen) = self
                .sink
                .seen(&key.key)
                .await
                .map_err(|e| self.lookup_failed(e))?
            {
                let stored = self.recognised(seen, key.digest.as_deref())?;
                if key.folds_copies {
                    self.add_recipients(&stored, key, submission.id, &submission.source)
                        .await?;
                }
                return Ok(stored);
            }
        }

        // 1. Parse: bytes or form fields become an envelope.
        let mut message = parse_off_the_runtime(submission, options).await?;
        parse::redact::redact_envelope(&mut message.envelope, &self.privacy);
        let beyond_mime_limits = self.mime.exceeded(&message.mime);

        // 1b. Authenticate: who really sent a mail, so the rules can tell a
        //     customer from a forgery in their name (DNS, so off the parse
        //     thread; never a reason to refuse).
        if let Some(auth) = &self.auth {
            auth.authenticate_message(&mut message).await;
        }

        // 2. Guard: cheap checks first, so a flood never costs a scan. Mail
        //    beyond a MIME limit is judged too: a flood of it is a flood.
        let checked = self.guard.check(&mut message).await?;
        let verdict = checked.verdict;
        let mut ticket = checked.ticket;

        // 3. Scan what is headed for the desk. A scanner that cannot answer
        //    holds the item; it is never passed on unscanned by accident.
        //    Mail beyond a MIME limit goes to an operator unscanned.
        let mut route = if !heads_for_desk(&verdict) {
            let scan = ScanVerdict::Unscanned {
                reason: "not scanned: stopped by the abuse checks".into(),
            };
            // 4. Route: which stream, and what the client hears.
            route::route(&mut message, verdict, scan)
        } else if let Some(reason) = beyond_mime_limits {
            emit(MimeLimitExceeded {
                id: &message.envelope.id,
                reason: &reason,
            });
            route::beyond_mime_limits(reason)
        } else {
            match self.scanner.scan(&message).await {
                Ok(scan) => route::route(&mut message, verdict, scan),
                Err(err) => {
                    // The re-drive routes it later with only the scan's
                    // verdict: keep the guard's tags and what it must
                    // re-scan in the envelope now.
                    if let GuardVerdict::Tag { tags } = verdict {
                        message.envelope.abuse.tags.extend(tags);
                    }
                    crate::scan::prepare_for_hold(&mut message);
                    emit(ItemHeld {
                        id: &message.envelope.id,
                        error: &err,
                    });
                    route::held(&err)
                }
            }
        };

        // The scanner's buffers (the raw message, decoded parts) are done
        // with; let go of them before the envelope is encoded, so a large
        // mail is not held twice while it is written.
        message.scan_targets = Vec::new();

        // 5. Reserve a desk-bound item just before its write: a duplicate
        //    stored since the guard looked (another request, another
        //    replica) folds it now; nothing is folded into it until its
        //    write returned.
        if matches!(route.stream, Stream::Desk | Stream::Held) {
            if let Some((into, rule)) = self.guard.reserve(&mut ticket, message.envelope.id).await?
            {
                message.envelope.abuse.matched_rules.push(rule.clone());
                route = route::collapsed(into, &rule);
            }
        }

        // 6. An item that does not reach the desk is an audit copy: whole
        //    when small and its sender within its allowance, else metadata;
        //    a refusal past the allowance is counted, not written.
        let refused = refusal_judged_again && matches!(route.answer, Answer::Refused(_));
        let kept = self
            .audit
            .keep(
                &mut message.envelope,
                &mut route,
                ticket.customer(),
                refused,
            )
            .await;
        if kept == Kept::Counted {
            return Ok(Stored {
                id: message.envelope.id,
                stream: route.stream,
                entry_id: String::new(),
                already_stored: false,
                answer: route.answer,
                kept,
            });
        }

        // 7. Sink: the write that makes the item accepted. A refusal the
        //    client hears is not an acknowledgement: its retry must be
        //    judged again, not answered "accepted" from the key. It is
        //    written under a key of its own, which step 0 never looks up,
        //    so a client that retries after a lost 429 (its replica died
        //    after the write) leaves one audit entry, not two.
        let key = match route.answer {
            Answer::Refused(_) if refusal_judged_again => key.map(|k| IdempotencyKey {
                key: crate::submission::refused_key(&k.key),
                // A refusal is no item a copy could join.
                folds_copies: false,
                ..k
            }),
            _ => key,
        };
        self.store(message, route, key, ticket, kept).await
    }

    /// Stores an item its source has already set aside (an IMAP mail over
    /// the size limit, known only by its headers): parsed for the envelope,
    /// then written to `stream` with `kind` and `reason`, without guard or
    /// scan, since there is nothing whole to check.
    pub async fn set_aside(
        &self,
        submission: Submission,
        options: ParseOptions<'_>,
        stream: Stream,
        kind: &'static str,
        reason: String,
    ) -> Result<Stored, PipelineError> {
        let key = submission.idempotency_key.clone();
        let mut message = parse::parse(submission, options)?;
        parse::redact::redact_envelope(&mut message.envelope, &self.privacy);
        let route = Route {
            stream,
            kind,
            reason: Some(reason),
            duplicate_of: None,
            answer: Answer::Accepted,
        };
        self.store(message, route, key, Ticket::default(), Kept::Whole)
            .await
    }

    /// Writes the item ([`write::write`]). Around the write, the guard's
    /// `ticket`: its reservation is confirmed when the entry is written,
    /// released when it certainly was not, and a fold is announced in
    /// `events`.
    async fn store(
        &self,
        message: parse::Message,
        route: Route,
        key: Option<IdempotencyKey>,
        ticket: Ticket,
        kept: Kept,
    ) -> Result<Stored, PipelineError> {
        let id = message.envelope.id;
        let digest = key.as_ref().and_then(|k| k.digest.clone());
        // Kept for the case the key finds a first item: this hand-in is a
        // copy of its mail for these recipients.
        let copy = key
            .as_ref()
            .filter(|k| k.folds_copies)
            .map(|k| (k.clone(), message.envelope.source.clone()));
        let written = write::write(
            &*self.sink,
            message.envelope,
            &route,
            key.map(EntryKey::from),
            Purpose::New,
        )
        .await;
        let appended = match written {
            Ok(appended) => appended,
            Err(e) => {
                if matches!(e, SinkError::Refused(_)) {
                    self.guard.not_stored(&ticket).await;
                }
                return Err(self.store_failed(e));
            }
        };
        let Route { stream, answer, .. } = route;
        match appended {
            Appended::Written { entry_id } => {
                // 8. The stored item is remembered for dedupe; a folded
                //    one updates its desk item through `events`.
                self.guard.confirm(&ticket, id).await;
                self.announce_fold(&ticket, id).await;
                Ok(Stored {
                    id,
                    stream,
                    entry_id,
                    answer,
                    already_stored: false,
                    kept,
                })
            }
            Appended::AlreadyStored {
                receipt,
                entry_id,
                digest: stored_digest,
            } => {
                // The key's first item is the one stored; this one's
                // reservation is not needed.
                self.guard.not_stored(&ticket).await;
                reused(digest.as_deref(), stored_digest.as_deref())?;
                let stored = Stored {
                    id: receipt.parse().unwrap_or(id),
                    stream,
                    entry_id,
                    answer,
                    already_stored: true,
                    kept,
                };
                if let Some((key, source)) = copy {
                    self.add_recipients(&stored, &key, id, &source).await?;
                }
                Ok(stored)
            }
        }
    }
}

/// Refuses an idempotency key whose stored digest differs from the
/// request's: the same key with another payload.
fn reused(wanted: Option<&str>, stored: Option<&str>) -> Result<(), PipelineError> {
    match (wanted, stored) {
        (Some(wanted), Some(stored)) if wanted != stored => {
            emit(KeyReused);
            Err(PipelineError::KeyReused)
        }
        _ => Ok(()),
    }
}

impl Pipeline {
    /// Which of `keys` were stored before, in their order, with their first
    /// receipts. A source holding a batch asks once for all its items and
    /// hands in the rest with [`Submission::idempotency_checked`].
    pub async fn recognise(&self, keys: &[String]) -> Result<Vec<Option<Stored>>, PipelineError> {
        let seen = self
            .sink
            .seen_many(keys)
            .await
            .map_err(|e| self.lookup_failed(e))?;
        seen.into_iter()
            .map(|seen| seen.map(|seen| self.recognised(seen, None)).transpose())
            .collect()
    }

    /// Whether an item with `key` was stored before: its first receipt, or
    /// a refusal when the key came with another payload. A source that
    /// must know before its own checks (a form's token replay check would
    /// take a browser's resend for a bot) asks here and hands the item in
    /// with [`Submission::idempotency_checked`].
    pub async fn recognise_key(
        &self,
        key: &IdempotencyKey,
    ) -> Result<Option<Stored>, PipelineError> {
        let seen = self
            .sink
            .seen(&key.key)
            .await
            .map_err(|e| self.lookup_failed(e))?;
        seen.map(|seen| self.recognised(seen, key.digest.as_deref()))
            .transpose()
    }

    /// The answer for an item stored before: its first receipt, nothing
    /// written again; or, when the key came with another payload, a refusal.
    fn recognised(&self, seen: Seen, digest: Option<&str>) -> Result<Stored, PipelineError> {
        reused(digest, seen.digest.as_deref())?;
        emit(ItemRecognised {
            id: &seen.receipt,
            stream: seen.stream.name(),
        });
        Ok(Stored {
            id: seen.receipt.parse().unwrap_or_default(),
            stream: seen.stream,
            entry_id: seen.entry_id,
            answer: Answer::Accepted,
            already_stored: true,
            kept: Kept::Whole,
        })
    }

    /// A copy of a stored mail for more recipients (`key` folds copies):
    /// its recipients are added to the first item through `events`. The
    /// copy is answered with the first receipt only once that update is
    /// written; until then its mail server is told to retry, so no
    /// recipient is lost. Items not on their way to the desk get none.
    async fn add_recipients(
        &self,
        first: &Stored,
        key: &IdempotencyKey,
        copy: ReceiptId,
        source: &crate::envelope::Source,
    ) -> Result<(), PipelineError> {
        use crate::envelope::Source;
        let recipients = match source {
            Source::Lmtp { recipients, .. } | Source::Mailgate { recipients, .. } => recipients,
            _ => return Ok(()),
        };
        if recipients.is_empty() || !matches!(first.stream, Stream::Desk | Stream::Held) {
            return Ok(());
        }
        let update = write::RecipientsUpdate {
            into: first.id,
            latest: copy,
            recipients,
            copy_key: &key.key,
        };
        write::write_recipients_update(&*self.sink, &update)
            .await
            .map_err(|e| self.store_failed(e))?;
        emit(CopyFolded {
            into: &first.id,
            recipients: recipients.len(),
        });
        Ok(())
    }

    fn lookup_failed(&self, e: SinkError) -> PipelineError {
        emit(StoreFailed { cause: "lookup" });
        PipelineError::Lookup(e)
    }

    fn store_failed(&self, e: SinkError) -> PipelineError {
        let cause = match e {
            SinkError::Unavailable(_) => "unavailable",
            SinkError::Timeout(_) => "timeout",
            SinkError::Refused(_) => "refused",
        };
        emit(StoreFailed { cause });
        PipelineError::Sink(e)
    }

    /// Writes "N more like this" to `events` for a folded item. The item
    /// itself is stored already, so a failure here is logged and counted,
    /// not reported to the client (a retry would store it twice).
    async fn announce_fold(&self, ticket: &Ticket, id: ReceiptId) {
        let event = match self.guard.stored(ticket, id).await {
            Ok(Some(event)) => event,
            Ok(None) => return,
            Err(e) => {
                emit(FoldNotAnnounced {
                    into: &id,
                    error: &e,
                });
                return;
            }
        };
        let update = FoldUpdate {
            into: event.into,
            count: event.count,
            latest: event.latest,
            rule: event.rule,
        };
        if let Err(e) = write::write_fold_update(&*self.sink, &update).await {
            emit(FoldNotAnnounced {
                into: &update.into,
                error: &e,
            });
        }
    }
}

/// Items larger than this are parsed on the blocking pool: a
/// 50 MB mail costs a worker thread about a second of CPU, and on a small
/// machine that is every worker the other requests have (a bystander's
/// form post would wait for it). Smaller items stay on the runtime, where
/// the hop would cost more than the work.
const OFF_THE_RUNTIME_BYTES: usize = 256 * 1024;

fn submission_size(submission: &Submission) -> usize {
    match &submission.payload {
        crate::submission::Payload::Mail(raw) => raw.len(),
        crate::submission::Payload::Form(post) => post.files.iter().map(|f| f.data.len()).sum(),
    }
}

/// [`parse::parse`], on the blocking pool for a large item.
async fn parse_off_the_runtime(
    submission: Submission,
    options: ParseOptions<'_>,
) -> Result<parse::Message, ParseError> {
    if submission_size(&submission) <= OFF_THE_RUNTIME_BYTES {
        return parse::parse(submission, options);
    }
    let form = options.form.cloned();
    let keep_raw = options.keep_raw;
    tokio::task::spawn_blocking(move || {
        parse::parse(
            submission,
            ParseOptions {
                form: form.as_ref(),
                keep_raw,
            },
        )
    })
    .await
    .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

fn heads_for_desk(verdict: &GuardVerdict) -> bool {
    matches!(verdict, GuardVerdict::Pass | GuardVerdict::Tag { .. })
}

#[cfg(test)]
mod tests;
