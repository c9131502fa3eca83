//! One mailbox's task: claim the lease, work the mailbox while it is held
//! (sessions one after another, with backoff between failures), release it
//! at shutdown. The lease is renewed beside the work and work stops while
//! it is still ours, so two replicas never work one mailbox.

use crate::telemetry::events::emit;
use crate::telemetry::events::imap::{Failed, LeaseHeld};
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::error::ImapError;
use super::health::State;
use super::store::MailboxStore;
use super::Worker;
use crate::telemetry::error_chain;

impl Worker {
    /// Claim the lease, work the mailbox while it is held, repeat until
    /// shutdown.
    pub(super) async fn run(self: Arc<Self>, stop: CancellationToken) {
        let ttl = self.config.lease_ttl.0;
        let retry = ttl / 4;
        let mut waiting_logged = false;
        loop {
            if stop.is_cancelled() {
                break;
            }
            let asked = Instant::now();
            match self.store.acquire(ttl).await {
                Ok(true) => {}
                Ok(false) => {
                    if !waiting_logged {
                        tracing::info!(mailbox = %self.label, "another replica works this mailbox; standing by to take over");
                        waiting_logged = true;
                    }
                    if sleep_or_stop(retry, &stop).await {
                        break;
                    }
                    continue;
                }
                Err(e) => {
                    emit(Failed {
                        kind: e.kind(),
                        reconnect: false,
                    });
                    tracing::warn!(mailbox = %self.label, error = %error_chain(&e), "cannot claim the mailbox lease; retrying");
                    if sleep_or_stop(retry, &stop).await {
                        break;
                    }
                    continue;
                }
            }
            waiting_logged = false;
            tracing::info!(mailbox = %self.label, owner = self.store.owner(), "lease taken: working the mailbox");
            emit(LeaseHeld {
                mailbox: &self.label,
                held: true,
            });
            let lost = stop.child_token();
            let keeper = tokio::spawn(keep_lease(
                self.store.clone(),
                self.label.clone(),
                ttl,
                asked + ttl,
                lost.clone(),
            ));
            tokio::select! {
                () = self.work(&lost) => {}
                () = lost.cancelled() => {}
            }
            lost.cancel();
            let _ = keeper.await;
            emit(LeaseHeld {
                mailbox: &self.label,
                held: false,
            });
            if stop.is_cancelled() {
                match self.store.release().await {
                    Ok(()) => tracing::info!(mailbox = %self.label, "stopped; lease released"),
                    Err(e) => {
                        tracing::warn!(mailbox = %self.label, error = %error_chain(&e), "stopped; the lease could not be released and expires by itself")
                    }
                }
                break;
            }
            tracing::warn!(mailbox = %self.label, "lease lost: stopped working the mailbox; another replica may take it over");
        }
    }

    /// Sessions one after another, with backoff between failures, until
    /// `lost` is cancelled.
    async fn work(self: &Arc<Self>, lost: &CancellationToken) {
        let mut backoff = Backoff::new(self.config.backoff_max.0);
        // Waits after mail could not be acknowledged: from backoff_max up
        // to auth_backoff, doubling, so the same batch is not downloaded
        // again and again.
        let mut stuck_wait = Duration::ZERO;
        // The last "folder missing" error logged: said once, not at
        // every retry.
        let mut stopped_for: Option<String> = None;
        loop {
            if lost.is_cancelled() {
                return;
            }
            let error = match self.session(lost, &mut backoff).await {
                Ok(()) => return,
                Err(e) => e,
            };
            emit(Failed {
                kind: error.kind(),
                reconnect: true,
            });
            let wait = match &error {
                ImapError::FolderMissing(_) => {
                    let text = error.to_string();
                    let wait = self.config.auth_backoff.0;
                    if stopped_for.as_deref() != Some(text.as_str()) {
                        tracing::error!(mailbox = %self.label, error = %text, retry_in = ?wait, "mailbox stopped: a folder it needs is missing; nothing is read until it exists");
                        stopped_for = Some(text.clone());
                    }
                    let unacknowledged = self.unacknowledged();
                    self.health
                        .set(&self.label, State::Stopped, unacknowledged, Some(text));
                    wait
                }
                ImapError::Unacknowledged { count, .. } => {
                    stuck_wait = (stuck_wait * 2)
                        .max(self.config.backoff_max.0)
                        .min(self.config.auth_backoff.0.max(self.config.backoff_max.0));
                    tracing::warn!(
                        mailbox = %self.label,
                        error = %error_chain(&error),
                        mails = count,
                        retry_in = ?stuck_wait,
                        "stored mail cannot be acknowledged on the server: it stays in the mailbox (stored once; its idempotency key keeps it from being stored again), and the batch is tried again only after a long wait instead of being downloaded again and again"
                    );
                    self.health.set(
                        &self.label,
                        State::Unacknowledged,
                        *count,
                        Some(error.to_string()),
                    );
                    stuck_wait
                }
                _ if error.is_auth() => {
                    let wait = self
                        .config
                        .auth_backoff
                        .0
                        .mul_f64(0.8 + 0.2 * random_fraction());
                    if let Some(suppressed) = self.log_now("auth") {
                        tracing::error!(
                            mailbox = %self.label,
                            error = %error_chain(&error),
                            retry_in = ?wait,
                            suppressed,
                            "IMAP login refused; not trying again for a while, to spare the server and the account: fix the credentials"
                        );
                    }
                    wait
                }
                _ => {
                    stopped_for = None;
                    let wait = backoff.next();
                    if let Some(suppressed) = self.log_now("session") {
                        tracing::warn!(
                            mailbox = %self.label,
                            error = %error_chain(&error),
                            kind = error.kind(),
                            retry_in = ?wait,
                            suppressed,
                            "{}",
                            what_happened(&error)
                        );
                    }
                    if let ImapError::Refused { step: "SELECT", .. } = &error {
                        let unacknowledged = self.unacknowledged();
                        self.health.set(
                            &self.label,
                            State::Stopped,
                            unacknowledged,
                            Some(error.to_string()),
                        );
                    } else if self.health.state(&self.label) == Some(State::Working) {
                        self.health.set(&self.label, State::Connecting, 0, None);
                    }
                    wait
                }
            };
            if sleep_or_stop(wait, lost).await {
                return;
            }
        }
    }

    /// The unacknowledged count last shown for this mailbox.
    fn unacknowledged(&self) -> u64 {
        self.health
            .snapshot()
            .get(&self.label)
            .map_or(0, |e| e.unacknowledged)
    }
}

/// The log line for a session that ended on `error`: what really happened.
fn what_happened(error: &ImapError) -> &'static str {
    match error {
        ImapError::Timeout {
            step: "IDLE" | "DONE",
            ..
        } => "the server did not answer while waiting in IDLE (the connection is probably gone); unacknowledged mail stays on the server; reconnecting",
        ImapError::Refused { step: "SELECT", .. } => "the mailbox cannot be selected (deleted or renamed on the server?); its mail stays there; looking again",
        ImapError::Connect { .. } | ImapError::Tls { .. } => "cannot reach the IMAP server; unacknowledged mail stays on the server; reconnecting",
        ImapError::UidValidityChanged(_) => "the mailbox was re-created under us; reading it again from the start",
        _ => "IMAP session failed; unacknowledged mail stays on the server; reconnecting",
    }
}

/// Renews the lease every third of its lifetime. Cancels `lost` when
/// another replica holds it, or when renewals failed for so long that the
/// lease could expire before the next try: work stops while the lease is
/// still ours, so two replicas never work one mailbox.
async fn keep_lease(
    store: MailboxStore,
    label: String,
    ttl: Duration,
    mut valid_until: Instant,
    lost: CancellationToken,
) {
    let every = ttl / 3;
    loop {
        tokio::select! {
            () = lost.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let sent = Instant::now();
        match tokio::time::timeout(every, store.renew(ttl)).await {
            Ok(Ok(true)) => valid_until = sent + ttl,
            Ok(Ok(false)) => {
                tracing::warn!(mailbox = %label, "the lease is held by another replica");
                lost.cancel();
                return;
            }
            Ok(Err(e)) => {
                tracing::warn!(mailbox = %label, error = %error_chain(&e), "cannot renew the lease")
            }
            Err(_) => tracing::warn!(mailbox = %label, "lease renewal timed out"),
        }
        if Instant::now() + every >= valid_until {
            tracing::warn!(mailbox = %label, "lease not renewed in time: stopping work before it expires");
            lost.cancel();
            return;
        }
    }
}

/// Exponential backoff with full jitter: a random wait up to 1s, 2s, 4s,
/// ... capped at `max`, so many gateways reconnecting after one server
/// restart do not arrive together.
pub(super) struct Backoff {
    attempt: u32,
    max: Duration,
}

impl Backoff {
    fn new(max: Duration) -> Self {
        Backoff { attempt: 0, max }
    }

    pub(super) fn next(&mut self) -> Duration {
        let ceiling = Duration::from_secs(1)
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        ceiling
            .mul_f64(random_fraction())
            .max(Duration::from_millis(100))
    }

    pub(super) fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// A random number in [0, 1), from the standard library's per-process
/// random hash keys (enough for jitter; no crate needed).
fn random_fraction() -> f64 {
    let n = std::collections::hash_map::RandomState::new().hash_one(Instant::now());
    (n >> 11) as f64 / (1u64 << 53) as f64
}

/// Sleeps, or returns `true` early when `stop` is cancelled.
pub(super) async fn sleep_or_stop(wait: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        () = tokio::time::sleep(wait) => false,
        () = stop.cancelled() => true,
    }
}

pub(super) fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "intake".into())
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_and_resets() {
        let mut backoff = Backoff::new(Duration::from_secs(8));
        for _ in 0..10 {
            let wait = backoff.next();
            assert!(wait <= Duration::from_secs(8), "capped: {wait:?}");
            assert!(
                wait >= Duration::from_millis(100),
                "never a hot loop: {wait:?}"
            );
        }
        backoff.reset();
        assert!(
            backoff.next() <= Duration::from_secs(1),
            "starts small again"
        );
    }

    #[test]
    fn jitter_is_spread() {
        let draws: HashSet<u64> = (0..20).map(|_| (random_fraction() * 1e9) as u64).collect();
        assert!(draws.len() > 15, "random draws differ: {draws:?}");
    }
}
