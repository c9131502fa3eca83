//! One delivery worker: reads the desk, the events and its own re-drive
//! stream in the delivery's consumer group, hands each entry to the
//! target with at most `concurrency` attempts in flight, and acknowledges
//! an entry only once the target accepted it (or its dead copy is
//! written). Delivery is at least once; the `Idempotency-Key` makes a
//! second delivery of the same item recognisable.
//!
//! Entries this worker holds (in flight or waiting for their next
//! attempt) are touched every third of `claim_after` (`XCLAIM ... JUSTID`
//! to itself), so a live worker's entries never look abandoned; a dead
//! worker's stop being touched, and a peer takes them over with
//! `XAUTOCLAIM` once they have been idle for `claim_after`. Streams are
//! polled without `BLOCK` (every command is bounded by `redis.timeout`
//! on the shared connection), quickly while there is work, up to
//! [`IDLE_POLL`] apart when there is none.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use redis::streams::{StreamAutoClaimOptions, StreamAutoClaimReply, StreamId, StreamReadOptions};
use redis::{AsyncCommands, RedisResult};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::attempt::{attempt, Outcome, Shared};
use super::store::{self, entry_ms, text_fields, unix_ms, EntryRef, Stream};
use crate::telemetry::events::{delivery as ev, emit};

/// The longest pause between two looks at the streams when idle.
const IDLE_POLL: Duration = Duration::from_millis(250);

/// Entries read or claimed per command.
const BATCH: usize = 100;

pub struct Worker {
    shared: Arc<Shared>,
    /// Entries held: waiting in `due` or in flight.
    held: HashSet<EntryRef>,
    in_flight: HashSet<EntryRef>,
    /// When each waiting entry's next attempt is due (unix ms).
    due: BinaryHeap<Reverse<(u64, EntryRef)>>,
    done_tx: mpsc::UnboundedSender<(EntryRef, Outcome)>,
    done_rx: mpsc::UnboundedReceiver<(EntryRef, Outcome)>,
}

impl Worker {
    pub fn new(shared: Arc<Shared>) -> Worker {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        Worker {
            shared,
            held: HashSet::new(),
            in_flight: HashSet::new(),
            due: BinaryHeap::new(),
            done_tx,
            done_rx,
        }
    }

    /// Runs until `stop`; attempts in flight then finish (each bounded by
    /// the target's timeout) and what they leave pending stays pending.
    pub async fn run(mut self, stop: CancellationToken) {
        let name = self.shared.delivery.clone();
        tracing::info!(delivery = %name, consumer = %self.shared.consumer, target = self.shared.target.kind().name(), "delivery worker started");
        let mut started = false;
        let mut pause = Duration::from_millis(10);
        let mut next_touch = SystemTime::now();
        let mut next_claim = SystemTime::now();
        let mut next_lag = SystemTime::now();
        while !stop.is_cancelled() {
            let step = async {
                if !started {
                    self.start().await?;
                    started = true;
                }
                self.collect();
                let now = SystemTime::now();
                if now >= next_touch {
                    self.touch().await?;
                    next_touch = now + self.shared.claim_after / 3;
                }
                if now >= next_claim {
                    self.claim().await?;
                    next_claim = now + self.shared.claim_after / 2;
                }
                if now >= next_lag {
                    self.report_lag().await;
                    next_lag = now + Duration::from_secs(5);
                }
                let started_due = self.start_due().await?;
                let started_new = self.read_new().await?;
                RedisResult::Ok(started_due + started_new)
            };
            let result = step.await;
            if result.is_ok() {
                self.shared.status.reached_redis(&name);
            }
            let wait = match result {
                Ok(0) => {
                    pause = (pause * 2).min(IDLE_POLL);
                    self.until_next_due().min(pause)
                }
                Ok(_) => {
                    pause = Duration::from_millis(10);
                    Duration::ZERO
                }
                Err(error) => {
                    self.shared.status.set(&name, "redis_down");
                    emit(ev::RedisFailed {
                        delivery: &name,
                        error: &error,
                    });
                    Duration::from_secs(1)
                }
            };
            if wait.is_zero() && self.permits() > 0 {
                continue;
            }
            tokio::select! {
                () = stop.cancelled() => break,
                Some(done) = self.done_rx.recv() => self.settle(done.0, done.1),
                () = tokio::time::sleep(if wait.is_zero() { IDLE_POLL } else { wait }) => {}
            }
        }
        // Let attempts in flight end; their entries are acknowledged or
        // left pending for the next worker.
        let deadline = tokio::time::Instant::now() + self.shared.attempt_timeout * 2;
        while !self.in_flight.is_empty() {
            match tokio::time::timeout_at(deadline, self.done_rx.recv()).await {
                Ok(Some((entry, outcome))) => self.settle(entry, outcome),
                _ => break,
            }
        }
        tracing::info!(delivery = %name, "delivery worker stopped");
    }

    fn permits(&self) -> usize {
        self.shared.concurrency.saturating_sub(self.in_flight.len())
    }

    fn until_next_due(&self) -> Duration {
        match self.due.peek() {
            Some(Reverse((at, _))) => {
                Duration::from_millis(at.saturating_sub(unix_ms(SystemTime::now())))
            }
            None => IDLE_POLL,
        }
    }

    /// Creates the groups and takes back what this consumer held before a
    /// restart, each at the time its retry state says.
    async fn start(&mut self) -> RedisResult<()> {
        let mut redis = self.shared.redis.clone();
        for stream in Stream::ALL {
            let key = self.shared.keys.stream(stream);
            let created: RedisResult<()> = redis
                .xgroup_create_mkstream(&key, &self.shared.group, "0")
                .await;
            match created {
                Ok(()) => {}
                Err(e) if e.code() == Some("BUSYGROUP") => {}
                Err(e) => return Err(e),
            }
            let mut after = "0".to_string();
            loop {
                let options = StreamReadOptions::default()
                    .group(&self.shared.group, &self.shared.consumer)
                    .count(BATCH);
                let reply: Option<redis::streams::StreamReadReply> =
                    redis.xread_options(&[&key], &[&after], &options).await?;
                let entries = entries_of(reply);
                let Some(last) = entries.last() else { break };
                after = last.id.clone();
                for entry in entries {
                    self.hold_waiting(stream, entry.id).await?;
                }
            }
        }
        Ok(())
    }

    /// Holds an entry that may have retry state: due when it says.
    async fn hold_waiting(&mut self, stream: Stream, entry_id: String) -> RedisResult<()> {
        let entry = EntryRef { stream, entry_id };
        if !self.held.insert(entry.clone()) {
            return Ok(());
        }
        let mut redis = self.shared.redis.clone();
        let state =
            store::load_retry(&mut redis, &self.shared.keys, stream, &entry.entry_id).await?;
        let at = state.map_or(0, |s| s.next_ms);
        self.due.push(Reverse((at, entry)));
        Ok(())
    }

    /// Takes in finished attempts without waiting.
    fn collect(&mut self) {
        while let Ok((entry, outcome)) = self.done_rx.try_recv() {
            self.settle(entry, outcome);
        }
    }

    fn settle(&mut self, entry: EntryRef, outcome: Outcome) {
        self.in_flight.remove(&entry);
        match outcome {
            Outcome::Done => {
                self.held.remove(&entry);
            }
            Outcome::Again { at_ms } => self.due.push(Reverse((at_ms, entry))),
        }
    }

    /// Touches every held entry, so no peer claims it; entries no longer
    /// pending for this consumer (a peer took one over and acknowledged
    /// it) are let go.
    async fn touch(&mut self) -> RedisResult<()> {
        let mut redis = self.shared.redis.clone();
        for stream in Stream::ALL {
            let ids: Vec<&str> = self
                .held
                .iter()
                .filter(|e| e.stream == stream)
                .map(|e| e.entry_id.as_str())
                .collect();
            let mut still = HashSet::new();
            for chunk in ids.chunks(BATCH) {
                let mut cmd = redis::cmd("XCLAIM");
                cmd.arg(self.shared.keys.stream(stream))
                    .arg(&self.shared.group)
                    .arg(&self.shared.consumer)
                    .arg(0)
                    .arg(chunk)
                    .arg("JUSTID");
                let claimed: Vec<String> = cmd.query_async(&mut redis).await?;
                still.extend(claimed);
            }
            let in_flight = &self.in_flight;
            self.held.retain(|e| {
                e.stream != stream || still.contains(&e.entry_id) || in_flight.contains(e)
            });
        }
        Ok(())
    }

    /// Takes over entries a dead worker left idle past `claim_after`.
    async fn claim(&mut self) -> RedisResult<()> {
        let mut redis = self.shared.redis.clone();
        let idle_ms = self.shared.claim_after.as_millis() as u64;
        for stream in Stream::ALL {
            let key = self.shared.keys.stream(stream);
            let mut cursor = "0-0".to_string();
            loop {
                let reply: StreamAutoClaimReply = redis
                    .xautoclaim_options(
                        &key,
                        &self.shared.group,
                        &self.shared.consumer,
                        idle_ms,
                        &cursor,
                        StreamAutoClaimOptions::default().count(BATCH).with_justid(),
                    )
                    .await?;
                for entry in reply.claimed {
                    tracing::info!(delivery = %self.shared.delivery, stream = stream.name(), entry = %entry.id, "took over an entry a stopped worker left pending");
                    self.hold_waiting(stream, entry.id).await?;
                }
                if reply.next_stream_id == "0-0" {
                    break;
                }
                cursor = reply.next_stream_id;
            }
        }
        Ok(())
    }

    /// Starts the waiting entries that are due, as permits allow.
    async fn start_due(&mut self) -> RedisResult<usize> {
        let now = unix_ms(SystemTime::now());
        let mut started = 0;
        while self.permits() > 0 {
            match self.due.peek() {
                Some(Reverse((at, _))) if *at <= now => {}
                _ => break,
            }
            let Some(Reverse((_, entry))) = self.due.pop() else {
                break;
            };
            if !self.held.contains(&entry) || self.in_flight.contains(&entry) {
                continue;
            }
            let mut redis = self.shared.redis.clone();
            let key = self.shared.keys.stream(entry.stream);
            let reply: redis::streams::StreamRangeReply =
                redis.xrange(&key, &entry.entry_id, &entry.entry_id).await?;
            let fields = reply
                .ids
                .first()
                .map(|e| text_fields(&e.map))
                .unwrap_or_default();
            self.spawn(entry, fields);
            started += 1;
        }
        Ok(started)
    }

    /// Reads new entries, as permits allow: re-drives first, then the
    /// events, then the desk.
    async fn read_new(&mut self) -> RedisResult<usize> {
        let mut redis = self.shared.redis.clone();
        let mut started = 0;
        for stream in Stream::ALL {
            let permits = self.permits();
            if permits == 0 {
                break;
            }
            let options = StreamReadOptions::default()
                .group(&self.shared.group, &self.shared.consumer)
                .count(permits.min(BATCH));
            let key = self.shared.keys.stream(stream);
            let reply: Option<redis::streams::StreamReadReply> =
                redis.xread_options(&[&key], &[">"], &options).await?;
            for entry in entries_of(reply) {
                let fields = text_fields(&entry.map);
                let entry = EntryRef {
                    stream,
                    entry_id: entry.id,
                };
                self.held.insert(entry.clone());
                self.spawn(entry, fields);
                started += 1;
            }
        }
        Ok(started)
    }

    fn spawn(&mut self, entry: EntryRef, fields: HashMap<String, String>) {
        self.in_flight.insert(entry.clone());
        let shared = self.shared.clone();
        let done = self.done_tx.clone();
        tokio::spawn(async move {
            let outcome = attempt(&shared, &entry, fields).await;
            let _ = done.send((entry, outcome));
        });
    }

    /// The age of the oldest entry not yet delivered, over the streams.
    async fn report_lag(&self) {
        let mut redis = self.shared.redis.clone();
        let mut oldest: Option<u64> = None;
        for stream in Stream::ALL {
            let key = self.shared.keys.stream(stream);
            if let Ok(Some(ms)) = oldest_undelivered(&mut redis, &key, &self.shared.group).await {
                oldest = Some(oldest.map_or(ms, |o| o.min(ms)));
            }
        }
        let now = unix_ms(SystemTime::now());
        let lag = oldest.map_or(0.0, |ms| now.saturating_sub(ms) as f64 / 1000.0);
        emit(ev::Lag {
            delivery: &self.shared.delivery,
            target: self.shared.target.kind().name(),
            seconds: lag,
        });
    }
}

/// The entry time (unix ms) of the oldest entry of `key` the group has
/// not acknowledged: its oldest pending one, or the first it has not read.
async fn oldest_undelivered(
    redis: &mut crate::redis_connection::RedisConnection,
    key: &str,
    group: &str,
) -> RedisResult<Option<u64>> {
    let pending: redis::streams::StreamPendingReply = redis.xpending(key, group).await?;
    let oldest_pending = match &pending {
        redis::streams::StreamPendingReply::Data(data) => entry_ms(&data.start_id),
        _ => None,
    };
    let info: redis::streams::StreamInfoGroupsReply = redis.xinfo_groups(key).await?;
    let last = info
        .groups
        .iter()
        .find(|g| g.name == group)
        .map(|g| g.last_delivered_id.clone())
        .unwrap_or_else(|| "0-0".into());
    let next: redis::streams::StreamRangeReply =
        redis.xrange_count(key, format!("({last}"), "+", 1).await?;
    let first_unread = next.ids.first().and_then(|e| entry_ms(&e.id));
    Ok(match (oldest_pending, first_unread) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    })
}

fn entries_of(reply: Option<redis::streams::StreamReadReply>) -> Vec<StreamId> {
    reply
        .map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect())
        .unwrap_or_default()
}
