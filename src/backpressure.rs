//! Backpressure instead of loss: when the desk stream grows past its
//! high-water mark (the desk is not keeping up) or Redis is near its memory
//! limit (the next write may fail), new items are refused with "retry
//! later" before they are accepted: forms get 503 with Retry-After,
//! mailgate exits 75 so the mail server keeps the mail, and the IMAP source
//! leaves mail on the server and backs off. All resume by themselves once
//! the watch sees the pressure gone.
//!
//! The watch samples Redis every `check_interval` (XLEN and INFO memory),
//! so the hot path costs one atomic read, never a Redis round trip.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::redis_connection::RedisConnection;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::units::HumanDuration;

/// `[backpressure]`: when to stop taking new items.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackpressureConfig {
    /// Refuse new items while `<prefix>:desk` holds more entries than this
    /// (the desk's consumers are behind). Unset: no limit on the desk.
    #[serde(default)]
    pub desk_high_water: Option<u64>,
    /// Refuse new items while Redis uses more than this share of its
    /// `maxmemory` (ignored when Redis has no `maxmemory`).
    #[serde(default = "default_memory_ratio")]
    pub redis_memory_ratio: f64,
    /// How often the watch samples Redis.
    #[serde(default = "default_check_interval")]
    pub check_interval: HumanDuration,
}

impl Default for BackpressureConfig {
    fn default() -> Self {
        BackpressureConfig {
            desk_high_water: None,
            redis_memory_ratio: default_memory_ratio(),
            check_interval: default_check_interval(),
        }
    }
}

impl crate::validate::Validate for BackpressureConfig {
    fn validate(&self, at: &str, problems: &mut Vec<String>) {
        if !(self.redis_memory_ratio > 0.0 && self.redis_memory_ratio <= 1.0) {
            problems.push(format!(
                "{at}.redis_memory_ratio: must be above 0 and at most 1"
            ));
        }
        if self.desk_high_water == Some(0) {
            problems.push(format!(
                "{at}.desk_high_water: must be at least 1 (or left out)"
            ));
        }
        if self.check_interval.0 < Duration::from_millis(10) {
            problems.push(format!("{at}.check_interval: must be at least 10ms"));
        }
    }
}

fn default_memory_ratio() -> f64 {
    0.9
}
fn default_check_interval() -> HumanDuration {
    HumanDuration(Duration::from_secs(1))
}

/// Whether new items are being refused, and why. Shared by the pipeline
/// (reads) and the watch (writes).
#[derive(Debug, Default)]
pub struct Backpressure {
    active: AtomicBool,
    reason: Mutex<Option<String>>,
}

impl Backpressure {
    /// The reason new items are refused now, if they are.
    pub fn active(&self) -> Option<String> {
        if !self.active.load(Ordering::Acquire) {
            return None;
        }
        self.reason.lock().expect("backpressure lock").clone()
    }

    fn set(&self, reason: Option<String>) {
        let was = self.active.swap(reason.is_some(), Ordering::AcqRel);
        match (&reason, was) {
            (Some(r), false) => {
                tracing::warn!(reason = %r, "backpressure on: new items are told to retry later")
            }
            (None, true) => tracing::info!("backpressure off: taking new items again"),
            _ => {}
        }
        crate::telemetry::events::emit(crate::telemetry::events::pipeline::BackpressureState {
            reason: reason.as_deref(),
        });
        *self.reason.lock().expect("backpressure lock") = reason;
    }

    /// Samples Redis until `stop`; a failed sample changes nothing (a Redis
    /// that does not answer already refuses writes on its own).
    pub async fn watch(
        self: Arc<Self>,
        mut connection: RedisConnection,
        desk_key: String,
        config: BackpressureConfig,
        stop: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(config.check_interval.into());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = stop.cancelled() => return,
            }
            let sample =
                tokio::time::timeout(Duration::from_secs(2), sample(&mut connection, &desk_key))
                    .await;
            if let Ok(Ok((desk_len, used, max))) = sample {
                self.set(judge(&config, desk_len, used, max));
            }
        }
    }
}

/// The desk's length and Redis' used and maximum memory (0: no limit).
async fn sample(
    connection: &mut RedisConnection,
    desk_key: &str,
) -> redis::RedisResult<(u64, u64, u64)> {
    let desk_len: u64 = redis::cmd("XLEN")
        .arg(desk_key)
        .query_async(connection)
        .await?;
    // The desk's own node: on a cluster, the one whose memory decides.
    let info = connection.info_for_key(desk_key, "memory").await?;
    let field = |name: &str| -> u64 {
        info.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    Ok((desk_len, field("used_memory"), field("maxmemory")))
}

/// Why items should be refused, given a sample; `None` when they should not.
fn judge(config: &BackpressureConfig, desk_len: u64, used: u64, max: u64) -> Option<String> {
    if let Some(high) = config.desk_high_water {
        if desk_len > high {
            return Some(format!(
                "the desk stream holds {desk_len} items, above its high-water mark of {high}"
            ));
        }
    }
    if max > 0 && used as f64 > max as f64 * config.redis_memory_ratio {
        return Some(format!(
            "Redis uses {used} of {max} bytes, above {:.0}%",
            config.redis_memory_ratio * 100.0
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn desk_over_its_mark_or_redis_near_full_refuses() {
        let config = BackpressureConfig {
            desk_high_water: Some(100),
            ..Default::default()
        };
        assert_eq!(judge(&config, 100, 0, 0), None, "at the mark is fine");
        assert!(judge(&config, 101, 0, 0).unwrap().contains("high-water"));
        assert!(judge(&config, 0, 95, 100).unwrap().contains("Redis uses"));
        assert_eq!(
            judge(&config, 0, 95, 0),
            None,
            "no maxmemory, no memory limit"
        );
    }

    #[test]
    fn state_turns_on_and_off() {
        let bp = Backpressure::default();
        assert_eq!(bp.active(), None);
        bp.set(Some("full".into()));
        assert_eq!(bp.active().as_deref(), Some("full"));
        bp.set(None);
        assert_eq!(bp.active(), None);
    }
}
