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
//!
//! The files, bottom up: [`format`] (the TOML as written), [`types`] (the
//! compiled rules, which the limiters count by), [`load`] (reading and
//! checking a folder) and [`matching`] (facts against rules and lists).
//!
//! [`Facts`]: crate::guard::facts::Facts

pub mod format;
pub mod load;
pub mod matching;
pub mod types;

#[cfg(test)]
mod tests;

pub use format::{Action, KeyPart, Rate, Scope};
pub use load::{rule_files, LoadError, RuleProblem};
pub use matching::MANY_IDENTITIES_KEY;
pub use types::{Dedupe, List, Matcher, Rule, RuleSet};
