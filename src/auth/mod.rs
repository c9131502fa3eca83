//! Stage 1b, authenticate: who really sent a mail. Between parse and
//! guard, so the rules can key on the answer: DKIM (every signature), SPF
//! (the SMTP client), DMARC (alignment with `From:` and the domain's
//! policy) and ARC (a forwarder's chain and what its sealer saw), checked
//! here against DNS ([`verify`]) or read from a trusted host's
//! `Authentication-Results` header ([`results`]).
//!
//! The verdicts land in the envelope's `auth` and in one
//! `Authentication-Results` header of intake's own on top of the stored
//! headers. Nothing here refuses or loses a mail: DNS that does not answer
//! is `temperror`, and what to do with a failing mail is the rules'
//! business (`rules/15-authentication.toml`).

pub mod config;
pub mod received;
pub mod results;
pub mod verify;

use std::net::IpAddr;

pub use config::{AuthConfig, Prefer};
use results::ResultsHeader;
pub use verify::{SetupError, Smtp, Verifier};

use crate::envelope::{
    ArcCheck, Auth, AuthOrigin, AuthResult, DkimCheck, DmarcCheck, Envelope, Header, Source,
    SpfCheck,
};
use crate::telemetry::events::auth::{AuthChecked, AuthTempError};
use crate::telemetry::events::emit;

/// The tag of a mail whose checks could not finish (DNS down).
pub const TEMPERROR_TAG: &str = "auth-temperror";

/// The stage: the `[auth]` settings and, when they verify, the resolver.
#[derive(Clone)]
pub struct Authenticator {
    config: AuthConfig,
    verifier: Option<Verifier>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("authserv_id", &self.config.authserv_id)
            .field("verify", &self.verifier.is_some())
            .finish()
    }
}

impl Authenticator {
    pub fn new(config: AuthConfig) -> Result<Authenticator, SetupError> {
        let verifier = config.verify.then(|| Verifier::new(&config)).transpose()?;
        Ok(Authenticator { config, verifier })
    }

    /// The `[auth]` of a gateway config file, ready to check mail; `None`
    /// when the file has no such table (`intake rules explain --config`,
    /// `intake replay --config`).
    pub fn from_gateway_config(path: &std::path::Path) -> Result<Option<Authenticator>, String> {
        AuthConfig::from_gateway_config(path)?
            .map(|config| Authenticator::new(config).map_err(|e| e.to_string()))
            .transpose()
    }

    /// The same settings without DNS: recorded headers only.
    pub fn recorded_only(&self) -> Authenticator {
        Authenticator {
            config: self.config.clone(),
            verifier: None,
        }
    }

    pub fn config(&self) -> &AuthConfig {
        &self.config
    }

    /// The verdicts as lines for people (`intake rules explain`).
    pub fn describe(auth: &Auth) -> Vec<(&'static str, String)> {
        let or_dash = |v: Option<&str>| v.unwrap_or("-").to_string();
        let mut lines = vec![(
            "from",
            match (&auth.from, &auth.authserv_id) {
                (AuthOrigin::Verified, _) => "verified here".to_string(),
                (AuthOrigin::TrustedHeader, Some(id)) => format!("trusted header of {id}"),
                (AuthOrigin::TrustedHeader, None) => "no trusted header".to_string(),
            },
        )];
        if auth.dkim.is_empty() {
            lines.push(("dkim", "none (no signature)".into()));
        }
        for d in &auth.dkim {
            lines.push((
                "dkim",
                format!(
                    "{} d={} s={}",
                    d.result,
                    or_dash(d.domain.as_deref()),
                    or_dash(d.selector.as_deref())
                ),
            ));
        }
        lines.push((
            "spf",
            auth.spf.as_ref().map_or("not checked".into(), |s| {
                format!(
                    "{} {} (client {}, helo {})",
                    s.result,
                    or_dash(s.domain.as_deref()),
                    or_dash(s.client_address.as_deref()),
                    or_dash(s.helo.as_deref())
                )
            }),
        ));
        lines.push((
            "dmarc",
            auth.dmarc.as_ref().map_or("not checked".into(), |d| {
                format!(
                    "{} {} policy {}",
                    d.result,
                    or_dash(d.domain.as_deref()),
                    d.policy.map_or("-", |p| p.name())
                )
            }),
        ));
        if let Some(arc) = &auth.arc {
            lines.push((
                "arc",
                format!("{} sealer {}", arc.result, or_dash(arc.sealer.as_deref())),
            ));
        }
        lines.push(("aligned_from", auth.aligned_from.to_string()));
        lines.push(("auth_domain", or_dash(auth.authenticated_domain.as_deref())));
        lines.push(("own_domain", auth.own_domain.to_string()));
        for note in &auth.notes {
            lines.push(("note", note.clone()));
        }
        lines
    }

    /// [`Authenticator::authenticate`] for a parsed mail, from the raw
    /// bytes it keeps for the scanner.
    pub async fn authenticate_message(&self, message: &mut crate::parse::Message) {
        let Some(raw) = message
            .scan_targets
            .iter()
            .find(|t| t.whole_message)
            .map(|t| t.data.clone())
        else {
            return;
        };
        self.authenticate(&mut message.envelope, &raw).await;
    }

    /// Fills `envelope.auth` of a mail from its `raw` bytes, and puts
    /// intake's own `Authentication-Results` on top of its headers. Forms
    /// are left alone.
    pub async fn authenticate(&self, envelope: &mut Envelope, raw: &[u8]) {
        if envelope.channel != crate::envelope::Channel::Email {
            return;
        }
        let auth = self.check(envelope, raw).await;
        let unfinished = record(&auth);
        if !unfinished.is_empty() {
            emit(AuthTempError {
                id: &envelope.id,
                checks: &unfinished.join(", "),
            });
            if !envelope.abuse.tags.iter().any(|t| t == TEMPERROR_TAG) {
                envelope.abuse.tags.push(TEMPERROR_TAG.into());
            }
        }
        let own = &self.config.authserv_id;
        // Only intake writes its own id: one that came with the mail is a
        // forgery meant for the desk.
        envelope.headers.retain(|h| {
            !(h.name.eq_ignore_ascii_case("Authentication-Results")
                && results::parse(&h.value)
                    .is_some_and(|r| r.authserv_id.eq_ignore_ascii_case(own)))
        });
        envelope.headers.insert(
            0,
            Header {
                name: "Authentication-Results".into(),
                value: results::write(own, &auth),
            },
        );
        envelope.auth = Some(auth);
    }

    /// The verdicts for one mail, without changing it.
    pub async fn check(&self, envelope: &Envelope, raw: &[u8]) -> Auth {
        let config = &self.config;
        let from_domain = envelope
            .from
            .as_ref()
            .and_then(|a| a.email.rsplit_once('@'))
            .map(|(_, d)| d.to_ascii_lowercase());
        let trusted = results::topmost_trusted(
            header_values(envelope, "Authentication-Results"),
            &config.trusted_authserv_ids,
        );
        let own = match &self.verifier {
            Some(verifier) => {
                let smtp = smtp_of(envelope, config);
                let checks = verifier.verify(raw, &smtp);
                Some(
                    tokio::time::timeout(config.deadline.0, checks)
                        .await
                        .unwrap_or_else(|_| past_deadline(&smtp, config)),
                )
            }
            None => None,
        };
        let mut auth = match (own, trusted, config.prefer) {
            // Own checks that could not see the SMTP client lose to a
            // trusted host that did.
            (Some(own), Some(header), Prefer::Own) if own.spf.is_none() => {
                from_header(&header, own.notes)
            }
            (Some(own), _, Prefer::Own) => own,
            (_, Some(header), Prefer::Trusted) | (None, Some(header), Prefer::Own) => {
                from_header(&header, Vec::new())
            }
            (Some(own), None, Prefer::Trusted) => own,
            (None, None, _) => Auth {
                from: AuthOrigin::TrustedHeader,
                notes: vec!["no Authentication-Results header from a trusted host".into()],
                ..Auth::default()
            },
        };
        settle(&mut auth, from_domain.as_deref(), config);
        auth
    }
}

/// The verdicts of a mail whose checks ran past `auth.deadline`: not
/// known, so `temperror`, as DNS that does not answer.
fn past_deadline(smtp: &Smtp, config: &AuthConfig) -> Auth {
    Auth {
        spf: smtp.client.map(|ip| SpfCheck {
            result: AuthResult::Temperror,
            domain: None,
            client_address: Some(ip.to_string()),
            helo: smtp.helo.clone(),
        }),
        dmarc: Some(DmarcCheck {
            result: AuthResult::Temperror,
            domain: None,
            policy: None,
        }),
        from: AuthOrigin::Verified,
        notes: vec![format!(
            "the checks took longer than auth.deadline ({})",
            humantime::format_duration(config.deadline.0)
        )],
        ..Auth::default()
    }
}

/// Counts each verdict; returns the checks that ended in `temperror`.
fn record(auth: &Auth) -> Vec<&'static str> {
    let from = match auth.from {
        AuthOrigin::Verified => "verified",
        AuthOrigin::TrustedHeader => "trusted-header",
    };
    let checks = auth
        .dkim
        .iter()
        .map(|d| ("dkim", d.result))
        .chain(auth.spf.as_ref().map(|s| ("spf", s.result)))
        .chain(auth.dmarc.as_ref().map(|d| ("dmarc", d.result)))
        .chain(auth.arc.as_ref().map(|a| ("arc", a.result)));
    let mut unfinished = Vec::new();
    for (check, result) in checks {
        emit(AuthChecked {
            check,
            result: result.name(),
            from,
        });
        if result == AuthResult::Temperror && !unfinished.contains(&check) {
            unfinished.push(check);
        }
    }
    unfinished
}

/// What SPF needs, from the source (LMTP XFORWARD, mailgate flags) or,
/// failing that, a trusted host's `Received:` header.
fn smtp_of(envelope: &Envelope, config: &AuthConfig) -> Smtp {
    let (sender, client) = match &envelope.source {
        Source::Lmtp { sender, client, .. } => (Some(sender.clone()), client.as_ref()),
        Source::Mailgate { sender, client, .. } => (sender.clone(), client.as_ref()),
        Source::Imap { .. } => (
            header_values(envelope, "Return-Path").next().map(|v| {
                v.trim()
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_string()
            }),
            None,
        ),
        Source::Form { .. } => (None, None),
    };
    let address: Option<IpAddr> = client
        .and_then(|c| c.address.as_deref())
        .and_then(|a| a.trim().parse().ok());
    let mut smtp = Smtp {
        client: address,
        helo: client.and_then(|c| c.helo.clone()),
        mail_from: sender,
    };
    if smtp.client.is_none() {
        if let Some(seen) = received::client(
            header_values(envelope, "Received"),
            &config.trusted_received,
        ) {
            smtp.client = Some(seen.address);
            smtp.helo = smtp.helo.or(seen.helo);
        }
    }
    smtp
}

fn header_values<'a>(envelope: &'a Envelope, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    envelope
        .headers
        .iter()
        .filter(move |h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value.as_str())
}

/// The verdicts a trusted header states.
fn from_header(header: &ResultsHeader, notes: Vec<String>) -> Auth {
    let first = |method: &str| header.first(method);
    Auth {
        dkim: header
            .of("dkim")
            .map(|m| DkimCheck {
                result: m.result,
                domain: m
                    .property("header.d")
                    .or_else(|| {
                        m.property("header.i")
                            .and_then(|i| i.rsplit_once('@').map(|(_, d)| d))
                    })
                    .map(str::to_ascii_lowercase),
                selector: m.property("header.s").map(str::to_string),
            })
            .collect(),
        spf: first("spf").map(|m| SpfCheck {
            result: m.result,
            domain: m
                .property("smtp.mailfrom")
                .map(|v| {
                    v.rsplit_once('@')
                        .map_or(v, |(_, d)| d)
                        .to_ascii_lowercase()
                })
                .or_else(|| m.property("smtp.helo").map(str::to_ascii_lowercase)),
            client_address: None,
            helo: m.property("smtp.helo").map(str::to_string),
        }),
        dmarc: first("dmarc").map(|m| DmarcCheck {
            result: m.result,
            domain: m.property("header.from").map(str::to_ascii_lowercase),
            policy: m.property("policy.dmarc").and_then(|p| {
                match p.to_ascii_lowercase().as_str() {
                    "reject" => Some(crate::envelope::DmarcPolicy::Reject),
                    "quarantine" => Some(crate::envelope::DmarcPolicy::Quarantine),
                    "none" => Some(crate::envelope::DmarcPolicy::None),
                    _ => None,
                }
            }),
        }),
        arc: first("arc").map(|m| ArcCheck {
            result: m.result,
            sealer: m.property("header.d").map(str::to_ascii_lowercase),
            claims: Default::default(),
        }),
        from: AuthOrigin::TrustedHeader,
        authserv_id: Some(header.authserv_id.clone()),
        notes,
        ..Auth::default()
    }
}

/// Decides `aligned_from`, `authenticated_domain` and `own_domain` from
/// the checks.
fn settle(auth: &mut Auth, from_domain: Option<&str>, config: &AuthConfig) {
    let pass = |r: AuthResult| r == AuthResult::Pass;
    let dkim_pass: Vec<&str> = auth
        .dkim
        .iter()
        .filter(|d| pass(d.result))
        .filter_map(|d| d.domain.as_deref())
        .collect();
    let spf_pass = auth
        .spf
        .as_ref()
        .filter(|s| pass(s.result))
        .and_then(|s| s.domain.as_deref());
    auth.aligned_from = match (from_domain, &auth.dmarc) {
        (None, _) => false,
        (Some(_), Some(d)) if d.result != AuthResult::None => pass(d.result),
        // No DMARC record: relaxed alignment of a passing identity.
        (Some(from), _) => dkim_pass
            .iter()
            .copied()
            .chain(spf_pass)
            .any(|d| aligns(d, from)),
    };
    if !auth.aligned_from {
        if let Some(sealer) = arc_vouches(auth.arc.as_ref(), config) {
            auth.aligned_from = from_domain.is_some();
            auth.notes.push(format!(
                "dmarc passed before the trusted ARC sealer {sealer} forwarded it"
            ));
        }
    }
    auth.authenticated_domain = if auth.aligned_from {
        from_domain.map(str::to_string)
    } else {
        dkim_pass.first().copied().or(spf_pass).map(str::to_string)
    };
    auth.own_domain = from_domain.is_some_and(|from| {
        config
            .own_domains
            .iter()
            .any(|own| aligns(&own.to_ascii_lowercase(), from))
    });
}

/// The sealer of a passing chain, when it is trusted and says DMARC passed.
fn arc_vouches<'a>(arc: Option<&'a ArcCheck>, config: &AuthConfig) -> Option<&'a str> {
    let arc = arc.filter(|a| a.result == AuthResult::Pass)?;
    let sealer = arc.sealer.as_deref()?;
    let trusted = config
        .trusted_arc_sealers
        .iter()
        .any(|t| t.eq_ignore_ascii_case(sealer));
    (trusted && arc.claims.get("dmarc") == Some(&AuthResult::Pass)).then_some(sealer)
}

/// Relaxed alignment without a public-suffix list: the same domain, or
/// one a subdomain of the other when the shorter has at least two labels
/// (`mail.example.com` and `example.com`, never `com`).
pub fn aligns(a: &str, b: &str) -> bool {
    let (a, b) = (a.trim_end_matches('.'), b.trim_end_matches('.'));
    if a.eq_ignore_ascii_case(b) {
        return true;
    }
    let (short, long) = if a.len() < b.len() { (a, b) } else { (b, a) };
    short.contains('.')
        && long.len() > short.len()
        && long[long.len() - short.len()..].eq_ignore_ascii_case(short)
        && long.as_bytes()[long.len() - short.len() - 1] == b'.'
}

#[cfg(test)]
mod tests;
