//! Stage 2, guard: the cheap abuse checks that run before the expensive
//! scan, so a flood never reaches clamd. The order, in [`Guard::check`]:
//! bot traps, block lists, allow lists, duplicates, then every rule that
//! matches; the strongest action wins (reject > quarantine > collapse >
//! tag) and the envelope records every rule that matched.
//!
//! Rules come from `rules/*.toml` and are swapped whole on reload
//! ([`reload`]); a broken file never replaces working rules.
//!
//! This file holds the guard's types and its construction; the work is
//! beside it: `check.rs` (the decision), `follow_up.rs` (reservations
//! around the item's write), [`reload`]. Below them all: [`rules`],
//! [`limiter`], [`dedupe`], [`store`] and `error.rs` ([`GuardError`]), which
//! never import this file.

mod check;
pub mod config;
pub mod dedupe;
mod error;
pub mod facts;
mod follow_up;
pub mod limiter;
pub mod normalize;
pub mod reload;
pub mod rules;
pub mod store;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use dedupe::{DedupeStore, Fingerprint};
use limiter::{LimiterClock, Limiters};
use rules::{Action, RuleSet};
use store::RedisStore;

pub use error::GuardError;

use crate::submission::ReceiptId;
use crate::verdict::GuardVerdict;

/// The abuse checks, shared by every request (cheap to clone).
#[derive(Clone)]
pub struct Guard {
    inner: Arc<Inner>,
}

struct Inner {
    rules: RwLock<Arc<RuleSet>>,
    limiters: Limiters,
    dedupe: DedupeStore,
    /// How long a reservation holds before its write returns: a few
    /// Redis command timeouts, the longest an honest write takes.
    pending_lifetime: Duration,
    /// Where the rules come from; `None` for a guard without rule files.
    dir: Option<PathBuf>,
    /// The last reload's problems, for the admin endpoint.
    last_error: Mutex<Option<String>>,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard")
            .field("dir", &self.inner.dir)
            .finish()
    }
}

/// The guard's decision plus what must happen once the item is stored
/// (or was not).
#[derive(Debug, Clone)]
pub struct Checked {
    pub verdict: GuardVerdict,
    pub ticket: Ticket,
    /// What each matching rule did (for `intake replay`'s table).
    pub outcomes: Vec<RuleOutcome>,
}

/// What one matching rule did to one item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleOutcome {
    pub rule: String,
    /// Past its quota?
    pub over: bool,
    /// Over, but in shadow mode: counted, not done.
    pub shadow: bool,
    pub action: Action,
}

/// Follow-up work around the item's write: [`Guard::reserve`] before it,
/// [`Guard::confirm`] or [`Guard::not_stored`] after, [`Guard::stored`]
/// for a fold.
#[derive(Debug, Clone, Default)]
pub struct Ticket {
    customer: Option<String>,
    fingerprint: Option<Fingerprint>,
    /// The item is to be remembered as the customer's once stored.
    remember: bool,
    /// When the item arrived (ms since the epoch): the clock of its
    /// dedupe windows.
    now_ms: u64,
    /// The item's exact keys are reserved under this receipt.
    reserved: Option<ReceiptId>,
    /// This item is folded into an earlier one: (into, rule).
    fold: Option<(ReceiptId, String)>,
}

impl Ticket {
    /// The digest of the item's customer (sender, else client address),
    /// when it has one: what per-customer allowances are counted by.
    pub fn customer(&self) -> Option<&str> {
        self.customer.as_deref()
    }
}

/// An update for `intake:events`: N items folded into a desk item.
#[derive(Debug, Clone, PartialEq)]
pub struct FoldEvent {
    pub into: ReceiptId,
    pub count: u64,
    pub latest: ReceiptId,
    pub rule: String,
}

impl Guard {
    /// A guard with no rules: every item passes except bot traps.
    pub fn without_rules() -> Self {
        Guard::new(RuleSet::nothing(), None, None, LimiterClock::Live)
    }

    /// A guard with `rules`, sharing state through `redis` when given
    /// (else in memory), reloading from `dir` when given.
    pub fn new(
        rules: RuleSet,
        dir: Option<PathBuf>,
        redis: Option<RedisStore>,
        clock: LimiterClock,
    ) -> Self {
        let dedupe = match &redis {
            Some(store) => DedupeStore::Redis(store.clone()),
            None => DedupeStore::memory(),
        };
        let pending_lifetime = redis.as_ref().map_or(Duration::from_secs(5), |store| {
            store.timeout() * 5 + Duration::from_secs(1)
        });
        export_rule_count(&rules);
        Guard {
            inner: Arc::new(Inner {
                rules: RwLock::new(Arc::new(rules)),
                limiters: Limiters::new(clock, redis),
                dedupe,
                pending_lifetime,
                dir,
                last_error: Mutex::new(None),
            }),
        }
    }

    /// Loads the rules of `dir`; the error lists every problem.
    pub fn from_dir(dir: PathBuf, redis: Option<RedisStore>) -> Result<Self, rules::LoadError> {
        let set = RuleSet::load_dir(&dir)?;
        Ok(Guard::new(set, Some(dir), redis, LimiterClock::Live))
    }

    /// The rules in force.
    pub fn rules(&self) -> Arc<RuleSet> {
        self.inner.rules.read().expect("rules lock").clone()
    }

    /// The limiters, for `rules explain` (bucket states).
    pub fn limiters(&self) -> &Limiters {
        &self.inner.limiters
    }

    /// Evicts idle limiter keys; the serve loop calls it periodically.
    pub fn housekeep(&self) {
        self.inner.limiters.housekeep();
    }
}

fn export_rule_count(set: &RuleSet) {
    crate::telemetry::events::emit(crate::telemetry::events::guard::RulesLoaded {
        rules: set.rules.len(),
    });
}

#[cfg(test)]
pub(crate) mod tests;
