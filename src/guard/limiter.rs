//! Rate limiters, one per rule: GCRA quotas (a sustained rate plus a
//! burst). `local` rules count in this process with governor's keyed
//! limiter; `cluster` rules count in Redis with an atomic GCRA script, so
//! one limit holds across replicas.
//!
//! Memory is bounded: idle keys are evicted ([`Limiters::housekeep`]), and
//! past a rule's `max_keys` new keys share one overflow bucket. A cluster
//! rule remembers locally until when a key is refused, so a flood costs
//! one Redis round trip per emission interval, not one per item.
//!
//! An item with several identities has several keys per rule
//! ([`Limiters::check_rules`]): every bucket is charged, and the item is
//! past the rule's quota when any of them is, so rotating one address
//! does not reset the others.

use crate::telemetry::events::emit;
use crate::telemetry::events::guard::{KeysOverflowed, RuleKeys};
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock as _, DefaultClock, FakeRelativeClock};
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

use super::error::GuardError;
use super::rules::format::{Rate, Scope};
use super::rules::types::{Quota as RuleQuota, Rule};
use super::store::RedisStore;

mod cluster;
use cluster::{Bucket, ClusterLimiter};

/// What a limiter decided for one item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    Limited { retry_after: Duration },
}

/// A bucket's state without counting an item (for `rules explain`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketState {
    /// Items that would pass right now.
    pub remaining: u64,
    /// When the next item would pass, if none would now.
    pub retry_after: Option<Duration>,
}

/// Which clock local limiters run on: the real one, or a fake one that
/// `intake replay` moves to each archived message's date.
#[derive(Clone, Default)]
pub enum LimiterClock {
    #[default]
    Live,
    Fake(FakeRelativeClock),
}

type Keyed<C> = RateLimiter<
    String,
    DefaultKeyedStateStore<String>,
    C,
    governor::middleware::NoOpMiddleware<<C as governor::clock::Clock>::Instant>,
>;

enum Keyed2 {
    Live(Keyed<DefaultClock>),
    Fake(Keyed<FakeRelativeClock>, FakeRelativeClock),
}

/// Key of the shared bucket used once a rule tracks `max_keys` keys.
const OVERFLOW_KEY: &str = "\u{0}overflow";

/// One rule's in-process keyed limiter.
pub struct LocalLimiter {
    rule: String,
    inner: Keyed2,
    max_keys: usize,
    /// Keys tracked when last counted, and checks since: each check adds
    /// at most one key, so their sum bounds the keys tracked now, and the
    /// limiter only counts (a read lock on every shard of its map, a few
    /// per cent of a decision) when that bound reaches `max_keys`.
    counted: AtomicUsize,
    checks_since_counted: AtomicUsize,
}

impl LocalLimiter {
    pub fn new(rule: &str, rate: Rate, burst: u32, max_keys: usize, clock: &LimiterClock) -> Self {
        let quota = quota(rate, burst);
        let inner = match clock {
            LimiterClock::Live => Keyed2::Live(RateLimiter::dashmap_with_clock(
                quota,
                DefaultClock::default(),
            )),
            LimiterClock::Fake(c) => {
                Keyed2::Fake(RateLimiter::dashmap_with_clock(quota, c.clone()), c.clone())
            }
        };
        LocalLimiter {
            rule: rule.to_string(),
            inner,
            max_keys,
            counted: AtomicUsize::new(0),
            checks_since_counted: AtomicUsize::new(0),
        }
    }

    /// Whether the limiter may be tracking `max_keys` keys: exact when the
    /// bound says it could be (checks racing with the count may each add
    /// one key more than counted: the cap is a memory bound, not a quota).
    fn may_be_full(&self) -> bool {
        let since = self.checks_since_counted.fetch_add(1, Ordering::Relaxed);
        if self.counted.load(Ordering::Relaxed).saturating_add(since) < self.max_keys {
            return false;
        }
        self.recount() >= self.max_keys
    }

    /// Counts the keys tracked and starts the bound of `may_be_full` over.
    fn recount(&self) -> usize {
        let len = self.len();
        self.counted.store(len, Ordering::Relaxed);
        self.checks_since_counted.store(0, Ordering::Relaxed);
        len
    }

    pub fn check(&self, key: &str) -> Decision {
        let key = if self.may_be_full() {
            self.housekeep();
            if self.len() >= self.max_keys {
                emit(KeysOverflowed { rule: &self.rule });
                OVERFLOW_KEY.to_string()
            } else {
                key.to_string()
            }
        } else {
            key.to_string()
        };
        match &self.inner {
            // The limiter's own clock: a new `DefaultClock` calibrates
            // itself (CPUID, slow in a VM), and that cost more than the
            // rest of the decision whenever a key was over its quota.
            Keyed2::Live(l) => l.check_key(&key).map_or_else(
                |n| Decision::Limited {
                    retry_after: n.wait_time_from(l.clock().now()),
                },
                |_| Decision::Allowed,
            ),
            Keyed2::Fake(l, clock) => l.check_key(&key).map_or_else(
                |n| Decision::Limited {
                    retry_after: n.wait_time_from(clock.now()),
                },
                |_| Decision::Allowed,
            ),
        }
    }

    pub fn len(&self) -> usize {
        match &self.inner {
            Keyed2::Live(l) => l.len(),
            Keyed2::Fake(l, _) => l.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets keys whose bucket is full again (idle keys); returns how
    /// many keys are still tracked.
    pub fn housekeep(&self) -> usize {
        match &self.inner {
            Keyed2::Live(l) => {
                l.retain_recent();
                l.shrink_to_fit();
            }
            Keyed2::Fake(l, _) => {
                l.retain_recent();
                l.shrink_to_fit();
            }
        }
        self.recount()
    }
}

/// Limited when any decision is, with the longest wait.
fn strictest(decisions: &[Decision]) -> Decision {
    decisions
        .iter()
        .filter_map(|d| match d {
            Decision::Limited { retry_after } => Some(*retry_after),
            Decision::Allowed => None,
        })
        .max()
        .map_or(Decision::Allowed, |retry_after| Decision::Limited {
            retry_after,
        })
}

fn quota(rate: Rate, burst: u32) -> Quota {
    let interval = rate.interval().max(Duration::from_nanos(1));
    Quota::with_period(interval)
        .expect("interval is above zero")
        .allow_burst(NonZeroU32::new(burst.max(1)).expect("burst is at least 1"))
}

/// A rule's limiter with the quota it was built for.
type LocalEntry = (Rate, u32, usize, Arc<LocalLimiter>);

/// Every rule's limiter; survives reloads for rules whose quota did not
/// change, so a reload neither resets nor leaks buckets.
pub struct Limiters {
    clock: LimiterClock,
    local: Mutex<HashMap<String, LocalEntry>>,
    cluster: Option<ClusterLimiter>,
}

impl Limiters {
    pub fn new(clock: LimiterClock, redis: Option<RedisStore>) -> Self {
        Limiters {
            clock,
            local: Mutex::new(HashMap::new()),
            cluster: redis.map(ClusterLimiter::new),
        }
    }

    /// Counts one item against each rule's bucket for each of its keys
    /// (one per identity the item carries): every bucket is charged, even
    /// once one is found over, so a rotated address never spares the fixed
    /// one. A rule is past its quota when any of its buckets is; the item
    /// may come again when the last of those admits. A decision per rule,
    /// in order; the cluster buckets of all of them in one Redis call.
    /// Cluster rules run locally when there is no Redis (replay, explain).
    pub async fn check_rules<K: AsRef<[String]>>(
        &self,
        rules: &[(&Rule, K)],
    ) -> Result<Vec<Decision>, GuardError> {
        let mut decisions: Vec<Decision> = Vec::with_capacity(rules.len());
        // Cluster buckets, and the rule each belongs to.
        let mut buckets: Vec<Bucket<'_>> = Vec::new();
        let mut owners: Vec<usize> = Vec::new();
        for (at, (rule, keys)) in rules.iter().enumerate() {
            // A rule without a quota counts nothing: every item it matches
            // is past it, and waiting does not change that.
            let Some(quota) = rule.quota else {
                decisions.push(Decision::Limited {
                    retry_after: Duration::ZERO,
                });
                continue;
            };
            if self.cluster.is_some() && rule.scope == Scope::Cluster {
                for key in keys.as_ref() {
                    buckets.push(Bucket {
                        rule: &rule.name,
                        key,
                        quota,
                    });
                    owners.push(at);
                }
                // Stricter below, once Redis has answered for its buckets
                // (none when the item has no key for it: nothing limits).
                decisions.push(Decision::Allowed);
            } else {
                let local = self.local(rule, quota);
                let each: Vec<Decision> = keys.as_ref().iter().map(|k| local.check(k)).collect();
                decisions.push(strictest(&each));
            }
        }
        if let Some(cluster) = self.cluster.as_ref().filter(|_| !buckets.is_empty()) {
            for (owner, decision) in owners.into_iter().zip(cluster.check(&buckets).await?) {
                decisions[owner] = strictest(&[decisions[owner], decision]);
            }
        }
        Ok(decisions)
    }

    /// The bucket's state without counting, when it is in Redis.
    pub async fn peek(&self, rule: &Rule, key: &str) -> Result<Option<BucketState>, GuardError> {
        match (&self.cluster, rule.scope) {
            (Some(cluster), Scope::Cluster) => match rule.quota {
                Some(quota) => cluster
                    .peek(Bucket {
                        rule: &rule.name,
                        key,
                        quota,
                    })
                    .await
                    .map(Some),
                None => Ok(Some(BucketState {
                    remaining: 0,
                    retry_after: Some(Duration::ZERO),
                })),
            },
            _ => Ok(None),
        }
    }

    fn local(&self, rule: &Rule, quota: RuleQuota) -> Arc<LocalLimiter> {
        let mut local = self.local.lock().expect("limiters lock");
        match local.get(&rule.name) {
            Some((rate, burst, max_keys, limiter))
                if *rate == quota.rate && *burst == quota.burst && *max_keys == rule.max_keys =>
            {
                limiter.clone()
            }
            _ => {
                let limiter = Arc::new(LocalLimiter::new(
                    &rule.name,
                    quota.rate,
                    quota.burst,
                    rule.max_keys,
                    &self.clock,
                ));
                local.insert(
                    rule.name.clone(),
                    (quota.rate, quota.burst, rule.max_keys, limiter.clone()),
                );
                limiter
            }
        }
    }

    /// Drops the limiters of rules no longer loaded.
    pub fn retain(&self, names: &[&str]) {
        self.local
            .lock()
            .expect("limiters lock")
            .retain(|name, _| names.contains(&name.as_str()));
    }

    /// Evicts idle keys and exports how many are tracked per rule.
    pub fn housekeep(&self) {
        let limiters: Vec<(String, Arc<LocalLimiter>)> = self
            .local
            .lock()
            .expect("limiters lock")
            .iter()
            .map(|(name, (.., l))| (name.clone(), l.clone()))
            .collect();
        for (name, limiter) in limiters {
            let keys = limiter.housekeep();
            emit(RuleKeys { rule: name, keys });
        }
        if let Some(cluster) = &self.cluster {
            cluster.housekeep();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_limiter_tells_how_long_to_wait() {
        let rate = Rate::parse("6/h").unwrap();
        let limiter = LocalLimiter::new("t", rate, 1, 100, &LimiterClock::Live);
        assert_eq!(limiter.check("ann"), Decision::Allowed);
        let Decision::Limited { retry_after } = limiter.check("ann") else {
            panic!("the second item at once must be limited");
        };
        assert!(
            retry_after > Duration::from_secs(590) && retry_after <= Duration::from_secs(600),
            "about one interval (10 minutes) from now: {retry_after:?}"
        );
    }

    #[test]
    fn burst_then_sustained_rate_on_a_fake_clock() {
        let clock = FakeRelativeClock::default();
        let rate = Rate::parse("6/h").unwrap();
        let limiter = LocalLimiter::new("t", rate, 3, 100, &LimiterClock::Fake(clock.clone()));
        for i in 0..3 {
            assert_eq!(
                limiter.check("ann"),
                Decision::Allowed,
                "burst item {i} passes"
            );
        }
        let Decision::Limited { retry_after } = limiter.check("ann") else {
            panic!("the fourth item at once must be limited");
        };
        assert_eq!(
            retry_after,
            Duration::from_secs(600),
            "one item per 10 minutes"
        );
        assert_eq!(
            limiter.check("bob"),
            Decision::Allowed,
            "other keys have their own bucket"
        );
        clock.advance(Duration::from_secs(600));
        assert_eq!(
            limiter.check("ann"),
            Decision::Allowed,
            "one more after the interval"
        );
        assert!(
            matches!(limiter.check("ann"), Decision::Limited { .. }),
            "and only one"
        );
    }

    fn rule(text: &str) -> Rule {
        let set = crate::guard::rules::RuleSet::from_texts(&[(
            std::path::PathBuf::from("t.toml"),
            text.to_string(),
        )])
        .expect("valid");
        set.rules[0].clone()
    }

    /// One rule's decision for one item.
    async fn check_all(limiters: &Limiters, rule: &Rule, keys: &[String]) -> Decision {
        limiters.check_rules(&[(rule, keys)]).await.unwrap()[0]
    }

    #[tokio::test]
    async fn every_key_is_charged_and_any_over_quota_limits_the_item() {
        let clock = FakeRelativeClock::default();
        let limiters = Limiters::new(LimiterClock::Fake(clock.clone()), None);
        let rule = rule(
            "[[rule]]\nname = \"r\"\nkey = [\"sender\"]\nrate = \"6/h\"\nburst = 2\naction = \"reject\"\n",
        );
        let keys =
            |rotating: usize| vec![format!("sender=new{rotating}"), "sender=fixed".to_string()];
        for i in 0..2 {
            assert_eq!(
                check_all(&limiters, &rule, &keys(i)).await,
                Decision::Allowed,
                "item {i} is within the fixed key's burst"
            );
        }
        let third = check_all(&limiters, &rule, &keys(2)).await;
        assert_eq!(
            third,
            Decision::Limited {
                retry_after: Duration::from_secs(600)
            },
            "a fresh rotating key does not reset the fixed one"
        );
        // The fresh key was charged all the same: it has one item left.
        assert_eq!(
            check_all(&limiters, &rule, &["sender=new2".to_string()]).await,
            Decision::Allowed
        );
        assert!(matches!(
            check_all(&limiters, &rule, &["sender=new2".to_string()]).await,
            Decision::Limited { .. }
        ));
        assert_eq!(strictest(&[]), Decision::Allowed, "no key, no limit");
    }

    #[test]
    fn idle_keys_are_evicted_and_the_key_table_is_capped() {
        let clock = FakeRelativeClock::default();
        let rate = Rate::parse("60/m").unwrap();
        let limiter = LocalLimiter::new("t", rate, 1, 10, &LimiterClock::Fake(clock.clone()));
        for i in 0..10 {
            limiter.check(&format!("k{i}"));
        }
        assert_eq!(limiter.len(), 10);
        // The table is full of busy keys: a new key shares the overflow bucket.
        assert_eq!(limiter.check("new-1"), Decision::Allowed);
        assert!(
            matches!(limiter.check("new-2"), Decision::Limited { .. }),
            "overflow keys share one bucket"
        );
        assert!(
            limiter.len() <= 11,
            "never more than max_keys plus the overflow bucket"
        );
        clock.advance(Duration::from_secs(5));
        assert_eq!(limiter.housekeep(), 0, "idle keys are forgotten");
    }
}
