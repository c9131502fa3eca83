//! The `[[imap]]` tables: one per account, each watching one or more
//! mailboxes. Every field has a safe default except where to connect and
//! who to log in as.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::secret::Secret;

use crate::units::{ByteSize, HumanDuration};

/// One IMAP account and the mailboxes of it the gateway takes mail from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImapConfig {
    /// Name of the account in logs, metrics and Redis keys; defaults to
    /// `username`. Keep it stable: the checkpoints and leases hang on it.
    #[serde(default)]
    pub name: Option<String>,
    /// Server host name; also the name its TLS certificate must carry.
    pub host: String,
    /// Server port; defaults to 993 for `tls = "implicit"`, else 143.
    #[serde(default)]
    pub port: Option<u16>,
    /// `implicit` (IMAPS, port 993), `starttls` (upgrade on port 143) or
    /// `none`, which is allowed only for a loopback host (tests).
    #[serde(default)]
    pub tls: TlsMode,
    /// PEM file of the CA(s) to trust instead of the system's roots (a
    /// private CA). The certificate is always verified.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The login name.
    pub username: String,
    /// `login` (IMAP LOGIN), `plain` (AUTHENTICATE PLAIN) or `xoauth2`
    /// (Gmail, Microsoft 365: `password` is then the bearer token).
    #[serde(default)]
    pub auth: AuthMethod,
    /// The password, or for `xoauth2` the access token; read again at every
    /// login, so a token refresher may rewrite the file.
    pub password: Secret,
    /// Mailboxes to take mail from, each watched on its own connection.
    #[serde(default = "default_mailboxes")]
    pub mailboxes: Vec<String>,
    /// What happens to a mail once it is stored: `move` it to
    /// `processed_folder`, or flag it `seen` and leave it where it is.
    #[serde(default)]
    pub processed: Processed,
    /// Where processed mail is moved (with `processed = "move"`).
    #[serde(default = "default_processed_folder")]
    pub processed_folder: String,
    /// Where mail that is quarantined (virus, policy, over `max_size`) is
    /// moved, in every mode.
    #[serde(default = "default_quarantine_folder")]
    pub quarantine_folder: String,
    /// Send quarantined mail to the folder the server marks `\Junk`
    /// (RFC 6154; Gmail's `[Gmail]/Spam`, Microsoft 365's `Junk Email`)
    /// instead of `quarantine_folder`, which is used when it has none.
    #[serde(default)]
    pub quarantine_to_junk: bool,
    /// Create the two folders at start when they are missing. Bare names
    /// are put into the server's personal namespace first (Cyrus:
    /// `Processed` becomes `INBOX.Processed`); a folder that is missing and
    /// cannot be created stops the mailbox with an error saying so.
    #[serde(default = "default_true")]
    pub create_folders: bool,
    /// Mail larger than this is never downloaded: its headers are recorded
    /// in `quarantine` (kind `oversize`) and it is moved to
    /// `quarantine_folder`.
    #[serde(default = "default_max_size")]
    pub max_size: ByteSize,
    /// Most mails fetched in one UID FETCH.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Most bytes of mail held in memory for one batch.
    #[serde(default = "default_batch_bytes")]
    pub batch_bytes: ByteSize,
    /// Mails of a batch going through the pipeline at once.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// While a backlog of more than one batch is read, acknowledge (move or
    /// flag) on a second connection to the mailbox, so the server moves
    /// one batch while it sends the next. Turn off for a server that allows
    /// an account very few connections.
    #[serde(default = "default_true")]
    pub second_connection: bool,
    /// Wait for new mail with IDLE when the server offers it.
    #[serde(default = "default_true")]
    pub idle: bool,
    /// IDLE is ended and re-issued after this long (servers drop an IDLE
    /// after 30 minutes; RFC 2177 says re-issue within 29).
    #[serde(default = "default_idle_renew")]
    pub idle_renew: HumanDuration,
    /// How often to look for new mail when IDLE is off or not offered.
    #[serde(default = "default_poll_interval")]
    pub poll_interval: HumanDuration,
    /// Bound on the TCP connect and the TLS handshake.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: HumanDuration,
    /// Bound on every other command (login, select, fetch of one batch,
    /// move); a server silent for longer is taken as gone.
    #[serde(default = "default_command_timeout")]
    pub command_timeout: HumanDuration,
    /// Longest wait between reconnect attempts (exponential backoff with
    /// full jitter from 1s up to this).
    #[serde(default = "default_backoff_max")]
    pub backoff_max: HumanDuration,
    /// Wait after a refused login before trying again, so a wrong password
    /// does not hammer the server (or get the account locked).
    #[serde(default = "default_auth_backoff")]
    pub auth_backoff: HumanDuration,
    /// How long a replica's claim on a mailbox lasts without renewal;
    /// another replica takes the mailbox over within this time after the
    /// holder dies.
    #[serde(default = "default_lease_ttl")]
    pub lease_ttl: HumanDuration,
    /// Keep the original message in the envelope's `raw` field.
    #[serde(default = "default_true")]
    pub keep_raw: bool,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TlsMode {
    #[default]
    Implicit,
    Starttls,
    None,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    #[default]
    Login,
    Plain,
    Xoauth2,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Processed {
    #[default]
    Move,
    Seen,
}

impl ImapConfig {
    /// The account's name in logs, metrics and keys.
    pub fn account(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.username)
    }

    pub fn port(&self) -> u16 {
        self.port.unwrap_or(match self.tls {
            TlsMode::Implicit => 993,
            TlsMode::Starttls | TlsMode::None => 143,
        })
    }

    pub fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        if let Some(ca) = &mut self.ca_file {
            fix(ca);
        }
        if let Some(file) = &mut self.password.file {
            fix(file);
        }
    }
}

impl crate::validate::Validate for ImapConfig {
    /// Adds every problem of this table to `problems`; `at` names it.
    fn validate(&self, at: &str, problems: &mut Vec<String>) {
        if self.host.trim().is_empty() {
            problems.push(format!("{at}.host: must not be empty"));
        }
        if self.tls == TlsMode::None && !is_loopback(&self.host) {
            problems.push(format!(
                "{at}.tls: \"none\" sends the password in clear text and is allowed only for a loopback host, not `{}`; use \"implicit\" or \"starttls\"",
                self.host
            ));
        }
        if let Some(ca) = &self.ca_file {
            if !ca.is_file() {
                problems.push(format!(
                    "{at}.ca_file: {} is not a readable file",
                    ca.display()
                ));
            }
        }
        if self.username.is_empty() {
            problems.push(format!("{at}.username: must not be empty"));
        }
        if let Err(e) = self.password.resolve() {
            problems.push(format!("{at}.password: {e}"));
        }
        if self.account().is_empty() || self.account().contains(['{', '}']) {
            problems.push(format!("{at}.name: must be non-empty, without braces"));
        }
        if self.mailboxes.is_empty() {
            problems.push(format!("{at}.mailboxes: name at least one mailbox"));
        }
        for mailbox in &self.mailboxes {
            if mailbox.is_empty() || mailbox.contains(['{', '}', '\r', '\n', '"', '\\']) {
                problems.push(format!(
                    "{at}.mailboxes: `{mailbox}` must be non-empty, without braces, quotes, backslashes or line breaks"
                ));
            }
            if self.processed == Processed::Move && *mailbox == self.processed_folder {
                problems.push(format!(
                    "{at}.processed_folder: must differ from the mailbox `{mailbox}` it empties"
                ));
            }
            if *mailbox == self.quarantine_folder {
                problems.push(format!(
                    "{at}.quarantine_folder: must differ from the mailbox `{mailbox}`"
                ));
            }
        }
        for (key, folder) in [
            ("processed_folder", &self.processed_folder),
            ("quarantine_folder", &self.quarantine_folder),
        ] {
            if folder.is_empty() || folder.contains(['\r', '\n', '"', '\\']) {
                problems.push(format!(
                    "{at}.{key}: must be non-empty, without quotes, backslashes or line breaks"
                ));
            }
        }
        if self.max_size.bytes() == 0 {
            problems.push(format!("{at}.max_size: must be above 0"));
        }
        if self.batch_size == 0 || self.batch_size > 10_000 {
            problems.push(format!("{at}.batch_size: must be between 1 and 10000"));
        }
        if self.batch_bytes < self.max_size {
            problems.push(format!(
                "{at}.batch_bytes: must be at least max_size ({}), so the largest accepted mail fits a batch",
                self.max_size
            ));
        }
        if self.concurrency == 0 || self.concurrency > 256 {
            problems.push(format!("{at}.concurrency: must be between 1 and 256"));
        }
        if self.idle_renew.0 > Duration::from_secs(29 * 60)
            || self.idle_renew.0 < Duration::from_secs(1)
        {
            problems.push(format!("{at}.idle_renew: must be between 1s and 29m"));
        }
        if self.poll_interval.0 < Duration::from_millis(100) {
            problems.push(format!("{at}.poll_interval: must be at least 100ms"));
        }
        for (key, value) in [
            ("connect_timeout", self.connect_timeout),
            ("command_timeout", self.command_timeout),
            ("backoff_max", self.backoff_max),
            ("auth_backoff", self.auth_backoff),
        ] {
            if value.0 < Duration::from_millis(100) {
                problems.push(format!("{at}.{key}: must be at least 100ms"));
            }
        }
        if self.lease_ttl.0 < Duration::from_secs(1) {
            problems.push(format!("{at}.lease_ttl: must be at least 1s"));
        }
    }
}

/// Whether `host` names this machine, where a clear-text login is safe.
fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn default_mailboxes() -> Vec<String> {
    vec!["INBOX".into()]
}
fn default_processed_folder() -> String {
    "Processed".into()
}
fn default_quarantine_folder() -> String {
    "Quarantine".into()
}
fn default_max_size() -> ByteSize {
    ByteSize(25_000_000)
}
/// Large enough that the server's per-command cost (Dovecot's MOVE is
/// about 16 ms plus 30 us a mail on the dev stack) is spread thin;
/// `batch_bytes` still bounds the memory. deploy/bench/imap: 200 -> 1000
/// with concurrency 8 -> 32 took a 10,000-mail backlog from 5.6-6.5k to
/// 11k mails/s.
fn default_batch_size() -> usize {
    1000
}
fn default_batch_bytes() -> ByteSize {
    ByteSize(64_000_000)
}
/// Enough mails in flight to hide the Redis round trips of each one.
fn default_concurrency() -> usize {
    32
}
fn default_idle_renew() -> HumanDuration {
    HumanDuration(Duration::from_secs(25 * 60))
}
fn default_poll_interval() -> HumanDuration {
    HumanDuration(Duration::from_secs(60))
}
fn default_connect_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(15))
}
fn default_command_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(60))
}
fn default_backoff_max() -> HumanDuration {
    HumanDuration(Duration::from_secs(300))
}
fn default_auth_backoff() -> HumanDuration {
    HumanDuration(Duration::from_secs(900))
}
fn default_lease_ttl() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}
fn default_true() -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::Validate;

    fn parse(extra: &str) -> ImapConfig {
        toml::from_str(&format!(
            "host = \"imap.example.com\"\nusername = \"support\"\npassword = {{ env = \"PATH\" }}\n{extra}"
        ))
        .expect("parses")
    }

    #[test]
    fn defaults_are_safe() {
        let c = parse("");
        assert_eq!(c.tls, TlsMode::Implicit, "TLS unless said otherwise");
        assert_eq!(c.port(), 993);
        assert_eq!(c.mailboxes, ["INBOX"]);
        assert_eq!(c.processed, Processed::Move);
        assert!(
            c.second_connection,
            "a backlog is acknowledged on a second connection"
        );
        let mut problems = vec![];
        c.validate("imap[0]", &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
    }

    #[test]
    fn clear_text_is_refused_off_loopback() {
        let mut problems = vec![];
        parse("tls = \"none\"").validate("imap[0]", &mut problems);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("imap[0].tls"), "{problems:?}");
        let mut problems = vec![];
        let mut c = parse("tls = \"none\"");
        c.host = "127.0.0.1".into();
        c.validate("imap[0]", &mut problems);
        assert!(problems.is_empty(), "loopback may be clear: {problems:?}");
    }

    #[test]
    fn every_problem_is_named() {
        let mut problems = vec![];
        parse("mailboxes = [\"Processed\"]\nbatch_size = 0\nconcurrency = 0\nidle_renew = \"40m\"")
            .validate("imap[1]", &mut problems);
        assert_eq!(problems.len(), 4, "{problems:#?}");
    }

    #[test]
    fn unknown_key_is_refused() {
        let err = toml::from_str::<ImapConfig>(
            "host = \"h\"\nusername = \"u\"\npassword = { env = \"X\" }\nfolder = \"x\"",
        )
        .expect_err("unknown key");
        assert!(err.to_string().contains("folder"), "{err}");
    }
}
