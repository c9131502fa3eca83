//! The `[acknowledge]` section: who the acknowledgements come from, the
//! relay they go through, the templates they are made from, and which
//! doors acknowledge. Off without it.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::secret::Secret;
use crate::units::HumanDuration;
use crate::validate::Validate;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcknowledgeConfig {
    /// The `From:` of every acknowledgement, `"Soporte <support@shop.example>"`
    /// or a bare address: the desk's address, so that the customer's reply
    /// comes back to it.
    pub from: String,
    /// The SMTP relay acknowledgements are handed to.
    pub relay: RelayConfig,
    /// The folder of the templates, `<language>.txt` and an optional
    /// `<language>.html` each; relative to the config file.
    #[serde(default = "default_templates")]
    pub templates: PathBuf,
    /// The language used when a door does not say another, and when a
    /// form's `Accept-Language` names none with a template.
    #[serde(default = "default_language")]
    pub language: String,
    /// At most one acknowledgement per customer address in this window,
    /// shared by every replica through Redis.
    #[serde(default = "default_window")]
    pub window: HumanDuration,
    /// Acknowledge mail only when its `From:` authenticated (DKIM, SPF,
    /// DMARC alignment), so that forged senders get no backscatter. When
    /// unset: on when `[auth]` is configured, off otherwise.
    #[serde(default)]
    pub authenticated_only: Option<bool>,
    /// Local parts never answered: robots and role addresses. `*` matches
    /// any run of characters; case does not matter. Replaces the default
    /// list when set.
    #[serde(default = "default_ignore_local_parts")]
    pub ignore_local_parts: Vec<String>,
    /// The desk's own addresses besides `from`: mail from them is never
    /// answered (a loop between two of the shop's own mailboxes).
    #[serde(default)]
    pub own_addresses: Vec<String>,
    /// The `X-Loop` value acknowledgements carry; mail that comes back
    /// with it is never answered. Default: the `from` address.
    #[serde(default)]
    pub x_loop: Option<String>,
    /// Acknowledge mail (IMAP, LMTP, mailgate) unless an override says
    /// otherwise.
    #[serde(default = "yes")]
    pub mail: bool,
    /// Acknowledge form posts. Off by default: a bot can type anyone's
    /// address into a form.
    #[serde(default)]
    pub forms: bool,
    /// For forms: at most this many acknowledgements per client network
    /// (/24 for IPv4, /56 for IPv6) per window, whatever the addresses
    /// typed in.
    #[serde(default = "default_form_per_network")]
    pub form_per_network: u32,
    /// An item stored longer ago than this when its turn comes (the
    /// gateway was stopped for a day) gets no acknowledgement: "we have
    /// your request" a day late tells the customer nothing.
    #[serde(default = "default_stale_after")]
    pub stale_after: HumanDuration,
    /// Per door: on or off, and its language.
    #[serde(default, rename = "override")]
    pub overrides: Vec<Override>,
    /// A queued acknowledgement pending this long at a stopped replica is
    /// taken over by another.
    #[serde(default = "default_claim_after")]
    pub claim_after: HumanDuration,
    /// The first wait after the relay failed; it doubles up to `backoff_max`.
    #[serde(default = "default_backoff_initial")]
    pub backoff_initial: HumanDuration,
    #[serde(default = "default_backoff_max")]
    pub backoff_max: HumanDuration,
}

/// `[acknowledge.relay]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    pub host: String,
    /// Default: 465 for `tls = "implicit"`, else 587.
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub tls: RelayTls,
    /// SMTP AUTH (PLAIN or LOGIN, as the relay offers), with `password`.
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<Secret>,
    /// A CA file (PEM) to trust instead of the system's bundle.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// How long one hand-over may take, connection to the final answer.
    #[serde(default = "default_relay_timeout")]
    pub timeout: HumanDuration,
    /// The name given in EHLO. Default: the host's name.
    #[serde(default)]
    pub helo: Option<String>,
}

/// How the relay connection is protected.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RelayTls {
    /// Plain SMTP, then `STARTTLS`; a relay that does not offer it is
    /// refused.
    #[default]
    Starttls,
    /// TLS from the first byte (port 465).
    Implicit,
    /// No TLS: only for a relay on loopback.
    None,
}

/// One `[[acknowledge.override]]`: a door and what it does. Exactly one of
/// `imap`, `lmtp_domain`, `mailgate` and `form` names the door.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Override {
    /// An IMAP account (`support@shop.example`), as in `[[imap]]`.
    #[serde(default)]
    pub imap: Option<String>,
    /// The domain of an LMTP recipient (`support.shop.example`).
    #[serde(default)]
    pub lmtp_domain: Option<String>,
    /// Mail handed over by `intake mailgate` (`POST /v1/messages`).
    #[serde(default)]
    pub mailgate: bool,
    /// A form id.
    #[serde(default)]
    pub form: Option<String>,
    /// Acknowledge this door's items; unset keeps the default.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// This door's language; unset keeps the default (forms: the
    /// customer's `Accept-Language` first).
    #[serde(default)]
    pub language: Option<String>,
}

impl Override {
    /// The door, for messages: `imap support@...`, `form contact`.
    pub fn door(&self) -> String {
        let mut doors = Vec::new();
        if let Some(a) = &self.imap {
            doors.push(format!("imap {a}"));
        }
        if let Some(d) = &self.lmtp_domain {
            doors.push(format!("lmtp_domain {d}"));
        }
        if self.mailgate {
            doors.push("mailgate".into());
        }
        if let Some(f) = &self.form {
            doors.push(format!("form {f}"));
        }
        doors.join(" + ")
    }

    fn selectors(&self) -> usize {
        usize::from(self.imap.is_some())
            + usize::from(self.lmtp_domain.is_some())
            + usize::from(self.mailgate)
            + usize::from(self.form.is_some())
    }
}

impl AcknowledgeConfig {
    pub fn resolve_paths(&mut self, base: &Path) {
        if self.templates.is_relative() {
            self.templates = base.join(&self.templates);
        }
        if let Some(ca) = &mut self.relay.ca_file {
            if ca.is_relative() {
                *ca = base.join(&*ca);
            }
        }
        if let Some(file) = self.relay.password.as_mut().and_then(|p| p.file.as_mut()) {
            if file.is_relative() {
                *file = base.join(&*file);
            }
        }
    }

    pub fn port(&self) -> u16 {
        self.relay.port.unwrap_or(match self.relay.tls {
            RelayTls::Implicit => 465,
            _ => 587,
        })
    }
}

impl Validate for AcknowledgeConfig {
    fn validate(&self, at: &str, problems: &mut Vec<String>) {
        if mailbox(&self.from).is_none() {
            problems.push(format!(
                "{at}.from: `{}` is not an address; write \"Name <support@shop.example>\" or \"support@shop.example\"",
                self.from
            ));
        }
        if self.relay.host.trim().is_empty() {
            problems.push(format!("{at}.relay.host: must name the SMTP relay"));
        }
        if self.relay.tls == RelayTls::None && !is_loopback(&self.relay.host) {
            problems.push(format!(
                "{at}.relay.tls: \"none\" is only for a relay on loopback; `{}` needs \"starttls\" or \"implicit\"",
                self.relay.host
            ));
        }
        if self.relay.username.is_some() != self.relay.password.is_some() {
            problems.push(format!("{at}.relay: username and password go together"));
        }
        if self.relay.timeout.0.is_zero() {
            problems.push(format!("{at}.relay.timeout: must be above zero"));
        }
        if self.window.0.as_secs() < 60 {
            problems.push(format!(
                "{at}.window: at least 1m, or a flood gets one acknowledgement per few seconds"
            ));
        }
        if self.claim_after.0.as_secs() < 5 {
            problems.push(format!("{at}.claim_after: at least 5s"));
        }
        if self.backoff_initial.0.is_zero() || self.backoff_max < self.backoff_initial {
            problems.push(format!(
                "{at}.backoff_initial / backoff_max: above zero, and backoff_max at least backoff_initial"
            ));
        }
        if self.form_per_network == 0 {
            problems.push(format!(
                "{at}.form_per_network: at least 1 (set forms = false to acknowledge no form)"
            ));
        }
        if !is_language(&self.language) {
            problems.push(format!(
                "{at}.language: `{}` is not a language tag like \"es\" or \"en\"",
                self.language
            ));
        }
        for (i, pattern) in self.ignore_local_parts.iter().enumerate() {
            if pattern.trim().is_empty() || pattern.contains('@') {
                problems.push(format!(
                    "{at}.ignore_local_parts[{i}]: `{pattern}` must be a local part (no @), `*` for any run"
                ));
            }
        }
        for (i, o) in self.overrides.iter().enumerate() {
            if o.selectors() != 1 {
                problems.push(format!(
                    "{at}.override[{i}]: name exactly one door (imap, lmtp_domain, mailgate = true or form), not `{}`",
                    o.door()
                ));
            }
            if let Some(lang) = &o.language {
                if !is_language(lang) {
                    problems.push(format!(
                        "{at}.override[{i}].language: `{lang}` is not a language tag"
                    ));
                }
            }
        }
    }
}

/// `"Name <a@b>"` or `"a@b"`, as an address.
pub fn mailbox(text: &str) -> Option<crate::envelope::Address> {
    let parsed: lettre::message::Mailbox = text.trim().parse().ok()?;
    Some(crate::envelope::Address {
        email: parsed.email.to_string(),
        name: parsed.name.filter(|n| !n.is_empty()),
    })
}

/// `es`, `en`, `pt-br`: what a template file may be called.
pub fn is_language(tag: &str) -> bool {
    !tag.is_empty()
        && tag.len() <= 16
        && tag
            .split('-')
            .all(|part| !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric()))
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn yes() -> bool {
    true
}
fn default_templates() -> PathBuf {
    PathBuf::from("acknowledge")
}
fn default_language() -> String {
    "es".into()
}
fn default_window() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(24 * 3600))
}
fn default_stale_after() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(12 * 3600))
}
fn default_form_per_network() -> u32 {
    3
}
fn default_claim_after() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(60))
}
fn default_backoff_initial() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(1))
}
fn default_backoff_max() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(300))
}
fn default_relay_timeout() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(30))
}

/// Robots and role addresses (RFC 3834 section 2, and what desks learnt):
/// bounces, list servers, and senders that say they read nothing.
pub fn default_ignore_local_parts() -> Vec<String> {
    [
        "mailer-daemon",
        "postmaster",
        "noreply",
        "no-reply",
        "no_reply",
        "donotreply",
        "do-not-reply",
        "do_not_reply",
        "*-noreply",
        "noreply-*",
        "bounce",
        "bounces",
        "bounce-*",
        "*-bounces",
        "*+bounces",
        "listserv",
        "majordomo",
        "mailman",
        "*-request",
        "owner-*",
        "*-owner",
        "root",
        "daemon",
        "nobody",
        "abuse",
        "notifications",
        "notification",
        "auto-reply",
        "autoreply",
        "autoresponder",
    ]
    .into_iter()
    .map(String::from)
    .collect()
}
