//! `[lmtp]`: the LMTP listener a mail server delivers into (RFC 2033).

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use crate::config::{ByteSize, HumanDuration};

/// The `[lmtp]` section; without it there is no LMTP listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LmtpConfig {
    /// Address to listen on. LMTP has no authentication: keep it on
    /// loopback or a network only the mail server reaches.
    pub listen: SocketAddr,
    /// The name in the greeting and the LHLO answer; `intake` by default.
    #[serde(default = "default_hostname")]
    pub hostname: String,
    /// Largest message accepted, announced as `SIZE` in the LHLO answer;
    /// bigger ones get 552 5.3.4 (at MAIL when the client says its size,
    /// otherwise after the data).
    #[serde(default = "default_max_size")]
    pub max_size: ByteSize,
    /// Recipients per transaction; the next one gets 452 4.5.3 and the
    /// client sends it again in a new transaction.
    #[serde(default = "default_max_recipients")]
    pub max_recipients: usize,
    /// Recipient domains accepted (`shop.example`, case-insensitive);
    /// others get 550 5.1.1. Empty accepts every recipient: the mail server
    /// already decided to deliver them here.
    #[serde(default)]
    pub domains: Vec<String>,
    /// How long the listener waits for the next command line before it
    /// says 421 and closes the connection.
    #[serde(default = "default_command_timeout")]
    pub command_timeout: HumanDuration,
    /// How long the client has to send the whole message after 354.
    #[serde(default = "default_data_timeout")]
    pub data_timeout: HumanDuration,
    /// Open connections at once; one more is told 421 4.3.2 and closed.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
}

impl LmtpConfig {
    /// Every problem at once, each naming its key.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.max_size.bytes() == 0 {
            problems.push("lmtp.max_size: must be more than 0".into());
        }
        if self.max_recipients == 0 {
            problems.push("lmtp.max_recipients: must be at least 1".into());
        }
        if self.max_connections == 0 || self.max_connections > u32::MAX as usize {
            problems.push("lmtp.max_connections: must be at least 1".into());
        }
        if self.command_timeout.0 < Duration::from_millis(100) {
            problems.push("lmtp.command_timeout: must be at least 100ms".into());
        }
        if self.data_timeout.0 < Duration::from_millis(100) {
            problems.push("lmtp.data_timeout: must be at least 100ms".into());
        }
        if self.hostname.is_empty()
            || !self
                .hostname
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
        {
            problems.push("lmtp.hostname: must be a host name (letters, digits, `.`, `-`)".into());
        }
        for domain in &self.domains {
            if domain.is_empty() || domain.contains(['@', ' ']) {
                problems.push(format!(
                    "lmtp.domains: `{domain}` is not a domain (write `shop.example`, no `@`)"
                ));
            }
        }
        problems
    }

    /// Whether mail for `recipient` is taken: any when `domains` is empty,
    /// `postmaster` always (RFC 5321 4.5.1).
    pub fn accepts(&self, recipient: &str) -> bool {
        if self.domains.is_empty() || recipient.eq_ignore_ascii_case("postmaster") {
            return true;
        }
        let Some((_, domain)) = recipient.rsplit_once('@') else {
            return false;
        };
        self.domains.iter().any(|d| d.eq_ignore_ascii_case(domain))
    }
}

fn default_hostname() -> String {
    "intake".into()
}
fn default_max_size() -> ByteSize {
    ByteSize(50_000_000)
}
fn default_max_recipients() -> usize {
    100
}
fn default_command_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(300))
}
fn default_data_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(600))
}
fn default_max_connections() -> usize {
    100
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(domains: &[&str]) -> LmtpConfig {
        let text = format!(
            "listen = \"127.0.0.1:2424\"\ndomains = {:?}",
            domains.iter().map(|d| d.to_string()).collect::<Vec<_>>()
        );
        toml::from_str(&text).unwrap()
    }

    #[test]
    fn defaults_are_sane_and_valid() {
        let c = config(&[]);
        assert!(c.problems().is_empty(), "{:?}", c.problems());
        assert_eq!(c.max_size.bytes(), 50_000_000);
        assert!(c.accepts("anyone@anywhere.example"));
    }

    #[test]
    fn domains_restrict_recipients_but_not_postmaster() {
        let c = config(&["shop.example"]);
        assert!(c.accepts("support+order-1@SHOP.example"));
        assert!(!c.accepts("support@other.example"));
        assert!(!c.accepts("support"));
        assert!(c.accepts("Postmaster"));
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = toml::from_str::<LmtpConfig>("listen = \"127.0.0.1:1\"\nport = 2")
            .unwrap_err()
            .to_string();
        assert!(err.contains("port"), "{err}");
    }
}
