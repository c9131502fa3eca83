//! Stage 2, guard: the cheap abuse checks that run before the expensive
//! scan, so a flood never reaches clamd. The order, in [`Guard::check`]:
//! bot traps, block lists, allow lists, duplicates, then every rule that
//! matches; the strongest action wins (reject > quarantine > collapse >
//! tag) and the envelope records every rule that matched.
//!
//! Rules come from `rules/*.toml` and are swapped whole on reload
//! ([`reload`]); a broken file never replaces working rules.

pub mod config;
pub mod dedupe;
mod error;
pub mod facts;
pub mod limiter;
pub mod normalize;
pub mod reload;
pub mod rules;
pub mod store;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use dedupe::{DedupeStore, Fingerprint};
use facts::Facts;
use limiter::{Decision, LimiterClock, Limiters};
use rules::{Action, RuleSet};
use store::RedisStore;

pub use error::GuardError;

use crate::parse::Message;
use crate::submission::ReceiptId;
use crate::verdict::{GuardVerdict, RatePolicy};

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

/// One rule past its quota for this item.
struct Hit<'r> {
    rule: &'r rules::Rule,
    retry_after: Duration,
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

    /// Decides what happens to one message, and records the rules that
    /// matched in its envelope. Entry point of this stage.
    pub async fn check(&self, message: &mut Message) -> Result<Checked, GuardError> {
        let now_ms =
            (message.envelope.received_at.unix_timestamp_nanos() / 1_000_000).max(0) as u64;
        self.check_at(message, now_ms).await
    }

    async fn check_at(&self, message: &mut Message, now_ms: u64) -> Result<Checked, GuardError> {
        let mut ticket = Ticket::default();
        // 1. Bot traps: answered like a success, kept aside.
        if let Some(trap) = &message.trap {
            return Ok(Checked {
                verdict: GuardVerdict::Trap {
                    reason: format!("bot check failed: {}", trap.label()),
                },
                ticket,
                outcomes: Vec::new(),
            });
        }
        let set = self.rules();
        let facts = Facts::of(&message.envelope);
        let mut matched: Vec<String> = Vec::new();
        let mut tags: Vec<String> = Vec::new();
        let mut outcomes: Vec<RuleOutcome> = Vec::new();
        if facts.auto_submitted {
            tags.push("auto_submitted".into());
        }
        if facts.too_many_identities {
            tags.push(facts::MANY_IDENTITIES_TAG.into());
        }
        let verdict = 'decide: {
            // 2. Block lists: refused whatever the rates, when any identity
            //    (or its lookalike) or the client network is listed.
            if let Some(list) = set.block.iter().find(|l| l.blocks(&facts)) {
                matched.push(format!("block:{}", list.name));
                metrics::counter!("intake_rule_actions_total", "rule" => list.name.clone(), "action" => "block").increment(1);
                break 'decide GuardVerdict::Block {
                    reason: format!("sender is on block list {}", list.name),
                };
            }
            // 3. Allow lists: no rate limits, no collapse, when every
            //    identity or the client network is listed.
            if let Some(list) = set.allow.iter().find(|l| l.allows(&facts)) {
                matched.push(format!("allow:{}", list.name));
                break 'decide GuardVerdict::Pass;
            }
            let customer = facts
                .sender
                .as_ref()
                .map(|s| format!("s:{s}"))
                .or(facts.ip.map(|ip| format!("ip:{ip}")));
            ticket.customer = customer
                .as_deref()
                .map(|c| store::short_digest(c.as_bytes()));
            // The fingerprint costs a pass over the text (a sixth of a
            // form post's CPU) and the lookup a Redis round trip: neither
            // is spent when no setting or rule would use them.
            if remembers(&set) {
                ticket.fingerprint = dedupe::fingerprint(&facts).map(|mut fp| {
                    fp.attempt = message
                        .idempotency_key
                        .as_deref()
                        .map(|k| store::short_digest(k.as_bytes()));
                    fp
                });
            }
            // 4. Duplicates fold into the first item without costing quota.
            if let Some(fp) = ticket
                .fingerprint
                .as_ref()
                .filter(|_| set.dedupe.looks_up())
            {
                if let Some((into, kind)) =
                    self.inner.dedupe.lookup(fp, &set.dedupe, now_ms).await?
                {
                    matched.push(kind.rule().into());
                    break 'decide GuardVerdict::Collapse {
                        into,
                        rule: kind.rule().into(),
                    };
                }
            }
            // 5. Every rule that matches counts the item, in the bucket of
            //    each identity it carries; a rule is past its quota when
            //    any of them is, and the strongest action of those past
            //    their quota wins.
            let mut hits: Vec<Hit<'_>> = Vec::new();
            for rule in &set.rules {
                if !rule.matcher.matches(&facts) {
                    continue;
                }
                matched.push(rule.name.clone());
                metrics::counter!("intake_rule_matches_total", "rule" => rule.name.clone())
                    .increment(1);
                let keys = rule.keys_of(&facts);
                let decision = self.inner.limiters.check_all(rule, &keys).await?;
                outcomes.push(RuleOutcome {
                    rule: rule.name.clone(),
                    over: decision != Decision::Allowed,
                    shadow: rule.shadow,
                    action: rule.action,
                });
                if let Decision::Limited { retry_after } = decision {
                    if rule.shadow {
                        metrics::counter!("intake_rule_shadow_hits_total", "rule" => rule.name.clone(), "action" => rule.action.name()).increment(1);
                        // Debug, not info: a flood past a shadow rule would be a log line per item.
                        tracing::debug!(rule = %rule.name, action = rule.action.name(), id = %message.envelope.id, "shadow rule would act");
                        continue;
                    }
                    metrics::counter!("intake_rule_actions_total", "rule" => rule.name.clone(), "action" => rule.action.name()).increment(1);
                    if rule.action == Action::Tag {
                        tags.push(rule.tag.clone());
                    }
                    hits.push(Hit { rule, retry_after });
                }
            }
            let strongest = hits.iter().max_by_key(|h| h.rule.action);
            match strongest.map(|h| h.rule.action) {
                None | Some(Action::Tag) => GuardVerdict::Pass,
                Some(Action::Quarantine) => {
                    let hit = strongest.expect("a hit");
                    GuardVerdict::Quarantine {
                        reason: format!(
                            "rate limit {} ({}) exceeded",
                            hit.rule.name,
                            hit.rule.quota_text()
                        ),
                    }
                }
                Some(Action::Reject) => reject(strongest.expect("a hit"), ""),
                Some(Action::Collapse) => {
                    let hit = strongest.expect("a hit");
                    match self.latest(&ticket, now_ms).await? {
                        Some(into) => GuardVerdict::Collapse {
                            into,
                            rule: hit.rule.name.clone(),
                        },
                        None => reject(hit, "; nothing earlier to fold into"),
                    }
                }
            }
        };
        // 6. A desk-bound item is remembered once it is stored (for dedupe,
        //    or for a rule that folds into the customer's latest item): the
        //    pipeline reserves it just before its write (`Guard::reserve`)
        //    and confirms it after (`Guard::confirm`), so nothing is ever
        //    folded into an item that did not reach a stream.
        ticket.remember =
            matches!(verdict, GuardVerdict::Pass) && ticket.customer.is_some() && remembers(&set);
        ticket.now_ms = now_ms;
        if let GuardVerdict::Collapse { into, rule } = &verdict {
            ticket.fold = Some((*into, rule.clone()));
            metrics::counter!("intake_collapsed_total", "rule" => rule.clone()).increment(1);
        }
        let abuse = &mut message.envelope.abuse;
        abuse.matched_rules = matched;
        for tag in tags {
            if !abuse.tags.contains(&tag) {
                abuse.tags.push(tag);
            }
        }
        Ok(Checked {
            verdict,
            ticket,
            outcomes,
        })
    }

    /// The latest stored desk item of any of the item's identities (a
    /// ULID receipt sorts by time), to fold a rate-limited item into.
    async fn latest(&self, ticket: &Ticket, now_ms: u64) -> Result<Option<ReceiptId>, GuardError> {
        let Some(customer) = ticket.customer.as_deref() else {
            return Ok(None);
        };
        let others = ticket.fingerprint.iter().flat_map(|fp| fp.others.iter());
        let mut latest = None;
        for customer in std::iter::once(customer).chain(others.map(String::as_str)) {
            let last = self.inner.dedupe.last(customer, now_ms).await?;
            latest = latest.max(last);
        }
        Ok(latest)
    }

    /// Called once the item is stored: counts a fold and returns the
    /// update the desk should get in `intake:events`.
    pub async fn stored(
        &self,
        ticket: &Ticket,
        id: ReceiptId,
    ) -> Result<Option<FoldEvent>, GuardError> {
        let Some((into, rule)) = &ticket.fold else {
            return Ok(None);
        };
        let settings = self.rules().dedupe.clone();
        let count = self.inner.dedupe.count_fold(*into, &settings).await?;
        Ok(Some(FoldEvent {
            into: *into,
            count,
            latest: id,
            rule: rule.clone(),
        }))
    }

    /// Reserves a desk-bound item just before its write, so a duplicate
    /// arriving at the same moment folds into it instead of becoming a
    /// second desk item. Returns the earlier stored item this one is a
    /// duplicate of, if one turned up since the check (the item is then
    /// folded: `(into, rule)`). While another duplicate's write is in
    /// flight it waits for that write (bounded by the reservation's
    /// lifetime); a reservation that outlives its writer (a gateway killed
    /// between reservation and write) expires and is taken over, never
    /// folded into.
    pub async fn reserve(
        &self,
        ticket: &mut Ticket,
        receipt: ReceiptId,
    ) -> Result<Option<(ReceiptId, String)>, GuardError> {
        let Some(customer) = ticket.customer.clone().filter(|_| ticket.remember) else {
            return Ok(None);
        };
        let settings = self.rules().dedupe.clone();
        let lifetime = self.inner.pending_lifetime;
        let deadline = std::time::Instant::now() + lifetime + Duration::from_secs(1);
        let mut pause = Duration::from_millis(5);
        loop {
            let found = self
                .inner
                .dedupe
                .reserve(
                    &customer,
                    ticket.fingerprint.as_ref(),
                    &settings,
                    receipt,
                    ticket.now_ms,
                    lifetime.as_millis() as u64,
                )
                .await?;
            match found {
                dedupe::Reserve::Reserved => {
                    ticket.reserved = Some(receipt);
                    return Ok(None);
                }
                dedupe::Reserve::Folded(into) => {
                    let rule = dedupe::Kind::Exact.rule().to_string();
                    ticket.fold = Some((into, rule.clone()));
                    metrics::counter!("intake_collapsed_total", "rule" => rule.clone())
                        .increment(1);
                    return Ok(Some((into, rule)));
                }
                dedupe::Reserve::Pending if std::time::Instant::now() < deadline => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(100));
                }
                dedupe::Reserve::Pending => {
                    // Its writer is stuck or gone and Redis has not expired
                    // it yet: store this item unreserved (at worst a second
                    // desk item, never a fold into nothing).
                    metrics::counter!("intake_dedupe_reservation_waits_total", "result" => "gave_up")
                        .increment(1);
                    tracing::warn!(%receipt, "a duplicate's reservation did not resolve in time; stored without one");
                    return Ok(None);
                }
            }
        }
    }

    /// Called once the item is stored: its reservation becomes the stored
    /// item's, and it becomes the customer's latest. A failure is logged,
    /// not reported (the item is stored; a retry would store it twice):
    /// the reservation then expires and duplicates are not folded into it.
    pub async fn confirm(&self, ticket: &Ticket, receipt: ReceiptId) {
        let Some(customer) = ticket
            .customer
            .as_deref()
            .filter(|_| ticket.reserved == Some(receipt))
        else {
            return;
        };
        let settings = self.rules().dedupe.clone();
        // In the history of every identity the item carries: a duplicate
        // from any of them folds into it.
        let others = ticket.fingerprint.iter().flat_map(|fp| fp.others.iter());
        for customer in std::iter::once(customer).chain(others.map(String::as_str)) {
            if let Err(e) = self
                .inner
                .dedupe
                .confirm(
                    customer,
                    ticket.fingerprint.as_ref(),
                    &settings,
                    receipt,
                    ticket.now_ms,
                )
                .await
            {
                metrics::counter!("intake_dedupe_confirm_failures_total").increment(1);
                tracing::warn!(error = %e, %receipt, "a stored item could not be recorded for dedupe");
                return;
            }
        }
    }

    /// Called when the item was certainly not stored: its reservation is
    /// released, so a retry is not kept waiting for it. (An outcome that is
    /// not known, a timeout, leaves it to expire.)
    pub async fn not_stored(&self, ticket: &Ticket) {
        if let (Some(receipt), Some(customer)) = (ticket.reserved, &ticket.customer) {
            if let Err(e) = self
                .inner
                .dedupe
                .release(customer, ticket.fingerprint.as_ref(), receipt)
                .await
            {
                tracing::warn!(error = %e, "could not forget an item that was not stored");
            }
        }
    }

    /// Evicts idle limiter keys; the serve loop calls it periodically.
    pub fn housekeep(&self) {
        self.inner.limiters.housekeep();
    }
}

fn reject(hit: &Hit<'_>, why: &str) -> GuardVerdict {
    GuardVerdict::Reject {
        reason: format!(
            "rate limit {} ({}) exceeded{why}",
            hit.rule.name,
            hit.rule.quota_text()
        ),
        retry_after: hit.retry_after.max(Duration::from_secs(1)),
        policy: Some(RatePolicy {
            name: hit.rule.name.clone(),
            quota: hit.rule.rate.count,
            window: hit.rule.rate.per,
        }),
    }
}

/// Whether desk items must be remembered per customer.
fn remembers(set: &RuleSet) -> bool {
    set.dedupe.looks_up() || set.rules.iter().any(|r| r.action == Action::Collapse)
}

fn export_rule_count(set: &RuleSet) {
    metrics::gauge!("intake_rules_loaded").set(set.rules.len() as f64);
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::envelope::{AbuseReport, Channel, Customer, Envelope, ScanReport, Source};
    use std::path::PathBuf;

    pub fn form_envelope(email: &str, ip: &str) -> Envelope {
        Envelope {
            version: 1,
            id: ReceiptId::new(),
            received_at: time::OffsetDateTime::now_utc(),
            channel: Channel::Form,
            source: Source::Form {
                form: "contact".into(),
                ip: ip.into(),
                user_agent: None,
                origin: None,
                referer: None,
            },
            customer: Customer {
                email: Some(email.into()),
                ..Default::default()
            },
            from: None,
            to: vec![],
            cc: vec![],
            reply_to: vec![],
            subject: Some("Contact form".into()),
            date: None,
            message_id: None,
            in_reply_to: vec![],
            references: vec![],
            headers: vec![],
            text: Some("hello".into()),
            html: None,
            stripped_text: Some("hello".into()),
            fields: Default::default(),
            attachments: vec![],
            scan: ScanReport::unscanned(),
            abuse: AbuseReport::default(),
            raw: None,
        }
    }

    fn message(email: &str, text: &str) -> Message {
        let mut envelope = form_envelope(email, "198.51.100.7");
        envelope.text = Some(text.into());
        envelope.stripped_text = Some(text.into());
        Message {
            envelope,
            scan_targets: vec![],
            trap: None,
            mime: Default::default(),
            idempotency_key: None,
        }
    }

    fn guard(text: &str) -> Guard {
        let set =
            RuleSet::from_texts(&[(PathBuf::from("t.toml"), text.into())]).expect("valid rules");
        Guard::new(set, None, None, LimiterClock::Fake(Default::default()))
    }

    const TWO_PER_HOUR: &str = "[[rule]]\nname = \"per-sender\"\nkey = [\"sender\"]\nrate = \"2/h\"\nburst = 2\naction = \"ACTION\"\n";

    #[tokio::test]
    async fn strongest_action_wins_and_matches_are_recorded() {
        let rules = format!(
            "{}{}",
            TWO_PER_HOUR.replace("ACTION", "tag"),
            TWO_PER_HOUR
                .replace("ACTION", "reject")
                .replace("per-sender", "per-sender-hard")
        );
        let g = guard(&rules);
        for i in 0..2 {
            let mut m = message("ann@example.com", &format!("message number {i}"));
            assert_eq!(
                g.check(&mut m).await.unwrap().verdict,
                GuardVerdict::Pass,
                "within burst"
            );
        }
        let mut m = message("ANN+x@example.com", "a third, different message");
        let verdict = g.check(&mut m).await.unwrap().verdict;
        assert!(
            matches!(verdict, GuardVerdict::Reject { .. }),
            "reject beats tag: {verdict:?}"
        );
        assert_eq!(
            m.envelope.abuse.matched_rules,
            ["per-sender", "per-sender-hard"]
        );
        assert!(
            m.envelope.abuse.tags.contains(&"per-sender".to_string()),
            "the tag rule fired too"
        );
    }

    #[tokio::test]
    async fn exact_duplicate_collapses_into_the_first_item() {
        let g = guard("");
        let mut first = message("ann@example.com", "Where is my parcel?");
        let mut checked = g.check(&mut first).await.unwrap();
        assert_eq!(checked.verdict, GuardVerdict::Pass);
        // Stored: reserved before its write, confirmed after.
        let receipt = first.envelope.id;
        assert_eq!(g.reserve(&mut checked.ticket, receipt).await.unwrap(), None);
        g.confirm(&checked.ticket, receipt).await;
        let mut again = message("ann@example.com", "Where is my parcel?");
        let checked = g.check(&mut again).await.unwrap();
        assert_eq!(
            checked.verdict,
            GuardVerdict::Collapse {
                into: first.envelope.id,
                rule: "dedupe-exact".into()
            }
        );
        let event = g
            .stored(&checked.ticket, again.envelope.id)
            .await
            .unwrap()
            .expect("an event");
        assert_eq!((event.into, event.count), (first.envelope.id, 1));
    }

    #[tokio::test]
    async fn with_dedupe_off_and_no_collapse_rule_nothing_is_fingerprinted_or_folded() {
        let g = guard("[dedupe]\nexact = false\nnear_duplicates = false\n");
        for _ in 0..2 {
            let mut m = message("ann@example.com", "Where is my parcel?");
            let checked = g.check(&mut m).await.unwrap();
            assert_eq!(
                checked.verdict,
                GuardVerdict::Pass,
                "the same text twice passes"
            );
            assert!(
                checked.ticket.fingerprint.is_none() && !checked.ticket.remember,
                "nothing would read a fingerprint or reservation: {:?}",
                checked.ticket
            );
        }
        // A collapse rule still needs the customer's latest item, so that
        // is still recorded, with its fingerprint.
        let g = guard(&format!(
            "[dedupe]\nexact = false\nnear_duplicates = false\n{}",
            TWO_PER_HOUR.replace("ACTION", "collapse")
        ));
        let mut m = message("ann@example.com", "Where is my parcel?");
        let checked = g.check(&mut m).await.unwrap();
        assert!(checked.ticket.fingerprint.is_some() && checked.ticket.remember);
    }

    #[tokio::test]
    async fn nothing_is_folded_into_an_item_that_was_reserved_but_never_stored() {
        let g = guard("");
        let mut first = message("ann@example.com", "Where is my parcel?");
        let mut checked = g.check(&mut first).await.unwrap();
        // Reserved, then the gateway died before the write: no confirm.
        g.reserve(&mut checked.ticket, first.envelope.id)
            .await
            .unwrap();
        let mut again = message("ann@example.com", "Where is my parcel?");
        let checked = g.check(&mut again).await.unwrap();
        assert_eq!(
            checked.verdict,
            GuardVerdict::Pass,
            "an unstored item is no fold target"
        );
    }

    #[tokio::test]
    async fn shadow_rule_counts_without_acting() {
        let g = guard(&format!(
            "{}shadow = true\n",
            TWO_PER_HOUR.replace("ACTION", "reject")
        ));
        for i in 0..5 {
            let mut m = message("ann@example.com", &format!("text {i} differs"));
            assert_eq!(
                g.check(&mut m).await.unwrap().verdict,
                GuardVerdict::Pass,
                "shadow never acts"
            );
        }
    }
}
