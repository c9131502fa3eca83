//! Replies, and the one place that turns what happened to a message into
//! the reply each recipient gets. It mirrors `intake mailgate`'s exit codes
//! (src/cli/mailgate/): what mailgate exits 75 for is a 4xx here (the mail
//! server keeps the mail and retries), 65 and 77 are 5xx (it bounces).
//! Internal error text never reaches the client; it is logged here.

use std::fmt::Write as _;

use crate::parse::ParseError;
use crate::pipeline::{PipelineError, Stored};
use crate::route::{Answer, Refusal};
use crate::telemetry::error_chain;

/// One reply: a code, an RFC 3463 enhanced status and text, possibly on
/// several lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// The enhanced status code, e.g. `4.3.0`; empty for the greeting and
    /// LHLO, which carry none (RFC 2034).
    pub status: &'static str,
    pub lines: Vec<String>,
}

impl Reply {
    pub fn new(code: u16, status: &'static str, text: impl Into<String>) -> Reply {
        Reply {
            code,
            status,
            lines: vec![text.into()],
        }
    }

    /// A reply of several lines without enhanced status codes (LHLO).
    pub fn multiline(code: u16, lines: Vec<String>) -> Reply {
        Reply {
            code,
            status: "",
            lines,
        }
    }

    /// The wire form: `250-first\r\n250 last\r\n`.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let last = self.lines.len().saturating_sub(1);
        for (i, line) in self.lines.iter().enumerate() {
            let sep = if i == last { ' ' } else { '-' };
            let _ = match self.status {
                "" => write!(out, "{}{sep}{line}\r\n", self.code),
                status => write!(out, "{}{sep}{status} {line}\r\n", self.code),
            };
        }
        out
    }
}

/// What a message's recipients are told, and the label for the metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub code: u16,
    pub status: &'static str,
    pub text: String,
    /// `stored`, `deferred` or `rejected`.
    pub outcome: &'static str,
}

impl Verdict {
    /// The reply for one recipient.
    pub fn for_recipient(&self, recipient: &str) -> Reply {
        Reply::new(
            self.code,
            self.status,
            format!("<{recipient}> {}", self.text),
        )
    }

    /// A message over `lmtp.max_size`, known after its data was read.
    pub fn too_big(limit: u64) -> Verdict {
        Verdict {
            code: 552,
            status: "5.3.4",
            text: format!("message too big (limit {limit} bytes)"),
            outcome: "rejected",
        }
    }
}

/// The verdict on a message the pipeline has run. A 250 only when the
/// item is stored; anything a retry could fix is 451; only a verdict that
/// will not change is 5xx.
pub fn verdict(result: &Result<Stored, PipelineError>) -> Verdict {
    let (code, status, text, outcome) = match result {
        Ok(stored) => match &stored.answer {
            Answer::Accepted => (250, "2.0.0", format!("stored as {}", stored.id), "stored"),
            // Stored for the operator's audit, but the sender must hear
            // it: like mailgate's 429 (75), try again later.
            Answer::Refused(Refusal::RateLimited { retry_after, .. }) => (
                451,
                "4.7.1",
                format!(
                    "too many messages from this sender; retry in {} s",
                    retry_after.as_secs().max(1)
                ),
                "deferred",
            ),
            Answer::Refused(Refusal::Infected { signatures }) => (
                554,
                "5.7.1",
                format!(
                    "refused by policy: an attachment carries a virus ({})",
                    signatures.join(", ")
                ),
                "rejected",
            ),
            Answer::Refused(Refusal::Policy) => {
                (550, "5.7.1", "refused by policy".to_owned(), "rejected")
            }
        },
        Err(PipelineError::Parse(ParseError::Empty)) => {
            (554, "5.6.0", "the message is empty".to_owned(), "rejected")
        }
        Err(cause) => {
            // The client hears only "retry later"; the operator reads why.
            tracing::warn!(error = %error_chain(cause), "LMTP message not stored, client told to retry");
            (
                451,
                "4.3.0",
                "cannot be stored right now; try again later".to_owned(),
                "deferred",
            )
        }
    };
    Verdict {
        code,
        status,
        text,
        outcome,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::Stream;
    use crate::sink::SinkError;
    use crate::submission::ReceiptId;
    use std::time::Duration;

    fn stored(answer: Answer) -> Result<Stored, PipelineError> {
        Ok(Stored {
            id: ReceiptId::new(),
            stream: Stream::Desk,
            entry_id: "1-0".into(),
            already_stored: false,
            answer,
            kept: crate::pipeline::Kept::Whole,
        })
    }

    #[test]
    fn encodes_single_and_multiline_replies() {
        assert_eq!(Reply::new(250, "2.0.0", "ok").encode(), "250 2.0.0 ok\r\n");
        assert_eq!(
            Reply::multiline(250, vec!["host".into(), "SIZE 10".into()]).encode(),
            "250-host\r\n250 SIZE 10\r\n"
        );
    }

    #[test]
    fn only_a_stored_item_gets_250() {
        let ok = verdict(&stored(Answer::Accepted));
        assert_eq!((ok.code, ok.status, ok.outcome), (250, "2.0.0", "stored"));
        let down = verdict(&Err(PipelineError::Sink(SinkError::Timeout(
            Duration::from_secs(1),
        ))));
        assert_eq!((down.code, down.status), (451, "4.3.0"));
        assert!(!down.text.contains("Redis") && !down.text.contains("timed"));
        let busy = verdict(&Err(PipelineError::Busy("desk over its mark".into())));
        assert_eq!(busy.code, 451);
    }

    #[test]
    fn refusals_mirror_mailgate() {
        let virus = verdict(&stored(Answer::Refused(Refusal::Infected {
            signatures: vec!["Eicar-Test-Signature".into()],
        })));
        assert_eq!((virus.code, virus.status), (554, "5.7.1"));
        let policy = verdict(&stored(Answer::Refused(Refusal::Policy)));
        assert_eq!((policy.code, policy.status), (550, "5.7.1"));
        let limited = verdict(&stored(Answer::Refused(Refusal::RateLimited {
            retry_after: Duration::from_secs(90),
            policy: None,
        })));
        assert_eq!((limited.code, limited.status), (451, "4.7.1"));
        let empty = verdict(&Err(PipelineError::Parse(ParseError::Empty)));
        assert_eq!(empty.code, 554);
        assert_eq!(
            Verdict::too_big(10).for_recipient("a@b").encode(),
            "552 5.3.4 <a@b> message too big (limit 10 bytes)\r\n"
        );
    }
}
