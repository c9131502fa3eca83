//! The Redis Streams sink: one multiplexed connection shared by every
//! request, reconnecting by itself, every command bounded by a timeout.
//!
//! The connection is made lazily, so the gateway starts (and answers 503)
//! while Redis is down, and recovers without a restart when it is back.

use std::sync::LazyLock;
use std::time::Duration;

use redis::RedisError;

use super::resp::{LargeWriter, Once, Value};
use super::{
    Appended, Entry, KeyValue, Seen, Sink, SinkError, SinkFuture, StoredEntry, ITEM_STREAMS,
};
use crate::redis_connection::RedisConfig;
use crate::redis_connection::{connection_info, RedisConnection};
use crate::secret::SecretValue;

/// XADD at most once per idempotency key, atomically: a crash can never
/// leave an entry without its key or a key without its entry.
/// KEYS[1] stream, KEYS[2] idempotency key; ARGV[1] receipt id, ARGV[2]
/// key lifetime in seconds, ARGV[3] the payload digest (`""` for none),
/// ARGV[4..] the entry's field/value pairs.
/// Returns {1, entry id} when written, {0, the key's value} when seen (see
/// [`KeyValue`] for its shape).
const XADD_ONCE: &str = r#"
local seen = redis.call('GET', KEYS[2])
if seen then return {0, seen} end
local entry = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 4))
local value = ARGV[1] .. ' ' .. entry
if ARGV[3] ~= '' then value = value .. ' ' .. ARGV[3] end
redis.call('SET', KEYS[2], value, 'EX', tonumber(ARGV[2]))
return {1, entry}
"#;

/// Entries whose JSON is larger than this are written by [`LargeWriter`]
/// on a connection of their own (once through WATCH and MULTI instead of
/// [`XADD_ONCE`]): the JSON goes onto the socket as it is encoded, never
/// held whole; and Redis copies a script's arguments, which more than
/// doubled the time to write a large mail and pushed a 60 MB one past the
/// command timeout.
const LARGE_ENTRY_BYTES: usize = 1 << 20;

/// How long an idempotency key is remembered unless the entry says:
/// far longer than any retry or restart, short enough not to grow without
/// bound.
const IDEMPOTENCY_TTL_SECS: u64 = 30 * 24 * 3600;

/// An entry's key lifetime in whole seconds (at least one).
fn key_ttl_secs(entry: &Entry) -> u64 {
    entry
        .key_ttl
        .map_or(IDEMPOTENCY_TTL_SECS, |ttl| ttl.as_secs().max(1))
}

pub struct RedisSink {
    connection: RedisConnection,
    /// Writes large entries on connections of their own; none on a cluster
    /// or over TLS, where large entries are encoded whole and go through
    /// [`XADD_ONCE`] like the rest.
    large: Option<LargeWriter>,
    /// `<prefix>:` prepended to every stream name.
    prefix: String,
    /// Bound on every command, connect and reconnect included.
    timeout: Duration,
}

impl RedisSink {
    /// Prepares the connection; does not wait for Redis to be up.
    pub fn new(config: &RedisConfig, password: Option<SecretValue>) -> Result<Self, RedisError> {
        let large = if config.cluster {
            None
        } else {
            LargeWriter::new(
                &connection_info(&config.url, password.as_ref())?,
                config.timeout.into(),
            )
        };
        Ok(RedisSink {
            connection: RedisConnection::new(config, password)?,
            large,
            prefix: config.prefix.clone(),
            timeout: config.timeout.into(),
        })
    }

    /// The shared connection, for stages and sources that keep state of
    /// their own in the same Redis (the guard's limits and dedupe, the IMAP
    /// source's checkpoints and leases).
    pub fn connection(&self) -> RedisConnection {
        self.connection.clone()
    }

    pub fn stream_key(&self, stream: crate::route::Stream) -> String {
        format!("{}:{}", self.prefix, stream.name())
    }

    /// The idempotency key lives in the stream's own hash slot (its hash
    /// tag is the stream's name), so the script's keys share one node on
    /// Redis Cluster.
    fn idempotency_key(&self, stream: crate::route::Stream, key: &str) -> String {
        format!("{{{}}}:seen:{key}", self.stream_key(stream))
    }

    async fn bounded<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, RedisError>>,
    ) -> Result<T, SinkError> {
        match tokio::time::timeout(self.timeout, fut).await {
            Err(_) => Err(SinkError::Timeout(self.timeout)),
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) if is_connection_problem(&e) => Err(SinkError::Unavailable(e)),
            Ok(Err(e)) => Err(SinkError::Refused(e)),
        }
    }
}

impl RedisSink {
    /// MGET of `key` in every item stream.
    fn seen_query(&self, key: &str) -> redis::Cmd {
        let mut mget = redis::cmd("MGET");
        for stream in ITEM_STREAMS {
            mget.arg(self.idempotency_key(stream, key));
        }
        mget
    }
}

/// The first stream whose key value the MGET of
/// [`RedisSink::seen_query`] found.
fn first_seen(values: Vec<Option<String>>) -> Option<Seen> {
    ITEM_STREAMS
        .into_iter()
        .zip(values)
        .find_map(|(stream, value)| {
            let KeyValue {
                receipt,
                entry_id,
                digest,
            } = KeyValue::parse(&value?);
            Some(Seen {
                stream,
                receipt,
                entry_id,
                digest,
            })
        })
}

/// An envelope that cannot be encoded cannot be written: the item is not
/// stored, as when Redis refuses it.
fn not_encoded(e: serde_json::Error) -> SinkError {
    SinkError::Refused(RedisError::from((
        redis::ErrorKind::Client,
        "the envelope could not be encoded",
        e.to_string(),
    )))
}

fn is_connection_problem(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_refusal()
        || e.is_connection_dropped()
        || e.is_timeout()
        || e.is_unrecoverable_error()
}

impl Sink for RedisSink {
    fn append<'a>(&'a self, entry: &'a Entry) -> SinkFuture<'a, Appended> {
        Box::pin(async move {
            let id = entry.id.to_string();
            let duplicate_of = entry.duplicate_of.map(|f| f.to_string());
            let count = entry.count.map(|c| c.to_string());
            // Small entries (nearly all) are encoded whole here; a large one
            // only as far as finding out that it is large.
            let json = match &self.large {
                Some(_) => entry.envelope.to_json_within(LARGE_ENTRY_BYTES),
                None => entry.envelope.to_json().map(Some),
            }
            .map_err(not_encoded)?;
            let mut fields: Vec<(&str, Value<'_>)> = vec![
                ("id", Value::Text(&id)),
                ("kind", Value::Text(entry.kind)),
                (
                    "envelope",
                    match &json {
                        Some(json) => Value::Text(json),
                        None => Value::Envelope(&entry.envelope),
                    },
                ),
            ];
            if let Some(reason) = &entry.reason {
                fields.push(("reason", Value::Text(reason)));
            }
            if let Some(duplicate_of) = &duplicate_of {
                fields.push(("duplicate_of", Value::Text(duplicate_of)));
            }
            if let Some(count) = &count {
                fields.push(("count", Value::Text(count)));
            }
            // Kept on the entry so that whoever moves it on later (the held
            // re-drive) writes under the same key: a source's re-read and
            // the moved entry then meet in the destination stream.
            if let Some(key) = &entry.idempotency_key {
                fields.push(("idempotency_key", Value::Text(key)));
            }
            if let Some(digest) = &entry.key_digest {
                fields.push(("idempotency_digest", Value::Text(digest)));
            }
            let stream = self.stream_key(entry.stream);
            if let (None, Some(large)) = (&json, &self.large) {
                let key = entry
                    .idempotency_key
                    .as_ref()
                    .map(|key| self.idempotency_key(entry.stream, key));
                let once = key.as_deref().map(|key| Once {
                    key,
                    receipt: &id,
                    digest: entry.key_digest.as_deref(),
                    ttl_secs: key_ttl_secs(entry),
                });
                return large.append(&stream, &fields, once).await;
            }
            fn text<'v>(value: &Value<'v>) -> &'v str {
                match value {
                    Value::Text(text) => text,
                    Value::Envelope(_) => unreachable!("small entries are encoded whole"),
                }
            }
            let mut connection = self.connection.clone();
            match &entry.idempotency_key {
                None => {
                    let mut cmd = redis::cmd("XADD");
                    cmd.arg(&stream).arg("*");
                    for (name, value) in &fields {
                        cmd.arg(*name).arg(text(value));
                    }
                    let entry_id = self
                        .bounded(cmd.query_async::<String>(&mut connection))
                        .await?;
                    Ok(Appended::Written { entry_id })
                }
                Some(key) => {
                    // Hashed once: `Script::new` takes the SHA-1 of its text.
                    static SCRIPT: LazyLock<redis::Script> =
                        LazyLock::new(|| redis::Script::new(XADD_ONCE));
                    let mut invocation = SCRIPT.prepare_invoke();
                    invocation
                        .key(&stream)
                        .key(self.idempotency_key(entry.stream, key))
                        .arg(&id)
                        .arg(key_ttl_secs(entry))
                        .arg(entry.key_digest.as_deref().unwrap_or(""));
                    for (name, value) in &fields {
                        invocation.arg(*name).arg(text(value));
                    }
                    let (written, value): (i64, String) = self
                        .bounded(invocation.invoke_async(&mut connection))
                        .await?;
                    if written == 1 {
                        Ok(Appended::Written { entry_id: value })
                    } else {
                        Ok(KeyValue::parse(&value).into())
                    }
                }
            }
        })
    }

    fn ping(&self) -> SinkFuture<'_, ()> {
        Box::pin(async move {
            let mut connection = self.connection.clone();
            self.bounded(redis::cmd("PING").query_async::<String>(&mut connection))
                .await
                .map(drop)
        })
    }

    fn read<'a>(
        &'a self,
        stream: crate::route::Stream,
        after: Option<&'a str>,
        count: usize,
    ) -> SinkFuture<'a, Vec<StoredEntry>> {
        Box::pin(async move {
            let mut connection = self.connection.clone();
            // `(id` is exclusive: the entries after it.
            let start = after.map_or_else(|| "-".to_string(), |a| format!("({a}"));
            let reply: Vec<(String, Vec<(String, String)>)> = self
                .bounded(
                    redis::cmd("XRANGE")
                        .arg(self.stream_key(stream))
                        .arg(start)
                        .arg("+")
                        .arg("COUNT")
                        .arg(count)
                        .query_async(&mut connection),
                )
                .await?;
            Ok(reply
                .into_iter()
                .map(|(entry_id, pairs)| StoredEntry {
                    entry_id,
                    fields: pairs.into_iter().collect(),
                })
                .collect())
        })
    }

    fn get<'a>(
        &'a self,
        stream: crate::route::Stream,
        entry_id: &'a str,
    ) -> SinkFuture<'a, Option<StoredEntry>> {
        Box::pin(async move {
            let mut connection = self.connection.clone();
            // XRANGE with the same id at both ends: that one entry or none.
            let reply: Vec<(String, Vec<(String, String)>)> = self
                .bounded(
                    redis::cmd("XRANGE")
                        .arg(self.stream_key(stream))
                        .arg(entry_id)
                        .arg(entry_id)
                        .query_async(&mut connection),
                )
                .await?;
            Ok(reply
                .into_iter()
                .next()
                .map(|(entry_id, pairs)| StoredEntry {
                    entry_id,
                    fields: pairs.into_iter().collect(),
                }))
        })
    }

    fn remove<'a>(&'a self, stream: crate::route::Stream, entry_id: &'a str) -> SinkFuture<'a, ()> {
        Box::pin(async move {
            let mut connection = self.connection.clone();
            self.bounded(
                redis::cmd("XDEL")
                    .arg(self.stream_key(stream))
                    .arg(entry_id)
                    .query_async::<i64>(&mut connection),
            )
            .await
            .map(drop)
        })
    }

    fn seen<'a>(&'a self, key: &'a str) -> SinkFuture<'a, Option<Seen>> {
        Box::pin(async move {
            // One MGET over every stream's key: one round trip on a single
            // Redis; on a cluster the keys live in their streams' slots and
            // the client splits the MGET by node (a pipeline could not).
            let mut connection = self.connection.clone();
            let values: Vec<Option<String>> = self
                .bounded(self.seen_query(key).query_async(&mut connection))
                .await?;
            Ok(first_seen(values))
        })
    }

    fn seen_many<'a>(&'a self, keys: &'a [String]) -> SinkFuture<'a, Vec<Option<Seen>>> {
        Box::pin(async move {
            if self.connection.is_cluster() {
                // A cluster: each key's MGET on its own (a pipeline cannot
                // span slots), all at once.
                let asks = keys.iter().map(|key| self.seen(key));
                return futures_util::future::try_join_all(asks).await;
            }
            // A single Redis: every key's MGET in one pipeline, one round trip.
            let mut pipe = redis::pipe();
            for key in keys {
                pipe.add_command(self.seen_query(key));
            }
            let mut connection = self.connection.clone();
            let values: Vec<Vec<Option<String>>> =
                self.bounded(pipe.query_async(&mut connection)).await?;
            Ok(values.into_iter().map(first_seen).collect())
        })
    }

    fn len(&self, stream: crate::route::Stream) -> SinkFuture<'_, u64> {
        Box::pin(async move {
            let mut connection = self.connection.clone();
            self.bounded(
                redis::cmd("XLEN")
                    .arg(self.stream_key(stream))
                    .query_async::<u64>(&mut connection),
            )
            .await
        })
    }
}
