//! `cluster` rules' buckets: GCRA in Redis, atomic per call and on the
//! server's clock so replicas agree, behind a local cache of refusals.
//!
//! Every bucket one item is counted in (each cluster rule it matches, times
//! each identity it carries) goes to Redis in one script call: one call on
//! a single server, one per slot on a cluster, those at the same time. A
//! form post that three cluster rules match costs one round trip, not
//! three in a row.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use redis::cluster_routing::Slot;

use super::{BucketState, Decision};
use crate::guard::error::GuardError;
use crate::guard::rules::types::Quota;
use crate::guard::store::{short_digest, RedisStore};
use crate::telemetry::events::emit;
use crate::telemetry::events::guard::FastPath;

/// GCRA over every bucket in KEYS, in order (a bucket named twice is
/// counted twice, the second seeing the first). ARGV[1] is "1" to look
/// without counting; then per bucket its emission interval in
/// microseconds and its burst. Returns, per bucket, {allowed 0|1, retry
/// after in ms, items that would pass now}, flattened.
const GCRA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local peek = ARGV[1] == '1'
local out = {}
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[2 * i])
  local tolerance = interval * (tonumber(ARGV[2 * i + 1]) - 1)
  local tat = tonumber(redis.call('GET', key) or now)
  if tat < now then tat = now end
  local allow_at = tat - tolerance
  if now < allow_at then
    out[#out + 1] = 0
    out[#out + 1] = math.ceil((allow_at - now) / 1000)
    out[#out + 1] = 0
  else
    local remaining = math.floor((now + tolerance - tat) / interval) + 1
    if not peek then
      local new_tat = tat + interval
      redis.call('SET', key, string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
      remaining = remaining - 1
    end
    out[#out + 1] = 1
    out[#out + 1] = 0
    out[#out + 1] = remaining
  end
end
return out
"#;

/// Most refusals remembered by the fast path before expired ones are
/// dropped (and, if still full, all of them: the bucket in Redis stays
/// right, the cache only saves round trips).
const FAST_PATH_CAP: usize = 100_000;

/// One bucket to count an item in: a cluster rule's, for one of the
/// item's keys.
#[derive(Debug, Clone, Copy)]
pub struct Bucket<'a> {
    pub rule: &'a str,
    pub key: &'a str,
    pub quota: Quota,
}

impl Bucket<'_> {
    /// `rule \0 key`: the fast path's name for it.
    fn cache_key(&self) -> String {
        format!("{}\u{0}{}", self.rule, self.key)
    }
}

/// What the script answered for one bucket.
#[derive(Debug, Clone, Copy)]
struct Reply {
    allowed: bool,
    retry_after: Duration,
    remaining: u64,
}

/// `cluster` limiters: GCRA in Redis behind a local cache of refusals.
pub struct ClusterLimiter {
    store: RedisStore,
    script: redis::Script,
    /// `rule \0 key` to the instant its bucket admits again.
    refused_until: Mutex<HashMap<String, Instant>>,
}

impl ClusterLimiter {
    pub fn new(store: RedisStore) -> Self {
        ClusterLimiter {
            store,
            script: redis::Script::new(GCRA),
            refused_until: Mutex::new(HashMap::new()),
        }
    }

    fn bucket_name(&self, bucket: &Bucket<'_>) -> String {
        // The hash tag is the key's own digest: one bucket, one slot, and
        // the same key's buckets of every rule in the same slot (one call).
        let digest = short_digest(bucket.key.as_bytes());
        format!("{}:rl:{}:{{{digest}}}", self.store.prefix(), bucket.rule)
    }

    /// Counts one item in each of `buckets`; a decision per bucket, in
    /// order. A bucket the fast path knows to be refusing is not asked.
    pub async fn check(&self, buckets: &[Bucket<'_>]) -> Result<Vec<Decision>, GuardError> {
        let now = Instant::now();
        let mut decisions = vec![Decision::Allowed; buckets.len()];
        let mut asked: Vec<Bucket<'_>> = Vec::with_capacity(buckets.len());
        let mut asked_at: Vec<usize> = Vec::with_capacity(buckets.len());
        {
            let cache = self.refused_until.lock().expect("cache lock");
            for (i, bucket) in buckets.iter().enumerate() {
                match cache.get(&bucket.cache_key()) {
                    Some(until) if *until > now => {
                        emit(FastPath { rule: bucket.rule });
                        decisions[i] = Decision::Limited {
                            retry_after: *until - now,
                        };
                    }
                    _ => {
                        asked.push(*bucket);
                        asked_at.push(i);
                    }
                }
            }
        }
        if asked.is_empty() {
            return Ok(decisions);
        }
        let replies = self.invoke(&asked, false).await?;
        let mut refused = Vec::new();
        for ((bucket, i), reply) in asked.iter().zip(asked_at).zip(replies) {
            if !reply.allowed {
                let retry_after = reply.retry_after.max(Duration::from_millis(1));
                decisions[i] = Decision::Limited { retry_after };
                refused.push((bucket.cache_key(), now + retry_after));
            }
        }
        if !refused.is_empty() {
            let mut cache = self.refused_until.lock().expect("cache lock");
            if cache.len() + refused.len() > FAST_PATH_CAP {
                cache.retain(|_, until| *until > now);
                if cache.len() + refused.len() > FAST_PATH_CAP {
                    cache.clear();
                }
            }
            cache.extend(refused);
        }
        Ok(decisions)
    }

    /// The bucket's state without counting.
    pub async fn peek(&self, bucket: Bucket<'_>) -> Result<BucketState, GuardError> {
        let reply = self.invoke(&[bucket], true).await?[0];
        Ok(BucketState {
            remaining: reply.remaining,
            retry_after: (!reply.allowed).then_some(reply.retry_after),
        })
    }

    /// One script call per slot (one in all on a single server), at the
    /// same time; a reply per bucket, in order.
    async fn invoke(&self, buckets: &[Bucket<'_>], peek: bool) -> Result<Vec<Reply>, GuardError> {
        let names: Vec<String> = buckets.iter().map(|b| self.bucket_name(b)).collect();
        let groups: Vec<Vec<usize>> = if self.store.is_cluster() {
            let mut by_slot: HashMap<Slot, Vec<usize>> = HashMap::new();
            for (i, name) in names.iter().enumerate() {
                by_slot.entry(Slot::for_key(name)).or_default().push(i);
            }
            by_slot.into_values().collect()
        } else {
            vec![(0..buckets.len()).collect()]
        };
        let calls = groups.iter().map(|group| {
            let mut invocation = self.script.prepare_invoke();
            invocation.arg(if peek { "1" } else { "0" });
            for &i in group {
                let quota = buckets[i].quota;
                invocation
                    .key(&names[i])
                    .arg(quota.rate.interval().as_micros().max(1) as u64)
                    .arg(quota.burst);
            }
            let mut connection = self.store.connection();
            async move {
                let flat: Vec<i64> = self
                    .store
                    .bounded(invocation.invoke_async(&mut connection))
                    .await?;
                Ok::<_, GuardError>(flat)
            }
        });
        let flats = futures_util::future::try_join_all(calls).await?;
        let mut replies = vec![None; buckets.len()];
        for (group, flat) in groups.iter().zip(flats) {
            if flat.len() != group.len() * 3 {
                return Err(GuardError::StoreUnavailable(
                    format!(
                        "the GCRA script answered {} values for {} buckets",
                        flat.len(),
                        group.len()
                    )
                    .into(),
                ));
            }
            for (&i, triple) in group.iter().zip(flat.chunks_exact(3)) {
                replies[i] = Some(Reply {
                    allowed: triple[0] == 1,
                    retry_after: Duration::from_millis(triple[1].max(0) as u64),
                    remaining: triple[2].max(0) as u64,
                });
            }
        }
        Ok(replies
            .into_iter()
            .map(|r| r.expect("every bucket is in one group"))
            .collect())
    }

    pub fn housekeep(&self) {
        let now = Instant::now();
        self.refused_until
            .lock()
            .expect("cache lock")
            .retain(|_, until| *until > now);
    }
}
