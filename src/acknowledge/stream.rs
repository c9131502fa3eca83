//! Reading a stream in a consumer group, the way both acknowledgement
//! loops do: this consumer's own pending entries first (what it held when
//! it stopped or failed), then new ones; entries a stopped replica left
//! pending past `claim_after` are taken over with `XAUTOCLAIM`. Commands
//! never `BLOCK` (each is bounded by `redis.timeout` on the shared
//! connection); the loops poll.

use std::collections::HashMap;
use std::time::Duration;

use redis::{RedisResult, Value};

use crate::redis_connection::RedisConnection;

/// Entries read per command.
pub const BATCH: usize = 50;

/// One entry: its id and its fields, as bytes.
#[derive(Debug, Clone)]
pub struct Entry {
    pub id: String,
    pub fields: HashMap<String, Vec<u8>>,
}

impl Entry {
    pub fn text(&self, field: &str) -> Option<String> {
        self.fields
            .get(field)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }
}

/// A stream read by one consumer of one group.
#[derive(Debug, Clone)]
pub struct GroupReader {
    pub key: String,
    pub group: String,
    pub consumer: String,
}

impl GroupReader {
    /// Creates the group (from the stream's start, so nothing stored
    /// before the first start is skipped) if it is not there.
    pub async fn ensure_group(&self, redis: &mut RedisConnection, from: &str) -> RedisResult<()> {
        let created: RedisResult<Value> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.key)
            .arg(&self.group)
            .arg(from)
            .arg("MKSTREAM")
            .query_async(redis)
            .await;
        match created {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// This consumer's pending entries, oldest first; an entry deleted
    /// while pending comes back with no fields.
    pub async fn pending(&self, redis: &mut RedisConnection) -> RedisResult<Vec<Entry>> {
        self.read(redis, "0").await
    }

    /// Entries no consumer of the group has read yet.
    pub async fn new_entries(&self, redis: &mut RedisConnection) -> RedisResult<Vec<Entry>> {
        self.read(redis, ">").await
    }

    async fn read(&self, redis: &mut RedisConnection, from: &str) -> RedisResult<Vec<Entry>> {
        let reply: Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(&self.group)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(BATCH)
            .arg("STREAMS")
            .arg(&self.key)
            .arg(from)
            .query_async(redis)
            .await?;
        Ok(entries_of_read(reply))
    }

    /// Takes over entries idle longer than `idle`; they are then this
    /// consumer's pending entries.
    pub async fn claim_idle(
        &self,
        redis: &mut RedisConnection,
        idle: Duration,
    ) -> RedisResult<usize> {
        let mut cursor = "0-0".to_string();
        let mut claimed = 0;
        loop {
            let reply: Value = redis::cmd("XAUTOCLAIM")
                .arg(&self.key)
                .arg(&self.group)
                .arg(&self.consumer)
                .arg(idle.as_millis() as u64)
                .arg(&cursor)
                .arg("COUNT")
                .arg(BATCH)
                .arg("JUSTID")
                .query_async(redis)
                .await?;
            let Value::Array(parts) = reply else { break };
            let mut parts = parts.into_iter();
            let next = parts
                .next()
                .and_then(|v| text_of(&v))
                .unwrap_or_else(|| "0-0".into());
            if let Some(Value::Array(ids)) = parts.next() {
                for id in ids.iter().filter_map(text_of) {
                    tracing::info!(stream = %self.key, entry = %id, "took over an acknowledgement entry a stopped replica left pending");
                    claimed += 1;
                }
            }
            if next == "0-0" {
                break;
            }
            cursor = next;
        }
        Ok(claimed)
    }

    /// Keeps `id` this consumer's and fresh, so no peer takes it over
    /// while this one waits for the relay.
    pub async fn touch(&self, redis: &mut RedisConnection, id: &str) -> RedisResult<()> {
        let _: Value = redis::cmd("XCLAIM")
            .arg(&self.key)
            .arg(&self.group)
            .arg(&self.consumer)
            .arg(0)
            .arg(id)
            .arg("JUSTID")
            .query_async(redis)
            .await?;
        Ok(())
    }

    pub async fn ack(&self, redis: &mut RedisConnection, id: &str) -> RedisResult<()> {
        let _: Value = redis::cmd("XACK")
            .arg(&self.key)
            .arg(&self.group)
            .arg(id)
            .query_async(redis)
            .await?;
        Ok(())
    }
}

fn text_of(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// `[[key, [[id, [f, v, ...]], ...]]]` (RESP2) or a map of key to entries
/// (RESP3) into entries.
fn entries_of_read(reply: Value) -> Vec<Entry> {
    let streams: Vec<Value> = match reply {
        Value::Array(streams) => streams
            .into_iter()
            .filter_map(|s| match s {
                Value::Array(mut pair) if pair.len() == 2 => pair.pop(),
                _ => None,
            })
            .collect(),
        Value::Map(pairs) => pairs.into_iter().map(|(_, v)| v).collect(),
        _ => Vec::new(),
    };
    let mut out = Vec::new();
    for entries in streams {
        let Value::Array(entries) = entries else {
            continue;
        };
        for entry in entries {
            let Value::Array(mut parts) = entry else {
                continue;
            };
            if parts.len() != 2 {
                continue;
            }
            let body = parts.pop();
            let Some(id) = parts.pop().as_ref().and_then(text_of) else {
                continue;
            };
            let mut fields = HashMap::new();
            if let Some(Value::Array(items)) = body {
                let mut items = items.into_iter();
                while let (Some(name), Some(value)) = (items.next(), items.next()) {
                    let (Some(name), Value::BulkString(value)) = (text_of(&name), value) else {
                        continue;
                    };
                    fields.insert(name, value);
                }
            }
            out.push(Entry { id, fields });
        }
    }
    out
}
