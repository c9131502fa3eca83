//! One IMAP connection's life: log in (creating the folders when asked),
//! then round after round SELECT the mailbox, find where to resume, read
//! the backlog ([`Worker::drain`]) and wait for news, in IDLE or by
//! polling. Also the second connection that acknowledges while the first
//! reads a long backlog.

use crate::telemetry::events::emit;
use crate::telemetry::events::imap::{Failed, UidValidityChanged, WokeUp};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::connect::{self, Session};
use super::error::{bounded, ImapError};
use super::health::State;
use super::store::Checkpoint;
use super::worker::{sleep_or_stop, Backoff};
use super::Worker;
use crate::telemetry::error_chain;

/// How long an IDLE may stay silent before the link is tested with DONE;
/// servers send a keepalive every few minutes (Dovecot: 2), so a silent
/// one is probably gone. Re-issuing is cheap.
const IDLE_SILENCE: Duration = Duration::from_secs(5 * 60);

impl Worker {
    /// One connection: catch up with the backlog, then wait for news (IDLE
    /// or polling), again and again.
    pub(super) async fn session(
        self: &Arc<Self>,
        lost: &CancellationToken,
        backoff: &mut Backoff,
    ) -> Result<(), ImapError> {
        let (mut session, features) = connect::connect(&self.config, &self.tls).await?;
        tracing::info!(mailbox = %self.label, idle = features.idle, r#move = features.moves, "IMAP session open");
        self.prepare(&mut session, features).await?;
        // Mail left unacknowledged stays counted until a batch is
        // acknowledged again (see `settle.rs`).
        let left = self.health.snapshot().remove(&self.label);
        match left {
            Some(entry) if entry.unacknowledged > 0 => self.health.set(
                &self.label,
                State::Unacknowledged,
                entry.unacknowledged,
                entry.error,
            ),
            _ => self.health.set(&self.label, State::Working, 0, None),
        }
        loop {
            // SELECT at every round: it also tells whether UIDVALIDITY
            // changed under us (mailbox deleted and re-created).
            let uidvalidity = self.select(&mut session).await?;
            let after = self.resume_point(uidvalidity).await?;
            match self
                .drain(&mut session, features, uidvalidity, after, lost)
                .await
            {
                Ok(()) => backoff.reset(),
                // The pipeline could not store (Redis down, or later a
                // pipeline that pushes back): the IMAP side is healthy, so
                // keep the session, wait, and read the same mails again.
                Err(ImapError::Store(e)) => {
                    let error = ImapError::Store(e);
                    emit(Failed {
                        kind: error.kind(),
                        reconnect: false,
                    });
                    let wait = backoff.next();
                    if let Some(suppressed) = self.log_now("store") {
                        tracing::warn!(
                            mailbox = %self.label,
                            error = %error_chain(&error),
                            retry_in = ?wait,
                            suppressed,
                            "mail cannot be stored now; it stays on the server and is read again"
                        );
                    }
                    if sleep_or_stop(wait, lost).await {
                        return Ok(());
                    }
                    continue;
                }
                Err(e) => return Err(e),
            }
            if lost.is_cancelled() {
                logout(session).await;
                return Ok(());
            }
            if features.idle && self.config.idle {
                let (back, woke) = self.idle(session, lost).await?;
                session = back;
                if woke {
                    emit(WokeUp { via: "idle" });
                }
            } else {
                if sleep_or_stop(self.config.poll_interval.0, lost).await {
                    continue;
                }
                emit(WokeUp { via: "poll" });
            }
        }
    }

    /// SELECTs the mailbox on `session`; returns its UIDVALIDITY.
    pub(super) async fn select(&self, session: &mut Session) -> Result<u32, ImapError> {
        let mailbox = self.folders().mailbox.clone();
        let selected = bounded("SELECT", self.config.command_timeout.0, async {
            session
                .select(&mailbox)
                .await
                .map_err(ImapError::protocol("SELECT"))
        })
        .await?;
        selected
            .uid_validity
            .ok_or_else(|| ImapError::NoUidValidity(self.mailbox.clone()))
    }

    /// The UID after which mail is still to be read. A changed UIDVALIDITY
    /// makes old UIDs meaningless: start from the beginning of the mailbox.
    /// Nothing is sent twice: processed mail was moved out (or is flagged
    /// \Seen and skipped), so what is left is what was never acknowledged.
    async fn resume_point(&self, uidvalidity: u32) -> Result<u32, ImapError> {
        match self.store.load().await? {
            Some(cp) if cp.uidvalidity == uidvalidity => Ok(cp.last_uid),
            Some(cp) => {
                emit(UidValidityChanged {
                    mailbox: &self.label,
                    old: cp.uidvalidity,
                    new: uidvalidity,
                });
                self.store
                    .save(Checkpoint {
                        uidvalidity,
                        last_uid: 0,
                    })
                    .await?;
                Ok(0)
            }
            None => Ok(0),
        }
    }

    /// A second connection to the mailbox, selected, for acknowledging
    /// while the first reads. `None` when it cannot be had (the server may
    /// limit connections per account): the first then does both, as fast
    /// as before, so this is not an error.
    pub(super) async fn open_second(&self, uidvalidity: u32, backlog: usize) -> Option<Session> {
        // Its own short deadline over connect, login and SELECT: a server
        // slow to give a second connection is not waited for.
        let deadline = self.config.connect_timeout.0;
        let opened = bounded("second connection", deadline, async {
            let (mut session, _) = connect::connect(&self.config, &self.tls).await?;
            // UIDs mean the same on both only under the same UIDVALIDITY.
            let same = self.select(&mut session).await? == uidvalidity;
            Ok::<_, ImapError>(same.then_some(session))
        })
        .await;
        match opened {
            Ok(Some(session)) => {
                tracing::info!(mailbox = %self.label, backlog, "backlog longer than one batch: acknowledging on a second IMAP connection while the next batch is read");
                Some(session)
            }
            // Changed between the two SELECTs: the next round sees it.
            Ok(None) => None,
            Err(e) => {
                if let Some(suppressed) = self.log_now("second") {
                    tracing::warn!(
                        mailbox = %self.label,
                        error = %error_chain(&e),
                        suppressed,
                        "no second IMAP connection for acknowledging; the backlog is read and acknowledged on one (set second_connection = false if the server limits connections)"
                    );
                }
                None
            }
        }
    }

    /// Waits in IDLE for news, `idle_renew` at most. Returns the session
    /// and whether the server reported a change.
    async fn idle(
        &self,
        session: Session,
        lost: &CancellationToken,
    ) -> Result<(Session, bool), ImapError> {
        let timeout = self.config.command_timeout.0;
        let renew = self.config.idle_renew.0;
        // News that arrived between our last SEARCH and the IDLE (an
        // EXISTS sent with another command's answer) lands in the
        // unsolicited channel, not in the IDLE stream: clear what is old
        // (our own moves' EXPUNGEs), then look again once IDLE is running.
        let news = session.unsolicited_responses.clone();
        while news.try_recv().is_ok() {}
        let mut handle = session.idle();
        bounded("IDLE", timeout, async {
            handle.init().await.map_err(ImapError::protocol("IDLE"))
        })
        .await?;
        let missed = std::iter::from_fn(|| news.try_recv().ok())
            .any(|r| matches!(r, async_imap::types::UnsolicitedResponse::Exists(_)));
        let woke = if missed {
            true
        } else {
            let (wait, _interrupt) = handle.wait_with_timeout(renew.min(IDLE_SILENCE));
            tokio::select! {
                result = tokio::time::timeout(renew, wait) => match result {
                    Ok(Ok(async_imap::extensions::idle::IdleResponse::NewData(_))) => true,
                    Ok(Ok(_)) | Err(_) => false,
                    Ok(Err(e)) => return Err(ImapError::protocol("IDLE")(e)),
                },
                () = lost.cancelled() => false,
            }
        };
        let session = bounded("DONE", timeout, async {
            handle.done().await.map_err(ImapError::protocol("DONE"))
        })
        .await?;
        Ok((session, woke))
    }
}

/// Says goodbye, briefly and without caring for the answer: the session is
/// done with either way.
pub(super) async fn logout(mut session: Session) {
    let _ = bounded("LOGOUT", Duration::from_secs(2), async {
        session
            .logout()
            .await
            .map_err(ImapError::protocol("LOGOUT"))
    })
    .await;
}
