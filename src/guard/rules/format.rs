//! The rule file format (`rules/*.toml`), exactly as a sysadmin writes it.
//! Every table refuses unknown keys, and every value that can be wrong
//! (a rate, a network, an action) says how to write it, so a typo is an
//! error with a file, a line and a key, never a rule silently ignored.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer};
use toml::Spanned;

use crate::envelope::AuthResult;
use crate::units::HumanDuration;

/// One file: any number of rules, allow and block lists, and at most one
/// `[dedupe]` table across all files.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RuleFile {
    #[serde(default)]
    pub rule: Vec<RuleSpec>,
    #[serde(default)]
    pub allow: Vec<ListSpec>,
    #[serde(default)]
    pub block: Vec<ListSpec>,
    #[serde(default)]
    pub dedupe: Option<Spanned<DedupeSpec>>,
}

/// `[[rule]]`: a match, a key, a GCRA quota and what to do past it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// Unique across all files; names the rule in metrics, logs and the
    /// envelope's `abuse.matched_rules`.
    pub name: Spanned<String>,
    /// For people; shown by `intake rules explain`.
    #[serde(default)]
    pub description: Option<String>,
    /// Which items the rule looks at; empty matches everything.
    #[serde(default, rename = "match")]
    pub matches: MatchSpec,
    /// What is counted together: one bucket per distinct key. Not given
    /// for a rule without a rate.
    #[serde(default)]
    pub key: Vec<KeyPart>,
    /// Sustained rate: `"10/h"`, `"50/5m"`, `"2/d"`. Without it the
    /// action applies to every item the rule matches.
    #[serde(default)]
    pub rate: Option<Rate>,
    /// How many items may come at once before the rate applies (1 when
    /// not given).
    #[serde(default)]
    pub burst: Option<u32>,
    /// What happens to an item past the quota.
    pub action: Action,
    /// Count and log what the rule would do, without doing it.
    #[serde(default)]
    pub shadow: bool,
    /// `local` (this process) or `cluster` (shared by every replica
    /// through Redis).
    #[serde(default)]
    pub scope: Scope,
    /// The tag a `tag` action adds; defaults to the rule's name.
    #[serde(default)]
    pub tag: Option<String>,
    /// Prefix length of `ip_prefix` keys for IPv4.
    #[serde(default = "default_v4_prefix")]
    pub ipv4_prefix: u8,
    /// Prefix length of `ip_prefix` keys for IPv6.
    #[serde(default = "default_v6_prefix")]
    pub ipv6_prefix: u8,
    /// Most distinct keys tracked in memory for this rule; past it, new
    /// keys share one overflow bucket until idle keys are evicted.
    #[serde(default = "default_max_keys")]
    pub max_keys: usize,
}

/// `match = { ... }`: every condition given must hold; within a list, any
/// entry may.
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct MatchSpec {
    /// `email` or `form`.
    #[serde(default)]
    pub channel: Option<ChannelSpec>,
    /// Form ids (globs).
    #[serde(default, alias = "form")]
    pub forms: OneOrMany<String>,
    /// Receiving mailboxes: recipient addresses, or the IMAP account and
    /// folder (globs).
    #[serde(default, alias = "mailbox")]
    pub mailboxes: OneOrMany<String>,
    /// Sender addresses after normalization (globs, `*@example.com`).
    #[serde(default, alias = "sender")]
    pub senders: OneOrMany<String>,
    /// Sender domains (globs, `*.example.com`).
    #[serde(default, alias = "domain")]
    pub domains: OneOrMany<String>,
    /// Client networks, `203.0.113.0/24`, `2001:db8::/32`.
    #[serde(default, alias = "network")]
    pub networks: OneOrMany<IpNet>,
    /// Whether the item is an auto-reply, bounce or list mail.
    #[serde(default)]
    pub auto_submitted: Option<bool>,
    /// Header name to a glob its value must match (`"*"`: present).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    // Sender authentication (`[auth]`): a mail it did not check (no
    // `[auth]`, forms) matches none of these.
    /// Some DKIM signature has one of these results (`"none"`: the mail
    /// has no signature).
    #[serde(default)]
    pub dkim: AuthResults,
    /// The SPF result is one of these.
    #[serde(default)]
    pub spf: AuthResults,
    /// The DMARC result is one of these.
    #[serde(default)]
    pub dmarc: AuthResults,
    /// The ARC chain's result is one of these.
    #[serde(default)]
    pub arc: AuthResults,
    /// The `From:` domain's DMARC policy is one of these (`reject`,
    /// `quarantine`, `none`).
    #[serde(default)]
    pub dmarc_policy: OneOrMany<DmarcPolicySpec>,
    /// Whether the `From:` domain authenticated.
    #[serde(default)]
    pub aligned_from: Option<bool>,
    /// Whether the `From:` domain is one of `[auth] own_domains`.
    #[serde(default)]
    pub own_domain: Option<bool>,
    /// The domain vouching for the mail (globs).
    #[serde(default, alias = "authenticated_domain")]
    pub authenticated_domains: OneOrMany<String>,
}

/// Verdicts a condition accepts: `"fail"` or `["fail", "permerror"]`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuthResults(pub Vec<AuthResult>);

impl<'de> Deserialize<'de> for AuthResults {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let names = OneOrMany::<String>::deserialize(d)?;
        names
            .0
            .iter()
            .map(|name| {
                AuthResult::parse(name).ok_or_else(|| {
                    serde::de::Error::custom(format!(
                        "`{name}` is not a result; use pass, fail, softfail, neutral, none, temperror, permerror or policy"
                    ))
                })
            })
            .collect::<Result<_, _>>()
            .map(AuthResults)
    }
}

/// A DMARC policy in a condition.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DmarcPolicySpec {
    None,
    Quarantine,
    Reject,
}

/// `[[allow]]` / `[[block]]`: who skips the rules, or is refused outright.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct ListSpec {
    pub name: Spanned<String>,
    #[serde(default, alias = "sender")]
    pub senders: OneOrMany<String>,
    #[serde(default, alias = "domain")]
    pub domains: OneOrMany<String>,
    #[serde(default, alias = "network")]
    pub networks: OneOrMany<IpNet>,
}

/// `[dedupe]`: exact and near-duplicate collapse.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct DedupeSpec {
    /// How long a customer's items are remembered for comparison.
    #[serde(default = "default_window")]
    pub window: HumanDuration,
    /// Collapse same Message-ID and same normalized content.
    #[serde(default = "default_true")]
    pub exact: bool,
    /// Collapse near duplicates (SimHash over word shingles).
    #[serde(default = "default_true")]
    pub near_duplicates: bool,
    /// 0.5 to 1.0: how alike two texts must be to count as one.
    #[serde(default = "default_similarity")]
    pub similarity: f64,
    /// How many recent items per customer are compared.
    #[serde(default = "default_recent")]
    pub recent: usize,
}

impl Default for DedupeSpec {
    fn default() -> Self {
        DedupeSpec {
            window: default_window(),
            exact: true,
            near_duplicates: true,
            similarity: default_similarity(),
            recent: default_recent(),
        }
    }
}

/// A single value or a list, so `form = "contact"` and
/// `forms = ["contact", "returns"]` both read naturally.
#[derive(Debug, Clone, PartialEq)]
pub struct OneOrMany<T>(pub Vec<T>);

impl<T> Default for OneOrMany<T> {
    fn default() -> Self {
        OneOrMany(Vec::new())
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for OneOrMany<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either<T> {
            Many(Vec<T>),
            One(T),
        }
        Ok(match Either::deserialize(d)? {
            Either::Many(v) => OneOrMany(v),
            Either::One(v) => OneOrMany(vec![v]),
        })
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ChannelSpec {
    Email,
    Form,
}

/// One part of a rule's key.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum KeyPart {
    /// The normalized sender (mail) or the form's email field.
    Sender,
    SenderDomain,
    /// The client address.
    Ip,
    /// The client's network (`ipv4_prefix` / `ipv6_prefix`).
    IpPrefix,
    Form,
    Mailbox,
    /// One bucket for everything the rule matches.
    Global,
    /// The sender, and for mail whose `From:` did not authenticate also
    /// its client network (`ipv4_prefix` / `ipv6_prefix`): a flood forged
    /// in a customer's name from elsewhere never shares their bucket.
    /// Without `[auth]` (and for forms) the same as `sender`.
    VerifiedSender,
    /// The domain that vouches for the mail (`auth.authenticated_domain`):
    /// the `From:` domain when aligned, else a passing DKIM or SPF domain.
    AuthenticatedDomain,
}

impl KeyPart {
    pub fn name(self) -> &'static str {
        match self {
            KeyPart::Sender => "sender",
            KeyPart::SenderDomain => "sender_domain",
            KeyPart::Ip => "ip",
            KeyPart::IpPrefix => "ip_prefix",
            KeyPart::Form => "form",
            KeyPart::Mailbox => "mailbox",
            KeyPart::Global => "global",
            KeyPart::VerifiedSender => "verified_sender",
            KeyPart::AuthenticatedDomain => "authenticated_domain",
        }
    }

    /// Every part's name, for errors.
    pub const NAMES: &[&str] = &[
        "sender",
        "sender_domain",
        "verified_sender",
        "authenticated_domain",
        "ip",
        "ip_prefix",
        "form",
        "mailbox",
        "global",
    ];
}

/// What a rule does to an item past its quota, weakest first: the order
/// is the order of strength, and the strongest action of all rules wins.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Pass on to the desk with a tag.
    Tag,
    /// Fold into the customer's earlier item.
    Collapse,
    /// Keep aside for an operator.
    Quarantine,
    /// Refuse: forms get 429; mail goes to `suppressed`.
    Reject,
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Action::Tag => "tag",
            Action::Collapse => "collapse",
            Action::Quarantine => "quarantine",
            Action::Reject => "reject",
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    #[default]
    Local,
    Cluster,
}

/// A sustained rate as sysadmins write it in Haraka and rspamd:
/// `"10/h"`, `"50/5m"`, `"2/d"`, `"1/30s"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub per: Duration,
}

impl Rate {
    /// The GCRA emission interval: one item per this much time.
    pub fn interval(self) -> Duration {
        self.per / self.count
    }

    pub fn parse(text: &str) -> Result<Rate, String> {
        let bad = || {
            format!(
                "`{text}` is not a rate; write it like \"10/h\", \"50/5m\", \"2/d\" or \"1/30s\""
            )
        };
        let (count, per) = text.trim().split_once('/').ok_or_else(bad)?;
        let count: u32 = count.trim().parse().map_err(|_| bad())?;
        if count == 0 {
            return Err(format!("`{text}`: the count must be at least 1"));
        }
        let per = per.trim();
        let split = per.find(|c: char| !c.is_ascii_digit()).unwrap_or(per.len());
        let (n, unit) = per.split_at(split);
        let n: u64 = if n.is_empty() {
            1
        } else {
            n.parse().map_err(|_| bad())?
        };
        let unit_secs = match unit {
            "s" | "sec" | "second" => 1,
            "m" | "min" | "minute" => 60,
            "h" | "hour" => 3600,
            "d" | "day" => 86_400,
            _ => return Err(bad()),
        };
        if n == 0 {
            return Err(bad());
        }
        let per = n
            .checked_mul(unit_secs)
            .map(Duration::from_secs)
            .filter(|per| *per <= MAX_PERIOD)
            .ok_or_else(|| {
                format!("`{text}`: the period is longer than a year; use at most 365d")
            })?;
        Ok(Rate { count, per })
    }
}

/// The longest period a rate may name. Longer ones limit nothing in
/// practice, and the limiter counts time in u64 nanoseconds (584 years):
/// `1/100000000000d` used to load and then panic on the first item.
pub const MAX_PERIOD: Duration = Duration::from_secs(365 * 86_400);

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.per.as_secs();
        let (n, unit) = match secs {
            s if s % 86_400 == 0 => (s / 86_400, "d"),
            s if s % 3600 == 0 => (s / 3600, "h"),
            s if s % 60 == 0 => (s / 60, "m"),
            s => (s, "s"),
        };
        if n == 1 {
            write!(f, "{}/{unit}", self.count)
        } else {
            write!(f, "{}/{n}{unit}", self.count)
        }
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Rate::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// The burst of a rule that gives a rate and no burst.
pub const DEFAULT_BURST: u32 = 1;
fn default_v4_prefix() -> u8 {
    24
}
fn default_v6_prefix() -> u8 {
    64
}
fn default_max_keys() -> usize {
    100_000
}
fn default_window() -> HumanDuration {
    HumanDuration(Duration::from_secs(24 * 3600))
}
fn default_true() -> bool {
    true
}
fn default_similarity() -> f64 {
    0.9
}
fn default_recent() -> usize {
    50
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_read_as_sysadmins_write_them() {
        let r = Rate::parse("10/h").unwrap();
        assert_eq!(r.interval(), Duration::from_secs(360));
        assert_eq!(Rate::parse("50/5m").unwrap().per, Duration::from_secs(300));
        assert_eq!(Rate::parse("2/d").unwrap().to_string(), "2/d");
        assert_eq!(Rate::parse("1/30s").unwrap().to_string(), "1/30s");
        assert!(Rate::parse("10/x").unwrap_err().contains("10/h"));
        assert!(Rate::parse("0/h").is_err());
        assert!(Rate::parse("ten/h").is_err());
    }

    #[test]
    fn a_period_past_a_year_is_refused_not_overflowed() {
        // Found by the `rules` fuzz target: the day count times 86,400
        // overflowed u64 (a panic in debug builds, a wrapped rate in release).
        let err = Rate::parse("1/300000000000000d").unwrap_err();
        assert!(err.contains("longer than a year"), "{err}");
        // Fits in u64 seconds, but not in the limiter's nanoseconds.
        assert!(Rate::parse("1/100000000000d").is_err());
        assert!(Rate::parse("1/366d").is_err());
        assert_eq!(Rate::parse("1/365d").unwrap().per, MAX_PERIOD);
    }

    #[test]
    fn actions_are_ordered_by_strength() {
        assert!(Action::Reject > Action::Quarantine);
        assert!(Action::Quarantine > Action::Collapse);
        assert!(Action::Collapse > Action::Tag);
    }
}
