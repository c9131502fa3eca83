//! `[lmtp]`: the LMTP listener a mail server delivers into (RFC 2033).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use crate::units::{ByteSize, HumanDuration};

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
    /// Open connections at once. When all are taken, the session with the
    /// least progress is told 421 4.3.2 and closed to make room (an idle
    /// one first, then the slowest command or DATA; never one whose
    /// message is being stored); when none can be, the newcomer is told
    /// 421 4.3.2 and closed.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Connections one client address (an IPv6 client: its /64) may have
    /// open at once; one more is told 421 4.7.0 and closed. A mail server
    /// delivers from one address: keep this above its LMTP concurrency
    /// (Postfix: `lmtp_destination_concurrency_limit`, 20 by default).
    #[serde(default = "default_max_connections_per_ip")]
    pub max_connections_per_ip: usize,
    /// How long a new session, or one that just began waiting for a
    /// command or sending DATA, is safe from being closed to make room
    /// (unless its address holds two more sessions than the newcomer's).
    #[serde(default = "default_shed_grace")]
    pub shed_grace: HumanDuration,
    /// The slowest message accepted after DATA, in bytes per second: a
    /// message gets `data_rate_grace` plus one second per this many bytes
    /// it has sent (Postfix's `smtpd_min_data_rate`), then the session is
    /// told 421 4.4.2 and closed. 0 switches it off (`data_timeout` still
    /// bounds the whole message).
    #[serde(default = "default_min_data_rate")]
    pub min_data_rate: ByteSize,
    /// The time a message has before `min_data_rate` applies.
    #[serde(default = "default_data_rate_grace")]
    pub data_rate_grace: HumanDuration,
    /// Networks whose mail servers may tell, with `XFORWARD` (Postfix's
    /// `lmtp_send_xforward_command = yes`), which SMTP client they took a
    /// mail from; the LHLO answer offers it only to them, and anyone else
    /// who sends it gets 550 5.7.0. SPF trusts that address: a client
    /// outside these networks could name any address and pass. Loopback
    /// by default; empty turns XFORWARD off.
    #[serde(default = "default_xforward_from")]
    pub xforward_from: Vec<IpNet>,
}

impl LmtpConfig {
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

    /// Whether a client at `peer` may send XFORWARD (`xforward_from`). An
    /// IPv4 client of a dual-stack listener (`::ffff:127.0.0.1`) is
    /// checked as the IPv4 address it is.
    pub fn trusts_xforward(&self, peer: IpAddr) -> bool {
        let peer = peer.to_canonical();
        self.xforward_from.iter().any(|net| net.contains(&peer))
    }
}

impl crate::validate::Validate for LmtpConfig {
    fn validate(&self, at: &str, problems: &mut Vec<String>) {
        if self.max_size.bytes() == 0 {
            problems.push(format!("{at}.max_size: must be more than 0"));
        }
        if self.max_recipients == 0 {
            problems.push(format!("{at}.max_recipients: must be at least 1"));
        }
        if self.max_connections == 0 || self.max_connections > u32::MAX as usize {
            problems.push(format!("{at}.max_connections: must be at least 1"));
        }
        if self.max_connections_per_ip == 0 {
            problems.push(format!("{at}.max_connections_per_ip: must be at least 1"));
        }
        let graces = Duration::from_millis(100)..=crate::units::MAX_GRACE;
        if self.min_data_rate.bytes() > 0 && !graces.contains(&self.data_rate_grace.0) {
            problems.push(format!(
                "{at}.data_rate_grace: must be between 100ms and 24h"
            ));
        }
        if self.shed_grace.0 > crate::units::MAX_GRACE {
            problems.push(format!("{at}.shed_grace: must be at most 24h"));
        }
        if self.command_timeout.0 < Duration::from_millis(100) {
            problems.push(format!("{at}.command_timeout: must be at least 100ms"));
        }
        if self.data_timeout.0 < Duration::from_millis(100) {
            problems.push(format!("{at}.data_timeout: must be at least 100ms"));
        }
        if self.hostname.is_empty()
            || !self
                .hostname
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
        {
            problems.push(format!(
                "{at}.hostname: must be a host name (letters, digits, `.`, `-`)"
            ));
        }
        for domain in &self.domains {
            if domain.is_empty() || domain.contains(['@', ' ']) {
                problems.push(format!(
                    "{at}.domains: `{domain}` is not a domain (write `shop.example`, no `@`)"
                ));
            }
        }
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
fn default_max_connections_per_ip() -> usize {
    50
}
fn default_shed_grace() -> HumanDuration {
    HumanDuration(Duration::from_secs(1))
}
fn default_min_data_rate() -> ByteSize {
    ByteSize(500)
}
fn default_data_rate_grace() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}
fn default_xforward_from() -> Vec<IpNet> {
    vec![
        IpNet::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8).expect("a valid prefix"),
        IpNet::from(IpAddr::V6(Ipv6Addr::LOCALHOST)),
    ]
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
        assert!(
            crate::validate::problems_of(&c, "lmtp").is_empty(),
            "{:?}",
            crate::validate::problems_of(&c, "lmtp")
        );
        assert_eq!(c.max_size.bytes(), 50_000_000);
        assert_eq!(
            c.min_data_rate.bytes(),
            500,
            "Postfix's smtpd_min_data_rate"
        );
        assert!(c.max_connections_per_ip < c.max_connections);
        assert!(c.accepts("anyone@anywhere.example"));
    }

    #[test]
    fn connection_limits_are_validated() {
        let c: LmtpConfig = toml::from_str(
            "listen = \"127.0.0.1:1\"\nmax_connections_per_ip = 0\ndata_rate_grace = \"1ms\"\n\
             shed_grace = \"2d\"",
        )
        .unwrap();
        let problems = crate::validate::problems_of(&c, "lmtp");
        for key in [
            "lmtp.max_connections_per_ip",
            "lmtp.data_rate_grace",
            "lmtp.shed_grace",
        ] {
            assert!(
                problems.iter().any(|p| p.starts_with(key)),
                "no problem names {key}: {problems:?}"
            );
        }
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
    fn xforward_is_trusted_from_loopback_by_default_and_can_be_off() {
        let c = config(&[]);
        for peer in ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"] {
            assert!(c.trusts_xforward(peer.parse().unwrap()), "{peer}");
        }
        for peer in ["192.0.2.1", "::ffff:192.0.2.1", "2001:db8::1"] {
            assert!(!c.trusts_xforward(peer.parse().unwrap()), "{peer}");
        }
        let mx: LmtpConfig = toml::from_str(
            "listen = \"[::]:2424\"\nxforward_from = [\"192.0.2.0/24\", \"2001:db8::/32\"]",
        )
        .unwrap();
        assert!(mx.trusts_xforward("192.0.2.25".parse().unwrap()));
        assert!(mx.trusts_xforward("::ffff:192.0.2.25".parse().unwrap()));
        assert!(mx.trusts_xforward("2001:db8::25".parse().unwrap()));
        assert!(
            !mx.trusts_xforward("127.0.0.1".parse().unwrap()),
            "the list replaces loopback"
        );
        let off: LmtpConfig =
            toml::from_str("listen = \"127.0.0.1:1\"\nxforward_from = []").unwrap();
        assert!(!off.trusts_xforward("127.0.0.1".parse().unwrap()));
        let err = toml::from_str::<LmtpConfig>(
            "listen = \"127.0.0.1:1\"\nxforward_from = [\"localhost\"]",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("xforward_from"), "{err}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = toml::from_str::<LmtpConfig>("listen = \"127.0.0.1:1\"\nport = 2")
            .unwrap_err()
            .to_string();
        assert!(err.contains("port"), "{err}");
    }
}
