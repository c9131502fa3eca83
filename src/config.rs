//! The configuration file: one TOML document, typed, unknown keys refused.
//!
//! Loading is two steps: serde reads the file (a syntax error or unknown key
//! names the key and line), then [`Config::validate`] checks what types
//! cannot (forms that make sense, secrets that resolve) and reports every
//! problem at once, so an operator fixes the file in one go.

pub mod units;

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use units::{ByteSize, HumanDuration};

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The public HTTP listener (forms and raw mail).
    #[serde(default)]
    pub http: HttpConfig,
    /// The admin listener (metrics, operations).
    #[serde(default)]
    pub admin: AdminConfig,
    /// Where accepted items are written.
    pub redis: RedisConfig,
    /// `POST /v1/messages`, used by `intake mailgate`.
    #[serde(default)]
    pub messages: MessagesConfig,
    /// The web forms the shop posts to, as `[[form]]` tables.
    #[serde(default, rename = "form")]
    pub forms: Vec<FormConfig>,
    /// Virus scanning with clamd; without it items say `unscanned`.
    #[serde(default)]
    pub scan: Option<crate::scan::ScanConfig>,
    /// IMAP accounts whose mailboxes are polled, as `[[imap]]` tables.
    #[serde(default)]
    pub imap: Vec<crate::sources::imap::ImapConfig>,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// Rate-limit, collapse and loop rules (`rules/*.toml`).
    #[serde(default)]
    pub rules: crate::guard::config::RulesConfig,
    /// When to stop taking new items (desk high-water mark, Redis memory).
    #[serde(default)]
    pub backpressure: crate::backpressure::BackpressureConfig,
    /// Card-number redaction.
    #[serde(default)]
    pub privacy: crate::parse::redact::PrivacyConfig,
    /// MIME limits; a mail beyond one is quarantined.
    #[serde(default)]
    pub mime: crate::parse::limits::MimeConfig,
    /// The key form tokens are signed with.
    #[serde(default)]
    pub forms_security: Option<crate::formguard::FormsSecurityConfig>,
    /// The LMTP listener a mail server delivers into; off without it.
    #[serde(default)]
    pub lmtp: Option<crate::sources::lmtp::LmtpConfig>,
    /// What is kept of items that do not reach the desk.
    #[serde(default)]
    pub audit: crate::audit::AuditConfig,
    /// The memory budget for bodies in flight (forms, raw mail, LMTP).
    #[serde(default)]
    pub memory: crate::budget::MemoryConfig,
}

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

/// The admin listener; it starts only when a token is configured, since
/// metrics and operations must never be open.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address of the admin listener; keep it off the public network.
    #[serde(default = "default_admin_listen")]
    pub listen: SocketAddr,
    /// Bearer token every admin request must carry.
    #[serde(default)]
    pub token: Option<Secret>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: default_admin_listen(),
            token: None,
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
pub struct RedisConfig {
    /// `redis://host:port/db` or `rediss://` for TLS. Put the password in
    /// `password`, not here.
    pub url: String,
    /// Redis password (ACL user from the URL, if any).
    #[serde(default)]
    pub password: Option<Secret>,
    /// Prefix of every stream and key: `<prefix>:desk`, ...
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// Longest wait for one Redis command (connect included); past it the
    /// item is not acknowledged and the client is told to retry.
    #[serde(default = "default_redis_timeout")]
    pub timeout: HumanDuration,
    /// `url` is one node of a Redis Cluster (the others are found from it).
    #[serde(default)]
    pub cluster: bool,
    /// More cluster nodes to start from, should the one in `url` be down.
    #[serde(default)]
    pub cluster_nodes: Vec<String>,
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
    pub token: crate::formguard::TokenMode,
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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` for people, `json` for log collectors.
    #[serde(default)]
    pub format: LogFormat,
    /// A tracing filter, e.g. `info` or `intake=debug,info`; the
    /// `RUST_LOG` environment variable overrides it.
    #[serde(default = "default_log_level")]
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: default_log_level(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// A secret, never written inline: `{ env = "NAME" }` or `{ file = "path" }`
/// (a relative path is read relative to the config file).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Secret {
    #[serde(default)]
    pub env: Option<String>,
    #[serde(default)]
    pub file: Option<PathBuf>,
}

impl fmt::Debug for Secret {
    // Only where the secret comes from, never its value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secret")
            .field("env", &self.env)
            .field("file", &self.file)
            .finish()
    }
}

/// A secret's value, read once at start-up. Its `Debug` hides the value.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(String);

impl SecretValue {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretValue(***)")
    }
}

impl Secret {
    /// Reads the secret, trimming the trailing newline editors add.
    pub fn resolve(&self) -> Result<SecretValue, String> {
        let value = match (&self.env, &self.file) {
            (Some(var), None) => {
                std::env::var(var).map_err(|_| format!("environment variable {var} is not set"))?
            }
            (None, Some(path)) => std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?,
            _ => return Err("give exactly one of `env` or `file`".into()),
        };
        let value = value.trim_end_matches(['\r', '\n']).to_string();
        if value.trim().is_empty() {
            return Err("the secret is empty".into());
        }
        Ok(SecretValue(value))
    }
}

/// Every problem found in a config file, one per line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("config file {path} has {} problem(s):\n  {}", problems.len(), problems.join("\n  "))]
    Invalid {
        path: PathBuf,
        problems: Vec<String>,
    },
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut config = Config::from_toml(&text).map_err(|message| ConfigError::Syntax {
            path: path.to_owned(),
            message,
        })?;
        config.resolve_paths(base);
        config.validate().map_err(|problems| ConfigError::Invalid {
            path: path.to_owned(),
            problems,
        })?;
        Ok(config)
    }

    /// Parses TOML text; the error names the key and line.
    pub fn from_toml(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())
    }

    /// Makes relative paths relative to the config file's folder, so a
    /// config works whatever the daemon's working directory.
    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        if let Some(dir) = &mut self.rules.dir {
            fix(dir);
        }
        if let Some(tls) = &mut self.http.tls {
            fix(&mut tls.cert);
            fix(&mut tls.key);
        }
        for imap in &mut self.imap {
            imap.resolve_paths(base);
        }
        for secret in [
            &mut self.redis.password,
            &mut self.messages.token,
            &mut self.admin.token,
        ]
        .into_iter()
        .flatten()
        {
            if let Some(file) = &mut secret.file {
                fix(file);
            }
        }
        if let Some(file) = self
            .forms_security
            .as_mut()
            .and_then(|f| f.secret.file.as_mut())
        {
            fix(file);
        }
    }

    /// Checks everything serde cannot; returns every problem found.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        if !(self.redis.url.starts_with("redis://")
            || self.redis.url.starts_with("rediss://")
            || self.redis.url.starts_with("unix://"))
        {
            problems.push(format!(
                "redis.url: `{}` must start with redis://, rediss:// or unix://",
                self.redis.url
            ));
        }
        if self.redis.prefix.is_empty() || self.redis.prefix.contains(['{', '}', ' ']) {
            problems.push("redis.prefix: must be non-empty, without spaces or braces".into());
        }
        if self.redis.timeout.0 < Duration::from_millis(10) {
            problems.push("redis.timeout: must be at least 10ms".into());
        }
        // hyper panics below 8KiB; above 1MiB a header is an attack, not a request.
        if !(8 * 1024..=1024 * 1024).contains(&self.http.max_header_bytes.0) {
            problems.push("http.max_header_bytes: must be between 8KiB and 1MiB".into());
        }
        if !(1..=1000).contains(&self.http.max_headers) {
            problems.push("http.max_headers: must be between 1 and 1000".into());
        }
        if self.http.max_requests_per_ip == 0 {
            problems.push("http.max_requests_per_ip: must be at least 1".into());
        }
        if self.http.max_connections_per_ip == 0 {
            problems.push("http.max_connections_per_ip: must be at least 1".into());
        }
        if self.http.min_body_rate.bytes() > 0
            && !(Duration::from_millis(100)..=MAX_GRACE).contains(&self.http.body_rate_grace.0)
        {
            problems.push("http.body_rate_grace: must be between 100ms and 24h".into());
        }
        if self.http.shed_grace.0 > MAX_GRACE {
            problems.push("http.shed_grace: must be at most 24h".into());
        }
        if let Some(secret) = &self.redis.password {
            if let Err(e) = secret.resolve() {
                problems.push(format!("redis.password: {e}"));
            }
        }
        if let Some(lmtp) = &self.lmtp {
            problems.extend(lmtp.problems());
        }
        if let Some(secret) = &self.messages.token {
            if let Err(e) = secret.resolve() {
                problems.push(format!("messages.token: {e}"));
            }
        }
        if let Some(secret) = &self.admin.token {
            if let Err(e) = secret.resolve() {
                problems.push(format!("admin.token: {e}"));
            }
        }
        match &self.forms_security {
            Some(security) => match security.secret.resolve() {
                Ok(secret) if secret.expose().len() < 16 => problems.push(
                    "forms_security.secret: use at least 16 characters (openssl rand -hex 32)"
                        .into(),
                ),
                Ok(_) => {}
                Err(e) => problems.push(format!("forms_security.secret: {e}")),
            },
            None => {
                for form in &self.forms {
                    if form.token != crate::formguard::TokenMode::Off {
                        problems.push(format!(
                            "form `{}`.token: needs [forms_security] secret to sign tokens",
                            form.id
                        ));
                    }
                }
            }
        }
        for form in &self.forms {
            if form.token_min_age.0 >= form.token_max_age.0 {
                problems.push(format!(
                    "form `{}`.token_min_age: must be shorter than token_max_age",
                    form.id
                ));
            }
        }
        if self.admin.token.is_some() && self.admin.listen == self.http.listen {
            problems.push("admin.listen: must differ from http.listen".into());
        }
        if let Some(scan) = &self.scan {
            scan.validate(&mut problems);
        }
        if Duration::from(self.http.idle_timeout).is_zero() {
            problems.push("http.idle_timeout: must be more than 0s".into());
        }
        if self.http.max_connections == 0 {
            problems.push("http.max_connections: must be at least 1".into());
        }
        if let Some(tls) = &self.http.tls {
            for (key, path) in [("http.tls.cert", &tls.cert), ("http.tls.key", &tls.key)] {
                if !path.is_file() {
                    problems.push(format!("{key}: {} is not a readable file", path.display()));
                }
            }
        }
        self.rules.validate(&mut problems);
        self.mime.validate(&mut problems);
        self.audit.validate(&mut problems);
        let mut seen = HashSet::new();
        for (i, form) in self.forms.iter().enumerate() {
            let at = format!("form[{i}] ({})", form.id);
            if form.id.is_empty()
                || !form
                    .id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                problems.push(format!("{at}.id: use only letters, digits, `-` and `_`"));
            }
            if !seen.insert(form.id.as_str()) {
                problems.push(format!("{at}.id: declared twice"));
            }
            if let Some(redirect) = &form.redirect {
                if !(redirect.starts_with("http://") || redirect.starts_with("https://")) {
                    problems.push(format!("{at}.redirect: must be an http(s) URL"));
                }
            }
            for origin in &form.allowed_origins {
                if !(origin.starts_with("http://") || origin.starts_with("https://"))
                    || origin.trim_end_matches('/').matches('/').count() != 2
                {
                    problems.push(format!(
                        "{at}.allowed_origins: `{origin}` must be scheme and host only, like https://shop.example"
                    ));
                }
            }
            if form.max_size.bytes() == 0 {
                problems.push(format!("{at}.max_size: must be above 0"));
            }
            if form.retry_window.0 < Duration::from_secs(1) {
                problems.push(format!("{at}.retry_window: must be at least 1s"));
            }
        }
        let mut watched = HashSet::new();
        for (i, imap) in self.imap.iter().enumerate() {
            let at = format!("imap[{i}] ({})", imap.account());
            imap.validate(&at, &mut problems);
            for mailbox in &imap.mailboxes {
                if !watched.insert((imap.account().to_string(), mailbox.clone())) {
                    problems.push(format!(
                        "{at}.mailboxes: `{mailbox}` of account `{}` is watched twice; give one of the tables another `name`",
                        imap.account()
                    ));
                }
            }
        }
        problems.extend(self.backpressure.problems());
        problems.extend(self.memory.problems(&self.body_limits()));
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    /// Every limit on one body held in memory, by key: the budget must fit
    /// each of them.
    fn body_limits(&self) -> Vec<(String, ByteSize)> {
        let mut limits: Vec<(String, ByteSize)> = self
            .forms
            .iter()
            .map(|form| (format!("form `{}`.max_size", form.id), form.max_size))
            .collect();
        if self.messages.token.is_some() {
            limits.push(("messages.max_size".into(), self.messages.max_size));
        }
        if let Some(lmtp) = &self.lmtp {
            limits.push(("lmtp.max_size".into(), lmtp.max_size));
        }
        limits
    }

    pub fn form(&self, id: &str) -> Option<&FormConfig> {
        self.forms.iter().find(|f| f.id == id)
    }
}

/// The longest grace a connection limit may give (longer is "never", and
/// would overflow the clock arithmetic).
pub const MAX_GRACE: Duration = Duration::from_secs(24 * 3600);

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9090))
}
fn default_header_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}
fn default_idle_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(60))
}
fn default_request_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(60))
}
fn default_max_connections() -> usize {
    1024
}
fn default_max_connections_per_ip() -> usize {
    64
}
fn default_shed_grace() -> HumanDuration {
    HumanDuration(Duration::from_secs(1))
}
fn default_min_body_rate() -> ByteSize {
    ByteSize(500)
}
fn default_body_rate_grace() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
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
fn default_retry_after() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}
fn default_prefix() -> String {
    "intake".into()
}
fn default_redis_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(2))
}
fn default_message_max_size() -> ByteSize {
    ByteSize(50_000_000)
}
fn default_form_max_size() -> ByteSize {
    ByteSize(10_000_000)
}
fn default_max_files() -> usize {
    5
}
fn default_honeypot() -> String {
    "_gotcha".into()
}
fn default_token_min_age() -> HumanDuration {
    HumanDuration(Duration::from_secs(3))
}
fn default_token_max_age() -> HumanDuration {
    HumanDuration(Duration::from_secs(2 * 3600))
}
fn default_retry_window() -> HumanDuration {
    HumanDuration(Duration::from_secs(3600))
}
fn default_max_fields() -> usize {
    100
}
fn default_email_field() -> String {
    "email".into()
}
fn default_name_field() -> String {
    "name".into()
}
fn default_message_field() -> String {
    "message".into()
}
fn default_log_level() -> String {
    "info".into()
}
fn default_true() -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "[redis]\nurl = \"redis://127.0.0.1:16379\"\n";

    #[test]
    fn minimal_config_gets_sensible_defaults() {
        let c = Config::from_toml(MINIMAL).expect("minimal config parses");
        assert_eq!(c.http.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.redis.prefix, "intake");
        assert_eq!(c.messages.max_size.bytes(), 50_000_000);
        assert!(c.validate().is_ok());
    }

    #[test]
    fn hardening_limits_and_form_tokens_are_validated_together() {
        let text = format!(
            "{MINIMAL}[http]\nmax_header_bytes = \"1KiB\"\nmax_headers = 0\nmax_requests_per_ip = 0\n\
             max_connections_per_ip = 0\nbody_rate_grace = \"10ms\"\nshed_grace = \"2d\"\n\
             [[form]]\nid = \"contact\"\ntoken = \"required\"\ntoken_min_age = \"3h\"\n"
        );
        let problems = Config::from_toml(&text).unwrap().validate().unwrap_err();
        for key in [
            "http.max_header_bytes",
            "http.max_headers",
            "http.max_requests_per_ip",
            "http.max_connections_per_ip",
            "http.body_rate_grace",
            "http.shed_grace",
            "needs [forms_security] secret",
            "token_min_age",
        ] {
            assert!(
                problems.iter().any(|p| p.contains(key)),
                "no problem names {key}: {problems:?}"
            );
        }
        let c = Config::from_toml(MINIMAL).unwrap();
        assert_eq!(c.http.max_header_bytes.bytes(), 32 * 1024);
        assert_eq!(c.http.max_requests_per_ip, 32);
        assert_eq!(c.http.max_connections_per_ip, 64);
        assert_eq!(c.http.min_body_rate.bytes(), 500);
    }

    #[test]
    fn the_dev_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/dev/intake.toml");
        let text = std::fs::read_to_string(path).unwrap();
        let c = Config::from_toml(&text).expect("deploy/dev/intake.toml parses");
        assert_eq!(c.http.max_requests_per_ip, 32);
        // The dev LMTP port is fixed (README.md, "The dev stack").
        let lmtp = c.lmtp.as_ref().expect("the dev config has [lmtp]");
        assert_eq!(lmtp.listen.to_string(), "127.0.0.1:2424");
        assert!(lmtp.problems().is_empty(), "{:?}", lmtp.problems());
    }

    #[test]
    fn the_body_budget_must_fit_every_body_limit() {
        let text = format!(
            "{MINIMAL}[memory]\nbody_budget = \"20MB\"\n\
             [lmtp]\nlisten = \"127.0.0.1:2424\"\nmax_size = \"30MB\"\n\
             [[form]]\nid = \"contact\"\nmax_size = \"10MB\"\n"
        );
        let problems = Config::from_toml(&text).unwrap().validate().unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("memory.body_budget") && problems[0].contains("lmtp.max_size"),
            "names the budget and the limit it cannot fit: {problems:?}"
        );
        let c = Config::from_toml(MINIMAL).unwrap();
        assert_eq!(c.memory.body_budget.bytes(), 256_000_000);
        assert_eq!(c.memory.body_wait.0, Duration::from_secs(10));
    }

    #[test]
    fn unknown_key_is_refused_by_name() {
        let err = Config::from_toml(&format!("{MINIMAL}[http]\nlisten_on = \"x\"\n"))
            .expect_err("unknown key must be refused");
        assert!(
            err.contains("listen_on"),
            "error should name the key: {err}"
        );
    }

    #[test]
    fn bad_duration_names_key_and_shape() {
        let err = Config::from_toml(&format!("{MINIMAL}[http]\nheader_timeout = \"soon\"\n"))
            .expect_err("bad duration must be refused");
        assert!(err.contains("header_timeout"), "names the key: {err}");
        assert!(err.contains("30s"), "shows an example: {err}");
    }

    #[test]
    fn every_semantic_problem_is_reported_at_once() {
        let text = r#"
            [redis]
            url = "http://wrong"
            [[form]]
            id = "contact us"
            redirect = "javascript:alert(1)"
            [[form]]
            id = "contact us"
            allowed_origins = ["https://shop.example/path"]
        "#;
        let c = Config::from_toml(text).expect("syntax is fine");
        let problems = c.validate().expect_err("must be invalid");
        assert_eq!(problems.len(), 6, "one line per problem: {problems:#?}");
    }

    #[test]
    fn secret_needs_exactly_one_source() {
        let s = Secret {
            env: None,
            file: None,
        };
        assert!(s.resolve().is_err());
        let s = Secret {
            env: Some("INTAKE_TEST_SURELY_UNSET_VAR".into()),
            file: None,
        };
        assert!(s.resolve().unwrap_err().contains("not set"));
    }
}
