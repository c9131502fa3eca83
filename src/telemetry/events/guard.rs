//! Events of the guard: rules matched and acting, items folded, the dedupe
//! reservations around a write, rule reloads and the limiters' keys.

use std::fmt::Display;

use super::Event;

/// A rule's match held for an item.
pub struct RuleMatched<'a> {
    pub rule: &'a str,
}

impl Event for RuleMatched<'_> {
    fn emit(self) {
        metrics::counter!("intake_rule_matches_total", "rule" => self.rule.to_string())
            .increment(1);
    }
}

/// An item past a rule's quota (or on a block list: action `block`).
pub struct RuleActed<'a> {
    pub rule: &'a str,
    pub action: &'static str,
}

impl Event for RuleActed<'_> {
    fn emit(self) {
        metrics::counter!("intake_rule_actions_total", "rule" => self.rule.to_string(), "action" => self.action)
            .increment(1);
    }
}

/// A shadow rule would have acted (counted, not done).
pub struct ShadowHit<'a> {
    pub rule: &'a str,
    pub action: &'static str,
    pub id: &'a dyn Display,
}

impl Event for ShadowHit<'_> {
    fn emit(self) {
        metrics::counter!("intake_rule_shadow_hits_total", "rule" => self.rule.to_string(), "action" => self.action)
            .increment(1);
        // Debug, not info: a flood past a shadow rule would be a log line per item.
        tracing::debug!(rule = self.rule, action = self.action, id = %self.id, "shadow rule would act");
    }
}

/// An item folded into an earlier desk item, by rule.
pub struct Collapsed<'a> {
    pub rule: &'a str,
}

impl Event for Collapsed<'_> {
    fn emit(self) {
        metrics::counter!("intake_collapsed_total", "rule" => self.rule.to_string()).increment(1);
    }
}

/// A duplicate's reservation did not resolve in time: stored without one.
pub struct ReservationGaveUp<'a> {
    pub receipt: &'a dyn Display,
}

impl Event for ReservationGaveUp<'_> {
    fn emit(self) {
        metrics::counter!("intake_dedupe_reservation_waits_total", "result" => "gave_up")
            .increment(1);
        tracing::warn!(receipt = %self.receipt, "a duplicate's reservation did not resolve in time; stored without one");
    }
}

/// A stored item that could not be recorded for dedupe.
pub struct ConfirmFailed<'a> {
    pub receipt: &'a dyn Display,
    pub error: &'a dyn Display,
}

impl Event for ConfirmFailed<'_> {
    fn emit(self) {
        metrics::counter!("intake_dedupe_confirm_failures_total").increment(1);
        tracing::warn!(error = %self.error, receipt = %self.receipt, "a stored item could not be recorded for dedupe");
    }
}

/// The rules now in force.
pub struct RulesLoaded {
    pub rules: usize,
}

impl Event for RulesLoaded {
    fn emit(self) {
        metrics::gauge!("intake_rules_loaded").set(self.rules as f64);
    }
}

/// A reload that replaced the rules.
pub struct RulesReloaded<'a> {
    pub why: &'a str,
    pub rules: usize,
}

impl Event for RulesReloaded<'_> {
    fn emit(self) {
        metrics::counter!("intake_rules_reloads_total", "result" => "ok").increment(1);
        metrics::gauge!("intake_rules_reload_failed").set(0.0);
        tracing::info!(why = self.why, rules = self.rules, "rules reloaded");
    }
}

/// A reload refused: the old rules stay. Each problem is logged by the
/// caller, with its file and line.
pub struct RulesReloadFailed;

impl Event for RulesReloadFailed {
    fn emit(self) {
        metrics::counter!("intake_rules_reloads_total", "result" => "failed").increment(1);
        metrics::gauge!("intake_rules_reload_failed").set(1.0);
    }
}

/// A check that used a rule's shared overflow bucket (`max_keys` reached).
pub struct KeysOverflowed<'a> {
    pub rule: &'a str,
}

impl Event for KeysOverflowed<'_> {
    fn emit(self) {
        metrics::counter!("intake_rule_keys_overflow_total", "rule" => self.rule.to_string())
            .increment(1);
    }
}

/// A cluster rule's refusal answered from the local cache.
pub struct FastPath<'a> {
    pub rule: &'a str,
}

impl Event for FastPath<'_> {
    fn emit(self) {
        metrics::counter!("intake_rule_fast_path_total", "rule" => self.rule.to_string())
            .increment(1);
    }
}

/// Keys a local rule tracks after evicting idle ones.
pub struct RuleKeys {
    pub rule: String,
    pub keys: usize,
}

impl Event for RuleKeys {
    fn emit(self) {
        metrics::gauge!("intake_rule_keys", "rule" => self.rule).set(self.keys as f64);
    }
}
