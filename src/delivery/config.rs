//! `[[delivery]]`: one delivery worker each, reading the desk and its
//! updates in its own consumer group and handing them to one target.
//! The target is named by `target` and configured in its own table
//! (`[delivery.webhook]`, `[delivery.rt]`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::secret::Secret;
use crate::units::{ByteSize, HumanDuration};

/// One `[[delivery]]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryConfig {
    /// The delivery's name: its consumer group is `delivery:<name>`, its
    /// Redis keys and metrics carry it. Keep it stable: a new name starts
    /// from the beginning of the desk stream.
    pub name: String,
    /// Which kind of target: `webhook` or `rt`.
    pub target: TargetKind,
    /// The webhook target, for `target = "webhook"`.
    #[serde(default)]
    pub webhook: Option<WebhookConfig>,
    /// The Request Tracker target, for `target = "rt"`.
    #[serde(default)]
    pub rt: Option<RtConfig>,
    /// Attempts in flight at once in this worker (each replica has its own).
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// A pending entry untouched this long belongs to a dead worker and is
    /// taken over (`XAUTOCLAIM`); a live worker touches its own more often.
    #[serde(default = "default_claim_after")]
    pub claim_after: HumanDuration,
    /// How long an entry is retried after its first failed attempt; past
    /// it the entry goes to `<prefix>:dead`.
    #[serde(default = "default_max_age")]
    pub max_age: HumanDuration,
    /// The first retry's delay; it doubles with each failure.
    #[serde(default = "default_backoff_initial")]
    pub backoff_initial: HumanDuration,
    /// The longest delay between two attempts (`Retry-After` excepted).
    #[serde(default = "default_backoff_max")]
    pub backoff_max: HumanDuration,
    /// How long items this delivery delivered are remembered, so an
    /// `events` update waits for its item (see `tests/webhook.rs`).
    #[serde(default = "default_remember")]
    pub remember: HumanDuration,
}

/// The kinds of target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetKind {
    Webhook,
    Rt,
}

impl TargetKind {
    /// The label in metrics, logs and `intake:dead`.
    pub fn name(self) -> &'static str {
        match self {
            TargetKind::Webhook => "webhook",
            TargetKind::Rt => "rt",
        }
    }
}

/// `[delivery.webhook]`: a signed `POST` of each item to one URL.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `https://` (or `http://` on loopback or a private network).
    pub url: String,
    /// The shared secret the signature is made with (16+ characters).
    pub secret: Secret,
    /// The secret being replaced, during a rotation: requests carry a
    /// second `v1=` signature under it until it is removed.
    #[serde(default)]
    pub previous_secret: Option<Secret>,
    /// PEM of the CA(s) to trust instead of the system's roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Send the original message (`raw`); left out by default.
    #[serde(default)]
    pub include_raw: bool,
    /// Largest body: over it, attachments' `content_base64` are left out
    /// and the body says `"attachments_omitted": true`.
    #[serde(default = "default_max_body")]
    pub max_body: ByteSize,
    /// One attempt as a whole: connect, TLS, request and the answer.
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
}

/// `[delivery.rt]`: Request Tracker 5 through its REST 2.0 API. A desk
/// item becomes a ticket in `queue`, or correspondence on the ticket it
/// answers; a flood's updates become comments (see `src/delivery/rt/`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RtConfig {
    /// RT's web address, as in its `$WebBaseURL` (the API is under
    /// `/REST/2.0/`).
    pub url: String,
    /// An RT auth token of the user intake acts as (RT: Logged in as that
    /// user, Settings > Auth Tokens).
    pub token: Secret,
    /// The queue new tickets go to.
    pub queue: String,
    /// RT's `$rtname`: a subject tag `[<rtname> #N]` names ticket N.
    pub rtname: String,
    /// The ticket custom field (free-form, multiple values) that holds the
    /// receipt ids delivered to each ticket, so a retry after a crash
    /// finds the ticket instead of making a second one.
    #[serde(default = "default_receipt_field")]
    pub receipt_field: String,
    /// PEM of the CA(s) to trust instead of the system's roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Each API call at most this long; an attempt (up to a search, a
    /// look at the ticket and the write) at most three times it.
    #[serde(default = "default_rt_timeout")]
    pub timeout: HumanDuration,
    /// A flood's "N more like this" comments on a ticket at most this
    /// often: updates that arrive meanwhile are told in the next one.
    #[serde(default = "default_fold_comment_every")]
    pub fold_comment_every: HumanDuration,
}

fn default_receipt_field() -> String {
    "Intake Receipt".into()
}
fn default_rt_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}
fn default_fold_comment_every() -> HumanDuration {
    HumanDuration(Duration::from_secs(300))
}

fn default_concurrency() -> usize {
    8
}
fn default_claim_after() -> HumanDuration {
    HumanDuration(Duration::from_secs(60))
}
fn default_max_age() -> HumanDuration {
    HumanDuration(Duration::from_secs(3 * 24 * 3600))
}
fn default_backoff_initial() -> HumanDuration {
    HumanDuration(Duration::from_secs(1))
}
fn default_backoff_max() -> HumanDuration {
    HumanDuration(Duration::from_secs(600))
}
fn default_remember() -> HumanDuration {
    HumanDuration(Duration::from_secs(30 * 24 * 3600))
}
fn default_max_body() -> ByteSize {
    ByteSize(10_000_000)
}
fn default_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}

impl DeliveryConfig {
    /// Makes relative paths relative to the config file's folder.
    pub fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        if let Some(rt) = &mut self.rt {
            if let Some(ca) = &mut rt.ca_file {
                fix(ca);
            }
            if let Some(file) = &mut rt.token.file {
                fix(file);
            }
        }
        if let Some(webhook) = &mut self.webhook {
            if let Some(ca) = &mut webhook.ca_file {
                fix(ca);
            }
            for secret in std::iter::once(&mut webhook.secret).chain(&mut webhook.previous_secret) {
                if let Some(file) = &mut secret.file {
                    fix(file);
                }
            }
        }
    }

    /// The consumer group of this delivery on every stream it reads.
    pub fn group(&self) -> String {
        format!("delivery:{}", self.name)
    }

    /// How long one attempt may take at most (an RT attempt makes a few
    /// API calls, bounded together by three times the call timeout).
    pub fn attempt_timeout(&self) -> Duration {
        match (self.target, &self.webhook, &self.rt) {
            (TargetKind::Webhook, Some(webhook), _) => webhook.timeout.into(),
            (TargetKind::Rt, _, Some(rt)) => Duration::from(rt.timeout) * 3,
            _ => default_timeout().into(),
        }
    }
}

impl crate::validate::Validate for DeliveryConfig {
    fn validate(&self, at: &str, problems: &mut Vec<String>) {
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            problems.push(format!(
                "{at}.name: must be letters, digits, `-` or `_`, not empty"
            ));
        }
        if !(1..=1024).contains(&self.concurrency) {
            problems.push(format!("{at}.concurrency: must be from 1 to 1024"));
        }
        let initial: Duration = self.backoff_initial.into();
        let max: Duration = self.backoff_max.into();
        if initial < Duration::from_millis(10) || initial > max {
            problems.push(format!(
                "{at}.backoff_initial: must be at least 10ms and at most backoff_max"
            ));
        }
        if Duration::from(self.max_age) < max {
            problems.push(format!("{at}.max_age: must be at least backoff_max"));
        }
        // An attempt must end well before a peer may take its entry over.
        if Duration::from(self.claim_after) < self.attempt_timeout() * 2 {
            problems.push(format!(
                "{at}.claim_after: must be at least twice the target's timeout"
            ));
        }
        if Duration::from(self.remember) < Duration::from(self.max_age) {
            problems.push(format!("{at}.remember: must be at least max_age"));
        }
        match (self.target, &self.webhook, &self.rt) {
            (TargetKind::Webhook, None, _) => {
                problems.push(format!(
                    "{at}.webhook: target `webhook` needs a [delivery.webhook] table"
                ));
            }
            (TargetKind::Webhook, Some(webhook), _) => {
                webhook.validate(&format!("{at}.webhook"), problems)
            }
            (TargetKind::Rt, _, None) => {
                problems.push(format!("{at}.rt: target `rt` needs a [delivery.rt] table"));
            }
            (TargetKind::Rt, _, Some(rt)) => rt.validate(&format!("{at}.rt"), problems),
        }
        if self.target == TargetKind::Webhook && self.rt.is_some()
            || self.target == TargetKind::Rt && self.webhook.is_some()
        {
            problems.push(format!(
                "{at}: a table for another target than `{}`; one [[delivery]] has one target",
                self.target.name()
            ));
        }
    }
}

impl crate::validate::Validate for WebhookConfig {
    fn validate(&self, at: &str, problems: &mut Vec<String>) {
        match self.url.parse::<http::Uri>() {
            Ok(uri)
                if matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some() => {}
            _ => problems.push(format!(
                "{at}.url: `{}` must be an http:// or https:// URL with a host",
                self.url
            )),
        }
        for (key, secret) in std::iter::once(("secret", &self.secret))
            .chain(self.previous_secret.iter().map(|s| ("previous_secret", s)))
        {
            match secret.resolve() {
                Ok(value) if value.expose().len() < 16 => {
                    problems.push(format!("{at}.{key}: must be at least 16 characters"))
                }
                Ok(_) => {}
                Err(e) => problems.push(format!("{at}.{key}: {e}")),
            }
        }
        if let Some(ca) = &self.ca_file {
            if let Err(e) = crate::tls_roots::load(Some(ca)) {
                problems.push(format!("{at}.ca_file: {e}"));
            }
        }
        if self.max_body.bytes() < 1024 {
            problems.push(format!("{at}.max_body: must be at least 1KiB"));
        }
        let timeout: Duration = self.timeout.into();
        if timeout < Duration::from_millis(100) || timeout > Duration::from_secs(600) {
            problems.push(format!("{at}.timeout: must be from 100ms to 10m"));
        }
    }
}

impl crate::validate::Validate for RtConfig {
    fn validate(&self, at: &str, problems: &mut Vec<String>) {
        match self.url.parse::<http::Uri>() {
            Ok(uri)
                if matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some() => {}
            _ => problems.push(format!(
                "{at}.url: `{}` must be an http:// or https:// URL with a host",
                self.url
            )),
        }
        match self.token.resolve() {
            Ok(value) if value.expose().trim().is_empty() => {
                problems.push(format!("{at}.token: is empty"))
            }
            Ok(_) => {}
            Err(e) => problems.push(format!("{at}.token: {e}")),
        }
        if self.queue.trim().is_empty() {
            problems.push(format!("{at}.queue: must name a queue"));
        }
        if self.rtname.trim().is_empty() || self.rtname.contains(['[', ']', '#']) {
            problems.push(format!(
                "{at}.rtname: must be RT's $rtname (no `[`, `]` or `#`)"
            ));
        }
        if self.receipt_field.trim().is_empty() {
            problems.push(format!("{at}.receipt_field: must name a custom field"));
        }
        if let Some(ca) = &self.ca_file {
            if let Err(e) = crate::tls_roots::load(Some(ca)) {
                problems.push(format!("{at}.ca_file: {e}"));
            }
        }
        let timeout: Duration = self.timeout.into();
        if timeout < Duration::from_millis(100) || timeout > Duration::from_secs(600) {
            problems.push(format!("{at}.timeout: must be from 100ms to 10m"));
        }
        if Duration::from(self.fold_comment_every) > Duration::from_secs(24 * 3600) {
            problems.push(format!("{at}.fold_comment_every: must be at most 24h"));
        }
    }
}
