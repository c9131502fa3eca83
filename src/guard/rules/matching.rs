//! Matching: whether a rule's `match`, an allow list or a block list
//! holds for one item's [`Facts`], and which bucket keys a rule charges
//! for it. An item carries several identities, so this is where "any
//! identity" (matches, block lists) and "every identity, exactly" (allow
//! lists) are decided.

use std::borrow::Cow;
use std::net::IpAddr;

use ipnet::IpNet;

use super::format::{AuthResults, ChannelSpec, DmarcPolicySpec, KeyPart, MatchSpec};
use super::types::{List, Matcher, Patterns, Rule};
use crate::envelope::{Auth, AuthResult, Channel, DmarcPolicy};
use crate::guard::facts::{Facts, Identity};
use crate::guard::normalize::glob;

/// How alike an identity must be to a pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Likeness {
    /// The normalized address itself (allow lists: a lookalike of a
    /// listed address is someone else).
    Exact,
    /// The address or its confusable skeleton (matches and block lists:
    /// a lookalike of a listed address gets no way around the list).
    Confusable,
}

impl Patterns {
    fn lists(&self, identity: &Identity, likeness: Likeness) -> bool {
        let confusable = likeness == Likeness::Confusable;
        self.senders.iter().any(|p| {
            glob(&p.text, &identity.address) || (confusable && glob(&p.key, &identity.key))
        }) || self.domains.iter().any(|p| {
            glob(&p.text, identity.domain()) || (confusable && glob(&p.key, identity.key_domain()))
        })
    }

    /// Whether any identity of the item is listed or looks like one that is.
    fn any(&self, facts: &Facts<'_>) -> bool {
        facts
            .identities
            .iter()
            .any(|i| self.lists(i, Likeness::Confusable))
    }

    /// Whether every identity of the item is listed as it is: none
    /// missing, none a lookalike, none left unread.
    fn all(&self, facts: &Facts<'_>) -> bool {
        !facts.identities.is_empty()
            && !facts.too_many_identities
            && facts
                .identities
                .iter()
                .all(|i| self.lists(i, Likeness::Exact))
    }
}

fn in_networks(networks: &[IpNet], facts: &Facts<'_>) -> bool {
    facts
        .ip
        .is_some_and(|ip| networks.iter().any(|n| n.contains(&ip)))
}

impl Matcher {
    pub fn matches(&self, facts: &Facts<'_>) -> bool {
        let m = &self.spec;
        if let Some(channel) = m.channel {
            let want = match channel {
                ChannelSpec::Email => Channel::Email,
                ChannelSpec::Form => Channel::Form,
            };
            if facts.channel != want {
                return false;
            }
        }
        if let Some(auto) = m.auto_submitted {
            if facts.auto_submitted != auto {
                return false;
            }
        }
        if !m.forms.0.is_empty()
            && !facts
                .form
                .is_some_and(|f| m.forms.0.iter().any(|p| glob(p, f)))
        {
            return false;
        }
        if !m.mailboxes.0.is_empty()
            && !facts
                .mailboxes
                .iter()
                .any(|mb| m.mailboxes.0.iter().any(|p| glob(p, mb)))
        {
            return false;
        }
        let has_list =
            !(m.senders.0.is_empty() && m.domains.0.is_empty() && m.networks.0.is_empty());
        if has_list && !(self.patterns.any(facts) || in_networks(&m.networks.0, facts)) {
            return false;
        }
        if !m
            .headers
            .iter()
            .all(|(name, pattern)| facts.header(name).any(|value| glob(pattern, value.trim())))
        {
            return false;
        }
        !m.asks_auth() || facts.auth.is_some_and(|auth| m.auth_holds(auth))
    }
}

impl MatchSpec {
    /// Whether any condition is on sender authentication.
    fn asks_auth(&self) -> bool {
        !(self.dkim.0.is_empty()
            && self.spf.0.is_empty()
            && self.dmarc.0.is_empty()
            && self.arc.0.is_empty()
            && self.dmarc_policy.0.is_empty()
            && self.aligned_from.is_none()
            && self.own_domain.is_none()
            && self.authenticated_domains.0.is_empty())
    }

    /// Whether every authentication condition holds for `auth`. A check
    /// that did not run reads `none`.
    fn auth_holds(&self, auth: &Auth) -> bool {
        let one = |wanted: &AuthResults, got: Option<AuthResult>| {
            wanted.0.is_empty() || wanted.0.contains(&got.unwrap_or(AuthResult::None))
        };
        let dkim = self.dkim.0.is_empty()
            || if auth.dkim.is_empty() {
                self.dkim.0.contains(&AuthResult::None)
            } else {
                auth.dkim.iter().any(|d| self.dkim.0.contains(&d.result))
            };
        let policy = auth.dmarc.as_ref().and_then(|d| d.policy);
        dkim && one(&self.spf, auth.spf.as_ref().map(|s| s.result))
            && one(&self.dmarc, auth.dmarc.as_ref().map(|d| d.result))
            && one(&self.arc, auth.arc.as_ref().map(|a| a.result))
            && (self.dmarc_policy.0.is_empty()
                || policy.is_some_and(|p| self.dmarc_policy.0.iter().any(|w| w.is(p))))
            && self
                .aligned_from
                .is_none_or(|want| auth.aligned_from == want)
            && self.own_domain.is_none_or(|want| auth.own_domain == want)
            && (self.authenticated_domains.0.is_empty()
                || auth.authenticated_domain.as_deref().is_some_and(|d| {
                    self.authenticated_domains
                        .0
                        .iter()
                        .any(|p| glob(&p.to_ascii_lowercase(), d))
                }))
    }
}

impl DmarcPolicySpec {
    fn is(self, policy: DmarcPolicy) -> bool {
        matches!(
            (self, policy),
            (DmarcPolicySpec::None, DmarcPolicy::None)
                | (DmarcPolicySpec::Quarantine, DmarcPolicy::Quarantine)
                | (DmarcPolicySpec::Reject, DmarcPolicy::Reject)
        )
    }
}

impl List {
    /// A block list refuses the item when the client network is listed,
    /// or any identity is (or looks like one that is).
    pub fn blocks(&self, facts: &Facts<'_>) -> bool {
        in_networks(&self.networks, facts) || self.patterns.any(facts)
    }

    /// An allow list lets the item skip the rules when the client network
    /// is listed, or every identity is listed exactly: a forged extra
    /// `From: staff@shop.example` or a lookalike opens nothing.
    pub fn allows(&self, facts: &Facts<'_>) -> bool {
        in_networks(&self.networks, facts) || self.patterns.all(facts)
    }
}

/// The identity part of a key when an item has more identities than were
/// read: all such items share this bucket (it holds no `@`, so no address
/// key can be it).
pub const MANY_IDENTITIES_KEY: &str = "many-identities";

/// Whose values fill the identity parts (`sender`, `sender_domain`) of
/// one key.
#[derive(Clone, Copy)]
enum Who<'i> {
    Nobody,
    One(&'i Identity),
    Many,
}

impl Rule {
    /// Whether the key has a `sender` or `sender_domain` part.
    pub fn keys_on_identity(&self) -> bool {
        self.key.iter().any(|p| {
            matches!(
                p,
                KeyPart::Sender | KeyPart::SenderDomain | KeyPart::VerifiedSender
            )
        })
    }

    /// The bucket keys of this item for this rule, distinct, e.g.
    /// `sender=ann@example.com|ip_prefix=203.0.113.0/24`: one per identity
    /// when the key has a `sender` or `sender_domain` part (those vary,
    /// the other parts stay), plus [`MANY_IDENTITIES_KEY`] when the item
    /// has more than were read; one key otherwise. A part the item does
    /// not have (no client address for IMAP mail, no sender) reads `-`,
    /// so such items share one bucket rather than escaping the rule.
    pub fn keys_of(&self, facts: &Facts<'_>) -> Vec<String> {
        if !self.keys_on_identity() || (facts.identities.is_empty() && !facts.too_many_identities) {
            return vec![self.key_for(facts, Who::Nobody)];
        }
        let mut keys: Vec<String> = Vec::with_capacity(facts.identities.len() + 1);
        let many = facts.too_many_identities.then_some(Who::Many);
        for who in facts.identities.iter().map(Who::One).chain(many) {
            let key = self.key_for(facts, who);
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
        keys
    }

    fn key_for(&self, facts: &Facts<'_>, who: Who<'_>) -> String {
        // Borrowed where the facts hold the value already: a key is built
        // per rule, identity and item, and a copy of each part showed in
        // the rule benchmark's profile.
        let mut key = String::with_capacity(48);
        for (i, part) in self.key.iter().enumerate() {
            if i > 0 {
                key.push('|');
            }
            key.push_str(part.name());
            key.push('=');
            let value: Option<Cow<'_, str>> = match (part, who) {
                (KeyPart::Sender | KeyPart::SenderDomain, Who::Many) => {
                    Some(Cow::Borrowed(MANY_IDENTITIES_KEY))
                }
                (KeyPart::Sender, Who::One(id)) => Some(Cow::Borrowed(id.key.as_str())),
                (KeyPart::SenderDomain, Who::One(id)) => Some(Cow::Borrowed(id.key_domain())),
                (KeyPart::Sender | KeyPart::SenderDomain, Who::Nobody) => None,
                (KeyPart::Ip, _) => facts.ip.map(|ip| Cow::Owned(ip.to_string())),
                (KeyPart::IpPrefix, _) => facts
                    .ip
                    .map(|ip| Cow::Owned(self.prefix_of(ip).to_string())),
                (KeyPart::Form, _) => facts.form.map(Cow::Borrowed),
                (KeyPart::Mailbox, _) => facts
                    .mailboxes
                    .first()
                    .map(|m| Cow::Owned(m.to_lowercase())),
                (KeyPart::Global, _) => Some(Cow::Borrowed("*")),
                (KeyPart::VerifiedSender, Who::Many) => Some(Cow::Borrowed(MANY_IDENTITIES_KEY)),
                (KeyPart::VerifiedSender, Who::One(id)) => Some(Cow::Owned(facts.verified_key(
                    &id.key,
                    self.ipv4_prefix,
                    self.ipv6_prefix,
                ))),
                (KeyPart::VerifiedSender, Who::Nobody) => None,
                (KeyPart::AuthenticatedDomain, _) => facts
                    .auth
                    .and_then(|a| a.authenticated_domain.as_deref())
                    .map(Cow::Borrowed),
            };
            key.push_str(value.as_deref().unwrap_or("-"));
        }
        key
    }

    fn prefix_of(&self, ip: IpAddr) -> IpNet {
        let len = match ip {
            IpAddr::V4(_) => self.ipv4_prefix,
            IpAddr::V6(_) => self.ipv6_prefix,
        };
        IpNet::new(ip, len)
            .map(|n| n.trunc())
            .unwrap_or_else(|_| IpNet::from(ip))
    }
}
