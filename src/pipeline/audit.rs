//! Audit copies: what is kept of items that do not reach the desk
//! (`intake:suppressed`, and `intake:quarantine` when a rule or a MIME
//! limit put them there). They are kept so an operator can see what was
//! refused and why, not so that one sender can fill Redis: an item past
//! `keep_whole_up_to`, or past what its sender (and, for forms, its client
//! network) may keep whole in a window, is stored as metadata (headers,
//! sizes, digests, a bounded excerpt of the text, attachment names and
//! hashes); a refused item (the client was told 429 / 403 / 422 and keeps
//! its post) past `max_refused` per window is counted and not written.
//!
//! Nothing accepted is ever dropped: an item whose client was told it was
//! taken always leaves an entry, whole or as metadata. The allowances live
//! in Redis (fixed windows, one counter per sender or network), so they
//! hold across replicas; a Redis that does not answer them keeps the
//! item as metadata, never whole and never not at all.

use std::net::IpAddr;
use std::time::Duration;

use serde::Deserialize;

use crate::envelope::{Base64, Envelope, Source};
use crate::guard::store::{short_digest, RedisStore};
use crate::route::{Route, Stream};
use crate::units::{ByteSize, HumanDuration};

/// The tag an audit copy kept as metadata carries.
pub const METADATA_TAG: &str = "metadata-only";

/// Most header bytes a metadata copy keeps (names and values together).
const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Most bytes of one form field a metadata copy keeps.
const MAX_FIELD_BYTES: usize = 1024;

/// The `[audit]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Audit copies larger than this (raw message, attachments and bodies
    /// together) are stored as metadata.
    #[serde(default = "default_keep_whole_up_to")]
    pub keep_whole_up_to: ByteSize,
    /// How much of the text a metadata copy keeps.
    #[serde(default = "default_excerpt")]
    pub excerpt: ByteSize,
    /// The window the allowances below count in.
    #[serde(default = "default_window")]
    pub window: HumanDuration,
    /// Bytes of audit copies one sender may have kept whole per window;
    /// past it its copies are metadata.
    #[serde(default = "default_per_sender")]
    pub per_sender: ByteSize,
    /// The same for one client network (/24 for IPv4, /64 for IPv6) of a
    /// form; mail servers deliver everyone's mail, so mail is counted by
    /// sender only.
    #[serde(default = "default_per_network")]
    pub per_network: ByteSize,
    /// Refused items (their client was told no and may retry) one sender or
    /// network may leave per window; more are counted
    /// (`intake_audit_copies_total{kept="counted"}`), not written.
    #[serde(default = "default_max_refused")]
    pub max_refused: u64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            keep_whole_up_to: default_keep_whole_up_to(),
            excerpt: default_excerpt(),
            window: default_window(),
            per_sender: default_per_sender(),
            per_network: default_per_network(),
            max_refused: default_max_refused(),
        }
    }
}

fn default_keep_whole_up_to() -> ByteSize {
    ByteSize(256 * 1000)
}
fn default_excerpt() -> ByteSize {
    ByteSize(4 * 1000)
}
fn default_window() -> HumanDuration {
    HumanDuration(Duration::from_secs(3600))
}
fn default_per_sender() -> ByteSize {
    ByteSize(5 * 1000 * 1000)
}
fn default_per_network() -> ByteSize {
    ByteSize(20 * 1000 * 1000)
}
fn default_max_refused() -> u64 {
    100
}

impl crate::validate::Validate for AuditConfig {
    fn validate(&self, at: &str, problems: &mut Vec<String>) {
        if self.excerpt.bytes() > self.keep_whole_up_to.bytes() {
            problems.push(format!(
                "{at}.excerpt: must not be larger than audit.keep_whole_up_to"
            ));
        }
        if self.window.0 < Duration::from_secs(1) {
            problems.push(format!("{at}.window: must be at least 1s"));
        }
    }
}

/// How much of an audit copy is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kept {
    /// The whole item (also every desk item).
    Whole,
    /// Headers, sizes, digests and an excerpt (tag [`METADATA_TAG`]).
    Metadata,
    /// A refused item past its sender's allowance: counted, not written.
    Counted,
}

impl Kept {
    pub fn label(self) -> &'static str {
        match self {
            Kept::Whole => "whole",
            Kept::Metadata => "metadata",
            Kept::Counted => "counted",
        }
    }
}

/// Decides and applies what is kept of each audit copy.
pub struct Audit {
    config: AuditConfig,
    /// Where the allowances are counted; `None` counts nothing (unit tests,
    /// replay): only the size limit applies.
    store: Option<RedisStore>,
}

impl Audit {
    pub fn new(config: AuditConfig, store: Option<RedisStore>) -> Self {
        Audit { config, store }
    }

    /// Whether `route` makes an audit copy: everything that goes to
    /// `suppressed`, and what a rule or a MIME limit quarantines (an
    /// infected or unscannable item is kept whole for an operator).
    pub fn applies(route: &Route) -> bool {
        route.stream == Stream::Suppressed
            || (route.stream == Stream::Quarantine
                && matches!(route.kind, "quarantined" | "mime-limit"))
    }

    /// Decides how much of an item is kept, and slims the envelope when it
    /// is metadata. `customer` is the guard's digest of the sender (or
    /// client address); `refused` says the client was told no.
    pub async fn keep(
        &self,
        envelope: &mut Envelope,
        route: &mut Route,
        customer: Option<&str>,
        refused: bool,
    ) -> Kept {
        let is_copy = Self::applies(route) || refused;
        if !is_copy {
            return Kept::Whole;
        }
        let kept = self.decide(envelope, customer, refused).await;
        if kept == Kept::Metadata {
            let size = content_size(envelope);
            slim(envelope, self.config.excerpt.as_usize());
            let note = format!("kept as metadata ({size} bytes of content)");
            route.reason = Some(match route.reason.take() {
                Some(reason) => format!("{reason}; {note}"),
                None => note,
            });
        }
        crate::telemetry::events::emit(crate::telemetry::events::pipeline::AuditCopy {
            kept: kept.label(),
        });
        kept
    }

    async fn decide(&self, envelope: &Envelope, customer: Option<&str>, refused: bool) -> Kept {
        let counters = counters(envelope, customer);
        let window = self.config.window.0;
        if refused && !counters.is_empty() {
            match self.count(&counters, "n", 1, window).await {
                Some(counts) if counts.iter().any(|n| *n > self.config.max_refused) => {
                    return Kept::Counted;
                }
                Some(_) => {}
                None => return Kept::Metadata,
            }
        }
        let size = content_size(envelope);
        if size > self.config.keep_whole_up_to.bytes() {
            return Kept::Metadata;
        }
        if counters.is_empty() || self.store.is_none() {
            return Kept::Whole;
        }
        let Some(totals) = self.count(&counters, "b", size, window).await else {
            return Kept::Metadata;
        };
        let over = counters.iter().zip(&totals).any(|(counter, total)| {
            let allowance = match counter.kind {
                CounterKind::Sender => self.config.per_sender.bytes(),
                CounterKind::Network => self.config.per_network.bytes(),
            };
            *total > allowance
        });
        if over {
            Kept::Metadata
        } else {
            Kept::Whole
        }
    }

    /// Adds `amount` to each counter's `suffix` count in the current
    /// window; the totals, or `None` when Redis did not answer (or there
    /// is no Redis: then nothing is counted and `Some` of zeros).
    async fn count(
        &self,
        counters: &[Counter],
        suffix: &str,
        amount: u64,
        window: Duration,
    ) -> Option<Vec<u64>> {
        let Some(store) = &self.store else {
            return Some(vec![0; counters.len()]);
        };
        // One counter per key, each in its own hash slot: a script per key
        // (a cluster cannot run one across slots), all at once.
        static SCRIPT: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
            redis::Script::new(
                r#"
local v = redis.call('INCRBY', KEYS[1], ARGV[1])
if v == tonumber(ARGV[1]) then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return v
"#,
            )
        });
        let asks = counters.iter().map(|counter| {
            let mut invocation = SCRIPT.prepare_invoke();
            invocation
                .key(format!(
                    "{}:audit:{{{}}}:{suffix}",
                    store.prefix(),
                    counter.digest
                ))
                .arg(amount)
                .arg(window.as_millis() as u64);
            let mut connection = store.connection();
            async move {
                store
                    .bounded(invocation.invoke_async::<u64>(&mut connection))
                    .await
            }
        });
        match futures_util::future::try_join_all(asks).await {
            Ok(totals) => Some(totals),
            Err(e) => {
                if let Some(suppressed) = crate::telemetry::log_limit::errors().check("audit-count")
                {
                    tracing::warn!(error = %e, suppressed, "audit allowances not counted; the copy is kept as metadata");
                }
                None
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CounterKind {
    Sender,
    Network,
}

struct Counter {
    kind: CounterKind,
    digest: String,
}

/// The allowances an item is counted against: its sender, and for a form
/// its client network.
fn counters(envelope: &Envelope, customer: Option<&str>) -> Vec<Counter> {
    let mut counters = Vec::with_capacity(2);
    if let Some(customer) = customer {
        counters.push(Counter {
            kind: CounterKind::Sender,
            digest: format!("s{customer}"),
        });
    }
    if let Source::Form { ip, .. } = &envelope.source {
        if let Ok(ip) = ip.trim().parse::<IpAddr>() {
            counters.push(Counter {
                kind: CounterKind::Network,
                digest: format!("n{}", short_digest(network(ip).as_bytes())),
            });
        }
    }
    counters
}

/// The client network an address belongs to: /24 for IPv4, /64 for IPv6.
fn network(ip: IpAddr) -> String {
    let prefix = match ip {
        IpAddr::V4(_) => 24,
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => 120,
        IpAddr::V6(_) => 64,
    };
    ipnet::IpNet::new(ip, prefix)
        .map(|net| net.trunc().to_string())
        .unwrap_or_else(|_| ip.to_string())
}

/// The bytes of content an envelope carries: raw message, attachments and
/// bodies.
pub fn content_size(envelope: &Envelope) -> u64 {
    let raw = envelope.raw.as_ref().map_or(0, |r| r.bytes().len() as u64);
    let attachments: u64 = envelope
        .attachments
        .iter()
        .map(|a| a.content_base64.bytes().len() as u64)
        .sum();
    let text = [
        &envelope.text,
        &envelope.html,
        &envelope.stripped_text,
        &envelope.stripped_signature,
    ]
    .iter()
    .map(|t| t.as_ref().map_or(0, |t| t.len() as u64))
    .sum::<u64>();
    let fields: u64 = envelope
        .fields
        .values()
        .map(|v| match v {
            crate::envelope::FieldValue::One(v) => v.len() as u64,
            crate::envelope::FieldValue::Many(vs) => vs.iter().map(|v| v.len() as u64).sum(),
        })
        .sum();
    raw + attachments + text + fields
}

/// Makes an envelope its metadata: no raw message, no attachment content
/// (names, types, sizes and digests stay), bodies and fields cut to an
/// excerpt, headers bounded, tagged [`METADATA_TAG`].
pub fn slim(envelope: &mut Envelope, excerpt: usize) {
    envelope.raw = None;
    for attachment in &mut envelope.attachments {
        attachment.content_base64 = Base64::default();
    }
    for text in [
        &mut envelope.text,
        &mut envelope.stripped_text,
        &mut envelope.stripped_signature,
        &mut envelope.html,
    ]
    .into_iter()
    .flatten()
    {
        truncate(text, excerpt);
    }
    for value in envelope.fields.values_mut() {
        match value {
            crate::envelope::FieldValue::One(v) => truncate(v, MAX_FIELD_BYTES),
            crate::envelope::FieldValue::Many(vs) => {
                vs.iter_mut().for_each(|v| truncate(v, MAX_FIELD_BYTES))
            }
        }
    }
    let mut budget = MAX_HEADER_BYTES;
    envelope.headers.retain(|h| {
        let cost = h.name.len() + h.value.len();
        let keep = cost <= budget;
        budget = budget.saturating_sub(cost);
        keep
    });
    if !envelope.abuse.tags.iter().any(|t| t == METADATA_TAG) {
        envelope.abuse.tags.push(METADATA_TAG.to_string());
    }
}

/// Cuts `text` to at most `max` bytes at a character boundary, marking the cut.
fn truncate(text: &mut String, max: usize) {
    if text.len() <= max {
        return;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push_str(" [...]");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{Attachment, Disposition, Header};

    fn envelope(text_len: usize, attachment_len: usize) -> Envelope {
        let mut envelope = crate::guard::tests::form_envelope("ann@example.com", "198.51.100.7");
        envelope.text = Some("é".repeat(text_len / 2));
        envelope.headers = vec![Header {
            name: "Subject".into(),
            value: "hello".into(),
        }];
        envelope.attachments = vec![Attachment {
            filename: Some("big.bin".into()),
            original_filename: None,
            content_type: "application/octet-stream".into(),
            size: attachment_len as u64,
            sha256: "ab".repeat(32),
            content_id: None,
            disposition: Disposition::Attachment,
            content_base64: Base64(vec![7u8; attachment_len].into()),
        }];
        envelope
    }

    fn route(stream: Stream, kind: &'static str) -> Route {
        Route {
            stream,
            kind,
            reason: Some("rate limit".into()),
            duplicate_of: None,
            answer: crate::route::Answer::Accepted,
        }
    }

    #[test]
    fn metadata_keeps_names_sizes_and_digests_but_no_content() {
        let mut e = envelope(10_000, 5_000_000);
        slim(&mut e, 4_000);
        assert_eq!(e.attachments[0].size, 5_000_000, "the size stays");
        assert_eq!(e.attachments[0].sha256, "ab".repeat(32), "the digest stays");
        assert!(e.attachments[0].content_base64.bytes().is_empty());
        let text = e.text.as_deref().unwrap();
        assert!(
            text.len() <= 4_000 + 6 && text.ends_with("[...]"),
            "{}",
            text.len()
        );
        assert!(e.abuse.tags.contains(&METADATA_TAG.to_string()));
        assert_eq!(e.headers.len(), 1, "headers kept");
    }

    #[tokio::test]
    async fn a_large_copy_is_metadata_a_small_one_whole_and_desk_items_untouched() {
        let audit = Audit::new(AuditConfig::default(), None);
        let mut big = envelope(100, 5_000_000);
        let mut r = route(Stream::Suppressed, "rejected");
        assert_eq!(
            audit.keep(&mut big, &mut r, Some("c"), true).await,
            Kept::Metadata
        );
        assert!(r.reason.unwrap().contains("kept as metadata (5000"));
        let mut small = envelope(100, 1_000);
        let mut r = route(Stream::Suppressed, "collapsed");
        assert_eq!(
            audit.keep(&mut small, &mut r, Some("c"), false).await,
            Kept::Whole
        );
        let mut desk = envelope(100, 5_000_000);
        let mut r = route(Stream::Desk, "message");
        assert_eq!(
            audit.keep(&mut desk, &mut r, Some("c"), false).await,
            Kept::Whole
        );
        assert_eq!(desk.attachments[0].content_base64.bytes().len(), 5_000_000);
        let mut infected = envelope(100, 5_000_000);
        let mut r = route(Stream::Quarantine, "infected");
        assert!(!Audit::applies(&r));
        assert_eq!(
            audit.keep(&mut infected, &mut r, Some("c"), false).await,
            Kept::Whole,
            "an infected mail (accepted) is kept whole for the operator"
        );
    }

    #[test]
    fn networks_are_24s_and_64s() {
        assert_eq!(network("203.0.113.77".parse().unwrap()), "203.0.113.0/24");
        assert_eq!(
            network("2001:db8:1:2::9".parse().unwrap()),
            "2001:db8:1:2::/64"
        );
    }
}
