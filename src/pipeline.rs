//! The flow of one item, in its fixed order: parse, guard, scan, route,
//! sink. Every source calls [`Pipeline::process`] and acknowledges only
//! when it returned `Ok`: the item is then stored in exactly one stream.

use std::sync::Arc;

use crate::guard::{Guard, GuardError};
use crate::parse::{self, ParseError, ParseOptions};
use crate::route::{self, Answer, Route, Stream};
use crate::scan::Scanner;
use crate::sink::{Appended, Entry, Sink, SinkError};
use crate::submission::{ReceiptId, Submission};
use crate::verdict::{GuardVerdict, ScanVerdict};

/// The stages, shared by every source and request.
pub struct Pipeline {
    guard: Guard,
    scanner: Scanner,
    sink: Arc<dyn Sink>,
    privacy: crate::parse::redact::PrivacyConfig,
    mime: crate::parse::limits::MimeConfig,
    /// When set and active, new items are refused before anything is done.
    backpressure: Option<Arc<crate::backpressure::Backpressure>>,
}

/// An item that is stored: the source may acknowledge it now.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub id: ReceiptId,
    pub stream: Stream,
    /// The Redis stream entry id.
    pub entry_id: String,
    /// True when the idempotency key had been seen: this is the earlier
    /// item's receipt, and nothing new was written.
    pub already_stored: bool,
    /// What the source tells its client.
    pub answer: Answer,
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
    /// The write failed; retry later.
    #[error("the item could not be stored")]
    Sink(#[from] SinkError),
    #[error("the envelope could not be encoded")]
    Encode(#[from] serde_json::Error),
    /// The desk or Redis is over its limit; retry later (nothing taken).
    #[error("the gateway is under backpressure: {0}")]
    Busy(String),
}

impl Pipeline {
    pub fn new(guard: Guard, scanner: Scanner, sink: Arc<dyn Sink>) -> Self {
        Pipeline {
            guard,
            scanner,
            sink,
            privacy: Default::default(),
            mime: Default::default(),
            backpressure: None,
        }
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
            metrics::counter!("intake_backpressure_refusals_total").increment(1);
            return Err(PipelineError::Busy(reason));
        }
        let idempotency_key = submission.idempotency_key.clone();
        let refusal_judged_again = submission.refusal_judged_again;
        // 0. A source re-reading an item it may have stored (IMAP after a
        //    crash) learns so before the item is counted again.
        if let Some(key) = idempotency_key
            .as_ref()
            .filter(|_| !submission.idempotency_checked)
        {
            if let Some(seen) = self
                .sink
                .seen(key)
                .await
                .map_err(|e| self.store_failed(e))?
            {
                return Ok(self.recognised(seen));
            }
        }

        // 1. Parse: bytes or form fields become an envelope.
        let mut message = parse::parse(submission, options)?;
        parse::redact::redact_envelope(&mut message.envelope, &self.privacy);
        if let Some(reason) = self.mime.exceeded(&message.mime) {
            return self
                .beyond_mime_limits(message, reason, idempotency_key)
                .await;
        }

        // 2. Guard: cheap checks first, so a flood never costs a scan.
        let checked = self.guard.check(&mut message).await?;
        let guard = checked.verdict.clone();

        // 3. Scan what is headed for the desk. A scanner that cannot answer
        //    holds the item; it is never passed on unscanned by accident.
        let route = if heads_for_desk(&guard) {
            match self.scanner.scan(&message).await {
                Ok(scan) => route::route(&mut message, guard, scan),
                Err(err) => {
                    // The re-drive routes it later with only the scan's
                    // verdict: keep the guard's tags and what it must
                    // re-scan in the envelope now.
                    if let GuardVerdict::Tag { tags } = guard {
                        message.envelope.abuse.tags.extend(tags);
                    }
                    crate::scan::prepare_for_hold(&mut message);
                    if let Some(suppressed) =
                        crate::telemetry::log_limit::errors().check("scanner-held")
                    {
                        tracing::warn!(id = %message.envelope.id, error = %err, suppressed, "item held: the virus scanner could not decide");
                    }
                    route::held(&err)
                }
            }
        } else {
            let scan = ScanVerdict::Unscanned {
                reason: "not scanned: stopped by the abuse checks".into(),
            };
            // 4. Route: which stream, and what the client hears.
            route::route(&mut message, guard, scan)
        };

        // The scanner's buffers (the raw message, decoded parts) are done
        // with; let go of them before the envelope is encoded, so a large
        // mail is not held twice while it is written.
        message.scan_targets = Vec::new();

        // 5. Sink: the write that makes the item accepted. A refusal the
        //    client hears is not an acknowledgement: its retry must be
        //    judged again, not answered "accepted" from the key. It is
        //    written under a key of its own, which step 0 never looks up,
        //    so a client that retries after a lost 429 (its replica died
        //    after the write) leaves one audit entry, not two.
        let idempotency_key = match route.answer {
            Answer::Refused(_) if refusal_judged_again => idempotency_key
                .as_deref()
                .map(crate::submission::refused_key),
            _ => idempotency_key,
        };
        self.store(message, route, idempotency_key, Some(&checked.ticket))
            .await
    }

    /// A mail beyond a `[mime]` limit: quarantined (kind `mime-limit`)
    /// without guard or scan, and answered as accepted, so a mail server
    /// does not retry it and an operator finds it with its reason.
    async fn beyond_mime_limits(
        &self,
        mut message: parse::Message,
        reason: String,
        idempotency_key: Option<String>,
    ) -> Result<Stored, PipelineError> {
        metrics::counter!("intake_mime_limit_total").increment(1);
        tracing::warn!(id = %message.envelope.id, %reason, "item quarantined: beyond a MIME limit");
        message.scan_targets = Vec::new();
        let route = Route {
            stream: Stream::Quarantine,
            kind: "mime-limit",
            reason: Some(reason),
            duplicate_of: None,
            answer: Answer::Accepted,
        };
        self.store(message, route, idempotency_key, None).await
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
        let idempotency_key = submission.idempotency_key.clone();
        let mut message = parse::parse(submission, options)?;
        parse::redact::redact_envelope(&mut message.envelope, &self.privacy);
        let route = Route {
            stream,
            kind,
            reason: Some(reason),
            duplicate_of: None,
            answer: Answer::Accepted,
        };
        self.store(message, route, idempotency_key, None).await
    }

    /// Writes the entry; `ticket` is the guard's reservation, released when
    /// the write fails and announced (duplicate counts) when it succeeds.
    async fn store(
        &self,
        message: parse::Message,
        route: Route,
        idempotency_key: Option<String>,
        ticket: Option<&crate::guard::Ticket>,
    ) -> Result<Stored, PipelineError> {
        let Route {
            stream,
            kind,
            reason,
            duplicate_of,
            answer,
        } = route;
        let channel = message.envelope.channel;
        let entry = Entry {
            stream,
            id: message.envelope.id,
            kind,
            // Encoded by the sink as it writes: a large mail's JSON (raw
            // and attachments in base64) is never held whole.
            envelope: message.envelope.into(),
            reason,
            duplicate_of,
            count: None,
            idempotency_key,
        };
        let appended = match self.sink.append(&entry).await {
            Ok(appended) => appended,
            Err(e) => {
                if let Some(ticket) = ticket {
                    self.guard.not_stored(ticket).await;
                }
                return Err(self.store_failed(e));
            }
        };
        if let (Appended::Written { .. }, Some(ticket)) = (&appended, ticket) {
            // 6. A folded item updates its desk item through `events`.
            self.announce_fold(ticket, entry.id).await;
        }
        match appended {
            Appended::Written { entry_id } => {
                metrics::counter!(
                    "intake_items_total",
                    "stream" => stream.name(),
                    "kind" => kind,
                    "channel" => channel_label(channel)
                )
                .increment(1);
                tracing::info!(
                    id = %entry.id,
                    stream = %stream,
                    kind,
                    channel = ?channel,
                    "item stored"
                );
                Ok(Stored {
                    id: entry.id,
                    stream,
                    entry_id,
                    answer,
                    already_stored: false,
                })
            }
            Appended::AlreadyStored { receipt, entry_id } => {
                metrics::counter!("intake_items_already_stored_total", "stream" => stream.name())
                    .increment(1);
                tracing::info!(id = %receipt, stream = %stream, "item was stored before; not written again");
                Ok(Stored {
                    id: receipt.parse().unwrap_or(entry.id),
                    stream,
                    entry_id,
                    answer,
                    already_stored: true,
                })
            }
        }
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
            .map_err(|e| self.store_failed(e))?;
        Ok(seen
            .into_iter()
            .map(|seen| seen.map(|seen| self.recognised(seen)))
            .collect())
    }

    /// The answer for an item stored before: its first receipt, nothing
    /// written again.
    fn recognised(&self, seen: crate::sink::Seen) -> Stored {
        metrics::counter!("intake_items_already_stored_total", "stream" => seen.stream.name())
            .increment(1);
        tracing::info!(id = %seen.receipt, stream = %seen.stream, "item was stored before; not written again");
        Stored {
            id: seen.receipt.parse().unwrap_or_default(),
            stream: seen.stream,
            entry_id: seen.entry_id,
            answer: Answer::Accepted,
            already_stored: true,
        }
    }

    fn store_failed(&self, e: SinkError) -> PipelineError {
        let cause = match e {
            SinkError::Unavailable(_) => "unavailable",
            SinkError::Timeout(_) => "timeout",
            SinkError::Refused(_) => "refused",
        };
        metrics::counter!("intake_store_failures_total", "cause" => cause).increment(1);
        PipelineError::Sink(e)
    }

    /// Writes "N more like this" to `events` for a folded item. The item
    /// itself is stored already, so a failure here is logged and counted,
    /// not reported to the client (a retry would store it twice).
    async fn announce_fold(&self, ticket: &crate::guard::Ticket, id: ReceiptId) {
        let event = match self.guard.stored(ticket, id).await {
            Ok(Some(event)) => event,
            Ok(None) => return,
            Err(e) => {
                metrics::counter!("intake_events_failures_total").increment(1);
                tracing::warn!(error = %e, %id, "fold not counted");
                return;
            }
        };
        let body = serde_json::json!({
            "id": event.into,
            "kind": "duplicates",
            "count": event.count,
            "latest": event.latest,
            "rule": event.rule,
        });
        let entry = Entry {
            stream: Stream::Events,
            id: event.into,
            kind: "duplicates",
            envelope: body.to_string().into(),
            reason: Some(format!("{} more like this from this customer", event.count)),
            duplicate_of: None,
            count: Some(event.count),
            idempotency_key: None,
        };
        if let Err(e) = self.sink.append(&entry).await {
            metrics::counter!("intake_events_failures_total").increment(1);
            tracing::warn!(error = %e, into = %event.into, "events update not written");
        }
    }
}

fn channel_label(channel: crate::envelope::Channel) -> &'static str {
    match channel {
        crate::envelope::Channel::Email => "email",
        crate::envelope::Channel::Form => "form",
    }
}

fn heads_for_desk(verdict: &GuardVerdict) -> bool {
    matches!(verdict, GuardVerdict::Pass | GuardVerdict::Tag { .. })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Source;
    use crate::sink::memory::MemorySink;
    use crate::submission::Payload;
    use bytes::Bytes;

    fn pipeline(sink: Arc<MemorySink>) -> Pipeline {
        Pipeline::new(Guard::without_rules(), Scanner::disabled(), sink)
    }

    fn mail() -> Submission {
        mail_saying("hello")
    }

    fn mail_saying(text: &str) -> Submission {
        let raw = format!("From: a@example.com\r\nSubject: hi\r\n\r\n{text}\r\n");
        Submission::new(
            Source::Mailgate {
                sender: None,
                recipients: vec![],
                ip: "127.0.0.1".into(),
            },
            Payload::Mail(Bytes::from(raw)),
        )
    }

    const OPTS: ParseOptions<'static> = ParseOptions {
        form: None,
        keep_raw: false,
    };

    #[tokio::test]
    async fn clean_mail_lands_on_the_desk_with_its_receipt() {
        let sink = Arc::new(MemorySink::default());
        let submission = mail();
        let id = submission.id;
        let stored = pipeline(sink.clone())
            .process(submission, OPTS)
            .await
            .unwrap();
        assert_eq!(stored.id, id, "receipt id is the submission's");
        assert_eq!(stored.stream, Stream::Desk);
        let entries = sink.entries();
        assert_eq!(entries.len(), 1, "exactly one entry written");
        assert_eq!(entries[0].kind, "message");
        let envelope: serde_json::Value =
            serde_json::from_str(&entries[0].envelope.to_json().unwrap()).unwrap();
        assert_eq!(envelope["id"], id.to_string());
        assert_eq!(envelope["subject"], "hi");
    }

    #[tokio::test]
    async fn same_idempotency_key_is_stored_once() {
        let sink = Arc::new(MemorySink::default());
        let pipeline = pipeline(sink.clone());
        let mut first = mail();
        first.idempotency_key = Some("acct:1:42".into());
        let mut again = mail();
        again.idempotency_key = Some("acct:1:42".into());
        let a = pipeline.process(first, OPTS).await.unwrap();
        let b = pipeline.process(again, OPTS).await.unwrap();
        assert!(
            !a.already_stored && b.already_stored,
            "second read is recognised"
        );
        assert_eq!(a.id, b.id, "the re-read gets the first receipt");
        assert_eq!(sink.entries().len(), 1, "one entry, not two");
    }

    #[tokio::test]
    async fn a_batch_is_recognised_in_order_and_checked_keys_are_not_asked_again() {
        let sink = Arc::new(MemorySink::default());
        let pipeline = pipeline(sink.clone());
        let mut first = mail();
        first.idempotency_key = Some("acct:1:1".into());
        let stored = pipeline.process(first, OPTS).await.unwrap();
        let keys = ["acct:1:2".to_string(), "acct:1:1".to_string()];
        let known = pipeline.recognise(&keys).await.unwrap();
        assert!(known[0].is_none(), "a new key is not recognised");
        let again = known[1].as_ref().expect("the stored key is recognised");
        assert!(again.already_stored);
        assert_eq!(again.id, stored.id, "with its first receipt");

        // A source that has just looked the key up hands the item in as
        // checked: it is not looked up again, and the sink's write-once
        // still stores it only once.
        let mut checked = mail();
        checked.idempotency_key = Some("acct:1:1".into());
        checked.idempotency_checked = true;
        let written = pipeline.process(checked, OPTS).await.unwrap();
        assert!(written.already_stored, "the write-once key still holds");
        assert_eq!(sink.entries().len(), 1, "one entry, not two");
    }

    #[tokio::test]
    async fn a_retried_refusal_is_judged_again_and_audited_once() {
        use crate::guard::limiter::LimiterClock;
        use crate::guard::rules::RuleSet;
        let rules = "[[rule]]\nname = \"per-sender\"\nkey = [\"sender\"]\n\
                     rate = \"1/h\"\nburst = 1\naction = \"reject\"\n";
        let set = RuleSet::from_texts(&[("t.toml".into(), rules.into())]).expect("valid rules");
        let clock = governor::clock::FakeRelativeClock::default();
        let guard = Guard::new(set, None, None, LimiterClock::Fake(clock.clone()));
        let sink = Arc::new(MemorySink::default());
        let pipeline = Pipeline::new(guard, Scanner::disabled(), sink.clone());
        let config = crate::config::Config::from_toml(
            "[redis]\nurl = \"redis://x\"\n[[form]]\nid = \"contact\"\n",
        )
        .unwrap();
        let form = ParseOptions {
            form: Some(&config.forms[0]),
            keep_raw: false,
        };
        // A form post, as the HTTP source hands it in: a refusal is a 429.
        let post = |text: &str| {
            let mut fields = crate::submission::FormPost::default();
            fields.add_field("email".into(), "ann@example.com".into());
            fields.add_field("message".into(), text.into());
            let source = Source::Form {
                form: "contact".into(),
                ip: "198.51.100.7".into(),
                user_agent: None,
                origin: None,
                referer: None,
            };
            let mut submission = Submission::new(source, Payload::Form(fields));
            submission.idempotency_key = Some(format!("form:contact:{text}"));
            submission.refusal_judged_again = true;
            submission
        };
        let first = pipeline.process(post("first"), form).await.unwrap();
        assert_eq!(first.answer, Answer::Accepted);

        // Over the limit: refused, and its retry (a client whose answer
        // was lost) is refused again without a second audit entry.
        let refused = pipeline.process(post("second"), form).await.unwrap();
        assert!(matches!(refused.answer, Answer::Refused(_)), "{refused:?}");
        assert_eq!(refused.stream, Stream::Suppressed);
        let again = pipeline.process(post("second"), form).await.unwrap();
        assert!(matches!(again.answer, Answer::Refused(_)), "still refused");
        assert!(again.already_stored, "the refusal is not written twice");
        let in_stream = |stream| sink.entries().iter().filter(|e| e.stream == stream).count();
        assert_eq!(in_stream(Stream::Suppressed), 1, "one audit entry");

        // Once the limit allows it, the same retry is accepted: the
        // refusal's key does not answer it.
        clock.advance(std::time::Duration::from_secs(3600));
        let later = pipeline.process(post("second"), form).await.unwrap();
        assert_eq!(later.answer, Answer::Accepted);
        assert!(!later.already_stored);
        assert_eq!(later.stream, Stream::Desk);
        assert_eq!(in_stream(Stream::Desk), 2, "both posts on the desk");
        assert_eq!(in_stream(Stream::Suppressed), 1);
    }

    #[tokio::test]
    async fn failed_write_is_an_error_not_an_ack() {
        let sink = Arc::new(MemorySink::default());
        sink.set_down(true);
        let result = pipeline(sink.clone()).process(mail(), OPTS).await;
        assert!(
            matches!(result, Err(PipelineError::Sink(_))),
            "a failed write must surface as an error: {result:?}"
        );
        assert!(sink.entries().is_empty());
    }
}
