//! Step 1: from the desk to the outbox. Each new desk entry is decided
//! ([`super::decide`]); a yes claims the customer's window in Redis
//! (`SET NX` of the receipt, so a second replica, or this one after a
//! crash, sees whose it is), is made into a mail and appended to
//! `<prefix>:outbox`; then the desk entry is acknowledged in the group.
//! A crash between the append and the acknowledgement queues the same
//! mail twice; the sender's marker sends it once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::{AsyncCommands, RedisResult, Value};
use tokio_util::sync::CancellationToken;

use super::decide::{Decision, Skip};
use super::stream::{Entry, GroupReader};
use super::{Acknowledger, Keys, GROUP};
use crate::envelope::Envelope;
use crate::redis_connection::RedisConnection;
use crate::telemetry::events::acknowledge::{Acknowledgement, RedisFailed};
use crate::telemetry::events::emit;

/// The longest pause between two looks at the desk when idle.
const IDLE_POLL: Duration = Duration::from_millis(250);

pub struct Queue {
    pub acknowledger: Arc<Acknowledger>,
    pub redis: RedisConnection,
    pub keys: Keys,
    pub consumer: String,
    /// `rt` deliveries' keys: where a receipt's ticket number is.
    pub tickets: Vec<crate::delivery::store::Keys>,
}

/// What became of one desk entry.
enum Queued {
    Queued,
    Skipped(Skip),
}

impl Queue {
    pub async fn run(self, stop: CancellationToken) {
        let reader = GroupReader {
            key: self.keys.desk(),
            group: GROUP.into(),
            consumer: self.consumer.clone(),
        };
        let claim_after = self.acknowledger.config.claim_after.0;
        let mut started = false;
        let mut next_claim = Instant::now();
        let mut pause = Duration::from_millis(10);
        while !stop.is_cancelled() {
            let mut redis = self.redis.clone();
            let step = async {
                if !started {
                    // From now on: turning acknowledgements on does not
                    // answer the desk's whole history.
                    reader.ensure_group(&mut redis, "$").await?;
                    started = true;
                }
                if Instant::now() >= next_claim {
                    reader.claim_idle(&mut redis, claim_after).await?;
                    next_claim = Instant::now() + claim_after / 2;
                }
                let mut entries = reader.pending(&mut redis).await?;
                if entries.is_empty() {
                    entries = reader.new_entries(&mut redis).await?;
                }
                for entry in &entries {
                    self.one(&mut redis, &reader, entry).await?;
                }
                RedisResult::Ok(entries.len())
            };
            let wait = match step.await {
                Ok(0) => {
                    pause = (pause * 2).min(IDLE_POLL);
                    pause
                }
                Ok(_) => {
                    pause = Duration::from_millis(10);
                    continue;
                }
                Err(error) => {
                    emit(RedisFailed {
                        step: "queue",
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

    async fn one(
        &self,
        redis: &mut RedisConnection,
        reader: &GroupReader,
        entry: &Entry,
    ) -> RedisResult<()> {
        let receipt = entry.text("id").unwrap_or_default();
        let outcome = match (entry.fields.get("envelope"), entry.text("kind")) {
            // Deleted while pending: nothing to acknowledge.
            (None, _) => None,
            (Some(json), kind) => Some(
                self.queue(redis, kind.as_deref().unwrap_or("message"), json)
                    .await?,
            ),
        };
        reader.ack(redis, &entry.id).await?;
        match outcome {
            Some(Queued::Queued) => emit(Acknowledgement {
                result: "queued",
                reason: "",
                receipt: &receipt,
            }),
            Some(Queued::Skipped(skip)) => emit(Acknowledgement {
                result: "skipped",
                reason: skip.reason(),
                receipt: &receipt,
            }),
            None => {}
        }
        Ok(())
    }

    async fn queue(
        &self,
        redis: &mut RedisConnection,
        kind: &str,
        json: &[u8],
    ) -> RedisResult<Queued> {
        let envelope: Envelope = match serde_json::from_slice(json) {
            Ok(e) => e,
            Err(e) => return Ok(Queued::Skipped(Skip::Unusable(e.to_string()))),
        };
        let plan = match self.acknowledger.decide(kind, &envelope) {
            Decision::Send(plan) => plan,
            Decision::Skip(skip) => return Ok(Queued::Skipped(skip)),
        };
        let age = time::OffsetDateTime::now_utc() - envelope.received_at;
        if age > self.acknowledger.config.stale_after.0 {
            return Ok(Queued::Skipped(Skip::Stale));
        }
        let receipt = envelope.id.to_string();
        let window = self.acknowledger.config.window.0;
        let window_key = self.keys.window(&plan.to);
        let set: Value = redis::cmd("SET")
            .arg(&window_key)
            .arg(&receipt)
            .arg("NX")
            .arg("PX")
            .arg(window.as_millis() as u64)
            .query_async(redis)
            .await?;
        let fresh = !matches!(set, Value::Nil);
        if !fresh {
            // Ours already (a retry after a crash), or another item's.
            let holder: Option<String> = redis.get(&window_key).await?;
            if holder.as_deref() != Some(receipt.as_str()) {
                return Ok(Queued::Skipped(Skip::Window));
            }
        }
        if let (Some(network), true) = (&plan.network, fresh) {
            let key = self.keys.network(network);
            let count: u64 = redis.incr(&key, 1).await?;
            if count == 1 {
                let _: Value = redis.pexpire(&key, window.as_millis() as i64).await?;
            }
            if count > u64::from(self.acknowledger.config.form_per_network) {
                return Ok(Queued::Skipped(Skip::NetworkLimit));
            }
        }
        let ticket = self.ticket(redis, &receipt).await;
        let composed = match self.acknowledger.compose(&envelope, &plan, ticket) {
            Ok(c) => c,
            Err(why) => return Ok(Queued::Skipped(Skip::Unusable(why))),
        };
        let _: Value = redis::cmd("XADD")
            .arg(self.keys.outbox())
            .arg("*")
            .arg("id")
            .arg(&receipt)
            .arg("kind")
            .arg("acknowledgement")
            .arg("to")
            .arg(&composed.to)
            .arg("message_id")
            .arg(&composed.message_id)
            .arg("language")
            .arg(&plan.language)
            .arg("mail")
            .arg(&composed.mail)
            .query_async(redis)
            .await?;
        Ok(Queued::Queued)
    }

    /// The desk's ticket number for `receipt`, when an `rt` delivery has
    /// already made it; a failed look-up is no ticket.
    async fn ticket(&self, redis: &mut RedisConnection, receipt: &str) -> Option<String> {
        for keys in &self.tickets {
            let found: RedisResult<Option<String>> = redis.get(keys.rt_ticket(receipt)).await;
            if let Ok(Some(ticket)) = found {
                return Some(ticket);
            }
        }
        None
    }
}
