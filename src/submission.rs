//! What a source hands to the pipeline: the bytes it accepted, where they came
//! from, and the receipt id the source will give back once they are stored.
//!
//! A source acknowledges (HTTP 202, IMAP flag, mailgate exit 0) only after
//! [`crate::pipeline::Pipeline::process`] returned `Ok`: that is the ack
//! discipline the top-level README.md states, kept in one place.

use std::collections::BTreeMap;

use bytes::Bytes;
use time::OffsetDateTime;

pub use crate::envelope::ReceiptId;
use crate::envelope::{FieldValue, Source};
use crate::verdict::BotCheck;

/// One item a source has taken in and not yet acknowledged.
#[derive(Debug, Clone)]
pub struct Submission {
    pub id: ReceiptId,
    pub received_at: OffsetDateTime,
    /// Where it came in; becomes the envelope's `source`.
    pub source: Source,
    pub payload: Payload,
    /// Set by sources that may hand in the same item twice (IMAP re-reads
    /// after a crash, a client's retry): the item is then stored at most
    /// once, and the retry gets the first receipt.
    pub idempotency_key: Option<IdempotencyKey>,
    /// Set by sources that tell their client about a refusal (HTTP 422,
    /// 429): a refused item is not acknowledged and its client may send it
    /// again, so the retry is judged afresh instead of being answered as
    /// accepted. The refusal is remembered under its own key (see
    /// [`refused_key`]): a retry refused again is not audited twice, and
    /// one accepted later still reaches the desk. IMAP leaves it unset: a
    /// quarantined mail re-read after a crash must still be stored once.
    pub refusal_judged_again: bool,
    /// The source has just asked [`crate::pipeline::Pipeline::recognise`]
    /// about the key and it was not stored: the pipeline does not ask
    /// again.
    pub idempotency_checked: bool,
}

impl Submission {
    pub fn new(source: Source, payload: Payload) -> Self {
        Submission {
            id: ReceiptId::new(),
            received_at: OffsetDateTime::now_utc(),
            source,
            payload,
            idempotency_key: None,
            refusal_judged_again: false,
            idempotency_checked: false,
        }
    }
}

/// What makes a second hand-in of the same item find its first receipt
/// instead of becoming a second item: a key the retry repeats, and what
/// the key stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    /// The key, scoped to its source and endpoint (`http:form:contact:...`,
    /// `imap:...`), so two sources never share one.
    pub key: String,
    /// A digest of the payload the key was given with, for keys a client
    /// chose: the same key with another payload is refused, never answered
    /// with the first item's receipt. `None` for keys that name their
    /// payload by themselves (derived from its bytes, or an IMAP message's
    /// account, UIDVALIDITY, UID and Message-ID).
    pub digest: Option<String>,
    /// How long the key is remembered; `None` for the sink's default (long
    /// enough for any restart or mail-server retry). Keys derived from a
    /// form post hold only for the form's retry window.
    pub ttl: Option<std::time::Duration>,
    /// The key names a mail, not one delivery of it: a hand-in that finds
    /// it stored is a copy of that mail for more recipients (a mail server
    /// that delivers one transaction per recipient), and the pipeline adds
    /// the copy's recipients to the first item (see [`IdempotencyKey::of_delivery`]).
    pub folds_copies: bool,
}

/// How long the copies of one mail fold into its first item: longer than
/// any mail server keeps a mail queued (Postfix 5 days, Exim and OpenSMTPD
/// 4 to 7), so every per-recipient delivery and every retry of one lands
/// inside it.
pub const COPY_WINDOW: std::time::Duration = std::time::Duration::from_secs(8 * 24 * 3600);

impl IdempotencyKey {
    /// A key that names its payload by itself.
    pub fn named(key: impl Into<String>) -> Self {
        IdempotencyKey {
            key: key.into(),
            digest: None,
            ttl: None,
            folds_copies: false,
        }
    }

    /// The key of a mail handed in by a mail server through `source`
    /// (`mailgate`, `lmtp`).
    ///
    /// A mail with a Message-ID is keyed by what makes it this mail: its
    /// envelope sender, its Message-ID and its body, not its header block,
    /// which each delivery adds to (`Delivered-To`, `Received: ... for`).
    /// A server that splits one mail into a transaction per recipient
    /// (OpenSMTPD always, Exim after a 451, Postfix with a recipient limit
    /// of 1) then hands in copies of one item: each gets the first receipt
    /// and adds its recipients to it ([`IdempotencyKey::folds_copies`]),
    /// whatever the rules say, since this is one mail, not a flood. A
    /// retried transaction is such a copy too. The key is shared by both
    /// sources: a mail that reaches the gateway through LMTP and mailgate
    /// is still one item.
    ///
    /// Without a Message-ID nothing says two deliveries are one mail: the
    /// key is the transaction's (sender, recipients and bytes), so only a
    /// retry of that transaction finds the first receipt.
    pub fn of_delivery(
        source: &str,
        sender: Option<&str>,
        recipients: &[String],
        raw: &[u8],
    ) -> Self {
        use sha2::{Digest, Sha256};
        let mut hasher = Sha256::new();
        hasher.update(sender.unwrap_or("").as_bytes());
        if let Some((message_id, body)) = mail_identity(raw) {
            // The separators cannot occur in an address or a Message-ID,
            // so no part can be shifted into the next.
            hasher.update(b"\0");
            hasher.update(message_id.as_bytes());
            hasher.update(b"\0\0");
            hasher.update(body);
            return IdempotencyKey {
                key: format!("mail-copy:{:x}", hasher.finalize()),
                digest: None,
                ttl: Some(COPY_WINDOW),
                folds_copies: true,
            };
        }
        for recipient in recipients {
            hasher.update(b"\0");
            hasher.update(recipient.as_bytes());
        }
        hasher.update(b"\0\0");
        hasher.update(raw);
        IdempotencyKey::named(format!("{source}:{:x}", hasher.finalize()))
    }
}

/// A mail's Message-ID (without its angle brackets) and its body (the bytes
/// after the header block), read without parsing the mail; `None` without
/// a usable Message-ID.
fn mail_identity(raw: &[u8]) -> Option<(String, &[u8])> {
    let (head, body) = split_header_block(raw);
    let mut lines = head.split(|&b| b == b'\n').peekable();
    while let Some(line) = lines.next() {
        let Some(value) = strip_name(line, b"message-id:") else {
            continue;
        };
        // A folded value continues on the lines that start with space.
        let mut value = value.to_vec();
        while let Some(next) = lines.next_if(|l| l.starts_with(b" ") || l.starts_with(b"\t")) {
            value.extend_from_slice(next);
        }
        let value = String::from_utf8_lossy(&value);
        let id = value
            .trim()
            .trim_start_matches('<')
            .split('>')
            .next()?
            .trim();
        return id.contains('@').then(|| (id.to_string(), body));
    }
    None
}

/// The header block and the body of a raw mail, split at the first empty
/// line (CRLF or LF); a mail without one is all header.
fn split_header_block(raw: &[u8]) -> (&[u8], &[u8]) {
    let mut start = 0;
    for line in raw.split_inclusive(|&b| b == b'\n') {
        if line == b"\r\n" || line == b"\n" {
            return (&raw[..start], &raw[start + line.len()..]);
        }
        start += line.len();
    }
    (raw, &[])
}

/// The value of a header line named `name` (lower case, colon included).
fn strip_name<'a>(line: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let head = line.get(..name.len())?;
    head.eq_ignore_ascii_case(name).then(|| &line[name.len()..])
}

/// The idempotency key a refusal of an item keyed `key` is written under.
/// Apart from the item's own key, which the pipeline looks up before
/// judging: a retried refusal is judged again, not answered from it.
pub fn refused_key(key: &str) -> String {
    format!("refused:{key}")
}

/// The accepted bytes, in the form the source could give them.
#[derive(Debug, Clone)]
pub enum Payload {
    /// A raw RFC 5322 message, exactly as received.
    Mail(Bytes),
    /// A web-form post, already decoded from its wire format.
    Form(FormPost),
}

/// A decoded form post: every field as posted (reserved `_` fields
/// included; the parse stage takes those out) and the uploaded files.
#[derive(Debug, Clone, Default)]
pub struct FormPost {
    pub fields: BTreeMap<String, FieldValue>,
    pub files: Vec<Upload>,
    /// Why the form's bot checks took this post for a bot (decided by
    /// the HTTP source's `bots` module); the guard traps it.
    pub bot_check: Option<BotCheck>,
}

impl FormPost {
    /// Adds a field, keeping earlier values posted under the same name.
    pub fn add_field(&mut self, name: String, value: String) {
        match self.fields.get_mut(&name) {
            Some(existing) => existing.push(value),
            None => {
                self.fields.insert(name, FieldValue::One(value));
            }
        }
    }

    /// Whether any value posted under `name` is not blank, or a file was
    /// uploaded under it: a honeypot is filled by `_gotcha=&_gotcha=x` too.
    pub fn filled(&self, name: &str) -> bool {
        let values: &[String] = match self.fields.get(name) {
            Some(FieldValue::One(v)) => std::slice::from_ref(v),
            Some(FieldValue::Many(vs)) => vs,
            None => &[],
        };
        values.iter().any(|v| !v.trim().is_empty()) || self.files.iter().any(|f| f.field == name)
    }

    /// The first value of a field, if posted and not blank.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .get(name)
            .and_then(FieldValue::first)
            .map(str::trim)
            .filter(|v| !v.is_empty())
    }
}

/// One uploaded file of a multipart form post.
#[derive(Debug, Clone)]
pub struct Upload {
    /// The form field it was posted under.
    pub field: String,
    pub filename: Option<String>,
    pub content_type: String,
    pub data: Bytes,
}

#[cfg(test)]
mod tests {
    use super::IdempotencyKey;

    fn key(recipient: &str, raw: &str) -> IdempotencyKey {
        IdempotencyKey::of_delivery(
            "lmtp",
            Some("ana@x.example"),
            &[recipient.into()],
            raw.as_bytes(),
        )
    }

    #[test]
    fn copies_of_a_mail_share_a_key_whatever_their_delivery_headers() {
        let mail = "Message-ID:\r\n <a1@x.example>\r\nSubject: hola\r\n\r\ncuerpo\r\n";
        let one = key(
            "a@shop.test",
            &format!("Delivered-To: a@shop.test\r\n{mail}"),
        );
        let two = key(
            "b@shop.test",
            &format!("Delivered-To: b@shop.test\r\n{mail}"),
        );
        assert_eq!(one, two);
        assert!(one.folds_copies);
        assert!(one.key.starts_with("mail-copy:"));
        let other_body = key("a@shop.test", &mail.replace("cuerpo", "otro"));
        assert_ne!(one.key, other_body.key);
        let other_sender =
            IdempotencyKey::of_delivery("lmtp", Some("eve@x.example"), &[], mail.as_bytes());
        assert_ne!(one.key, other_sender.key);
    }

    #[test]
    fn without_a_message_id_the_transaction_is_the_key() {
        let mail = "Subject: hola\n\ncuerpo\n";
        let one = key("a@shop.test", mail);
        let two = key("b@shop.test", mail);
        assert_ne!(one.key, two.key);
        assert!(!one.folds_copies);
        assert!(one.key.starts_with("lmtp:"));
        // A Message-ID in the body is not the mail's.
        let in_body = key("a@shop.test", "Subject: x\n\nMessage-ID: <b@x.example>\n");
        assert!(!in_body.folds_copies);
    }
}
