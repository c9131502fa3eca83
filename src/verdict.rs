//! What a stage decided about an item, and why. A throttled sender or a
//! virus is a verdict, not an error: errors mean a stage could not decide.

use std::time::Duration;

use crate::envelope::ReceiptId;

/// The guard's decision (rate limits, dedupe, loops, allow/block lists).
#[derive(Debug, Clone, PartialEq)]
pub enum GuardVerdict {
    /// Goes on to the desk.
    Pass,
    /// Goes on to the desk, tagged.
    Tag { tags: Vec<String> },
    /// Folded into an earlier item of the same customer; recorded in
    /// `suppressed` and counted in `events`.
    Collapse { into: ReceiptId, rule: String },
    /// Kept aside for an operator.
    Quarantine { reason: String },
    /// Refused: a form poster is told to come back later; mail is kept in
    /// `suppressed` for audit.
    Reject {
        reason: String,
        retry_after: Duration,
        /// The quota that was exceeded, for the `RateLimit-Policy` header.
        policy: Option<RatePolicy>,
    },
    /// On a block list: forms are refused (403); mail is kept in
    /// `suppressed` (refusing it would make the mail server bounce to a
    /// sender address that may be forged).
    Block { reason: String },
    /// A bot trap fired (filled honeypot): answered like a success so the
    /// bot learns nothing, kept in `suppressed`.
    Trap { reason: String },
}

/// A rule's quota as the IETF RateLimit header fields describe it:
/// `quota` items per `window`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RatePolicy {
    pub name: String,
    pub quota: u32,
    pub window: Duration,
}

/// The scanner's decision about the whole item.
#[derive(Debug, Clone, PartialEq)]
pub enum ScanVerdict {
    Clean {
        engine: String,
    },
    Infected {
        engine: String,
        signatures: Vec<String>,
    },
    /// Not scanned, and why (scanning switched off, or stopped before the
    /// scan).
    Unscanned {
        reason: String,
    },
    /// A part was too large for the scanner, and the `quarantine` policy
    /// keeps such items for an operator.
    Unscannable {
        engine: String,
        reason: String,
    },
    /// A part was too large for the scanner, and the `pass-with-tag`
    /// policy lets the item through with this tag; everything else in it
    /// was scanned clean.
    PassedUnscanned {
        engine: String,
        reason: String,
        tag: String,
    },
}

/// Which of a form's bot checks took a post for a bot (decided by the HTTP
/// source's `bots` module, trapped by the guard); its label is the `check`
/// label of `intake_form_bot_checks_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BotCheck {
    Honeypot,
    TokenMissing,
    TokenInvalid,
    TokenTooFresh,
    TokenExpired,
    TokenReplayed,
    TooManyLinks,
}

impl BotCheck {
    pub fn label(self) -> &'static str {
        match self {
            BotCheck::Honeypot => "honeypot",
            BotCheck::TokenMissing => "token_missing",
            BotCheck::TokenInvalid => "token_invalid",
            BotCheck::TokenTooFresh => "token_too_fresh",
            BotCheck::TokenExpired => "token_expired",
            BotCheck::TokenReplayed => "token_replayed",
            BotCheck::TooManyLinks => "too_many_links",
        }
    }
}
