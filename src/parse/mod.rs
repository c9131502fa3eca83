//! Stage 1, parse: a [`Submission`] becomes a [`Message`]: the envelope the
//! desk will read, plus the bytes the scanner must see.
//!
//! Parsing never panics and never drops what it could not read: a message
//! mail-parser cannot make sense of is still stored with its `raw` bytes,
//! and what could be read (headers, text) is filled in.

mod bodies;
mod charset;
pub mod filename;
mod form;

pub use form::FormFields;
pub mod limits;
mod mail;
mod params;
pub mod redact;
pub mod reply;
mod words;

use bytes::Bytes;

use crate::envelope::{AbuseReport, Customer, Envelope, ScanReport, ENVELOPE_VERSION};
use crate::submission::{Payload, Submission};
use crate::verdict::BotCheck;

pub use mail::is_auto_submitted_header;

/// A parsed item on its way through guard, scan, route and sink.
#[derive(Debug, Clone)]
pub struct Message {
    pub envelope: Envelope,
    /// Everything the scanner must see: the raw message (so parts the parser
    /// did not surface are still scanned) and each decoded attachment or
    /// upload. Shared `Bytes`, not copies.
    pub scan_targets: Vec<ScanTarget>,
    /// The bot check a form post failed (decided by the HTTP source's
    /// `bots` module), for the guard to trap.
    pub trap: Option<BotCheck>,
    /// The mail's MIME measurements, checked against `[mime]` limits.
    pub mime: limits::MimeStats,
    /// The source's idempotency key (IMAP), so the guard can tell a
    /// re-read of this very item from a duplicate of it.
    pub idempotency_key: Option<String>,
}

/// One blob for the virus scanner, with a name for its report.
#[derive(Debug, Clone)]
pub struct ScanTarget {
    pub name: String,
    pub data: Bytes,
    /// The whole raw message (not one part of it): a held item keeps it
    /// so that the re-scan sees everything the first scan would have.
    pub whole_message: bool,
}

/// Per-source knowledge the parser needs.
#[derive(Debug, Clone, Copy)]
pub struct ParseOptions<'a> {
    /// Which fields of a form post hold what, for form posts.
    pub form: Option<&'a FormFields>,
    /// Keep the raw message (base64) in the envelope.
    pub keep_raw: bool,
}

/// Why an item could not become an envelope at all. Most malformed input
/// does not land here: it is stored with what could be read.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("the message is empty")]
    Empty,
    #[error("a form post reached the parser without its form declaration")]
    FormNotDeclared,
}

/// Parses a submission into a message. The entry point of this stage.
pub fn parse(submission: Submission, options: ParseOptions<'_>) -> Result<Message, ParseError> {
    let Submission {
        id,
        received_at,
        source,
        payload,
        idempotency_key,
        refusal_judged_again: _,
        idempotency_checked: _,
    } = submission;
    let mut envelope = Envelope {
        version: ENVELOPE_VERSION,
        id,
        received_at,
        channel: crate::envelope::Channel::Email,
        source,
        customer: Customer::default(),
        from: None,
        to: Vec::new(),
        cc: Vec::new(),
        reply_to: Vec::new(),
        subject: None,
        date: None,
        message_id: None,
        in_reply_to: Vec::new(),
        references: Vec::new(),
        headers: Vec::new(),
        text: None,
        html: None,
        stripped_text: None,
        stripped_signature: None,
        fields: Default::default(),
        attachments: Vec::new(),
        scan: ScanReport::unscanned(),
        auth: None,
        abuse: AbuseReport::default(),
        raw: None,
    };
    let idempotency_key = idempotency_key.map(|k| k.key);
    let mut trap = None;
    let mut mime = limits::MimeStats::default();
    let scan_targets = match payload {
        Payload::Mail(raw) => {
            if raw.iter().all(u8::is_ascii_whitespace) {
                return Err(ParseError::Empty);
            }
            mail::fill(&mut envelope, &raw, options.keep_raw, &mut mime)
        }
        Payload::Form(post) => {
            let form = options.form.ok_or(ParseError::FormNotDeclared)?;
            trap = post.bot_check;
            form::fill(&mut envelope, post, form)
        }
    };
    Ok(Message {
        envelope,
        scan_targets,
        trap,
        mime,
        idempotency_key,
    })
}

/// Lower-case hex SHA-256, as the envelope's `sha256` fields carry it.
fn sha256_hex(data: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(64);
    for byte in Sha256::digest(data) {
        out.push(HEX[usize::from(byte >> 4)] as char);
        out.push(HEX[usize::from(byte & 0xf)] as char);
    }
    out
}
