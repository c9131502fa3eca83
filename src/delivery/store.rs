//! What a delivery keeps in Redis besides the streams' own consumer
//! groups, and the names of those keys.
//!
//! Retry state (attempts so far, the first attempt's time, the next
//! attempt's time) is one field per entry in a hash per delivery,
//! `<prefix>:delivery:<name>:retry`, written before the entry is left
//! pending: a worker that restarts, or a peer that claims the entry,
//! reads it and goes on with the same count, backoff and age. The pending
//! entry's own delivery count is not used for it: Redis raises it on every
//! claim and re-read, which are not attempts at the target.
//!
//! Delivered items are remembered for `remember` (one key each,
//! `<prefix>:delivery:<name>:delivered:<receipt>`), so that an `events`
//! update about an item waits until this delivery has delivered the item.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use redis::{AsyncCommands, RedisResult, Value};

use crate::redis_connection::RedisConnection;

/// The streams a delivery reads, by their short names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stream {
    Desk,
    Events,
    /// Entries re-driven from the dead stream to this delivery alone.
    Redrive,
}

impl Stream {
    pub const ALL: [Stream; 3] = [Stream::Redrive, Stream::Events, Stream::Desk];

    pub fn name(self) -> &'static str {
        match self {
            Stream::Desk => "desk",
            Stream::Events => "events",
            Stream::Redrive => "redrive",
        }
    }
}

/// One entry a worker holds.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntryRef {
    pub stream: Stream,
    pub entry_id: String,
}

/// The Redis key names of one delivery.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
    delivery: String,
}

impl Keys {
    pub fn new(prefix: &str, delivery: &str) -> Keys {
        Keys {
            prefix: prefix.to_string(),
            delivery: delivery.to_string(),
        }
    }

    pub fn stream(&self, stream: Stream) -> String {
        match stream {
            Stream::Desk => format!("{}:desk", self.prefix),
            Stream::Events => format!("{}:events", self.prefix),
            Stream::Redrive => redrive_stream(&self.prefix, &self.delivery),
        }
    }

    pub fn retry(&self) -> String {
        format!("{}:delivery:{}:retry", self.prefix, self.delivery)
    }

    /// Target `rt`: the ticket a receipt was delivered to.
    pub fn rt_ticket(&self, receipt: &str) -> String {
        format!(
            "{}:delivery:{}:rt:ticket:{receipt}",
            self.prefix, self.delivery
        )
    }

    /// Target `rt`: set by an item's first try, so later tries know an
    /// earlier one may have made its ticket.
    pub fn rt_tried(&self, receipt: &str) -> String {
        format!(
            "{}:delivery:{}:rt:tried:{receipt}",
            self.prefix, self.delivery
        )
    }

    /// Target `rt`: held while a reply is added to ticket `ticket`.
    pub fn rt_lock(&self, ticket: u64) -> String {
        format!(
            "{}:delivery:{}:rt:lock:{ticket}",
            self.prefix, self.delivery
        )
    }

    /// Target `rt`: the ticket a Message-ID was delivered to, so a reply
    /// naming it in `In-Reply-To` or `References` joins that ticket.
    pub fn rt_message(&self, message_id: &str) -> String {
        format!(
            "{}:delivery:{}:rt:message:{message_id}",
            self.prefix, self.delivery
        )
    }

    /// Target `rt`: how much of a flood's count a ticket was told, and
    /// when (a hash: `max`, `told`, `at`).
    pub fn rt_fold(&self, receipt: &str) -> String {
        format!(
            "{}:delivery:{}:rt:fold:{receipt}",
            self.prefix, self.delivery
        )
    }

    /// Target `rt`: an `events` update already made into a comment.
    pub fn rt_commented(&self, key: &str) -> String {
        format!(
            "{}:delivery:{}:rt:commented:{key}",
            self.prefix, self.delivery
        )
    }

    pub fn delivered(&self, receipt: &str) -> String {
        format!(
            "{}:delivery:{}:delivered:{receipt}",
            self.prefix, self.delivery
        )
    }
}

/// `<prefix>:delivery:<name>:redrive`: what the admin re-drives to one
/// delivery, read by its workers beside the desk and the events.
pub fn redrive_stream(prefix: &str, delivery: &str) -> String {
    format!("{prefix}:delivery:{delivery}:redrive")
}

/// `<prefix>:dead`.
pub fn dead_stream(prefix: &str) -> String {
    format!("{prefix}:dead")
}

/// One entry's retry state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryState {
    /// Attempts made at the target so far.
    pub attempts: u32,
    /// When the first attempt (or wait) was, unix ms.
    pub first_ms: u64,
    /// When the next attempt is due, unix ms.
    pub next_ms: u64,
}

impl RetryState {
    fn encode(&self) -> String {
        format!("{} {} {}", self.attempts, self.first_ms, self.next_ms)
    }

    fn decode(text: &str) -> Option<RetryState> {
        let mut parts = text.split(' ').map(str::parse::<u64>);
        let (Some(Ok(attempts)), Some(Ok(first_ms)), Some(Ok(next_ms))) =
            (parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        Some(RetryState {
            attempts: attempts.min(u32::MAX as u64) as u32,
            first_ms,
            next_ms,
        })
    }

    pub fn first(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(self.first_ms)
    }
}

/// Milliseconds since the epoch.
pub fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// The hash field of one entry.
fn field(stream: Stream, entry_id: &str) -> String {
    format!("{}/{entry_id}", stream.name())
}

pub async fn load_retry(
    redis: &mut RedisConnection,
    keys: &Keys,
    stream: Stream,
    entry_id: &str,
) -> RedisResult<Option<RetryState>> {
    let text: Option<String> = redis.hget(keys.retry(), field(stream, entry_id)).await?;
    Ok(text.as_deref().and_then(RetryState::decode))
}

pub async fn save_retry(
    redis: &mut RedisConnection,
    keys: &Keys,
    stream: Stream,
    entry_id: &str,
    state: RetryState,
) -> RedisResult<()> {
    redis
        .hset(keys.retry(), field(stream, entry_id), state.encode())
        .await
}

pub async fn forget_retry(
    redis: &mut RedisConnection,
    keys: &Keys,
    stream: Stream,
    entry_id: &str,
) -> RedisResult<()> {
    let _: i64 = redis.hdel(keys.retry(), field(stream, entry_id)).await?;
    Ok(())
}

pub async fn mark_delivered(
    redis: &mut RedisConnection,
    keys: &Keys,
    receipt: &str,
    remember: Duration,
) -> RedisResult<()> {
    redis
        .set_ex(keys.delivered(receipt), 1, remember.as_secs().max(1))
        .await
}

pub async fn was_delivered(
    redis: &mut RedisConnection,
    keys: &Keys,
    receipt: &str,
) -> RedisResult<bool> {
    redis.exists(keys.delivered(receipt)).await
}

/// Whether this delivery's group has nothing of the desk left to read
/// or to acknowledge: then an item it has no memory of is not on its way
/// (it was delivered before `remember`, or went dead) and an update about
/// it need not wait.
pub async fn desk_caught_up(
    redis: &mut RedisConnection,
    keys: &Keys,
    group: &str,
) -> RedisResult<bool> {
    let groups: Vec<HashMap<String, Value>> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(keys.stream(Stream::Desk))
        .query_async(redis)
        .await?;
    let number = |v: Option<&Value>| match v {
        Some(Value::Int(n)) => Some(*n),
        _ => None,
    };
    Ok(groups.iter().any(|g| {
        matches!(g.get("name"), Some(Value::BulkString(name)) if name == group.as_bytes())
            && number(g.get("pending")) == Some(0)
            && number(g.get("lag")) == Some(0)
    }))
}

/// An entry's fields as text.
pub fn text_fields(map: &HashMap<String, Value>) -> HashMap<String, String> {
    map.iter()
        .filter_map(|(name, value)| {
            let text = match value {
                Value::BulkString(bytes) => String::from_utf8_lossy(bytes).into_owned(),
                Value::SimpleString(s) => s.clone(),
                Value::Int(i) => i.to_string(),
                _ => return None,
            };
            Some((name.clone(), text))
        })
        .collect()
}

/// The unix ms of a stream entry id (`<ms>-<seq>`).
pub fn entry_ms(entry_id: &str) -> Option<u64> {
    entry_id.split('-').next()?.parse().ok()
}

/// Whether `text` is a stream entry id, `<ms>-<seq>`, each a u64 as Redis
/// takes them (anything else would be a Redis error, not a missing entry).
pub fn is_entry_id(text: &str) -> bool {
    let number = |p: &str| p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u64>().is_ok();
    text.split_once('-')
        .is_some_and(|(ms, seq)| number(ms) && number(seq))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_retry_state_round_trips_and_ids_parse() {
        let state = RetryState {
            attempts: 3,
            first_ms: 1_700_000_000_000,
            next_ms: 1_700_000_004_000,
        };
        assert_eq!(RetryState::decode(&state.encode()), Some(state));
        assert_eq!(RetryState::decode("3 x 1"), None);
        assert!(is_entry_id("1764000000000-0"));
        assert!(!is_entry_id("1764000000000"));
        assert!(!is_entry_id("../x-1"));
        assert!(!is_entry_id("84854893723504069255-7844"), "beyond u64");
        assert!(!is_entry_id("+1-2"));
        assert_eq!(entry_ms("1764000000000-3"), Some(1_764_000_000_000));
        let keys = Keys::new("intake", "desk-hook");
        assert_eq!(
            keys.stream(Stream::Redrive),
            "intake:delivery:desk-hook:redrive"
        );
        assert_eq!(keys.retry(), "intake:delivery:desk-hook:retry");
    }
}
