//! Envelope v1: the JSON document every stream entry carries, and the one
//! contract the desk integrates against. Field names follow the inbound-parse
//! services desk integrators already know (Postmark, Mailgun, CloudMailin).
//!
//! `src/envelope-v1.schema.json` is the same contract as a JSON Schema; a test
//! validates real output against it, so change both together.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use ulid::Ulid;

/// The receipt id of one accepted item (a ULID: sortable by arrival time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReceiptId(Ulid);

impl ReceiptId {
    pub fn new() -> Self {
        ReceiptId(Ulid::new())
    }
}

impl Default for ReceiptId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for ReceiptId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for ReceiptId {
    type Err = ulid::DecodeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ulid::from_string(s).map(ReceiptId)
    }
}

impl Serialize for ReceiptId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ReceiptId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The envelope format version; bumped only for incompatible changes.
pub const ENVELOPE_VERSION: u8 = 1;

/// One customer message, as the desk receives it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Envelope {
    /// Always [`ENVELOPE_VERSION`].
    pub version: u8,
    /// The receipt id (a ULID) the customer or mail server was given.
    pub id: ReceiptId,
    /// When the gateway accepted the item.
    #[serde(with = "time::serde::rfc3339")]
    pub received_at: OffsetDateTime,
    pub channel: Channel,
    /// Where the item came in.
    pub source: Source,
    /// Who the desk should answer.
    pub customer: Customer,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Address>,
    #[serde(default)]
    pub to: Vec<Address>,
    #[serde(default)]
    pub cc: Vec<Address>,
    #[serde(default)]
    pub reply_to: Vec<Address>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The message's own `Date:` (RFC 3339), when it had a readable one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub date: Option<String>,
    /// Message-ID without angle brackets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    #[serde(default)]
    pub in_reply_to: Vec<String>,
    #[serde(default)]
    pub references: Vec<String>,
    /// Every header, in order, values decoded (RFC 2047) and unfolded.
    #[serde(default)]
    pub headers: Vec<Header>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub html: Option<String>,
    /// The new part of a reply: quoted history and signature removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stripped_text: Option<String>,
    /// The customer's signature or their client's sign-off (`-- ` block,
    /// `Enviado desde mi iPhone`), moved out of `stripped_text`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stripped_signature: Option<String>,
    /// Form fields as posted, reserved `_` fields removed. Empty for mail.
    #[serde(default)]
    pub fields: BTreeMap<String, FieldValue>,
    #[serde(default)]
    pub attachments: Vec<Attachment>,
    pub scan: ScanReport,
    /// Who really sent a mail: the DKIM, SPF, DMARC and ARC verdicts.
    /// Absent for forms, and for mail when `[auth]` is not configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<Auth>,
    pub abuse: AbuseReport,
    /// The original message, base64, so nothing the parser missed is lost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw: Option<Base64>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    Email,
    Form,
}

/// Where an item came in; `type` tells which door.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Source {
    /// Polled from an IMAP mailbox.
    Imap {
        account: String,
        mailbox: String,
        uidvalidity: u32,
        uid: u32,
    },
    /// Handed over by a mail server through `intake mailgate` (or any other
    /// client of `POST /v1/messages`).
    Mailgate {
        /// Envelope sender (`MAIL FROM`); empty for a bounce (`<>`); absent
        /// when the client did not say.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sender: Option<String>,
        #[serde(default)]
        recipients: Vec<String>,
        /// The address of the client that posted it.
        ip: String,
        /// The SMTP client the mail server took the mail from
        /// (`--client-address` / `--helo`), which SPF checks.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client: Option<SmtpClient>,
    },
    /// Delivered over LMTP (src/sources/lmtp).
    Lmtp {
        /// Envelope sender (`MAIL FROM`); empty for a bounce (`<>`).
        sender: String,
        /// The recipients `RCPT TO` accepted, in order.
        recipients: Vec<String>,
        /// The address of the mail server that delivered it.
        ip: String,
        /// The SMTP client the mail server took the mail from, as its
        /// `XFORWARD` said, which SPF checks; absent when it did not say.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client: Option<SmtpClient>,
    },
    /// A web-form post.
    Form {
        form: String,
        ip: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user_agent: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        origin: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        referer: Option<String>,
        /// The browser's `Accept-Language`, which picks the language of
        /// the acknowledgement.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        accept_language: Option<String>,
    },
}

/// The SMTP client a mail server took a mail from, as the server passed
/// it on (LMTP `XFORWARD`, mailgate's flags): the address and greeting SPF
/// checks, which the connection to the gateway does not show.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SmtpClient {
    /// The client's IP address (`203.0.113.7`, `2001:db8::7`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// The name it gave in HELO / EHLO.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub helo: Option<String>,
}

/// The person the desk answers.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Customer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The plus-address token of the recipient: `support+order-1234@` gives
    /// `order-1234`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mailbox_hash: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Address {
    pub email: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub value: String,
}

/// A form field: one value, or several when the name was posted repeatedly
/// (checkboxes, multi-selects).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum FieldValue {
    One(String),
    Many(Vec<String>),
}

impl FieldValue {
    /// The first value, which is what single-valued fields (email, name) use.
    pub fn first(&self) -> Option<&str> {
        match self {
            FieldValue::One(v) => Some(v),
            FieldValue::Many(vs) => vs.first().map(String::as_str),
        }
    }

    /// Adds another value posted under the same name.
    pub fn push(&mut self, value: String) {
        match self {
            FieldValue::One(first) => {
                *self = FieldValue::Many(vec![std::mem::take(first), value]);
            }
            FieldValue::Many(vs) => vs.push(value),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Attachment {
    /// A safe name to show and save under (src/parse/filename.rs): no
    /// control, bidi or invisible characters, no path parts or leading
    /// dot, at most 255 bytes with its extension kept, never empty.
    /// Omitted when the sender gave no name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
    /// The name exactly as sent (decoded), only when it differs from
    /// `filename`: what the sender saw, for an operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_filename: Option<String>,
    pub content_type: String,
    /// Decoded size in bytes.
    pub size: u64,
    /// Hex SHA-256 of the decoded content.
    pub sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_id: Option<String>,
    pub disposition: Disposition,
    pub content_base64: Base64,
}

/// Bytes that appear base64-encoded in the JSON. The envelope holds the
/// bytes themselves (shared with the raw message and the scanner's
/// targets, never copied) and encodes them only while the JSON is written,
/// so a large attachment is not held a second time as a base64 string.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Base64(pub bytes::Bytes);

impl Base64 {
    pub fn bytes(&self) -> &bytes::Bytes {
        &self.0
    }
}

impl std::fmt::Debug for Base64 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Base64({} bytes)", self.0.len())
    }
}

impl Serialize for Base64 {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // collect_str streams the Display into serde_json's output: no
        // intermediate String of the whole encoding.
        serializer.collect_str(&base64::display::Base64Display::new(
            &self.0,
            &base64::engine::general_purpose::STANDARD,
        ))
    }
}

impl<'de> Deserialize<'de> for Base64 {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use base64::Engine as _;
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map(|bytes| Base64(bytes.into()))
            .map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Disposition {
    Attachment,
    Inline,
}

/// What the virus scanner said about the whole item.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ScanReport {
    pub status: ScanStatus,
    /// Scanner name and version, when one ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<String>,
    #[serde(default)]
    pub signatures: Vec<String>,
}

impl ScanReport {
    pub fn unscanned() -> Self {
        ScanReport {
            status: ScanStatus::Unscanned,
            engine: None,
            signatures: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ScanStatus {
    Clean,
    Infected,
    Unscanned,
}

/// The sender-authentication verdicts of one mail (src/auth).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Auth {
    /// One per `DKIM-Signature`, in header order.
    #[serde(default)]
    pub dkim: Vec<DkimCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spf: Option<SpfCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dmarc: Option<DmarcCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arc: Option<ArcCheck>,
    /// Where the verdicts came from.
    pub from: AuthOrigin,
    /// The `authserv-id` of the trusted `Authentication-Results` header
    /// the verdicts were read from (`from` = `trusted-header`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authserv_id: Option<String>,
    /// The `From:` domain is authenticated: DMARC passed, or (without a
    /// DMARC record) a passing DKIM signature or SPF domain aligns with
    /// it, or a trusted ARC sealer vouched that DMARC passed before it
    /// forwarded the mail.
    pub aligned_from: bool,
    /// The domain that vouches for the mail: the `From:` domain when
    /// aligned, else the first passing DKIM domain, else the passing SPF
    /// domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authenticated_domain: Option<String>,
    /// The `From:` domain is one of the shop's own (`[auth] own_domains`):
    /// unauthenticated, that is phishing of the agents.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub own_domain: bool,
    /// Why a check did not run (`spf: no SMTP client address`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// Where the verdicts of [`Auth`] came from.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum AuthOrigin {
    /// Checked here, against DNS.
    #[default]
    Verified,
    /// Read from an `Authentication-Results` header of a trusted host.
    TrustedHeader,
}

/// The result of one check, as `Authentication-Results` (RFC 8601) names
/// them.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum AuthResult {
    Pass,
    Fail,
    Softfail,
    Neutral,
    /// Nothing to check (no signature, no record).
    None,
    /// A transient error (DNS down): the answer is not known.
    Temperror,
    /// A permanent error (a broken record or signature).
    Permerror,
    /// Skipped by local policy.
    Policy,
}

impl AuthResult {
    pub fn name(self) -> &'static str {
        match self {
            AuthResult::Pass => "pass",
            AuthResult::Fail => "fail",
            AuthResult::Softfail => "softfail",
            AuthResult::Neutral => "neutral",
            AuthResult::None => "none",
            AuthResult::Temperror => "temperror",
            AuthResult::Permerror => "permerror",
            AuthResult::Policy => "policy",
        }
    }

    /// Reads a result as headers write it (`pass`, `hardfail`, ...).
    pub fn parse(text: &str) -> Option<AuthResult> {
        Some(match text.to_ascii_lowercase().as_str() {
            "pass" => AuthResult::Pass,
            "fail" | "hardfail" => AuthResult::Fail,
            "softfail" => AuthResult::Softfail,
            "neutral" => AuthResult::Neutral,
            "none" => AuthResult::None,
            "temperror" => AuthResult::Temperror,
            "permerror" => AuthResult::Permerror,
            "policy" => AuthResult::Policy,
            _ => return None,
        })
    }
}

impl fmt::Display for AuthResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One DKIM signature's verdict.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DkimCheck {
    pub result: AuthResult,
    /// The signing domain (`d=`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// The key's selector (`s=`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
}

/// The SPF verdict for the SMTP client.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SpfCheck {
    pub result: AuthResult,
    /// The domain checked: the envelope sender's, or the HELO name's for
    /// a bounce.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub helo: Option<String>,
}

/// The DMARC verdict for the `From:` domain.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DmarcCheck {
    pub result: AuthResult,
    /// The `From:` domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// The policy the domain asks for failing mail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<DmarcPolicy>,
}

/// What a domain's DMARC record asks receivers to do with failing mail.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DmarcPolicy {
    None,
    Quarantine,
    Reject,
}

impl DmarcPolicy {
    pub fn name(self) -> &'static str {
        match self {
            DmarcPolicy::None => "none",
            DmarcPolicy::Quarantine => "quarantine",
            DmarcPolicy::Reject => "reject",
        }
    }
}

/// The ARC chain's verdict, and what its latest sealer claims it saw.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ArcCheck {
    pub result: AuthResult,
    /// The domain of the latest `ARC-Seal` (`d=`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealer: Option<String>,
    /// The latest sealer's own results (its `ARC-Authentication-Results`),
    /// e.g. `{"dkim": "pass", "dmarc": "pass"}`: what the mail looked like
    /// before that hop changed it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub claims: BTreeMap<String, AuthResult>,
}

/// What the abuse rules found.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct AbuseReport {
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub matched_rules: Vec<String>,
    /// How many earlier items this one duplicates.
    #[serde(default)]
    pub duplicates: u32,
    pub auto_submitted: bool,
}
