//! Step 2: from the outbox to the relay. Entries are sent one at a time,
//! oldest first; the entry is acknowledged (and deleted, the outbox holds
//! only what waits) after the relay's 250, or its 5xx. When the relay
//! fails, the same entry is tried again after a backoff that doubles up to
//! `backoff_max`, and it is touched meanwhile so no peer takes it over:
//! what waits behind it waits too, since a relay that is down is down for
//! all of them.

use std::time::{Duration, Instant};

use redis::{AsyncCommands, RedisResult, Value};
use tokio_util::sync::CancellationToken;

use super::relay::{Handover, Relay};
use super::stream::{Entry, GroupReader};
use super::{Keys, GROUP, SENT_REMEMBERED};
use crate::redis_connection::RedisConnection;
use crate::telemetry::events::acknowledge::{Acknowledgement, RedisFailed, Refused, RelayFailed};
use crate::telemetry::events::emit;

const IDLE_POLL: Duration = Duration::from_millis(250);

pub struct Sender {
    pub relay: Relay,
    pub redis: RedisConnection,
    pub keys: Keys,
    pub consumer: String,
    pub claim_after: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

/// What one entry came to.
enum Sent {
    Done,
    /// The relay failed: try this entry again after a pause.
    Again(String),
}

impl Sender {
    pub async fn run(self, stop: CancellationToken) {
        let reader = GroupReader {
            key: self.keys.outbox(),
            group: GROUP.into(),
            consumer: self.consumer.clone(),
        };
        let mut started = false;
        let mut next_claim = Instant::now();
        let mut pause = Duration::from_millis(10);
        let mut backoff = self.backoff_initial;
        while !stop.is_cancelled() {
            let mut redis = self.redis.clone();
            let step = async {
                if !started {
                    reader.ensure_group(&mut redis, "0").await?;
                    started = true;
                }
                if Instant::now() >= next_claim {
                    reader.claim_idle(&mut redis, self.claim_after).await?;
                    next_claim = Instant::now() + self.claim_after / 2;
                }
                let mut entries = reader.pending(&mut redis).await?;
                if entries.is_empty() {
                    entries = reader.new_entries(&mut redis).await?;
                }
                let read = entries.len();
                for entry in entries {
                    if let Sent::Again(why) = self.one(&mut redis, &reader, &entry).await? {
                        return Ok(Err((entry.id, why)));
                    }
                }
                RedisResult::Ok(Ok(read))
            };
            let wait = match step.await {
                Ok(Ok(0)) => {
                    pause = (pause * 2).min(IDLE_POLL);
                    pause
                }
                Ok(Ok(_)) => {
                    pause = Duration::from_millis(10);
                    backoff = self.backoff_initial;
                    continue;
                }
                Ok(Err((entry_id, why))) => {
                    // Half to whole of the backoff, so replicas that failed
                    // together do not retry together.
                    let delay = jitter(backoff);
                    emit(RelayFailed {
                        relay: &self.relay.name,
                        error: &why,
                        delay,
                    });
                    backoff = (backoff * 2).min(self.backoff_max);
                    if self.wait_touching(&reader, &entry_id, delay, &stop).await {
                        break;
                    }
                    continue;
                }
                Err(error) => {
                    emit(RedisFailed {
                        step: "send",
                        error: &error,
                    });
                    Duration::from_secs(1)
                }
            };
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Waits `delay`, touching the entry every third of `claim_after`;
    /// true when stopped.
    async fn wait_touching(
        &self,
        reader: &GroupReader,
        entry_id: &str,
        delay: Duration,
        stop: &CancellationToken,
    ) -> bool {
        let until = tokio::time::Instant::now() + delay;
        loop {
            let now = tokio::time::Instant::now();
            if now >= until {
                return false;
            }
            let step = (until - now).min(self.claim_after / 3);
            tokio::select! {
                () = stop.cancelled() => return true,
                () = tokio::time::sleep(step) => {}
            }
            let mut redis = self.redis.clone();
            if let Err(error) = reader.touch(&mut redis, entry_id).await {
                emit(RedisFailed {
                    step: "send",
                    error: &error,
                });
            }
        }
    }

    async fn one(
        &self,
        redis: &mut RedisConnection,
        reader: &GroupReader,
        entry: &Entry,
    ) -> RedisResult<Sent> {
        let (Some(receipt), Some(to), Some(mail)) =
            (entry.text("id"), entry.text("to"), entry.fields.get("mail"))
        else {
            // Deleted while pending, or not ours to read.
            reader.ack(redis, &entry.id).await?;
            return Ok(Sent::Done);
        };
        let sent_key = self.keys.sent(&receipt);
        let result = if redis.exists(&sent_key).await? {
            "duplicate"
        } else {
            match self.relay.send(&to, mail).await {
                Handover::Sent => {
                    let _: Value = redis
                        .set_ex(&sent_key, &entry.id, SENT_REMEMBERED.as_secs())
                        .await?;
                    "sent"
                }
                Handover::Refused(answer) => {
                    emit(Refused {
                        receipt: &receipt,
                        to: &to,
                        answer: &answer,
                    });
                    "refused"
                }
                Handover::Failed(why) => {
                    emit(Acknowledgement {
                        result: "retry",
                        reason: "relay",
                        receipt: &receipt,
                    });
                    return Ok(Sent::Again(why));
                }
            }
        };
        reader.ack(redis, &entry.id).await?;
        let _: Value = redis.xdel(&reader.key, &[&entry.id]).await?;
        emit(Acknowledgement {
            result,
            reason: "",
            receipt: &receipt,
        });
        Ok(Sent::Done)
    }
}

fn jitter(delay: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let half = delay / 2;
    half + Duration::from_nanos(u64::from(nanos) % (half.as_nanos().max(1) as u64))
}
