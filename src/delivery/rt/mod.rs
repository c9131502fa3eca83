//! Target `rt`: Request Tracker 5 through its REST 2.0 API, as the RT
//! user whose token the config names.
//!
//! - A desk item becomes a ticket in the queue (requestor the customer),
//!   or correspondence on the ticket it answers ([`thread`]): a
//!   Message-ID this delivery delivered, RT's own Message-ID, or the
//!   subject tag `[<rtname> #N]`.
//! - Its receipt id is stored on the ticket, in the custom field
//!   `receipt_field`, in the same request that makes the ticket or the
//!   correspondence. Before making anything a retry looks for it (Redis
//!   first, then RT's search; an item's first try, marked in Redis, needs
//!   no search), so a worker killed between RT's answer and the
//!   acknowledgement finds the ticket on the retry instead of making a
//!   second one.
//! - A flood's `duplicates` updates become comments, at most one per
//!   `fold_comment_every` per ticket, each telling how many came since
//!   the last; a `recipients` update becomes one comment. A comment is
//!   made at least once: a crash between RT's answer and the
//!   acknowledgement repeats it.

pub mod api;
pub mod content;
pub mod thread;

use std::time::{Duration, SystemTime};

use redis::AsyncCommands;
use serde::Deserialize;

use super::config::RtConfig;
use super::item::Item;
use super::policy::Answer;
use super::store::{unix_ms, Keys};
use crate::envelope::Envelope;
use crate::redis_connection::RedisConnection;
use api::Api;

pub struct Rt {
    api: Api,
    queue: String,
    rtname: String,
    receipt_field: String,
    fold_comment_every: Duration,
    /// The whole attempt's bound.
    attempt_timeout: Duration,
    redis: RedisConnection,
    keys: Keys,
    remember: Duration,
}

/// A `duplicates` update, as `src/pipeline/write.rs` writes it.
#[derive(Deserialize)]
struct FoldUpdate {
    id: String,
    count: u64,
    latest: String,
    #[serde(default)]
    rule: String,
}

/// A `recipients` update.
#[derive(Deserialize)]
struct RecipientsUpdate {
    id: String,
    recipients: Vec<String>,
    latest: String,
}

impl Rt {
    pub fn new(
        config: &RtConfig,
        redis: RedisConnection,
        keys: Keys,
        remember: Duration,
    ) -> Result<Rt, String> {
        let token = config.token.resolve().map_err(|e| format!("token: {e}"))?;
        Ok(Rt {
            api: Api::new(
                &config.url,
                token.expose(),
                config.ca_file.as_deref(),
                config.timeout.into(),
            )?,
            queue: config.queue.clone(),
            rtname: config.rtname.clone(),
            receipt_field: config.receipt_field.clone(),
            fold_comment_every: config.fold_comment_every.into(),
            attempt_timeout: Duration::from(config.timeout) * 3,
            redis,
            keys,
            remember,
        })
    }

    /// One attempt; its outcome for the failure policy.
    pub async fn deliver(&self, item: &Item<'_>) -> Answer {
        let work = async {
            match item.kind {
                "duplicates" => self.fold(item).await,
                "recipients" => self.recipients(item).await,
                _ => self.message(item.envelope).await,
            }
        };
        match tokio::time::timeout(self.attempt_timeout, work).await {
            Ok(result) => result.unwrap_or_else(|answer| answer),
            Err(_elapsed) => Answer::Timeout,
        }
    }

    /// A desk item: a ticket, or correspondence on the one it answers.
    async fn message(&self, text: &str) -> Result<Answer, Answer> {
        let envelope: Envelope = serde_json::from_str(text)
            .map_err(|e| Answer::Unusable(format!("not an envelope: {e}")))?;
        let receipt = envelope.id.to_string();
        if let Some(ticket) = self.earlier_ticket(&receipt).await? {
            self.remember_ids(&envelope, ticket).await?;
            return Ok(Answer::Accepted(format!("already in ticket {ticket}")));
        }
        let ticket = match self.answered_ticket(&envelope).await? {
            Some(ticket) => {
                let id = ticket.id;
                // The receipt list is written whole: two replies to one
                // ticket at once would each drop the other's receipt. One
                // at a time per ticket, across replicas; the other waits.
                let lock = self.keys.rt_lock(id);
                if !self.lock(&lock).await? {
                    return Ok(Answer::Deferred(Duration::from_millis(200)));
                }
                let result = async {
                    let ticket = self
                        .api
                        .ticket(ticket.id, &self.receipt_field)
                        .await?
                        .unwrap_or(ticket);
                    let message =
                        content::correspondence(&envelope, &self.receipt_field, &ticket.receipts);
                    self.api.add(ticket.id, "correspond", &message).await
                }
                .await;
                let mut redis = self.redis.clone();
                let _: Result<i64, _> = redis.del(&lock).await;
                result?;
                id
            }
            None => {
                let ticket = content::ticket(&envelope, &self.queue, &self.receipt_field);
                self.api.create(&ticket).await?
            }
        };
        self.redis_set(&self.keys.rt_ticket(&receipt), ticket)
            .await?;
        self.remember_ids(&envelope, ticket).await?;
        Ok(Answer::Accepted(format!("ticket {ticket}")))
    }

    /// The ticket an earlier attempt at this item made, if one may have:
    /// this delivery's memory, else, unless this is the item's first try
    /// (marked in Redis before RT is asked anything), RT's search. The
    /// first try skips the search, which costs RT about what a ticket
    /// does (`deploy/bench/run`, row `RT tickets`).
    async fn earlier_ticket(&self, receipt: &str) -> Result<Option<u64>, Answer> {
        if let Some(known) = self.remembered(receipt).await? {
            return Ok(Some(known));
        }
        let mut redis = self.redis.clone();
        let first: bool = redis::cmd("SET")
            .arg(self.keys.rt_tried(receipt))
            .arg(1)
            .arg("NX")
            .arg("EX")
            .arg(self.remember.as_secs().max(1))
            .query_async::<Option<String>>(&mut redis)
            .await
            .map_err(redis_down)?
            .is_some();
        if first {
            return Ok(None);
        }
        self.ticket_of_receipt(receipt).await
    }

    /// The ticket a receipt was delivered to: this delivery's memory, else
    /// RT's search of the receipt field.
    async fn ticket_of_receipt(&self, receipt: &str) -> Result<Option<u64>, Answer> {
        if let Some(known) = self.remembered(receipt).await? {
            return Ok(Some(known));
        }
        let found = self
            .api
            .find_by_receipt(&self.receipt_field, receipt)
            .await?;
        if let Some(ticket) = found {
            self.redis_set(&self.keys.rt_ticket(receipt), ticket)
                .await?;
        }
        Ok(found)
    }

    /// The ticket this delivery remembers delivering `receipt` to.
    async fn remembered(&self, receipt: &str) -> Result<Option<u64>, Answer> {
        let mut redis = self.redis.clone();
        redis
            .get(self.keys.rt_ticket(receipt))
            .await
            .map_err(redis_down)
    }

    /// The existing ticket this mail answers, if it names one.
    async fn answered_ticket(&self, envelope: &Envelope) -> Result<Option<api::Ticket>, Answer> {
        let mut redis = self.redis.clone();
        let mut candidates: Vec<u64> = Vec::new();
        for id in thread::named_ids(&envelope.in_reply_to, &envelope.references) {
            let known: Option<u64> = redis
                .get(self.keys.rt_message(id))
                .await
                .map_err(redis_down)?;
            candidates.extend(known.or_else(|| thread::ticket_of_rt_message_id(id)));
        }
        if let Some(subject) = &envelope.subject {
            candidates.extend(thread::ticket_of_subject(subject, &self.rtname));
        }
        let mut tried = Vec::new();
        for id in candidates {
            if tried.contains(&id) {
                continue;
            }
            tried.push(id);
            // A ticket deleted, merged away or never made here: the next
            // candidate, or a new ticket.
            if let Some(ticket) = self.api.ticket(id, &self.receipt_field).await? {
                return Ok(Some(ticket));
            }
        }
        Ok(None)
    }

    /// Takes `key` for one attempt's length; false when another holds it.
    async fn lock(&self, key: &str) -> Result<bool, Answer> {
        let mut redis = self.redis.clone();
        let taken: Option<String> = redis::cmd("SET")
            .arg(key)
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(self.attempt_timeout.as_millis() as u64)
            .query_async(&mut redis)
            .await
            .map_err(redis_down)?;
        Ok(taken.is_some())
    }

    /// Remembers the mail's Message-ID, so a reply to it finds the ticket.
    async fn remember_ids(&self, envelope: &Envelope, ticket: u64) -> Result<(), Answer> {
        if let Some(id) = envelope.message_id.as_deref().filter(|id| !id.is_empty()) {
            self.redis_set(&self.keys.rt_message(id), ticket).await?;
        }
        Ok(())
    }

    /// A `duplicates` update: "N more like this", spaced out per ticket.
    async fn fold(&self, item: &Item<'_>) -> Result<Answer, Answer> {
        let update: FoldUpdate = serde_json::from_str(item.envelope)
            .map_err(|e| Answer::Unusable(format!("not a duplicates update: {e}")))?;
        let Some(ticket) = self.ticket_of_receipt(&update.id).await? else {
            return Err(Answer::Unusable(format!(
                "no ticket holds receipt {} (re-drive its item first)",
                update.id
            )));
        };
        let now_ms = unix_ms(SystemTime::now());
        let every_ms = self.fold_comment_every.as_millis() as u64;
        let key = self.keys.rt_fold(&update.id);
        // One attempt at a time claims the telling (replicas and this
        // worker's own concurrent attempts race for it); the others see
        // the count told, or wait for the next turn.
        let (state, told, at, max): (u8, u64, u64, u64) = redis::Script::new(FOLD_CLAIM)
            .key(&key)
            .arg(update.count)
            .arg(now_ms)
            .arg(self.remember.as_secs().max(1))
            .arg(every_ms)
            .invoke_async(&mut self.redis.clone())
            .await
            .map_err(redis_down)?;
        match state {
            0 => {
                return Ok(Answer::Accepted(format!(
                    "ticket {ticket} was told of {told} already"
                )))
            }
            1 => {
                let due = at + every_ms;
                return Ok(Answer::Deferred(Duration::from_millis(
                    due.saturating_sub(now_ms).max(1),
                )));
            }
            _ => {}
        }
        let since = time::OffsetDateTime::from_unix_timestamp((at / 1000) as i64)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_default();
        let text = content::fold_comment(max - told, max, &since, &update.rule, &update.latest);
        if let Err(failed) = self
            .api
            .add(ticket, "comment", &content::comment(&text))
            .await
        {
            // Give the claim back, so the retry (or another update) tells
            // these again.
            let _: Result<(), _> = redis::Script::new(FOLD_GIVE_BACK)
                .key(&key)
                .arg(max)
                .arg(told)
                .arg(at)
                .invoke_async(&mut self.redis.clone())
                .await;
            return Err(failed);
        }
        Ok(Answer::Accepted(format!("comment on ticket {ticket}")))
    }

    /// A `recipients` update: one comment naming them.
    async fn recipients(&self, item: &Item<'_>) -> Result<Answer, Answer> {
        let update: RecipientsUpdate = serde_json::from_str(item.envelope)
            .map_err(|e| Answer::Unusable(format!("not a recipients update: {e}")))?;
        let commented = self.keys.rt_commented(item.idempotency_key);
        let mut redis = self.redis.clone();
        let done: bool = redis.exists(&commented).await.map_err(redis_down)?;
        if done {
            return Ok(Answer::Accepted("commented already".into()));
        }
        let Some(ticket) = self.ticket_of_receipt(&update.id).await? else {
            return Err(Answer::Unusable(format!(
                "no ticket holds receipt {} (re-drive its item first)",
                update.id
            )));
        };
        let text = content::recipients_comment(&update.recipients, &update.latest);
        self.api
            .add(ticket, "comment", &content::comment(&text))
            .await?;
        self.redis_set(&commented, ticket).await?;
        Ok(Answer::Accepted(format!("comment on ticket {ticket}")))
    }

    async fn redis_set(&self, key: &str, ticket: u64) -> Result<(), Answer> {
        let mut redis = self.redis.clone();
        redis
            .set_ex::<_, _, ()>(key, ticket, self.remember.as_secs().max(1))
            .await
            .map_err(redis_down)
    }
}

/// The fold hash (KEYS[1]: `max` the highest count seen, `told` what the
/// ticket was told, `at` when, or when the first update came). ARGV:
/// the update's count, now (ms), the hash's lifetime (s), the spacing
/// (ms). Returns {state, told, at, max}: 0 told already, 1 not yet (wait
/// until at + spacing), 2 claimed: the caller tells `max - told` and the
/// hash says so already.
const FOLD_CLAIM: &str = r#"
local max = tonumber(redis.call('HGET', KEYS[1], 'max') or '0')
local count = tonumber(ARGV[1])
if count > max then
  max = count
  redis.call('HSET', KEYS[1], 'max', max)
end
redis.call('HSETNX', KEYS[1], 'at', ARGV[2])
redis.call('HSETNX', KEYS[1], 'told', 0)
redis.call('EXPIRE', KEYS[1], ARGV[3])
local told = tonumber(redis.call('HGET', KEYS[1], 'told'))
local at = tonumber(redis.call('HGET', KEYS[1], 'at'))
if count <= told then
  return {0, told, at, max}
end
if tonumber(ARGV[2]) < at + tonumber(ARGV[4]) then
  return {1, told, at, max}
end
redis.call('HSET', KEYS[1], 'told', max, 'at', ARGV[2])
return {2, told, at, max}
"#;

/// Undoes a claim whose comment failed, unless a later claim took over.
/// ARGV: the claimed max, the told and at before it.
const FOLD_GIVE_BACK: &str = r#"
if tonumber(redis.call('HGET', KEYS[1], 'told') or '-1') == tonumber(ARGV[1]) then
  redis.call('HSET', KEYS[1], 'told', ARGV[2], 'at', ARGV[3])
end
return 0
"#;

/// Redis failing mid-attempt: retried like a target that did not answer
/// (the entry stays pending; nothing was acknowledged).
fn redis_down(error: redis::RedisError) -> Answer {
    Answer::Unreachable(format!("redis: {error}"))
}
