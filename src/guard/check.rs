//! The decision, [`Guard::check`]: bot traps, block lists, allow lists,
//! duplicates, then every rule that matches, the strongest action winning.
//! An `impl Guard` of its own beside the type: it is the stage's biggest
//! job, and the types it fills in stay readable on their own.

use std::time::Duration;

use super::dedupe;
use super::error::GuardError;
use super::facts::{self, Facts};
use super::limiter::Decision;
use super::rules::{self, Action, RuleSet};
use super::store;
use super::{Checked, Guard, RuleOutcome, Ticket};
use crate::parse::Message;
use crate::submission::ReceiptId;
use crate::telemetry::events::emit;
use crate::telemetry::events::guard::{Collapsed, RuleActed, RuleMatched, ShadowHit};
use crate::verdict::{GuardVerdict, RatePolicy};

/// One rule past its quota for this item.
struct Hit<'r> {
    rule: &'r rules::Rule,
    retry_after: Duration,
}

impl Guard {
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
                emit(RuleActed {
                    rule: &list.name,
                    action: "block",
                });
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
            let customer = facts.customer_key();
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
            //    each identity it carries (all at once: one Redis call for
            //    every cluster bucket); a rule is past its quota when any
            //    of them is, and the strongest action of those past their
            //    quota wins.
            let mut hits: Vec<Hit<'_>> = Vec::new();
            let asks: Vec<(&rules::Rule, Vec<String>)> = set
                .rules
                .iter()
                .filter(|rule| rule.matcher.matches(&facts))
                .map(|rule| (rule, rule.keys_of(&facts)))
                .collect();
            let decisions = self.inner.limiters.check_rules(&asks).await?;
            for ((rule, _), decision) in asks.iter().zip(decisions) {
                matched.push(rule.name.clone());
                emit(RuleMatched { rule: &rule.name });
                outcomes.push(RuleOutcome {
                    rule: rule.name.clone(),
                    over: decision != Decision::Allowed,
                    shadow: rule.shadow,
                    action: rule.action,
                });
                if let Decision::Limited { retry_after } = decision {
                    if rule.shadow {
                        emit(ShadowHit {
                            rule: &rule.name,
                            action: rule.action.name(),
                            id: &message.envelope.id,
                        });
                        continue;
                    }
                    emit(RuleActed {
                        rule: &rule.name,
                        action: rule.action.name(),
                    });
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
            emit(Collapsed { rule });
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
}

fn reject(hit: &Hit<'_>, why: &str) -> GuardVerdict {
    GuardVerdict::Reject {
        reason: format!(
            "rate limit {} ({}) exceeded{why}",
            hit.rule.name,
            hit.rule.quota_text()
        ),
        retry_after: hit.retry_after.max(Duration::from_secs(1)),
        policy: hit.rule.quota.map(|q| RatePolicy {
            name: hit.rule.name.clone(),
            quota: q.rate.count,
            window: q.rate.per,
        }),
    }
}

/// Whether desk items must be remembered per customer.
fn remembers(set: &RuleSet) -> bool {
    set.dedupe.looks_up() || set.rules.iter().any(|r| r.action == Action::Collapse)
}
