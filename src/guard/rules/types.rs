//! The compiled rule types: what a loaded rule set is made of. Their own
//! file, below everything that uses them: loading builds them, matching
//! reads them, and the limiters count by them (`Rule`), so none of those
//! needs another to name a rule.

use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

use super::format::{Action, DedupeSpec, KeyPart, MatchSpec, Rate, Scope};
use crate::guard::normalize::Pattern;

/// Every rule, list and dedupe setting in force.
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    pub rules: Vec<Rule>,
    pub allow: Vec<List>,
    pub block: Vec<List>,
    pub dedupe: Dedupe,
    /// The files read, for reports.
    pub files: Vec<PathBuf>,
}

/// One compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub description: Option<String>,
    pub matcher: Matcher,
    pub key: Vec<KeyPart>,
    /// How many items pass before the action applies; `None`: the action
    /// applies to every item the rule matches (a rule without `rate`).
    pub quota: Option<Quota>,
    pub action: Action,
    pub shadow: bool,
    pub scope: Scope,
    pub tag: String,
    pub ipv4_prefix: u8,
    pub ipv6_prefix: u8,
    pub max_keys: usize,
    /// Where it was written: `rules/20-email.toml:3`.
    pub origin: String,
}

/// A GCRA quota: a sustained rate and the burst before it applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub rate: Rate,
    pub burst: u32,
}

/// An allow or block list.
#[derive(Debug, Clone)]
pub struct List {
    pub name: String,
    /// The patterns as written.
    pub senders: Vec<String>,
    pub domains: Vec<String>,
    pub networks: Vec<IpNet>,
    pub(super) patterns: Patterns,
}

/// Dedupe settings (the `[dedupe]` table; defaults when none is given).
#[derive(Debug, Clone, PartialEq)]
pub struct Dedupe {
    pub window: Duration,
    pub exact: bool,
    pub near_duplicates: bool,
    /// Most differing bits (of 64) for two SimHashes to be near duplicates.
    pub max_distance: u32,
    pub similarity: f64,
    pub recent: usize,
}

impl Default for Dedupe {
    fn default() -> Self {
        Dedupe::from_spec(&DedupeSpec::default())
    }
}

impl Dedupe {
    /// Whether duplicates are looked up at all (exact or near).
    pub fn looks_up(&self) -> bool {
        self.exact || self.near_duplicates
    }

    pub(super) fn from_spec(spec: &DedupeSpec) -> Dedupe {
        Dedupe {
            window: spec.window.0,
            exact: spec.exact,
            near_duplicates: spec.near_duplicates,
            max_distance: ((1.0 - spec.similarity) * 64.0).floor().max(0.0) as u32,
            similarity: spec.similarity,
            recent: spec.recent,
        }
    }
}

/// The conditions of a rule's `match`.
#[derive(Debug, Clone, Default)]
pub struct Matcher {
    pub(super) spec: MatchSpec,
    pub(super) patterns: Patterns,
}

/// Sender and domain patterns, normalized as addresses are.
#[derive(Debug, Clone, Default)]
pub(super) struct Patterns {
    pub(super) senders: Vec<Pattern>,
    pub(super) domains: Vec<Pattern>,
}

impl Patterns {
    pub(super) fn of(senders: &[String], domains: &[String]) -> Patterns {
        Patterns {
            senders: senders.iter().map(|p| Pattern::sender(p)).collect(),
            domains: domains.iter().map(|p| Pattern::domain(p)).collect(),
        }
    }
}

impl RuleSet {
    /// No rules and no dedupe: what a gateway without `rules.dir` runs.
    pub fn nothing() -> RuleSet {
        let mut set = RuleSet::default();
        set.dedupe.exact = false;
        set.dedupe.near_duplicates = false;
        set
    }
}

impl Rule {
    /// `10/h, burst 3`, or `every item` for a rule without a quota.
    pub fn quota_text(&self) -> String {
        match &self.quota {
            Some(q) => format!("{}, burst {}", q.rate, q.burst),
            None => "every item".into(),
        }
    }
}
