//! `<prefix>:dead`: entries a target refused for good, or still failing
//! past `max_age`, with what is needed to judge and re-drive them. The
//! original entry is acknowledged only after its dead copy is written.
//!
//! A re-drive (the admin listener's `POST /v1/dead/...`) moves a dead
//! entry to its delivery's own re-drive stream, which only that delivery
//! reads, with its receipt and original entry id: the target sees the
//! same `Idempotency-Key` as before, so a re-drive never makes a second
//! ticket, and other deliveries never see the item again.

use std::collections::HashMap;

use redis::streams::StreamRangeReply;
use redis::{AsyncCommands, RedisResult};
use serde::Serialize;

use super::store::{dead_stream, redrive_stream, text_fields};
use crate::redis_connection::RedisConnection;

/// Fields of the original entry carried over into a dead entry and back.
const CARRIED: [&str; 4] = ["id", "kind", "envelope", "count"];

/// Why an entry went dead, with the original fields.
pub struct DeadLetter<'a> {
    pub delivery: &'a str,
    pub target: &'a str,
    /// `desk` or `events`: where the entry came from first.
    pub origin_stream: &'a str,
    pub origin_entry: &'a str,
    pub fields: &'a HashMap<String, String>,
    /// The HTTP status, `timeout`, `unreachable` or `waiting_for_item`.
    pub status: &'a str,
    /// The answer's first bytes (bounded by the target).
    pub response: &'a str,
    pub attempts: u32,
    /// `refused` (a permanent answer) or `max_age`.
    pub reason: &'a str,
}

pub async fn write(
    redis: &mut RedisConnection,
    prefix: &str,
    dead: &DeadLetter<'_>,
) -> RedisResult<String> {
    let attempts = dead.attempts.to_string();
    let mut items: Vec<(&str, &str)> = vec![
        ("delivery", dead.delivery),
        ("target", dead.target),
        ("origin_stream", dead.origin_stream),
        ("origin_entry", dead.origin_entry),
        ("status", dead.status),
        ("response", dead.response),
        ("attempts", &attempts),
        ("reason", dead.reason),
    ];
    for name in CARRIED {
        if let Some(value) = dead.fields.get(name) {
            items.push((name, value));
        }
    }
    redis.xadd(dead_stream(prefix), "*", &items).await
}

/// One dead entry as the admin listing shows it (the envelope left out).
#[derive(Debug, Serialize)]
pub struct Listed {
    pub entry_id: String,
    pub id: Option<String>,
    pub kind: Option<String>,
    pub delivery: Option<String>,
    pub target: Option<String>,
    pub origin_stream: Option<String>,
    pub origin_entry: Option<String>,
    pub status: Option<String>,
    pub response: Option<String>,
    pub attempts: Option<u64>,
    pub reason: Option<String>,
}

/// One page of the listing.
#[derive(Debug, Serialize)]
pub struct Page {
    pub entries: Vec<Listed>,
    /// The `after` of the next page, when there may be one.
    pub next: Option<String>,
}

/// Dead entries after `after` (exclusive), oldest first.
pub async fn list(
    redis: &mut RedisConnection,
    prefix: &str,
    after: Option<&str>,
    count: usize,
) -> RedisResult<Page> {
    let start = after.map_or("-".to_string(), |id| format!("({id}"));
    let reply: StreamRangeReply = redis
        .xrange_count(dead_stream(prefix), start, "+", count)
        .await?;
    let entries: Vec<Listed> = reply
        .ids
        .iter()
        .map(|entry| {
            let mut f = text_fields(&entry.map);
            Listed {
                entry_id: entry.id.clone(),
                id: f.remove("id"),
                kind: f.remove("kind"),
                delivery: f.remove("delivery"),
                target: f.remove("target"),
                origin_stream: f.remove("origin_stream"),
                origin_entry: f.remove("origin_entry"),
                status: f.remove("status"),
                response: f.remove("response"),
                attempts: f.remove("attempts").and_then(|a| a.parse().ok()),
                reason: f.remove("reason"),
            }
        })
        .collect();
    let next = (entries.len() == count)
        .then(|| entries.last().map(|e| e.entry_id.clone()))
        .flatten();
    Ok(Page { entries, next })
}

/// What a re-drive did to one dead entry.
#[derive(Debug, Serialize)]
pub struct Redriven {
    pub entry_id: String,
    pub id: Option<String>,
    pub delivery: String,
    /// The entry in the delivery's re-drive stream.
    pub redrive_entry_id: String,
}

/// Moves one dead entry back to its delivery; `None` when there is no
/// such dead entry (never was, or already re-driven).
pub async fn redrive(
    redis: &mut RedisConnection,
    prefix: &str,
    entry_id: &str,
) -> RedisResult<Option<Redriven>> {
    let reply: StreamRangeReply = redis
        .xrange(dead_stream(prefix), entry_id, entry_id)
        .await?;
    let Some(entry) = reply.ids.first() else {
        return Ok(None);
    };
    let fields = text_fields(&entry.map);
    let Some(delivery) = fields.get("delivery").cloned() else {
        return Ok(None);
    };
    let mut items: Vec<(&str, &str)> = Vec::new();
    for name in CARRIED
        .iter()
        .copied()
        .chain(["origin_stream", "origin_entry"])
    {
        if let Some(value) = fields.get(name) {
            items.push((name, value));
        }
    }
    // Written before the dead copy goes: a crash between the two leaves
    // the item in both, and a second re-drive lands on the same key.
    let redrive_entry_id: String = redis
        .xadd(redrive_stream(prefix, &delivery), "*", &items)
        .await?;
    let _: i64 = redis.xdel(dead_stream(prefix), &[entry_id]).await?;
    Ok(Some(Redriven {
        entry_id: entry_id.to_string(),
        id: fields.get("id").cloned(),
        delivery,
        redrive_entry_id,
    }))
}

/// Re-drives every dead entry (of `delivery` alone, when given), at most
/// `limit`; what was moved.
pub async fn redrive_all(
    redis: &mut RedisConnection,
    prefix: &str,
    delivery: Option<&str>,
    limit: usize,
) -> RedisResult<Vec<Redriven>> {
    let mut done = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = list(redis, prefix, after.as_deref(), 100).await?;
        for entry in &page.entries {
            if done.len() >= limit {
                return Ok(done);
            }
            if delivery.is_some_and(|d| entry.delivery.as_deref() != Some(d)) {
                continue;
            }
            if let Some(moved) = redrive(redis, prefix, &entry.entry_id).await? {
                done.push(moved);
            }
        }
        match page.next {
            Some(next) => after = Some(next),
            None => return Ok(done),
        }
    }
}
