//! Rate-limited error logs: during an outage (Redis down, clamd down, an
//! IMAP login refused) the same error repeats for every item or retry. Each
//! kind is logged at most once per interval, and the line that does get
//! through says how many repeats were left out since the last one.
//!
//! Kinds are a bounded set chosen by the caller (a fixed name, or one per
//! configured mailbox), never customer data, so the table stays small.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How often one kind of error may be logged by [`errors`].
pub const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// Decides which repeats of an error are logged.
#[derive(Debug)]
pub struct LogLimit {
    interval: Duration,
    kinds: Mutex<HashMap<String, Window>>,
}

#[derive(Debug)]
struct Window {
    /// When the kind was last logged.
    logged_at: Instant,
    /// Repeats left out since then.
    suppressed: u64,
}

impl LogLimit {
    pub fn new(interval: Duration) -> Self {
        LogLimit {
            interval,
            kinds: Mutex::new(HashMap::new()),
        }
    }

    /// `Some(n)` when this occurrence of `kind` is to be logged, `n` being
    /// the repeats left out since the last logged one; `None` to leave it
    /// out (it is counted for the next line).
    pub fn check(&self, kind: &str) -> Option<u64> {
        self.check_at(kind, Instant::now())
    }

    /// [`LogLimit::check`] at a given time, for tests.
    pub fn check_at(&self, kind: &str, now: Instant) -> Option<u64> {
        let mut kinds = self.kinds.lock().unwrap_or_else(|e| e.into_inner());
        match kinds.get_mut(kind) {
            None => {
                kinds.insert(
                    kind.to_string(),
                    Window {
                        logged_at: now,
                        suppressed: 0,
                    },
                );
                Some(0)
            }
            Some(window) if now.saturating_duration_since(window.logged_at) >= self.interval => {
                let suppressed = window.suppressed;
                window.logged_at = now;
                window.suppressed = 0;
                Some(suppressed)
            }
            Some(window) => {
                window.suppressed += 1;
                None
            }
        }
    }
}

/// The process-wide limiter for error and warning logs.
pub fn errors() -> &'static LogLimit {
    static LIMIT: OnceLock<LogLimit> = OnceLock::new();
    LIMIT.get_or_init(|| LogLimit::new(ERROR_LOG_INTERVAL))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_occurrence_is_logged_and_repeats_are_counted() {
        let limit = LogLimit::new(Duration::from_secs(60));
        let start = Instant::now();
        assert_eq!(limit.check_at("redis", start), Some(0), "first: logged");
        for s in 1..=5 {
            assert_eq!(
                limit.check_at("redis", start + Duration::from_secs(s)),
                None,
                "repeat within the interval: left out"
            );
        }
        assert_eq!(
            limit.check_at("redis", start + Duration::from_secs(60)),
            Some(5),
            "after the interval: logged, with the five left out"
        );
        assert_eq!(
            limit.check_at("redis", start + Duration::from_secs(61)),
            None,
            "a new interval began"
        );
        assert_eq!(
            limit.check_at("redis", start + Duration::from_secs(125)),
            Some(1),
            "the count restarted after the last logged line"
        );
    }

    #[test]
    fn kinds_are_limited_separately() {
        let limit = LogLimit::new(Duration::from_secs(60));
        let now = Instant::now();
        assert_eq!(limit.check_at("redis", now), Some(0));
        assert_eq!(limit.check_at("clamd", now), Some(0), "another kind");
        assert_eq!(limit.check_at("imap-auth:support", now), Some(0));
        assert_eq!(limit.check_at("redis", now), None);
        assert_eq!(limit.check_at("clamd", now), None);
    }

    #[test]
    fn a_clock_going_backwards_does_not_panic_or_log() {
        let limit = LogLimit::new(Duration::from_secs(60));
        let now = Instant::now() + Duration::from_secs(10);
        assert_eq!(limit.check_at("redis", now), Some(0));
        assert_eq!(
            limit.check_at("redis", now - Duration::from_secs(5)),
            None,
            "an earlier time counts as within the interval"
        );
    }
}
