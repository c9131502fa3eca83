//! intake's own checks, against DNS, with the `mail-auth` crate: every
//! DKIM signature, SPF for the SMTP client, the ARC chain, then DMARC from
//! those. DNS that does not answer makes a check `temperror`; nothing here
//! fails the mail.

use std::net::IpAddr;
use std::time::Duration;

use mail_auth::hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use mail_auth::{
    dmarc::verify::DmarcParameters, spf::verify::SpfParameters, AuthenticatedMessage, DkimResult,
    DmarcResult, MessageAuthenticator, SpfResult,
};

use super::config::AuthConfig;
use super::results;
use crate::envelope::{
    ArcCheck, Auth, AuthOrigin, AuthResult, DkimCheck, DmarcCheck, DmarcPolicy, SpfCheck,
};

/// What SPF checks: the client, its greeting, the envelope sender.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Smtp {
    pub client: Option<IpAddr>,
    pub helo: Option<String>,
    /// `MAIL FROM`; empty for a bounce; `None` when not known.
    pub mail_from: Option<String>,
}

/// The DNS side: a resolver with its own bounded cache.
#[derive(Clone)]
pub struct Verifier {
    dns: MessageAuthenticator,
    /// The name SPF's macros call this host (`%{r}`).
    host: String,
}

/// The resolver could not be set up (an unreadable `/etc/resolv.conf`).
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the DNS resolver for [auth]: {0}; name the servers in auth.nameservers")]
pub struct SetupError(String);

impl Verifier {
    pub fn new(config: &AuthConfig) -> Result<Verifier, SetupError> {
        let mut options = ResolverOpts::default();
        options.timeout = config.timeout.0;
        options.attempts = config.attempts;
        options.cache_size = config.cache_entries;
        // A record that is missing is remembered briefly too, so a flood
        // naming a domain without DMARC asks once, not once per mail.
        options.negative_min_ttl = Some(Duration::from_secs(30));
        let dns = if config.nameservers.is_empty() {
            let (system, _) = mail_auth::hickory_resolver::system_conf::read_system_conf()
                .map_err(|e| SetupError(e.to_string()))?;
            MessageAuthenticator::new(system, options)
        } else {
            let servers = config
                .nameservers
                .iter()
                .map(|addr| {
                    let mut server = NameServerConfig::udp_and_tcp(addr.ip());
                    for connection in &mut server.connections {
                        connection.port = addr.port();
                    }
                    server
                })
                .collect();
            MessageAuthenticator::new(ResolverConfig::from_name_servers(servers), options)
        }
        .map_err(|e| SetupError(e.to_string()))?;
        Ok(Verifier {
            dns,
            host: config.authserv_id.clone(),
        })
    }

    /// Checks one raw mail. `notes` collects why a check did not run.
    pub async fn verify(&self, raw: &[u8], smtp: &Smtp) -> Auth {
        let mut notes = Vec::new();
        let Some(message) = AuthenticatedMessage::parse(raw) else {
            notes.push("the mail's headers cannot be read for authentication".into());
            return Auth {
                from: AuthOrigin::Verified,
                notes,
                ..Auth::default()
            };
        };
        let mail_from = smtp.mail_from.as_deref().unwrap_or_default();
        let helo = smtp.helo.as_deref().unwrap_or_default();
        let spf = async {
            let ip = smtp.client?;
            // The MAIL FROM identity, which DMARC aligns; the HELO
            // identity only for a bounce, which has none (RFC 7208 2.4).
            let params = match (mail_from.is_empty(), helo.is_empty()) {
                (false, _) => SpfParameters::verify_mail_from(
                    ip,
                    if helo.is_empty() { "unknown" } else { helo },
                    &self.host,
                    mail_from,
                ),
                (true, false) => SpfParameters::verify_ehlo(ip, helo, &self.host),
                (true, true) => return None,
            };
            Some(self.dns.verify_spf(params).await)
        };
        let (dkim, arc, spf) = tokio::join!(
            self.dns.verify_dkim(&message),
            self.dns.verify_arc(&message),
            spf
        );
        if smtp.client.is_none() {
            notes.push("spf: no SMTP client address (no XFORWARD, mailgate flag or trusted Received header)".into());
        } else if spf.is_none() {
            notes.push("spf: neither an envelope sender nor a HELO name".into());
        }
        let spf_for_dmarc = spf
            .clone()
            .unwrap_or_else(|| mail_auth::SpfOutput::new(String::new()));
        let mail_from_domain = mail_from
            .rsplit_once('@')
            .map_or(helo, |(_, d)| d)
            .to_string();
        let dmarc = self
            .dns
            .verify_dmarc(DmarcParameters::new(
                &message,
                &dkim,
                &mail_from_domain,
                &spf_for_dmarc,
            ))
            .await;

        let dkim_checks = dkim
            .iter()
            .map(|out| DkimCheck {
                result: dkim_result(out.result()),
                domain: out.signature().map(|s| s.d.to_ascii_lowercase()),
                selector: out.signature().map(|s| s.s.clone()),
            })
            .collect();
        let spf_check = spf.map(|out| SpfCheck {
            result: spf_result(out.result()),
            domain: Some(out.domain().to_ascii_lowercase()).filter(|d| !d.is_empty()),
            client_address: smtp.client.map(|ip| ip.to_string()),
            helo: smtp.helo.clone(),
        });
        let dmarc_check = (!dmarc.domain().is_empty()).then(|| DmarcCheck {
            result: dmarc_result(&dmarc.result()),
            domain: Some(dmarc.domain().to_string()),
            policy: dmarc.dmarc_record().map(|_| match dmarc.policy() {
                mail_auth::dmarc::Policy::Reject => DmarcPolicy::Reject,
                mail_auth::dmarc::Policy::Quarantine => DmarcPolicy::Quarantine,
                _ => DmarcPolicy::None,
            }),
        });
        let arc_check = arc_check(&arc);
        Auth {
            dkim: dkim_checks,
            spf: spf_check,
            dmarc: dmarc_check,
            arc: arc_check,
            from: AuthOrigin::Verified,
            notes,
            ..Auth::default()
        }
    }
}

fn arc_check(arc: &mail_auth::ArcOutput<'_>) -> Option<ArcCheck> {
    let latest = arc.sets().iter().max_by_key(|set| set.seal.header.i)?;
    let claims = std::str::from_utf8(latest.results.value)
        .ok()
        .and_then(results::parse_arc)
        .map(|header| {
            header
                .methods
                .into_iter()
                .map(|m| (m.method, m.result))
                .collect()
        })
        .unwrap_or_default();
    Some(ArcCheck {
        result: dkim_result(arc.result()),
        sealer: Some(latest.seal.header.d.to_ascii_lowercase()),
        claims,
    })
}

fn dkim_result(result: &DkimResult) -> AuthResult {
    match result {
        DkimResult::Pass => AuthResult::Pass,
        // A body that no longer matches its signed hash is a signature
        // that does not verify: `fail` (RFC 6376 6.1.3), though mail-auth
        // files it as neutral.
        DkimResult::Neutral(mail_auth::Error::Dkim(
            mail_auth::dkim::DkimError::FailedBodyHashMatch,
        )) => AuthResult::Fail,
        DkimResult::Neutral(_) => AuthResult::Neutral,
        DkimResult::Fail(_) => AuthResult::Fail,
        DkimResult::PermError(_) => AuthResult::Permerror,
        DkimResult::TempError(_) => AuthResult::Temperror,
        DkimResult::None => AuthResult::None,
    }
}

fn spf_result(result: SpfResult) -> AuthResult {
    match result {
        SpfResult::Pass => AuthResult::Pass,
        SpfResult::Fail => AuthResult::Fail,
        SpfResult::SoftFail => AuthResult::Softfail,
        SpfResult::Neutral => AuthResult::Neutral,
        SpfResult::TempError => AuthResult::Temperror,
        SpfResult::PermError => AuthResult::Permerror,
        SpfResult::None => AuthResult::None,
    }
}

fn dmarc_result(result: &DmarcResult) -> AuthResult {
    match result {
        DmarcResult::Pass => AuthResult::Pass,
        DmarcResult::Fail(_) => AuthResult::Fail,
        DmarcResult::TempError(_) => AuthResult::Temperror,
        DmarcResult::PermError(_) => AuthResult::Permerror,
        DmarcResult::None => AuthResult::None,
    }
}
