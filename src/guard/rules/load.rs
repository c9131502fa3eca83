//! Loading: the `*.toml` files of a rules folder read in name order,
//! parsed, checked as a whole and compiled into a [`RuleSet`]. A set that
//! does not load names every problem with its file, line and key, and the
//! caller keeps the rules it had.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::format::{Action, KeyPart, ListSpec, RuleFile, RuleSpec, DEFAULT_BURST};
use super::types::{Dedupe, List, Matcher, Patterns, Quota, Rule, RuleSet};

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
    match (&spec.rate, spec.key.is_empty()) {
        (Some(_), true) => problem(
            "key",
            format!("give at least one of {}", KeyPart::NAMES.join(", ")),
        ),
        // Without a rate nothing is counted: every matching item gets the
        // action, so a key or burst would be read as a quota that is not.
        (None, false) => problem(
            "key",
            "a rule without rate acts on every item it matches and counts nothing; remove key, or give a rate".into(),
        ),
        _ => {}
    }
    let burst = spec.burst.unwrap_or(DEFAULT_BURST);
    match &spec.rate {
        None if spec.burst.is_some() => problem(
            "burst",
            "a rule without rate has no burst; remove it, or give a rate".into(),
        ),
        Some(_) if burst == 0 => problem("burst", "must be at least 1".into()),
        Some(rate)
            if rate
                .interval()
                .checked_mul(burst)
                .is_none_or(|refill| refill > MAX_REFILL) =>
        {
            problem(
                "burst",
                format!(
                    "a burst of {burst} at {rate} takes more than 10 years to refill; lower the burst"
                ),
            )
        }
        _ => {}
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
        quota: spec.rate.map(|rate| Quota {
            rate,
            burst: spec.burst.unwrap_or(DEFAULT_BURST).max(1),
        }),
        key: spec.key,
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
