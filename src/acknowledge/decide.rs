//! Whether a desk item is acknowledged, and to whom in which language:
//! a pure function of the item and the `[acknowledge]` section, so the
//! worker and `intake rules explain` can never disagree. What needs
//! Redis (the window per customer, the limit per network for forms) is
//! the worker's ([`super::queue`]), after this said yes.
//!
//! The order of the checks is the order of the reasons a sysadmin wants
//! to read first: is the door on at all, is there an address, is it a
//! robot (RFC 3834 section 2), is it a loop, is the sender who it claims.

use std::collections::BTreeSet;
use std::net::IpAddr;

use super::config::AcknowledgeConfig;
use crate::envelope::{Envelope, Source};

/// What the section compiles to for deciding.
#[derive(Debug, Clone)]
pub struct Policy {
    mail: bool,
    forms: bool,
    default_language: String,
    languages: BTreeSet<String>,
    overrides: Vec<super::config::Override>,
    ignore: Vec<String>,
    own: BTreeSet<String>,
    x_loop: String,
    authenticated_only: bool,
}

/// The decision for one item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Send(Plan),
    Skip(Skip),
}

/// An acknowledgement to make, if Redis agrees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The address it goes to (the envelope's `customer.email`).
    pub to: String,
    pub name: Option<String>,
    /// A language with templates.
    pub language: String,
    /// For a form post: the client's network, limited per window.
    pub network: Option<String>,
}

/// Why an item gets no acknowledgement; `reason()` is the metrics label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    /// Acknowledgements are off for this door.
    Off(String),
    /// Not a new message (an update, a re-drive of another kind).
    NotMessage(String),
    NoAddress,
    /// A bounce: the envelope sender is `<>`.
    NullSender,
    /// The address's local part is a robot's or a role's.
    RoleAddress {
        pattern: String,
    },
    /// A header says a machine sent it.
    Automatic {
        header: String,
        value: String,
    },
    /// A mailing list's mail.
    List {
        header: String,
    },
    /// The sender asked for no automatic replies (`X-Auto-Response-Suppress`).
    SuppressRequested {
        value: String,
    },
    /// Our own `X-Loop` came back.
    Loop,
    /// From one of the desk's own addresses.
    OwnAddress,
    /// `From:` did not authenticate, and only authenticated senders are
    /// answered.
    Unauthenticated,
    /// An acknowledgement already went to this customer within the window
    /// (decided by the worker).
    Window,
    /// The client network's forms had their acknowledgements for the
    /// window (decided by the worker).
    NetworkLimit,
    /// Stored longer ago than `stale_after` (decided by the worker).
    Stale,
    /// The entry cannot be read.
    Unusable(String),
}

impl Skip {
    pub fn reason(&self) -> &'static str {
        match self {
            Skip::Off(_) => "off",
            Skip::NotMessage(_) => "not_message",
            Skip::NoAddress => "no_address",
            Skip::NullSender => "null_sender",
            Skip::RoleAddress { .. } => "role_address",
            Skip::Automatic { .. } => "auto_submitted",
            Skip::List { .. } => "list",
            Skip::SuppressRequested { .. } => "suppress_requested",
            Skip::Loop => "loop",
            Skip::OwnAddress => "own_address",
            Skip::Unauthenticated => "unauthenticated",
            Skip::Window => "window",
            Skip::NetworkLimit => "network_limit",
            Skip::Stale => "stale",
            Skip::Unusable(_) => "unusable",
        }
    }

    /// The sentence after "would not acknowledge, because".
    pub fn because(&self) -> String {
        match self {
            Skip::Off(door) => format!("acknowledgements are off for {door}"),
            Skip::NotMessage(kind) => format!("the entry is a `{kind}`, not a new message"),
            Skip::NoAddress => "the item has no customer address".into(),
            Skip::NullSender => "it is a bounce (envelope sender <>)".into(),
            Skip::RoleAddress { pattern } => {
                format!("the address is a robot's or a role's (ignore_local_parts `{pattern}`)")
            }
            Skip::Automatic { header, value } => {
                format!("a machine sent it ({header}: {value})")
            }
            Skip::List { header } => format!("it is mailing-list mail ({header})"),
            Skip::SuppressRequested { value } => {
                format!("the sender asked for no automatic replies (X-Auto-Response-Suppress: {value})")
            }
            Skip::Loop => "it carries our own X-Loop: an acknowledgement came back".into(),
            Skip::OwnAddress => "it is from one of the desk's own addresses".into(),
            Skip::Unauthenticated => {
                "From: did not authenticate (no aligned DKIM, SPF or DMARC pass), and only authenticated senders are answered".into()
            }
            Skip::Window => "this customer had an acknowledgement within the window".into(),
            Skip::NetworkLimit => {
                "the client's network had its form acknowledgements for the window".into()
            }
            Skip::Stale => "it was stored longer ago than stale_after".into(),
            Skip::Unusable(why) => format!("the entry cannot be read: {why}"),
        }
    }
}

impl Policy {
    /// `auth_configured`: whether `[auth]` is on, which makes
    /// `authenticated_only` default to on. `languages`: those with
    /// templates.
    pub fn new(
        config: &AcknowledgeConfig,
        auth_configured: bool,
        languages: BTreeSet<String>,
    ) -> Policy {
        let from = super::config::mailbox(&config.from)
            .map(|m| m.email)
            .unwrap_or_default();
        let x_loop = config.x_loop.clone().unwrap_or_else(|| from.clone());
        let mut own: BTreeSet<String> = config
            .own_addresses
            .iter()
            .map(|a| a.trim().to_ascii_lowercase())
            .collect();
        own.insert(from.to_ascii_lowercase());
        own.insert(x_loop.to_ascii_lowercase());
        Policy {
            mail: config.mail,
            forms: config.forms,
            default_language: config.language.to_ascii_lowercase(),
            languages,
            overrides: config.overrides.clone(),
            ignore: config
                .ignore_local_parts
                .iter()
                .map(|p| p.trim().to_ascii_lowercase())
                .collect(),
            own,
            x_loop,
            authenticated_only: config.authenticated_only.unwrap_or(auth_configured),
        }
    }

    pub fn x_loop(&self) -> &str {
        &self.x_loop
    }

    pub fn authenticated_only(&self) -> bool {
        self.authenticated_only
    }

    /// The languages the defaults and overrides name that have no
    /// template: a start-up error.
    pub fn missing_languages(&self) -> Vec<String> {
        let mut named = vec![self.default_language.clone()];
        named.extend(self.overrides.iter().filter_map(|o| o.language.clone()));
        named
            .into_iter()
            .map(|l| l.to_ascii_lowercase())
            .filter(|l| !self.languages.contains(l))
            .collect()
    }

    /// The decision for a desk entry of `kind` carrying `envelope`.
    pub fn decide(&self, kind: &str, envelope: &Envelope) -> Decision {
        match self.check(kind, envelope) {
            Ok(plan) => Decision::Send(plan),
            Err(skip) => Decision::Skip(skip),
        }
    }

    fn check(&self, kind: &str, envelope: &Envelope) -> Result<Plan, Skip> {
        if kind != "message" {
            return Err(Skip::NotMessage(kind.to_string()));
        }
        let door = self.door(envelope);
        if !door.enabled {
            return Err(Skip::Off(door.name));
        }
        let Some(to) = envelope
            .customer
            .email
            .as_deref()
            .map(str::trim)
            .filter(|e| e.contains('@'))
        else {
            return Err(Skip::NoAddress);
        };
        let is_form = matches!(envelope.source, Source::Form { .. });
        if !is_form
            && envelope_sender(envelope).is_some_and(|s| s.trim_matches(['<', '>', ' ']).is_empty())
        {
            return Err(Skip::NullSender);
        }
        let lower = to.to_ascii_lowercase();
        let local = lower.rsplit_once('@').map_or(lower.as_str(), |(l, _)| l);
        let base = local.split_once('+').map_or(local, |(b, _)| b);
        if let Some(pattern) = self.ignore.iter().find(|p| glob(p, local) || glob(p, base)) {
            return Err(Skip::RoleAddress {
                pattern: pattern.clone(),
            });
        }
        if self.own.contains(&lower)
            || envelope
                .from
                .as_ref()
                .is_some_and(|f| self.own.contains(&f.email.to_ascii_lowercase()))
        {
            return Err(Skip::OwnAddress);
        }
        if !is_form {
            self.check_headers(envelope)?;
            if envelope.abuse.auto_submitted {
                return Err(Skip::Automatic {
                    header: "(delivery status report or auto-reply)".into(),
                    value: "detected at parse".into(),
                });
            }
            if self.authenticated_only && !envelope.auth.as_ref().is_some_and(|a| a.aligned_from) {
                return Err(Skip::Unauthenticated);
            }
        }
        let language = self.language(envelope, door.language.as_deref());
        let network = match &envelope.source {
            Source::Form { ip, .. } => Some(network_of(ip)),
            _ => None,
        };
        Ok(Plan {
            to: to.to_string(),
            name: envelope.customer.name.clone(),
            language,
            network,
        })
    }

    /// The RFC 3834 headers, each with its own reason.
    fn check_headers(&self, envelope: &Envelope) -> Result<(), Skip> {
        for header in &envelope.headers {
            let name = header.name.to_ascii_lowercase();
            let value = header.value.trim();
            let token = value
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            match name.as_str() {
                "x-loop"
                    if value
                        .to_ascii_lowercase()
                        .contains(&self.x_loop.to_ascii_lowercase()) =>
                {
                    return Err(Skip::Loop)
                }
                "auto-submitted" if !token.is_empty() && token != "no" => {
                    return Err(Skip::Automatic {
                        header: canonical(&name),
                        value: value.to_string(),
                    })
                }
                "precedence"
                    if ["bulk", "list", "junk", "auto_reply"].contains(&token.as_str()) =>
                {
                    return Err(Skip::Automatic {
                        header: canonical(&name),
                        value: value.to_string(),
                    })
                }
                "list-id" | "list-unsubscribe" | "list-post" => {
                    return Err(Skip::List {
                        header: canonical(&name),
                    })
                }
                "x-auto-response-suppress"
                    if value
                        .split(',')
                        .map(|t| t.trim().to_ascii_lowercase())
                        .any(|t| t == "all" || t == "autoreply" || t == "oof") =>
                {
                    return Err(Skip::SuppressRequested {
                        value: value.to_string(),
                    })
                }
                "x-autoreply" | "x-autorespond" | "x-ms-exchange-inbox-rules-loop" => {
                    return Err(Skip::Automatic {
                        header: canonical(&name),
                        value: value.to_string(),
                    })
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Forms: the customer's `Accept-Language` first; then the door's
    /// language, then the default.
    fn language(&self, envelope: &Envelope, door: Option<&str>) -> String {
        if let Source::Form {
            accept_language: Some(accept),
            ..
        } = &envelope.source
        {
            if let Some(found) = preferred_language(accept, &self.languages) {
                return found;
            }
        }
        door.map(str::to_ascii_lowercase)
            .filter(|l| self.languages.contains(l))
            .unwrap_or_else(|| self.default_language.clone())
    }

    fn door(&self, envelope: &Envelope) -> Door {
        let (name, default) = match &envelope.source {
            Source::Imap { account, .. } => (format!("IMAP account {account}"), self.mail),
            Source::Lmtp { recipients, .. } => {
                (format!("LMTP {}", recipients.join(", ")), self.mail)
            }
            Source::Mailgate { .. } => ("mailgate".into(), self.mail),
            Source::Form { form, .. } => (format!("form {form}"), self.forms),
        };
        let found = self
            .overrides
            .iter()
            .find(|o| door_matches(o, &envelope.source));
        Door {
            enabled: found.and_then(|o| o.enabled).unwrap_or(default),
            language: found.and_then(|o| o.language.clone()),
            name,
        }
    }
}

/// Whether an override names the door `source` came in by.
fn door_matches(o: &super::config::Override, source: &Source) -> bool {
    match source {
        Source::Imap { account, .. } => o
            .imap
            .as_deref()
            .is_some_and(|a| a.eq_ignore_ascii_case(account)),
        Source::Lmtp { recipients, .. } => o.lmtp_domain.as_deref().is_some_and(|d| {
            recipients
                .iter()
                .filter_map(|r| r.rsplit_once('@').map(|(_, domain)| domain))
                .any(|domain| domain.eq_ignore_ascii_case(d))
        }),
        Source::Mailgate { .. } => o.mailgate,
        Source::Form { form, .. } => o.form.as_deref() == Some(form.as_str()),
    }
}

struct Door {
    name: String,
    enabled: bool,
    language: Option<String>,
}

/// The envelope sender as the mail server said, or an IMAP mail's
/// `Return-Path:`; `None` when unknown.
pub fn envelope_sender(envelope: &Envelope) -> Option<&str> {
    match &envelope.source {
        Source::Lmtp { sender, .. } => Some(sender),
        Source::Mailgate { sender, .. } => sender.as_deref(),
        Source::Imap { .. } => envelope
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("return-path"))
            .map(|h| h.value.as_str()),
        Source::Form { .. } => None,
    }
}

/// `list-id` as `List-Id`: header names as people write them, whatever
/// case the mail (or the parser) gave them.
fn canonical(lower: &str) -> String {
    lower
        .split('-')
        .map(|word| {
            let mut chars = word.chars();
            chars.next().map_or(String::new(), |first| {
                first.to_ascii_uppercase().to_string() + chars.as_str()
            })
        })
        .collect::<Vec<_>>()
        .join("-")
}

/// `*` matches any run of characters; the rest matches itself.
pub fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(at) => rest = &rest[at + middle.len()..],
            None => return false,
        }
    }
    true
}

/// The first language of an `Accept-Language` (by q, then order) that has
/// templates; `es-ES` matches `es`.
pub fn preferred_language(accept: &str, languages: &BTreeSet<String>) -> Option<String> {
    let mut ranked: Vec<(u16, usize, String)> = accept
        .split(',')
        .enumerate()
        .filter_map(|(i, item)| {
            let mut parts = item.split(';');
            let tag = parts.next()?.trim().to_ascii_lowercase();
            let q = parts
                .find_map(|p| p.trim().strip_prefix("q=").map(str::to_string))
                .and_then(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            (!tag.is_empty() && q > 0.0).then_some(((q * 1000.0) as u16, i, tag))
        })
        .collect();
    ranked.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    ranked.into_iter().find_map(|(_, _, tag)| {
        if languages.contains(&tag) {
            return Some(tag);
        }
        let primary = tag.split('-').next().unwrap_or("").to_string();
        languages.contains(&primary).then_some(primary)
    })
}

/// A form client's network: its /24 (IPv4) or /48 (IPv6), as the rules
/// key unauthenticated mail.
pub fn network_of(ip: &str) -> String {
    match ip.parse::<IpAddr>() {
        Ok(IpAddr::V4(v4)) => {
            let o = v4.octets();
            format!("{}.{}.{}.0/24", o[0], o[1], o[2])
        }
        Ok(IpAddr::V6(v6)) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}::/48", s[0], s[1], s[2])
        }
        Err(_) => ip.to_string(),
    }
}
