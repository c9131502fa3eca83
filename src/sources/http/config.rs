//! The HTTP source's configuration: the public listener (`[http]`), raw
//! mail from `intake mailgate` (`[messages]`) and the shop's web forms
//! (`[[form]]`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::parse::FormFields;
use crate::secret::Secret;
use crate::units::{ByteSize, HumanDuration, MAX_GRACE};
use crate::validate::Validate;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address of the public listener.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Serve HTTPS (HTTP/1.1 and HTTP/2 by ALPN) with this certificate.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// How long a client may take to send its request headers; guards
    /// against slow-loris clients holding connections open.
    #[serde(default = "default_header_timeout")]
    pub header_timeout: HumanDuration,
    /// How long a kept-alive connection may sit with no request in flight
    /// before the server closes it, so idle clients do not hold connection
    /// slots (and HTTP/2 clients, whose pings keep a connection up, do not
    /// hold them forever). An HTTP/1 connection waiting for its next
    /// request is also bounded by `header_timeout`.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: HumanDuration,
    /// How long a client may take to send a request body; a slower upload
    /// is answered 408.
    #[serde(default = "default_request_timeout")]
    pub request_timeout: HumanDuration,
    /// Connections served at once. When all are taken, the one with the
    /// least progress is closed to make room for a newcomer (idle first,
    /// then the slowest head, then the slowest body; never one whose item
    /// is being stored); when none can be, as many newcomers again wait
    /// up to `header_timeout` for a slot, and further ones are closed.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Connections one client address (an IPv6 client: its /64) may have
    /// open or waiting at once; one more is closed at once, before a byte
    /// is read.
    #[serde(default = "default_max_connections_per_ip")]
    pub max_connections_per_ip: usize,
    /// How long a new connection, or one that just went idle or began a
    /// head or body, is safe from being closed to make room (unless its
    /// address holds two more connections than the newcomer's).
    #[serde(default = "default_shed_grace")]
    pub shed_grace: HumanDuration,
    /// The slowest request body accepted, in bytes per second: a body gets
    /// `body_rate_grace` plus one second per this many bytes it has sent,
    /// then it is answered 408 and the connection closed. 0 switches it
    /// off (`request_timeout` still bounds the whole body).
    #[serde(default = "default_min_body_rate")]
    pub min_body_rate: ByteSize,
    /// The time a body has before `min_body_rate` applies.
    #[serde(default = "default_body_rate_grace")]
    pub body_rate_grace: HumanDuration,
    /// What `Retry-After` says when an item cannot be stored right now.
    #[serde(default = "default_retry_after")]
    pub retry_after: HumanDuration,
    /// Largest request head (request line and headers) one HTTP/1 request
    /// may send; past it the client gets 431. At least 8KiB (hyper's
    /// smallest read buffer). Also bounds an HTTP/2 header list.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: ByteSize,
    /// Most header fields one request may send; past it the client gets 431.
    #[serde(default = "default_max_headers")]
    pub max_headers: usize,
    /// Requests one client IP may have in flight at once; past it the
    /// client gets 429 with `Retry-After: 1`, so one address cannot take
    /// every worker while others wait.
    #[serde(default = "default_max_requests_per_ip")]
    pub max_requests_per_ip: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: default_listen(),
            tls: None,
            header_timeout: default_header_timeout(),
            idle_timeout: default_idle_timeout(),
            request_timeout: default_request_timeout(),
            max_connections: default_max_connections(),
            max_connections_per_ip: default_max_connections_per_ip(),
            shed_grace: default_shed_grace(),
            min_body_rate: default_min_body_rate(),
            body_rate_grace: default_body_rate_grace(),
            retry_after: default_retry_after(),
            max_header_bytes: default_max_header_bytes(),
            max_headers: default_max_headers(),
            max_requests_per_ip: default_max_requests_per_ip(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessagesConfig {
    /// Bearer token `intake mailgate` must present. Without it,
    /// `POST /v1/messages` is switched off (404).
    #[serde(default)]
    pub token: Option<Secret>,
    /// Largest raw message accepted.
    #[serde(default = "default_message_max_size")]
    pub max_size: ByteSize,
    /// Keep the original message in the envelope's `raw` field.
    #[serde(default = "default_true")]
    pub keep_raw: bool,
}

impl Default for MessagesConfig {
    fn default() -> Self {
        MessagesConfig {
            token: None,
            max_size: default_message_max_size(),
            keep_raw: true,
        }
    }
}

/// One web form a shop page posts to `POST /v1/forms/{id}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FormConfig {
    /// The `{form}` in the URL: letters, digits, `-` and `_`.
    pub id: String,
    /// Fields that must be present and not blank.
    #[serde(default)]
    pub required: Vec<String>,
    /// The field holding the customer's address (`_replyto` is used when
    /// the form has none).
    #[serde(default = "default_email_field")]
    pub email_field: String,
    /// The field holding the customer's name.
    #[serde(default = "default_name_field")]
    pub name_field: String,
    /// The field holding the message text.
    #[serde(default = "default_message_field")]
    pub message_field: String,
    /// Subject used when the post has no `_subject`.
    #[serde(default)]
    pub subject: Option<String>,
    /// Where a plain browser post is sent after success (303), unless the
    /// post names an allowed `_next`.
    #[serde(default)]
    pub redirect: Option<String>,
    /// Origins (`https://shop.example`) allowed to post. Empty allows any
    /// origin, which suits only forms posted by servers, not browsers.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// Largest request body accepted, uploads included.
    #[serde(default = "default_form_max_size")]
    pub max_size: ByteSize,
    /// Most files one post may upload; 0 refuses uploads.
    #[serde(default = "default_max_files")]
    pub max_files: usize,
    /// Most fields one post may carry.
    #[serde(default = "default_max_fields")]
    pub max_fields: usize,
    /// A field people never see (hidden by the page's CSS) and bots fill
    /// in; a post with it is trapped.
    #[serde(default = "default_honeypot")]
    pub honeypot: String,
    /// `off`, `optional` or `required`: whether posts carry a signed
    /// timestamp token (`GET /v1/forms/{id}/token`) in `_token`. Needs
    /// `[forms_security] secret`.
    #[serde(default)]
    pub token: TokenMode,
    /// A token younger than this was posted faster than a person types:
    /// the post is trapped.
    #[serde(default = "default_token_min_age")]
    pub token_min_age: HumanDuration,
    /// A token older than this has expired: the post is trapped. A used
    /// token is remembered this long, so a replay is trapped too.
    #[serde(default = "default_token_max_age")]
    pub token_max_age: HumanDuration,
    /// Most links (`http://`, `https://`, `www.`) the message field may
    /// hold; more is trapped. None: no limit.
    #[serde(default)]
    pub max_links: Option<usize>,
    /// A post sent without an `Idempotency-Key` that repeats an earlier one
    /// (the same fields and files from the same client network) within
    /// this window gets the earlier receipt: a double click or a browser's
    /// resend after a lost answer makes one item, not two.
    #[serde(default = "default_retry_window")]
    pub retry_window: HumanDuration,
}

fn default_body_rate_grace() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}
fn default_email_field() -> String {
    "email".into()
}
fn default_form_max_size() -> ByteSize {
    ByteSize(10_000_000)
}
fn default_header_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}
fn default_honeypot() -> String {
    "_gotcha".into()
}
fn default_idle_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(60))
}
fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_max_connections() -> usize {
    1024
}
fn default_max_connections_per_ip() -> usize {
    64
}
fn default_max_fields() -> usize {
    100
}
fn default_max_files() -> usize {
    5
}
fn default_max_header_bytes() -> ByteSize {
    ByteSize(32 * 1024)
}
fn default_max_headers() -> usize {
    64
}
fn default_max_requests_per_ip() -> usize {
    32
}
fn default_message_field() -> String {
    "message".into()
}
fn default_message_max_size() -> ByteSize {
    ByteSize(50_000_000)
}
fn default_min_body_rate() -> ByteSize {
    ByteSize(500)
}
fn default_name_field() -> String {
    "name".into()
}
fn default_request_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(60))
}
fn default_retry_after() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}
fn default_retry_window() -> HumanDuration {
    HumanDuration(Duration::from_secs(3600))
}
fn default_shed_grace() -> HumanDuration {
    HumanDuration(Duration::from_secs(1))
}
fn default_token_max_age() -> HumanDuration {
    HumanDuration(Duration::from_secs(2 * 3600))
}
fn default_token_min_age() -> HumanDuration {
    HumanDuration(Duration::from_secs(3))
}
fn default_true() -> bool {
    true
}

/// `[forms_security]`: what the form tokens are signed with.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FormsSecurityConfig {
    /// The key that signs form tokens (32 random bytes or more, say
    /// `openssl rand -hex 32`). Required when any form uses tokens;
    /// changing it voids every token handed out.
    pub secret: Secret,
}

/// Whether a form asks for a token.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenMode {
    /// No token is issued or checked.
    #[default]
    Off,
    /// A post without a token passes; a bad one is trapped.
    Optional,
    /// A post without a valid token is trapped.
    Required,
}

impl FormConfig {
    /// What the parser needs to know of this form.
    pub fn fields(&self) -> FormFields {
        FormFields {
            id: self.id.clone(),
            email_field: self.email_field.clone(),
            name_field: self.name_field.clone(),
            message_field: self.message_field.clone(),
            subject: self.subject.clone(),
        }
    }
}

impl Validate for HttpConfig {
    fn validate(&self, at: &str, problems: &mut Vec<String>) {
        // hyper panics below 8KiB; above 1MiB a header is an attack, not a request.
        if !(8 * 1024..=1024 * 1024).contains(&self.max_header_bytes.0) {
            problems.push(format!(
                "{at}.max_header_bytes: must be between 8KiB and 1MiB"
            ));
        }
        if !(1..=1000).contains(&self.max_headers) {
            problems.push(format!("{at}.max_headers: must be between 1 and 1000"));
        }
        if self.max_requests_per_ip == 0 {
            problems.push(format!("{at}.max_requests_per_ip: must be at least 1"));
        }
        if self.max_connections_per_ip == 0 {
            problems.push(format!("{at}.max_connections_per_ip: must be at least 1"));
        }
        if self.min_body_rate.bytes() > 0
            && !(Duration::from_millis(100)..=MAX_GRACE).contains(&self.body_rate_grace.0)
        {
            problems.push(format!(
                "{at}.body_rate_grace: must be between 100ms and 24h"
            ));
        }
        if self.shed_grace.0 > MAX_GRACE {
            problems.push(format!("{at}.shed_grace: must be at most 24h"));
        }
        if Duration::from(self.idle_timeout).is_zero() {
            problems.push(format!("{at}.idle_timeout: must be more than 0s"));
        }
        if self.max_connections == 0 {
            problems.push(format!("{at}.max_connections: must be at least 1"));
        }
        if let Some(tls) = &self.tls {
            for (key, path) in [("cert", &tls.cert), ("key", &tls.key)] {
                if !path.is_file() {
                    problems.push(format!(
                        "{at}.tls.{key}: {} is not a readable file",
                        path.display()
                    ));
                }
            }
        }
    }
}

impl Validate for MessagesConfig {
    fn validate(&self, at: &str, problems: &mut Vec<String>) {
        if let Some(secret) = &self.token {
            if let Err(e) = secret.resolve() {
                problems.push(format!("{at}.token: {e}"));
            }
        }
    }
}

impl Validate for FormsSecurityConfig {
    fn validate(&self, at: &str, problems: &mut Vec<String>) {
        match self.secret.resolve() {
            Ok(secret) if secret.expose().len() < 16 => problems.push(format!(
                "{at}.secret: use at least 16 characters (openssl rand -hex 32)"
            )),
            Ok(_) => {}
            Err(e) => problems.push(format!("{at}.secret: {e}")),
        }
    }
}

impl Validate for FormConfig {
    fn validate(&self, at: &str, problems: &mut Vec<String>) {
        if self.id.is_empty()
            || !self
                .id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            problems.push(format!("{at}.id: use only letters, digits, `-` and `_`"));
        }
        if let Some(redirect) = &self.redirect {
            if !(redirect.starts_with("http://") || redirect.starts_with("https://")) {
                problems.push(format!("{at}.redirect: must be an http(s) URL"));
            }
        }
        for origin in &self.allowed_origins {
            if !(origin.starts_with("http://") || origin.starts_with("https://"))
                || origin.trim_end_matches('/').matches('/').count() != 2
            {
                problems.push(format!(
                    "{at}.allowed_origins: `{origin}` must be scheme and host only, like https://shop.example"
                ));
            }
        }
        if self.max_size.bytes() == 0 {
            problems.push(format!("{at}.max_size: must be above 0"));
        }
        if self.retry_window.0 < Duration::from_secs(1) {
            problems.push(format!("{at}.retry_window: must be at least 1s"));
        }
        if self.token_min_age.0 >= self.token_max_age.0 {
            problems.push(format!(
                "{at}.token_min_age: must be shorter than token_max_age"
            ));
        }
    }
}
