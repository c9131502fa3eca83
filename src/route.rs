//! Stage 4, route: the guard's and the scanner's verdicts decide which
//! stream an item goes to, and what the source tells its client. Nothing is
//! dropped: refused items go to their own stream with the reason.

use std::fmt;
use std::time::Duration;

use crate::envelope::Channel;
use crate::envelope::ScanStatus;
use crate::parse::Message;
use crate::submission::ReceiptId;
use crate::verdict::{GuardVerdict, RatePolicy, ScanVerdict};

/// The streams (deploy/README.md, "Streams"), without their prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    Desk,
    Quarantine,
    Suppressed,
    Held,
    Events,
}

impl Stream {
    pub fn name(self) -> &'static str {
        match self {
            Stream::Desk => "desk",
            Stream::Quarantine => "quarantine",
            Stream::Suppressed => "suppressed",
            Stream::Held => "held",
            Stream::Events => "events",
        }
    }
}

impl fmt::Display for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where an item goes and what its sender hears.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub stream: Stream,
    /// The entry's `kind` field.
    pub kind: &'static str,
    /// Why it did not go to the desk.
    pub reason: Option<String>,
    /// For collapsed items: the desk item it was folded into.
    pub duplicate_of: Option<ReceiptId>,
    pub answer: Answer,
}

/// What the source tells its client once the item is stored.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// Stored; the client gets its receipt.
    Accepted,
    /// Stored for audit, but refused: the client is told why.
    Refused(Refusal),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// Too many items from this sender; come back later.
    RateLimited {
        retry_after: Duration,
        policy: Option<RatePolicy>,
    },
    /// Carries a virus.
    Infected { signatures: Vec<String> },
    /// Refused by policy (a blocklist).
    Policy,
}

/// Decides the route and records both verdicts in the envelope. Entry
/// point of this stage.
pub fn route(message: &mut Message, guard: GuardVerdict, scan: ScanVerdict) -> Route {
    let envelope = &mut message.envelope;
    match scan {
        ScanVerdict::Clean { engine } => {
            envelope.scan.status = ScanStatus::Clean;
            envelope.scan.engine = Some(engine);
        }
        ScanVerdict::Infected { engine, signatures } => {
            envelope.scan.status = ScanStatus::Infected;
            envelope.scan.engine = Some(engine);
            envelope.scan.signatures = signatures.clone();
            // A virus outranks every rule: it never reaches the desk.
            return Route {
                stream: Stream::Quarantine,
                kind: "infected",
                reason: Some(format!("virus found: {}", signatures.join(", "))),
                duplicate_of: None,
                answer: Answer::Refused(Refusal::Infected { signatures }),
            };
        }
        ScanVerdict::Unscanned { .. } => envelope.scan.status = ScanStatus::Unscanned,
        ScanVerdict::Unscannable { engine, reason } => {
            envelope.scan.status = ScanStatus::Unscanned;
            envelope.scan.engine = Some(engine);
            // Not known to be clean: kept for an operator, whatever the
            // rules said; the sender's item is stored, so accepted.
            return Route {
                stream: Stream::Quarantine,
                kind: "unscannable",
                reason: Some(reason),
                duplicate_of: None,
                answer: Answer::Accepted,
            };
        }
        ScanVerdict::PassedUnscanned {
            engine,
            reason: _,
            tag,
        } => {
            envelope.scan.status = ScanStatus::Unscanned;
            envelope.scan.engine = Some(engine);
            envelope.abuse.tags.push(tag);
        }
    }
    match guard {
        GuardVerdict::Pass => desk(),
        GuardVerdict::Tag { tags } => {
            envelope.abuse.tags.extend(tags);
            desk()
        }
        GuardVerdict::Collapse { into, rule } => collapsed(into, &rule),
        GuardVerdict::Quarantine { reason } => Route {
            stream: Stream::Quarantine,
            kind: "quarantined",
            reason: Some(reason),
            duplicate_of: None,
            // Kept for an operator, who may release it: the sender is not
            // told to resend.
            answer: Answer::Accepted,
        },
        // Mail is never refused by a rule: a refusal makes the mail server
        // retry (a copy per retry) or bounce to a possibly forged sender.
        // It is kept in `suppressed` and acknowledged; forms hear 429.
        GuardVerdict::Reject {
            reason,
            retry_after,
            policy,
        } => Route {
            stream: Stream::Suppressed,
            kind: "rejected",
            reason: Some(reason),
            duplicate_of: None,
            answer: match envelope.channel {
                Channel::Form => Answer::Refused(Refusal::RateLimited {
                    retry_after,
                    policy,
                }),
                Channel::Email => Answer::Accepted,
            },
        },
        GuardVerdict::Block { reason } => Route {
            stream: Stream::Suppressed,
            kind: "blocked",
            reason: Some(reason),
            duplicate_of: None,
            answer: match envelope.channel {
                Channel::Form => Answer::Refused(Refusal::Policy),
                Channel::Email => Answer::Accepted,
            },
        },
        // Bots get the answer of a success and learn nothing.
        GuardVerdict::Trap { reason } => Route {
            stream: Stream::Suppressed,
            kind: "trapped",
            reason: Some(reason),
            duplicate_of: None,
            answer: Answer::Accepted,
        },
    }
}

/// The route of an item folded into the earlier desk item `into`: kept in
/// `suppressed`, counted in `events`, accepted.
pub fn collapsed(into: ReceiptId, rule: &str) -> Route {
    Route {
        stream: Stream::Suppressed,
        kind: "collapsed",
        reason: Some(format!("collapsed by rule {rule}")),
        duplicate_of: Some(into),
        answer: Answer::Accepted,
    }
}

/// The route of a mail beyond a `[mime]` limit that the rules let through:
/// quarantined for an operator (kind `mime-limit`), not scanned, and
/// answered as accepted so a mail server does not retry it.
pub fn beyond_mime_limits(reason: String) -> Route {
    Route {
        stream: Stream::Quarantine,
        kind: "mime-limit",
        reason: Some(reason),
        duplicate_of: None,
        answer: Answer::Accepted,
    }
}

fn desk() -> Route {
    Route {
        stream: Stream::Desk,
        kind: "message",
        reason: None,
        duplicate_of: None,
        answer: Answer::Accepted,
    }
}

/// The route of an item the scanner could not decide on: held, to be
/// re-scanned when the scanner answers again. The client's item is stored,
/// so it is accepted.
pub fn held(why: &dyn fmt::Display) -> Route {
    Route {
        stream: Stream::Held,
        kind: "held",
        reason: Some(format!("waiting for the virus scanner: {why}")),
        duplicate_of: None,
        answer: Answer::Accepted,
    }
}
