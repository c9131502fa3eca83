//! Rules: loaded from `rules/*.toml` (in name order), checked as a whole,
//! and matched against the [`Facts`] of one message. A set that loads is
//! complete and valid; a set that does not load names every problem with
//! its file, line and key, and the caller keeps the rules it had.
//!
//! An item carries several identities (every `From:`, `Reply-To`, the
//! envelope sender, ...): a rule keyed on the sender has one key per
//! identity, a match or block list holds when any identity matches (or
//! its lookalike does), an allow list only when every identity is listed
//! exactly, so one forged extra address never opens it.

pub mod format;

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use ipnet::IpNet;

pub use format::{Action, KeyPart, Rate, Scope};
use format::{ChannelSpec, DedupeSpec, ListSpec, MatchSpec, RuleFile, RuleSpec};

use crate::envelope::Channel;
use crate::guard::facts::{Facts, Identity};
use crate::guard::normalize::{glob, Pattern};

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
    pub rate: Rate,
    pub burst: u32,
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

/// An allow or block list.
#[derive(Debug, Clone)]
pub struct List {
    pub name: String,
    /// The patterns as written.
    pub senders: Vec<String>,
    pub domains: Vec<String>,
    pub networks: Vec<IpNet>,
    patterns: Patterns,
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

    fn from_spec(spec: &DedupeSpec) -> Dedupe {
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
    spec: MatchSpec,
    patterns: Patterns,
}

/// Sender and domain patterns, normalized as addresses are.
#[derive(Debug, Clone, Default)]
struct Patterns {
    senders: Vec<Pattern>,
    domains: Vec<Pattern>,
}

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
    fn of(senders: &[String], domains: &[String]) -> Patterns {
        Patterns {
            senders: senders.iter().map(|p| Pattern::sender(p)).collect(),
            domains: domains.iter().map(|p| Pattern::domain(p)).collect(),
        }
    }

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
        m.headers
            .iter()
            .all(|(name, pattern)| facts.header(name).any(|value| glob(pattern, value.trim())))
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
        self.key
            .iter()
            .any(|p| matches!(p, KeyPart::Sender | KeyPart::SenderDomain))
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
        let mut key = String::new();
        for (i, part) in self.key.iter().enumerate() {
            if i > 0 {
                key.push('|');
            }
            key.push_str(part.name());
            key.push('=');
            let value = match (part, who) {
                (KeyPart::Sender | KeyPart::SenderDomain, Who::Many) => {
                    Some(MANY_IDENTITIES_KEY.to_string())
                }
                (KeyPart::Sender, Who::One(id)) => Some(id.key.clone()),
                (KeyPart::SenderDomain, Who::One(id)) => Some(id.key_domain().to_string()),
                (KeyPart::Sender | KeyPart::SenderDomain, Who::Nobody) => None,
                (KeyPart::Ip, _) => facts.ip.map(|ip| ip.to_string()),
                (KeyPart::IpPrefix, _) => facts.ip.map(|ip| self.prefix_of(ip).to_string()),
                (KeyPart::Form, _) => facts.form.map(str::to_string),
                (KeyPart::Mailbox, _) => facts.mailboxes.first().map(|m| m.to_lowercase()),
                (KeyPart::Global, _) => Some("*".into()),
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

    /// `10/h, burst 3`.
    pub fn quota_text(&self) -> String {
        format!("{}, burst {}", self.rate, self.burst)
    }
}

/// One problem in the rule files.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleProblem {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// The key at fault, like `rule[1].rate`.
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for RuleProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        if let Some(key) = &self.key {
            write!(f, ": {key}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Why a rule set did not load: every problem found, in file order.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadError(pub Vec<RuleProblem>);

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for LoadError {}

/// The `*.toml` files of a rules folder, in name order, with their
/// modification times (for change detection).
pub fn rule_files(dir: &Path) -> std::io::Result<Vec<(PathBuf, Option<SystemTime>, u64)>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "toml") && path.is_file() {
            let meta = entry.metadata()?;
            files.push((path, meta.modified().ok(), meta.len()));
        }
    }
    files.sort();
    Ok(files)
}

impl RuleSet {
    /// No rules and no dedupe: what a gateway without `rules.dir` runs.
    pub fn nothing() -> RuleSet {
        let mut set = RuleSet::default();
        set.dedupe.exact = false;
        set.dedupe.near_duplicates = false;
        set
    }

    /// Loads every `*.toml` file of `dir`.
    pub fn load_dir(dir: &Path) -> Result<RuleSet, LoadError> {
        let files = rule_files(dir).map_err(|e| {
            LoadError(vec![RuleProblem {
                file: dir.to_owned(),
                line: None,
                column: None,
                key: None,
                message: format!("cannot read the rules folder: {e}"),
            }])
        })?;
        let mut texts = Vec::new();
        let mut problems = Vec::new();
        for (path, _, _) in files {
            match std::fs::read_to_string(&path) {
                Ok(text) => texts.push((path, text)),
                Err(e) => problems.push(RuleProblem {
                    file: path,
                    line: None,
                    column: None,
                    key: None,
                    message: format!("cannot read: {e}"),
                }),
            }
        }
        match RuleSet::from_texts(&texts) {
            Ok(set) if problems.is_empty() => Ok(set),
            Ok(_) => Err(LoadError(problems)),
            Err(LoadError(more)) => {
                problems.extend(more);
                Err(LoadError(problems))
            }
        }
    }

    /// Compiles named texts (file name, content) into one rule set.
    pub fn from_texts(texts: &[(PathBuf, String)]) -> Result<RuleSet, LoadError> {
        let mut problems = Vec::new();
        let mut set = RuleSet::default();
        let mut dedupe_at: Option<String> = None;
        for (path, text) in texts {
            let file: RuleFile = match toml::from_str(text) {
                Ok(file) => file,
                Err(e) => {
                    problems.push(syntax_problem(path, text, &e));
                    continue;
                }
            };
            set.files.push(path.clone());
            for (i, spec) in file.rule.into_iter().enumerate() {
                let line = line_of(text, spec.name.span().start);
                let at = |key: &str| RuleProblem {
                    file: path.clone(),
                    line: Some(line),
                    column: None,
                    key: Some(format!("rule[{i}] ({}).{key}", spec.name.get_ref())),
                    message: String::new(),
                };
                check_rule(&spec, &at, &mut problems);
                if set.rules.iter().any(|r| r.name == *spec.name.get_ref()) {
                    problems.push(RuleProblem {
                        message: "another rule already has this name; names must be unique across all files".into(),
                        ..at("name")
                    });
                }
                set.rules.push(compile_rule(spec, path, line));
            }
            for (kind, lists, out) in [
                ("allow", file.allow, &mut set.allow),
                ("block", file.block, &mut set.block),
            ] {
                for (i, spec) in lists.into_iter().enumerate() {
                    let line = line_of(text, spec.name.span().start);
                    check_list(&spec, path, line, &format!("{kind}[{i}]"), &mut problems);
                    out.push(List {
                        name: spec.name.into_inner(),
                        patterns: Patterns::of(&spec.senders.0, &spec.domains.0),
                        senders: spec.senders.0,
                        domains: spec.domains.0,
                        networks: spec.networks.0,
                    });
                }
            }
            if let Some(dedupe) = file.dedupe {
                let line = line_of(text, dedupe.span().start);
                let here = format!("{}:{line}", path.display());
                if let Some(first) = &dedupe_at {
                    problems.push(RuleProblem {
                        file: path.clone(),
                        line: Some(line),
                        column: None,
                        key: Some("dedupe".into()),
                        message: format!("a second [dedupe] table; the first is at {first}"),
                    });
                }
                let spec = dedupe.into_inner();
                if !(0.5..=1.0).contains(&spec.similarity) {
                    problems.push(RuleProblem {
                        file: path.clone(),
                        line: Some(line),
                        column: None,
                        key: Some("dedupe.similarity".into()),
                        message: format!(
                            "{} is out of range; use 0.5 to 1.0 (0.9 is a good start)",
                            spec.similarity
                        ),
                    });
                }
                if spec.window.0.is_zero() {
                    problems.push(RuleProblem {
                        file: path.clone(),
                        line: Some(line),
                        column: None,
                        key: Some("dedupe.window".into()),
                        message: "must be longer than 0s".into(),
                    });
                }
                set.dedupe = Dedupe::from_spec(&spec);
                dedupe_at = Some(here);
            }
        }
        if problems.is_empty() {
            Ok(set)
        } else {
            Err(LoadError(problems))
        }
    }
}

fn check_rule(spec: &RuleSpec, at: &dyn Fn(&str) -> RuleProblem, problems: &mut Vec<RuleProblem>) {
    let mut problem =
        |key: &str, message: String| problems.push(RuleProblem { message, ..at(key) });
    let name = spec.name.get_ref();
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        problem("name", "use only letters, digits, `-` and `_`".into());
    }
    if spec.key.is_empty() {
        problem(
            "key",
            "give at least one of sender, sender_domain, ip, ip_prefix, form, mailbox, global"
                .into(),
        );
    }
    if spec.burst == 0 {
        problem("burst", "must be at least 1".into());
    }
    if spec
        .rate
        .interval()
        .checked_mul(spec.burst)
        .is_none_or(|refill| refill > MAX_REFILL)
    {
        problem(
            "burst",
            format!(
                "a burst of {} at {} takes more than 10 years to refill; lower the burst",
                spec.burst, spec.rate
            ),
        );
    }
    if spec.ipv4_prefix > 32 {
        problem("ipv4_prefix", "must be 0 to 32".into());
    }
    if spec.ipv6_prefix > 128 {
        problem("ipv6_prefix", "must be 0 to 128".into());
    }
    if spec.max_keys == 0 {
        problem("max_keys", "must be at least 1".into());
    }
    if spec.tag.is_some() && spec.action != Action::Tag {
        problem("tag", "only a rule with action = \"tag\" adds a tag".into());
    }
}

/// The longest a rule's bucket may take to refill (its interval times its
/// burst). The limiter keeps that span in u64 nanoseconds (584 years) and
/// overflows past it; nothing useful needs more than a few days.
const MAX_REFILL: Duration = Duration::from_secs(10 * 365 * 86_400);

fn check_list(
    spec: &ListSpec,
    path: &Path,
    line: usize,
    at: &str,
    problems: &mut Vec<RuleProblem>,
) {
    if spec.senders.0.is_empty() && spec.domains.0.is_empty() && spec.networks.0.is_empty() {
        problems.push(RuleProblem {
            file: path.to_owned(),
            line: Some(line),
            column: None,
            key: Some(format!("{at} ({})", spec.name.get_ref())),
            message: "lists nothing; give senders, domains or networks".into(),
        });
    }
}

fn compile_rule(spec: RuleSpec, path: &Path, line: usize) -> Rule {
    let name = spec.name.into_inner();
    Rule {
        tag: spec.tag.unwrap_or_else(|| name.clone()),
        name,
        description: spec.description,
        matcher: Matcher {
            patterns: Patterns::of(&spec.matches.senders.0, &spec.matches.domains.0),
            spec: spec.matches,
        },
        key: spec.key,
        rate: spec.rate,
        burst: spec.burst.max(1),
        action: spec.action,
        shadow: spec.shadow,
        scope: spec.scope,
        ipv4_prefix: spec.ipv4_prefix,
        ipv6_prefix: spec.ipv6_prefix,
        max_keys: spec.max_keys,
        origin: format!("{}:{line}", path.display()),
    }
}

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// A TOML or type error, with its line, column and the key it is about
/// (the key written on that line, inside the table it belongs to).
fn syntax_problem(path: &Path, text: &str, error: &toml::de::Error) -> RuleProblem {
    let (line, column, key) = match error.span() {
        Some(span) => {
            let start = span.start.min(text.len());
            let line = line_of(text, start);
            let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
            let column = text[line_start..start].chars().count() + 1;
            (Some(line), Some(column), key_at(text, line))
        }
        None => (None, None, None),
    };
    RuleProblem {
        file: path.to_owned(),
        line,
        column,
        key,
        message: error.message().trim().to_string(),
    }
}

/// `rule[1].rate` for an error on line `line`: the table header above it
/// (counting `[[rule]]` entries) and the key written on the line.
fn key_at(text: &str, line: usize) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let current = lines.get(line.checked_sub(1)?)?.trim();
    let own = current
        .split_once('=')
        .map(|(k, _)| k.trim().trim_matches('"').to_string())
        .filter(|k| !k.is_empty() && !k.starts_with('['));
    let mut table: Option<String> = None;
    for l in lines[..line.min(lines.len())].iter().rev() {
        let l = l.trim();
        if let Some(name) = l.strip_prefix("[[").and_then(|l| l.split("]]").next()) {
            let name = name.trim();
            let index = lines[..line.min(lines.len())]
                .iter()
                .filter(|x| x.trim().starts_with(&format!("[[{name}]]")))
                .count()
                .saturating_sub(1);
            table = Some(format!("{name}[{index}]"));
            break;
        }
        if let Some(name) = l.strip_prefix('[').and_then(|l| l.split(']').next()) {
            table = Some(name.trim().to_string());
            break;
        }
    }
    match (table, own) {
        (Some(t), Some(k)) => Some(format!("{t}.{k}")),
        (Some(t), None) => Some(t),
        (None, Some(k)) => Some(k),
        (None, None) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<RuleSet, LoadError> {
        RuleSet::from_texts(&[(PathBuf::from("rules/10-test.toml"), text.to_string())])
    }

    #[test]
    fn the_shipped_rules_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
        let set = RuleSet::load_dir(&dir).unwrap_or_else(|e| panic!("shipped rules invalid:\n{e}"));
        let names: Vec<&str> = set.rules.iter().map(|r| r.name.as_str()).collect();
        for expected in [
            "one-customer-mail",
            "form-per-network",
            "auto-replies",
            "global-valve",
        ] {
            assert!(
                names.contains(&expected),
                "{expected} is shipped: {names:?}"
            );
        }
        assert!(
            set.rules
                .iter()
                .find(|r| r.name == "global-valve")
                .unwrap()
                .shadow,
            "the valve ships in shadow"
        );
    }

    #[test]
    fn a_burst_the_limiter_cannot_hold_is_a_problem_not_a_panic() {
        // Found by the `rules` fuzz target: this set loaded, and the
        // limiter then overflowed its nanoseconds on the first item.
        let err = load(
            "[[rule]]\nname = \"slow\"\nkey = [\"global\"]\nrate = \"1/365d\"\nburst = 4294967295\naction = \"reject\"\n",
        )
        .unwrap_err();
        assert_eq!(err.0.len(), 1, "{err}");
        assert_eq!(err.0[0].key.as_deref(), Some("rule[0] (slow).burst"));
        assert!(err.0[0].message.contains("10 years"), "{err}");

        // The slowest set that loads counts items without overflowing.
        let set = load(
            "[[rule]]\nname = \"slow\"\nkey = [\"global\"]\nrate = \"1/365d\"\nburst = 10\naction = \"reject\"\n",
        )
        .expect("ten years to refill is allowed");
        let rule = &set.rules[0];
        let limiter = crate::guard::limiter::LocalLimiter::new(
            &rule.name,
            rule.rate,
            rule.burst,
            rule.max_keys,
            &crate::guard::limiter::LimiterClock::Live,
        );
        for _ in 0..10 {
            assert_eq!(limiter.check("k"), crate::guard::limiter::Decision::Allowed);
        }
        assert!(matches!(
            limiter.check("k"),
            crate::guard::limiter::Decision::Limited { .. }
        ));
    }

    #[test]
    fn a_rule_file_compiles() {
        let set = load(
            r#"
[[rule]]
name = "one-customer-mail"
match = { channel = "email" }
key = ["sender"]
rate = "6/h"
burst = 5
action = "collapse"
scope = "cluster"

[[allow]]
name = "staff"
senders = ["*@shop.example"]
networks = ["10.0.0.0/8"]

[dedupe]
window = "12h"
similarity = 0.8
"#,
        )
        .expect("valid");
        assert_eq!(set.rules.len(), 1);
        assert_eq!(set.rules[0].burst, 5);
        assert_eq!(set.rules[0].scope, Scope::Cluster);
        assert_eq!(set.rules[0].origin, "rules/10-test.toml:3");
        assert_eq!(set.allow.len(), 1);
        assert_eq!(set.dedupe.window, Duration::from_secs(12 * 3600));
        assert_eq!(set.dedupe.max_distance, 12);
    }

    #[test]
    fn a_bad_value_names_file_line_and_key() {
        let err = load(
            "[[rule]]\nname = \"a\"\nkey = [\"sender\"]\nrate = \"10/x\"\naction = \"reject\"\n",
        )
        .expect_err("bad rate");
        let text = err.to_string();
        assert!(
            text.starts_with("rules/10-test.toml:4:"),
            "file and line: {text}"
        );
        assert!(text.contains("rule[0].rate"), "key: {text}");
        assert!(text.contains("10/h"), "how to write it: {text}");
    }

    #[test]
    fn an_unknown_key_is_refused_by_name() {
        let err = load("[[rule]]\nname = \"a\"\nkey = [\"sender\"]\nrate = \"1/h\"\naction = \"tag\"\nshadoww = true\n")
            .expect_err("typo");
        let text = err.to_string();
        assert!(text.contains(":6:") && text.contains("shadoww"), "{text}");
    }

    #[test]
    fn every_semantic_problem_is_reported_at_once() {
        let err = load(
            r#"
[[rule]]
name = "dup"
key = []
rate = "1/h"
burst = 0
action = "reject"
[[rule]]
name = "dup"
key = ["ip"]
rate = "1/h"
action = "reject"
ipv4_prefix = 40
"#,
        )
        .expect_err("invalid");
        assert_eq!(err.0.len(), 4, "key, burst, duplicate name, prefix: {err}");
        assert!(err.0.iter().all(|p| p.line.is_some()), "lines given: {err}");
    }

    #[test]
    fn keys_combine_parts_and_networks() {
        let set = load("[[rule]]\nname = \"n\"\nkey = [\"ip_prefix\", \"form\"]\nrate = \"1/h\"\naction = \"reject\"\n").unwrap();
        let mut env = crate::guard::tests::form_envelope("ann@example.com", "203.0.113.77");
        env.customer.email = Some("Ann+x@Example.com".into());
        let facts = Facts::of(&env);
        assert_eq!(
            set.rules[0].keys_of(&facts),
            ["ip_prefix=203.0.113.0/24|form=contact"]
        );
    }

    /// A form-channel envelope from `customer`, with more `From:` addresses.
    fn with_from(customer: &str, from: &[&str]) -> crate::envelope::Envelope {
        let mut env = crate::guard::tests::form_envelope(customer, "203.0.113.77");
        env.headers.push(crate::envelope::Header {
            name: "From".into(),
            value: from.join(", "),
        });
        env
    }

    #[test]
    fn a_sender_key_has_one_key_per_identity_and_the_other_parts_stay() {
        let set = load(
            "[[rule]]\nname = \"n\"\nkey = [\"sender\", \"form\"]\nrate = \"1/h\"\naction = \"reject\"\n\
             [[rule]]\nname = \"d\"\nkey = [\"sender_domain\"]\nrate = \"1/h\"\naction = \"reject\"\n\
             [[rule]]\nname = \"g\"\nkey = [\"global\"]\nrate = \"1/h\"\naction = \"reject\"\n",
        )
        .unwrap();
        let env = with_from(
            "Ann+1@Example.com",
            &["decoy@x.example", "\u{0430}nn@example.com", "bob@x.example"],
        );
        let facts = Facts::of(&env);
        assert_eq!(
            set.rules[0].keys_of(&facts),
            [
                "sender=ann@example.com|form=contact",
                "sender=decoy@x.example|form=contact",
                "sender=bob@x.example|form=contact",
            ],
            "the Cyrillic lookalike of ann is ann's key, counted once"
        );
        assert_eq!(
            set.rules[1].keys_of(&facts),
            ["sender_domain=example.com", "sender_domain=x.example"],
            "one key per distinct domain"
        );
        assert_eq!(set.rules[2].keys_of(&facts), ["global=*"]);
    }

    #[test]
    fn an_item_with_too_many_identities_also_charges_one_shared_bucket() {
        let set = load(
            "[[rule]]\nname = \"n\"\nkey = [\"sender\"]\nrate = \"1/h\"\naction = \"reject\"\n",
        )
        .unwrap();
        let decoys: Vec<String> = (0..40).map(|i| format!("decoy{i}@x.example")).collect();
        let decoys: Vec<&str> = decoys.iter().map(String::as_str).collect();
        let env = with_from("ann@example.com", &decoys);
        let facts = Facts::of(&env);
        let keys = set.rules[0].keys_of(&facts);
        assert_eq!(keys.len(), crate::guard::facts::MAX_IDENTITIES + 1);
        assert_eq!(keys[0], "sender=ann@example.com");
        assert_eq!(keys.last().unwrap(), "sender=many-identities");
    }

    #[test]
    fn an_item_without_a_sender_keys_on_a_dash() {
        let set = load("[[rule]]\nname = \"n\"\nkey = [\"sender\", \"ip\"]\nrate = \"1/h\"\naction = \"reject\"\n").unwrap();
        let mut env = crate::guard::tests::form_envelope("ann@example.com", "203.0.113.77");
        env.customer.email = None;
        assert_eq!(
            set.rules[0].keys_of(&Facts::of(&env)),
            ["sender=-|ip=203.0.113.77"]
        );
    }

    const LISTS: &str = "[[allow]]\nname = \"staff\"\nsenders = [\"*@shop.example\"]\n\
        [[block]]\nname = \"spam\"\ndomains = [\"*.spam.example\", \"spam.example\"]\n\
        [[allow]]\nname = \"office\"\nnetworks = [\"203.0.113.0/24\"]\n";

    #[test]
    fn an_allow_list_needs_every_identity_listed_exactly() {
        let set = load(LISTS).unwrap();
        let staff = &set.allow[0];
        let env = with_from("anna@shop.example", &["Anna <anna@Shop.Example>"]);
        assert!(staff.allows(&Facts::of(&env)), "staff alone is allowed");
        let env = with_from(
            "ann@example.com",
            &["staff@shop.example", "ann@example.com"],
        );
        assert!(
            !staff.allows(&Facts::of(&env)),
            "a forged extra From: staff@shop.example opens nothing"
        );
        let env = with_from("staff@sh\u{043E}p.example", &[]);
        assert!(
            !staff.allows(&Facts::of(&env)),
            "a lookalike of the staff domain is not staff"
        );
        let mut env = with_from("x@example.com", &[]);
        env.customer.email = None;
        assert!(
            !staff.allows(&Facts::of(&env)),
            "no identity is not every identity"
        );
        let decoys: Vec<String> = (0..20).map(|i| format!("s{i}@shop.example")).collect();
        let decoys: Vec<&str> = decoys.iter().map(String::as_str).collect();
        let env = with_from("anna@shop.example", &decoys);
        assert!(
            !staff.allows(&Facts::of(&env)),
            "identities left unread may be anyone's"
        );
        let env = with_from("ann@example.com", &[]);
        assert!(
            set.allow[1].allows(&Facts::of(&env)),
            "a listed network allows whatever the addresses"
        );
    }

    #[test]
    fn a_block_list_holds_when_any_identity_or_its_lookalike_is_listed() {
        let set = load(LISTS).unwrap();
        let spam = &set.block[0];
        let env = with_from("ann@example.com", &["x@mail.spam.example"]);
        assert!(spam.blocks(&Facts::of(&env)), "a second From is enough");
        let env = with_from("x@sp\u{0430}m.example", &[]);
        assert!(
            spam.blocks(&Facts::of(&env)),
            "a Cyrillic lookalike is blocked"
        );
        let env = with_from("ann@example.com", &["bob@example.org"]);
        assert!(!spam.blocks(&Facts::of(&env)));
    }

    #[test]
    fn a_match_holds_when_any_identity_matches() {
        let set = load(
            "[[rule]]\nname = \"n\"\nmatch = { senders = [\"*@watch.example\"] }\nkey = [\"sender\"]\nrate = \"1/h\"\naction = \"reject\"\n",
        )
        .unwrap();
        let rule = &set.rules[0];
        let env = with_from("ann@example.com", &["x@w\u{0430}tch.example"]);
        assert!(
            rule.matcher.matches(&Facts::of(&env)),
            "the lookalike in From"
        );
        let env = with_from("ann@example.com", &["x@elsewhere.example"]);
        assert!(!rule.matcher.matches(&Facts::of(&env)));
    }
}
