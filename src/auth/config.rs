//! The `[auth]` section: sender authentication (DKIM, SPF, DMARC, ARC).
//! Without it no mail is checked and envelopes carry no `auth`.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use crate::units::HumanDuration;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// The name intake's own `Authentication-Results` header carries
    /// (RFC 8601 authserv-id): the gateway's host name, as the desk should
    /// trust it. A header claiming this name in an incoming mail is
    /// dropped from the envelope's headers, since only intake writes it.
    #[serde(default = "default_authserv_id")]
    pub authserv_id: String,
    /// Check DKIM, SPF, DMARC and ARC here against DNS. Off: only trusted
    /// `Authentication-Results` headers are read.
    #[serde(default = "yes")]
    pub verify: bool,
    /// DNS servers to ask (`"192.0.2.53:53"`); empty: the system's
    /// resolver (`/etc/resolv.conf`).
    #[serde(default)]
    pub nameservers: Vec<SocketAddr>,
    /// How long one DNS query may take before it is tried again or given
    /// up: a check whose DNS does not answer is `temperror`, and the mail
    /// goes on.
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
    /// How often a query is sent before it is given up.
    #[serde(default = "default_attempts")]
    pub attempts: usize,
    /// The most all of one mail's checks may take together: a mail naming
    /// domains whose DNS is slow (a flood of forged senders, each a new
    /// domain) is `temperror` past it, never a session held for minutes.
    #[serde(default = "default_deadline")]
    pub deadline: HumanDuration,
    /// Most DNS answers kept (each for its TTL); bounds the cache's memory.
    #[serde(default = "default_cache_entries")]
    pub cache_entries: u64,
    /// The authserv-ids whose `Authentication-Results` are believed: the
    /// shop's own MX (rspamd, OpenDMARC), or `mx.google.com` /
    /// `*.prod.outlook.com` for mailboxes they host. Only the topmost
    /// header with one of these ids is read; every other is ignored as
    /// possibly forged.
    #[serde(default)]
    pub trusted_authserv_ids: Vec<String>,
    /// Which verdicts win when a mail has both intake's own and a trusted
    /// header's.
    #[serde(default)]
    pub prefer: Prefer,
    /// Hosts whose `Received:` header names the SMTP client (`by
    /// mx.shop.example`): where SPF's client address and HELO come from
    /// for IMAP mail, and for mail servers that pass neither.
    #[serde(default)]
    pub trusted_received: Vec<String>,
    /// ARC sealers (forwarders, mailing lists: their `d=`) whose word is
    /// taken that a mail passed DMARC before they changed it.
    #[serde(default)]
    pub trusted_arc_sealers: Vec<String>,
    /// The shop's own domains: mail claiming one of them in `From:`
    /// without authenticating is phishing of the agents (`own_domain` in
    /// the rules).
    #[serde(default)]
    pub own_domains: Vec<String>,
}

/// Whose verdicts win.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Prefer {
    /// intake's own; a trusted header only where intake could not check
    /// (no SMTP client address for SPF).
    #[default]
    Own,
    /// The trusted header's, when the mail has one.
    Trusted,
}

impl crate::validate::Validate for AuthConfig {
    fn validate(&self, at: &str, problems: &mut Vec<String>) {
        if !is_hostname(&self.authserv_id) {
            problems.push(format!(
                "{at}.authserv_id: {:?} is not a host name (letters, digits, '-', '.')",
                self.authserv_id
            ));
        }
        let timeout = self.timeout.0;
        if timeout < Duration::from_millis(50) || timeout > Duration::from_secs(30) {
            problems.push(format!("{at}.timeout: must be between 50ms and 30s"));
        }
        if self.deadline.0 < timeout || self.deadline.0 > Duration::from_secs(60) {
            problems.push(format!(
                "{at}.deadline: must be between {at}.timeout and 60s"
            ));
        }
        if !(1..=5).contains(&self.attempts) {
            problems.push(format!("{at}.attempts: must be between 1 and 5"));
        }
        if !(16..=10_000_000).contains(&self.cache_entries) {
            problems.push(format!(
                "{at}.cache_entries: must be between 16 and 10000000"
            ));
        }
        for (key, names) in [
            ("trusted_authserv_ids", &self.trusted_authserv_ids),
            ("trusted_received", &self.trusted_received),
            ("trusted_arc_sealers", &self.trusted_arc_sealers),
            ("own_domains", &self.own_domains),
        ] {
            for name in names.iter().filter(|n| !is_hostname(n)) {
                problems.push(format!("{at}.{key}: {name:?} is not a host or domain name"));
            }
        }
        if !self.verify && self.trusted_authserv_ids.is_empty() {
            problems.push(format!(
                "{at}.verify: with verify = false nothing is checked; name the hosts to trust in {at}.trusted_authserv_ids, or remove [auth]"
            ));
        }
    }
}

impl AuthConfig {
    /// The `[auth]` table of a gateway config file, checked; `None` when
    /// the file has none. Only that table is read, so `intake rules
    /// explain` and `intake replay` need none of the file's secrets.
    pub fn from_gateway_config(path: &std::path::Path) -> Result<Option<AuthConfig>, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let mut table: toml::Table =
            toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let Some(auth) = table.remove("auth") else {
            return Ok(None);
        };
        let config: AuthConfig = auth
            .try_into()
            .map_err(|e| format!("{}: [auth]: {e}", path.display()))?;
        let problems = crate::validate::problems_of(&config, "auth");
        if !problems.is_empty() {
            return Err(format!("{}: {}", path.display(), problems.join("; ")));
        }
        Ok(Some(config))
    }
}

fn is_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn default_authserv_id() -> String {
    "intake".into()
}

fn yes() -> bool {
    true
}

fn default_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(2))
}

fn default_deadline() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}

fn default_attempts() -> usize {
    2
}

fn default_cache_entries() -> u64 {
    10_000
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(toml_text: &str) -> Vec<String> {
        let config: AuthConfig = toml::from_str(toml_text).expect("parses");
        crate::validate::problems_of(&config, "auth")
    }

    #[test]
    fn defaults_are_valid_and_verify_with_the_system_resolver() {
        let config: AuthConfig = toml::from_str("").unwrap();
        assert!(config.verify);
        assert!(config.nameservers.is_empty());
        assert_eq!(config.authserv_id, "intake");
        assert_eq!(config.prefer, Prefer::Own);
        assert!(problems("").is_empty());
    }

    #[test]
    fn each_bad_value_names_its_key() {
        let found = problems(
            "authserv_id = 'not a host'\ntimeout = '1ms'\nattempts = 0\ncache_entries = 1\nown_domains = ['sh op.test']\n",
        );
        for key in [
            "authserv_id",
            "timeout",
            "attempts",
            "cache_entries",
            "own_domains",
        ] {
            assert!(
                found.iter().any(|p| p.starts_with(&format!("auth.{key}:"))),
                "{key} in {found:?}"
            );
        }
    }

    #[test]
    fn header_only_mode_needs_hosts_to_trust() {
        assert!(problems("verify = false")[0].contains("trusted_authserv_ids"));
        assert!(problems("verify = false\ntrusted_authserv_ids = ['mx.shop.test']").is_empty());
    }

    #[test]
    fn nameservers_are_addresses_with_ports() {
        let config: AuthConfig = toml::from_str("nameservers = ['127.0.0.1:15353']").unwrap();
        assert_eq!(config.nameservers[0].port(), 15353);
        assert!(toml::from_str::<AuthConfig>("nameservers = ['127.0.0.1']").is_err());
    }
}
