//! One attempt at one entry, from its retry state to its settlement:
//! delivered (remembered, acknowledged), again later (the retry state
//! written first), or dead (its copy in `<prefix>:dead` written, then
//! acknowledged). A Redis failure on the way leaves the entry pending and
//! tries again soon: nothing is acknowledged that was not settled.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use redis::{AsyncCommands, RedisResult};

use super::dead::{self, DeadLetter};
use super::item::Item;
use super::policy::{self, Answer, Backoff, Verdict};
use super::status::Registry;
use super::store::{self, unix_ms, EntryRef, Keys, RetryState, Stream};
use super::target::Target;
use crate::redis_connection::RedisConnection;
use crate::telemetry::events::{delivery as ev, emit};

/// What a worker's attempts share.
pub struct Shared {
    pub delivery: String,
    pub group: String,
    pub consumer: String,
    pub prefix: String,
    pub keys: Keys,
    pub target: Target,
    pub redis: RedisConnection,
    pub backoff: Backoff,
    pub concurrency: usize,
    pub claim_after: Duration,
    pub remember: Duration,
    pub attempt_timeout: Duration,
    pub status: Registry,
}

/// How an attempt left its entry.
#[derive(Debug)]
pub enum Outcome {
    /// Acknowledged: delivered, dead, or nothing left to deliver.
    Done,
    /// Still pending; the next attempt is due at this time.
    Again { at_ms: u64 },
}

pub async fn attempt(
    shared: &Shared,
    entry: &EntryRef,
    fields: HashMap<String, String>,
) -> Outcome {
    match try_attempt(shared, entry, &fields).await {
        Ok(outcome) => outcome,
        Err(error) => {
            shared.status.set(&shared.delivery, "redis_down");
            emit(ev::RedisFailed {
                delivery: &shared.delivery,
                error: &error,
            });
            Outcome::Again {
                at_ms: unix_ms(SystemTime::now() + Duration::from_secs(1)),
            }
        }
    }
}

async fn try_attempt(
    shared: &Shared,
    entry: &EntryRef,
    fields: &HashMap<String, String>,
) -> RedisResult<Outcome> {
    let mut redis = shared.redis.clone();
    let stream_key = shared.keys.stream(entry.stream);
    // An entry deleted while pending: nothing to deliver, only to ack.
    let (Some(receipt), Some(envelope)) = (fields.get("id"), fields.get("envelope")) else {
        ack(&mut redis, shared, entry, &stream_key).await?;
        return Ok(Outcome::Done);
    };
    let kind = fields.get("kind").map_or("message", String::as_str);
    // Where the entry first was: itself, or what a re-drive carries.
    let origin_stream = match entry.stream {
        Stream::Redrive => fields.get("origin_stream").map_or("desk", String::as_str),
        other => other.name(),
    };
    let origin_entry = match entry.stream {
        Stream::Redrive => fields
            .get("origin_entry")
            .map_or(entry.entry_id.as_str(), String::as_str),
        _ => entry.entry_id.as_str(),
    };
    let is_update = origin_stream == "events";
    let key = if is_update {
        format!("events-{origin_entry}")
    } else {
        receipt.clone()
    };
    let now = SystemTime::now();
    let state = store::load_retry(&mut redis, &shared.keys, entry.stream, &entry.entry_id).await?;
    let first_ms = state.map_or(unix_ms(now), |s| s.first_ms);
    let attempts = state.map_or(0, |s| s.attempts);
    let first = SystemTime::UNIX_EPOCH + Duration::from_millis(first_ms);
    // An update waits for its item: delivered by this delivery, or known
    // not to be on its way.
    if is_update
        && !store::was_delivered(&mut redis, &shared.keys, receipt).await?
        && !store::desk_caught_up(&mut redis, &shared.keys, &shared.group).await?
    {
        if !shared.backoff.within_age(first, now) {
            let answer = Answer::Unreachable("its item was never delivered".into());
            return go_dead(
                shared,
                &mut redis,
                entry,
                &stream_key,
                fields,
                origin_stream,
                origin_entry,
                "waiting_for_item",
                &answer,
                attempts,
                "max_age",
            )
            .await;
        }
        let next = now + shared.backoff.initial.max(Duration::from_millis(200));
        let state = RetryState {
            attempts,
            first_ms,
            next_ms: unix_ms(next),
        };
        store::save_retry(
            &mut redis,
            &shared.keys,
            entry.stream,
            &entry.entry_id,
            state,
        )
        .await?;
        return Ok(Outcome::Again {
            at_ms: state.next_ms,
        });
    }
    let attempt = attempts + 1;
    let item = Item {
        kind,
        idempotency_key: &key,
        attempt,
        envelope,
    };
    let answer = shared.target.deliver(&item).await;
    let target = shared.target.kind().name();
    match policy::judge(&answer) {
        Verdict::Delivered => {
            if !is_update {
                store::mark_delivered(&mut redis, &shared.keys, receipt, shared.remember).await?;
            }
            ack(&mut redis, shared, entry, &stream_key).await?;
            shared.status.set(&shared.delivery, "delivering");
            emit(ev::Delivered {
                delivery: &shared.delivery,
                target,
                key: &key,
                attempt,
            });
            Ok(Outcome::Done)
        }
        Verdict::Dead => {
            go_dead(
                shared,
                &mut redis,
                entry,
                &stream_key,
                fields,
                origin_stream,
                origin_entry,
                &answer.status_label(),
                &answer,
                attempt,
                "refused",
            )
            .await
        }
        Verdict::Retry(retry_after) => {
            let now = SystemTime::now();
            if !shared.backoff.within_age(first, now) {
                return go_dead(
                    shared,
                    &mut redis,
                    entry,
                    &stream_key,
                    fields,
                    origin_stream,
                    origin_entry,
                    &answer.status_label(),
                    &answer,
                    attempt,
                    "max_age",
                )
                .await;
            }
            let delay = shared
                .backoff
                .delay(attempt, retry_after, policy::jitter_unit());
            // No later than the end of the age: one last attempt there.
            let end = first + shared.backoff.max_age;
            let next = (now + delay).min(end.max(now));
            let state = RetryState {
                attempts: attempt,
                first_ms,
                next_ms: unix_ms(next),
            };
            store::save_retry(
                &mut redis,
                &shared.keys,
                entry.stream,
                &entry.entry_id,
                state,
            )
            .await?;
            // A target's own "not yet" is no failure: no retry is told.
            if !matches!(answer, Answer::Deferred(_)) {
                shared.status.set(&shared.delivery, "retrying");
                emit(ev::Retried {
                    delivery: &shared.delivery,
                    target,
                    key: &key,
                    attempt,
                    status: &answer.status_label(),
                    delay,
                });
            }
            Ok(Outcome::Again {
                at_ms: state.next_ms,
            })
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn go_dead(
    shared: &Shared,
    redis: &mut RedisConnection,
    entry: &EntryRef,
    stream_key: &str,
    fields: &HashMap<String, String>,
    origin_stream: &str,
    origin_entry: &str,
    status: &str,
    answer: &Answer,
    attempts: u32,
    reason: &str,
) -> RedisResult<Outcome> {
    let target = shared.target.kind().name();
    dead::write(
        redis,
        &shared.prefix,
        &DeadLetter {
            delivery: &shared.delivery,
            target,
            origin_stream,
            origin_entry,
            fields,
            status,
            response: answer.excerpt(),
            attempts,
            reason,
        },
    )
    .await?;
    ack(redis, shared, entry, stream_key).await?;
    emit(ev::DeadLettered {
        delivery: &shared.delivery,
        target,
        id: fields.get("id").map_or("", String::as_str),
        status,
        reason,
        attempts,
    });
    Ok(Outcome::Done)
}

async fn ack(
    redis: &mut RedisConnection,
    shared: &Shared,
    entry: &EntryRef,
    stream_key: &str,
) -> RedisResult<()> {
    let _: i64 = redis
        .xack(stream_key, &shared.group, &[&entry.entry_id])
        .await?;
    store::forget_retry(redis, &shared.keys, entry.stream, &entry.entry_id).await
}
