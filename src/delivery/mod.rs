//! Delivery to the desk's tool: workers (`[[delivery]]`) that read
//! `<prefix>:desk` and `<prefix>:events` in their own consumer groups and
//! hand every entry to a target (`webhook`, `rt`), acknowledging it only
//! after the target accepted it. Failures follow one policy
//! ([`policy`]); entries refused for good or past `max_age` go to
//! `<prefix>:dead` ([`dead`]), from where the admin listener re-drives
//! them. Delivery is at least once, under a stable idempotency key.
//!
//! `config.rs` the section, `worker.rs` the loop over the streams,
//! `attempt.rs` one entry, `store.rs` the retry state and key names,
//! `item.rs` what a target is given, `target.rs` the targets, `http.rs`
//! their HTTP client, `webhook/` the webhook, `rt/` Request Tracker,
//! `status.rs` the state `/readyz` reports.

pub mod attempt;
pub mod config;
pub mod dead;
pub mod http;
pub mod item;
pub mod policy;
pub mod rt;
pub mod status;
pub mod store;
pub mod target;
pub mod webhook;
pub mod worker;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::redis_connection::RedisConnection;
use config::DeliveryConfig;

/// Starts one worker per delivery; the handles end after `stop`.
pub fn spawn_all(
    deliveries: &[DeliveryConfig],
    redis: RedisConnection,
    prefix: &str,
    consumer: &str,
    status: Registry,
    stop: CancellationToken,
) -> Result<Vec<tokio::task::JoinHandle<()>>, String> {
    let mut handles = Vec::new();
    for config in deliveries {
        let shared = shared(config, redis.clone(), prefix, consumer, status.clone())
            .map_err(|e| format!("delivery `{}`: {e}", config.name))?;
        status.set(&config.name, "starting");
        let worker = worker::Worker::new(Arc::new(shared));
        handles.push(tokio::spawn(worker.run(stop.clone())));
    }
    Ok(handles)
}

pub use status::Registry;

/// What one worker's attempts share, from its config.
pub fn shared(
    config: &DeliveryConfig,
    redis: RedisConnection,
    prefix: &str,
    consumer: &str,
    status: Registry,
) -> Result<attempt::Shared, String> {
    let keys = store::Keys::new(prefix, &config.name);
    Ok(attempt::Shared {
        delivery: config.name.clone(),
        group: config.group(),
        consumer: consumer.to_string(),
        prefix: prefix.to_string(),
        target: target::Target::from_config(config, &redis, &keys)?,
        keys,
        redis,
        backoff: policy::Backoff {
            initial: config.backoff_initial.into(),
            max: config.backoff_max.into(),
            max_age: config.max_age.into(),
        },
        concurrency: config.concurrency,
        claim_after: config.claim_after.into(),
        remember: config.remember.into(),
        attempt_timeout: config.attempt_timeout(),
        status,
    })
}

/// This replica's consumer name: `INTAKE_CONSUMER`, else the host name.
/// Keep it stable across restarts (a pod or host name), so a restarted
/// worker takes back its own pending entries at once; two live workers
/// must never share one.
pub fn consumer_name() -> String {
    std::env::var("INTAKE_CONSUMER")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
        })
        .unwrap_or_else(|| "intake".into())
}
