//! The failure policy, in one place: what an attempt's outcome means for
//! its entry, and when the next attempt is.
//!
//! - 2xx: delivered; the entry is acknowledged.
//! - 408, 429, 5xx, a timeout, a connection or TLS failure: retried, with
//!   an exponential backoff from `backoff_initial` doubling up to
//!   `backoff_max`, each delay drawn between its half and its whole
//!   (jitter, so replicas that failed together do not retry together). A
//!   `Retry-After` (seconds or an HTTP date) replaces the delay. Retries
//!   stop `max_age` after the first attempt: the entry then goes dead.
//! - any other status (a 4xx the target will answer again, a 3xx we do
//!   not follow), or an entry no request can be made of: dead at once,
//!   into `<prefix>:dead`.
//! - a target's own "not yet" (an `rt` flood comment spaced out): tried
//!   again when it says, counted as neither a failure nor a retry.

use std::time::{Duration, SystemTime};

/// What a target answered, or why it did not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// An HTTP answer: its status, `Retry-After` if any, its first bytes.
    Status {
        code: u16,
        retry_after: Option<Duration>,
        excerpt: String,
    },
    /// No answer within the target's timeout.
    Timeout,
    /// No connection (refused, name lookup, TLS): what failed.
    Unreachable(String),
    /// Taken without a request of its own: already at the target (found
    /// by its receipt), or nothing for the target to do; says which.
    Accepted(String),
    /// Not yet, by the target's own choice (a flood's comments are spaced
    /// out): try again after this long. Not a failure.
    Deferred(Duration),
    /// The entry cannot be made into a request (not the JSON it should
    /// be, or what it refers to is not at the target): why.
    Unusable(String),
}

impl Answer {
    /// The `status` field of a dead entry and the metrics' `reason` label.
    pub fn status_label(&self) -> String {
        match self {
            Answer::Status { code, .. } => code.to_string(),
            Answer::Timeout => "timeout".into(),
            Answer::Unreachable(_) => "unreachable".into(),
            Answer::Accepted(_) => "accepted".into(),
            Answer::Deferred(_) => "deferred".into(),
            Answer::Unusable(_) => "unusable".into(),
        }
    }

    /// The answer's first bytes, or what failed.
    pub fn excerpt(&self) -> &str {
        match self {
            Answer::Status { excerpt, .. } => excerpt,
            Answer::Timeout => "",
            Answer::Unreachable(why) | Answer::Accepted(why) | Answer::Unusable(why) => why,
            Answer::Deferred(_) => "",
        }
    }
}

/// What the policy makes of one answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Delivered,
    /// Try again; `Some` when the target said when (`Retry-After`).
    Retry(Option<Duration>),
    /// Refused for good.
    Dead,
}

/// The policy's reading of an answer.
pub fn judge(answer: &Answer) -> Verdict {
    match answer {
        Answer::Status { code, .. } if (200..300).contains(code) => Verdict::Delivered,
        Answer::Status {
            code, retry_after, ..
        } if *code == 408 || *code == 429 || (500..600).contains(code) => {
            Verdict::Retry(*retry_after)
        }
        Answer::Status { .. } | Answer::Unusable(_) => Verdict::Dead,
        Answer::Timeout | Answer::Unreachable(_) => Verdict::Retry(None),
        Answer::Accepted(_) => Verdict::Delivered,
        Answer::Deferred(after) => Verdict::Retry(Some(*after)),
    }
}

/// The backoff settings of one delivery.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    pub max_age: Duration,
}

impl Backoff {
    /// The delay after the `attempts`-th failed attempt (1 for the first),
    /// before jitter: `initial * 2^(attempts-1)`, at most `max`.
    pub fn base_delay(&self, attempts: u32) -> Duration {
        let doublings = attempts.saturating_sub(1).min(40);
        self.initial
            .checked_mul(1u32 << doublings.min(31))
            .unwrap_or(self.max)
            .min(self.max)
    }

    /// The delay after a failure: the target's `Retry-After` when it gave
    /// one, else the base delay with jitter (`unit` in [0, 1) picks a point
    /// between its half and its whole).
    pub fn delay(&self, attempts: u32, retry_after: Option<Duration>, unit: f64) -> Duration {
        if let Some(after) = retry_after {
            return after;
        }
        let base = self.base_delay(attempts);
        base / 2 + base.mul_f64(unit.clamp(0.0, 1.0) / 2.0)
    }

    /// Whether an entry first attempted at `first` may still be retried at
    /// `now`.
    pub fn within_age(&self, first: SystemTime, now: SystemTime) -> bool {
        now.duration_since(first).unwrap_or_default() < self.max_age
    }
}

/// Reads `Retry-After`: delay-seconds or an HTTP date (RFC 9110 10.2.3),
/// as a delay from `now`; a date in the past is no delay.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or_default())
}

/// A number in [0, 1) for jitter, from the system's random source.
pub fn jitter_unit() -> f64 {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 8];
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        return 0.5;
    }
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16) -> Answer {
        Answer::Status {
            code,
            retry_after: None,
            excerpt: String::new(),
        }
    }

    #[test]
    fn delivery_policy_sorts_answers_into_delivered_retried_and_dead() {
        for code in [200, 201, 202, 204, 299] {
            assert_eq!(judge(&status(code)), Verdict::Delivered, "{code}");
        }
        for code in [408, 429, 500, 502, 503, 504, 599] {
            assert_eq!(judge(&status(code)), Verdict::Retry(None), "{code}");
        }
        for code in [301, 400, 401, 403, 404, 410, 413, 422] {
            assert_eq!(judge(&status(code)), Verdict::Dead, "{code}");
        }
        assert_eq!(judge(&Answer::Timeout), Verdict::Retry(None));
        assert_eq!(
            judge(&Answer::Unreachable("refused".into())),
            Verdict::Retry(None)
        );
        let with_after = Answer::Status {
            code: 503,
            retry_after: Some(Duration::from_secs(7)),
            excerpt: String::new(),
        };
        assert_eq!(
            judge(&with_after),
            Verdict::Retry(Some(Duration::from_secs(7)))
        );
    }

    #[test]
    fn delivery_backoff_doubles_with_jitter_up_to_its_max() {
        let backoff = Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
            max_age: Duration::from_secs(3600),
        };
        assert_eq!(backoff.base_delay(1), Duration::from_secs(1));
        assert_eq!(backoff.base_delay(2), Duration::from_secs(2));
        assert_eq!(backoff.base_delay(5), Duration::from_secs(16));
        assert_eq!(backoff.base_delay(7), Duration::from_secs(60));
        assert_eq!(backoff.base_delay(1000), Duration::from_secs(60));
        assert_eq!(backoff.delay(5, None, 0.0), Duration::from_secs(8));
        assert!(backoff.delay(5, None, 0.999) < Duration::from_secs(16));
        assert_eq!(
            backoff.delay(5, Some(Duration::from_secs(300)), 0.3),
            Duration::from_secs(300),
            "Retry-After wins"
        );
        for _ in 0..100 {
            let unit = jitter_unit();
            assert!((0.0..1.0).contains(&unit), "{unit}");
        }
        let first = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert!(backoff.within_age(first, first + Duration::from_secs(3599)));
        assert!(!backoff.within_age(first, first + Duration::from_secs(3600)));
    }

    #[test]
    fn delivery_retry_after_reads_seconds_and_http_dates() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:50:37 GMT", now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO),
            "a date in the past is no delay"
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
    }
}
