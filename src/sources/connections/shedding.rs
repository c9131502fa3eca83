//! Shedding: which connection is closed to make room for a newcomer when
//! every slot is taken (idle ones first, then the slowest head, then the
//! slowest body or DATA; never one whose item is in the pipeline), and
//! the memo that spares a full pool a rescan per newcomer of a flood.
//! An `impl Registry` beside the registry's own file, which calls it.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use super::conn::{Phase, Progress};
use super::{Inner, NoVictim, Registry};

impl Registry {
    /// The connection to close for a newcomer whose client holds
    /// `newcomer_open` slots, if any may be.
    pub(super) fn pick_victim(
        &self,
        inner: &mut Inner,
        newcomer_open: usize,
        now: Instant,
    ) -> Option<u64> {
        let state = (inner.generation, self.epoch.load(Ordering::SeqCst));
        if inner
            .no_victim
            .is_some_and(|n| n.state == state && newcomer_open >= n.newcomer_open && now < n.until)
        {
            return None;
        }
        let mut best: Option<(VictimKey, u64)> = None;
        // Without a victim: when the first connection passes its grace.
        let mut until: Option<Instant> = None;
        for conn in inner.open.values() {
            let p = conn.snapshot();
            if p.phase == Phase::Working {
                continue;
            }
            let age = now.saturating_duration_since(p.since);
            let holder_open = conn.holder.open();
            let unfair = holder_open >= newcomer_open + 2;
            if age < self.limits.grace && !unfair {
                let safe_until = p.since + self.limits.grace;
                until = Some(until.map_or(safe_until, |u| u.min(safe_until)));
                continue;
            }
            let key = VictimKey::new(&p, conn.bytes(), age, holder_open);
            if best.as_ref().is_none_or(|(b, _)| key < *b) {
                best = Some((key, conn.id));
            }
        }
        if best.is_none() {
            // The same answer holds for this newcomer and any whose client
            // holds more, until a connection opens or closes, one leaves
            // `Working`, or `until`; a full pool under a flood of
            // newcomers is not scanned again for each.
            let newcomer_open = match inner.no_victim {
                Some(n) if n.state == state && now < n.until => n.newcomer_open.min(newcomer_open),
                _ => newcomer_open,
            };
            inner.no_victim = Some(NoVictim {
                state,
                newcomer_open,
                until: until.unwrap_or(now + Duration::from_secs(3600)),
            });
        }
        best.map(|(_, id)| id)
    }

    pub(super) fn shed(&self, inner: &mut Inner, id: u64, now: Instant) {
        let Some(conn) = inner.remove_open(id) else {
            return;
        };
        let p = conn.snapshot();
        conn.shed.cancel();
        crate::telemetry::events::emit(crate::telemetry::events::http::ConnectionShed {
            listener: self.listener,
            client: &conn.client,
            phase: p.phase.label(),
            age: now.saturating_duration_since(p.since),
            bytes: conn.bytes().saturating_sub(p.bytes_at),
        });
    }
}

/// Orders shedding candidates, least worth keeping first.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct VictimKey {
    phase: Phase,
    /// Idle: the longest idle first; head and body: bytes per second in
    /// the phase, the slowest first.
    score: u64,
    /// Then the client holding the most slots.
    holder: std::cmp::Reverse<usize>,
}

impl VictimKey {
    fn new(p: &Progress, bytes: u64, age: Duration, holder_open: usize) -> VictimKey {
        let millis = u64::try_from(age.as_millis()).unwrap_or(u64::MAX);
        let score = match p.phase {
            Phase::Idle => u64::MAX - millis,
            _ => bytes.saturating_sub(p.bytes_at).saturating_mul(1000) / millis.max(1),
        };
        VictimKey {
            phase: p.phase,
            score,
            holder: std::cmp::Reverse(holder_open),
        }
    }
}
