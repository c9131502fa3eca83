//! Mail through the pipeline: each fetched mail as a submission with its
//! idempotency key, a bounded number at once and in order; a mail over
//! `max_size` recorded by its headers in quarantine instead. What comes
//! back says which server folder the mail goes to ([`Dest`]).

use crate::telemetry::events::emit;
use crate::telemetry::events::imap::Mails;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use sha2::Digest;

use super::error::ImapError;
use super::fetch;
use super::settle::Settled;
use super::{Dest, Worker};
use crate::envelope::Source;
use crate::parse::ParseOptions;
use crate::pipeline::{PipelineError, Stored};
use crate::route::{Answer, Refusal, Stream};
use crate::submission::{IdempotencyKey, Payload, Submission};

impl Worker {
    /// Delivers `fresh` mails (UID, mail, idempotency key) and records each
    /// stored one in `done`. In order, a bounded number at once, each on
    /// its own task so parsing uses every core: the first failure stops the
    /// batch, and only what came before it is acknowledged. (A task still
    /// running then may store its mail; it is read again later and
    /// recognised by its idempotency key.) Returns that failure.
    pub(super) async fn deliver_all(
        self: &Arc<Self>,
        uidvalidity: u32,
        fresh: Vec<(u32, Bytes, String)>,
        done: &mut Settled,
    ) -> Option<ImapError> {
        let mut results = futures_util::stream::iter(fresh)
            .map(|(uid, raw, key)| {
                let worker = self.clone();
                let task =
                    tokio::spawn(async move { worker.deliver(uidvalidity, uid, raw, key).await });
                async move { (uid, task.await) }
            })
            .buffered(self.config.concurrency);
        while let Some((uid, result)) = results.next().await {
            match result {
                Ok(Ok(dest)) => done.add(uid, dest),
                Ok(Err(e)) => return Some(e),
                Err(e) => return Some(ImapError::Task(e.to_string())),
            }
        }
        None
    }

    /// One mail through the pipeline. `Ok` means stored (or stored before)
    /// and says where the mail goes on the server; `Err` means not stored.
    /// `key` was just looked up and is not stored yet.
    async fn deliver(
        &self,
        uidvalidity: u32,
        uid: u32,
        raw: Bytes,
        key: String,
    ) -> Result<Dest, ImapError> {
        let mut submission = Submission::new(self.source(uidvalidity, uid), Payload::Mail(raw));
        submission.idempotency_key = Some(IdempotencyKey::named(key));
        submission.idempotency_checked = true;
        match self
            .pipeline
            .process(submission, self.parse_options())
            .await
        {
            Ok(stored) => {
                let outcome = if stored.already_stored {
                    "already_stored"
                } else {
                    "stored"
                };
                emit(Mails { outcome, count: 1 });
                Ok(destination(&stored))
            }
            // Only an empty mail fails to parse: nothing to store, so it is
            // kept in the quarantine folder for a person to look at.
            Err(PipelineError::Parse(e)) => {
                emit(Mails {
                    outcome: "unreadable",
                    count: 1,
                });
                tracing::warn!(mailbox = %self.label, uid, error = %e, folder = %self.config.quarantine_folder, "unreadable mail moved to the quarantine folder");
                Ok(Dest::Quarantine)
            }
            Err(e) => Err(ImapError::Store(e)),
        }
    }

    /// Records a mail over `max_size` by its headers in `quarantine` and
    /// sends it to the quarantine folder; its body is never downloaded.
    /// `true` when it was recorded before (read again after a failure).
    pub(super) async fn set_aside_oversized(
        &self,
        uidvalidity: u32,
        uid: u32,
        size: u32,
        header: Bytes,
    ) -> Result<bool, ImapError> {
        let key = self.idempotency_key(uidvalidity, uid, &header);
        let mut submission = Submission::new(self.source(uidvalidity, uid), Payload::Mail(header));
        submission.idempotency_key = Some(IdempotencyKey::named(key));
        let reason = format!(
            "mail of {size} bytes is over imap.max_size ({}); not downloaded, moved to folder {}",
            self.config.max_size, self.config.quarantine_folder
        );
        match self
            .pipeline
            .set_aside(
                submission,
                self.parse_options(),
                Stream::Quarantine,
                "oversize",
                reason,
            )
            .await
        {
            Ok(stored) => {
                emit(Mails {
                    outcome: "oversize",
                    count: 1,
                });
                tracing::warn!(mailbox = %self.label, uid, size, limit = %self.config.max_size, "mail over the size limit recorded in quarantine by its headers");
                Ok(stored.already_stored)
            }
            Err(PipelineError::Parse(e)) => {
                tracing::warn!(mailbox = %self.label, uid, error = %e, "oversized mail without readable headers moved to the quarantine folder");
                Ok(false)
            }
            Err(e) => Err(ImapError::Store(e)),
        }
    }

    /// Mail is parsed as mail (never as a form), its original kept only
    /// when the account says so.
    fn parse_options(&self) -> ParseOptions<'_> {
        ParseOptions {
            form: None,
            keep_raw: self.config.keep_raw,
        }
    }

    fn source(&self, uidvalidity: u32, uid: u32) -> Source {
        Source::Imap {
            account: self.config.account().to_string(),
            mailbox: self.mailbox.clone(),
            uidvalidity,
            uid,
        }
    }

    /// (account, mailbox, UIDVALIDITY, UID, Message-ID): the same mail read
    /// again gets the same key; the Message-ID (hashed, to bound the key)
    /// guards against a server that reuses UIDs without changing
    /// UIDVALIDITY.
    pub(super) fn idempotency_key(&self, uidvalidity: u32, uid: u32, raw: &[u8]) -> String {
        let message_id = fetch::message_id(raw).unwrap_or_default();
        let digest = sha2::Sha256::digest(message_id.as_bytes());
        let short: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        format!("imap:{}:{uidvalidity}:{uid}:{short}", self.label)
    }
}

/// Which server folder a stored mail goes to: refused mail (virus, policy)
/// and mail routed to `quarantine` to the quarantine folder, the rest
/// (desk, suppressed, held) to the processed one.
pub(super) fn destination(stored: &Stored) -> Dest {
    let refused = matches!(
        stored.answer,
        Answer::Refused(Refusal::Infected { .. } | Refusal::Policy)
    );
    if refused || stored.stream == Stream::Quarantine {
        Dest::Quarantine
    } else {
        Dest::Processed
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn stored(stream: Stream, answer: Answer) -> Stored {
        Stored {
            id: crate::submission::ReceiptId::new(),
            stream,
            entry_id: "1-0".into(),
            already_stored: false,
            answer,
            kept: crate::pipeline::Kept::Whole,
        }
    }

    #[test]
    fn refused_and_quarantined_mail_goes_to_the_quarantine_folder() {
        let infected = Answer::Refused(Refusal::Infected {
            signatures: vec!["Test".into()],
        });
        assert_eq!(
            destination(&stored(Stream::Quarantine, infected)),
            Dest::Quarantine
        );
        assert_eq!(
            destination(&stored(Stream::Quarantine, Answer::Accepted)),
            Dest::Quarantine,
            "a rule's quarantine"
        );
        assert_eq!(
            destination(&stored(
                Stream::Suppressed,
                Answer::Refused(Refusal::Policy)
            )),
            Dest::Quarantine,
            "a blocklisted sender"
        );
        let limited = Answer::Refused(Refusal::RateLimited {
            retry_after: Duration::from_secs(60),
            policy: None,
        });
        assert_eq!(
            destination(&stored(Stream::Suppressed, limited)),
            Dest::Processed,
            "a throttled mail is recorded in suppressed; nobody to tell, nothing to keep apart"
        );
        assert_eq!(
            destination(&stored(Stream::Desk, Answer::Accepted)),
            Dest::Processed
        );
        assert_eq!(
            destination(&stored(Stream::Held, Answer::Accepted)),
            Dest::Processed
        );
    }
}
