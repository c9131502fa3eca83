//! Settling a batch: its stored mail acknowledged on the server (moved to
//! its folder or flagged \Seen, one command per destination), then the
//! checkpoint moved past it. Mail stored before and read again is first
//! looked for in its folder, in case a move the server did not finish has
//! copied it there already (see `recover.rs`).
//!
//! A batch is settled while the next one is read: [`Behind`] is the batch
//! waiting for that, and [`Behind::alongside`] the one place where the two
//! overlap.

use crate::telemetry::events::emit;
use crate::telemetry::events::imap::Mails;
use std::collections::HashSet;
use std::future::Future;

use super::config::Processed;
use super::connect::{Features, Session};
use super::error::{bounded, ImapError};
use super::fetch::{self, Ack};
use super::health::State;
use super::recover::{self, Candidate, Fingerprint};
use super::store::Checkpoint;
use super::{Dest, Worker};

/// A batch whose mail is stored but not yet acknowledged on the server.
#[derive(Default)]
pub(super) struct Settled {
    /// Stored: move to the processed folder (or flag \Seen).
    processed: Vec<u32>,
    /// Set aside: move to the quarantine folder.
    quarantined: Vec<u32>,
    /// Stored before and read again (after a crash or a failed
    /// acknowledgement): a move the server had half done may have copied
    /// them already, so they are looked for in their folder first.
    again: Vec<(Dest, Candidate)>,
    /// The last UID of the batch's done prefix: the checkpoint once the
    /// acknowledgements are through.
    pub(super) through: Option<u32>,
}

impl Settled {
    /// Records a stored mail under where it goes on the server.
    pub(super) fn add(&mut self, uid: u32, dest: Dest) {
        match dest {
            Dest::Processed => self.processed.push(uid),
            Dest::Quarantine => self.quarantined.push(uid),
        }
    }

    /// Every UID of the batch that is stored.
    pub(super) fn uids(&self) -> impl Iterator<Item = u32> + '_ {
        self.processed
            .iter()
            .chain(&self.quarantined)
            .copied()
            .chain(self.again.iter().map(|(_, c)| c.uid))
    }
}

/// The batch behind the one being read: stored, and acknowledged while the
/// next batch is read. Empty before a drain's first batch and once settled,
/// so settling it again does nothing.
#[derive(Default)]
pub(super) struct Behind(Option<Settled>);

impl Behind {
    pub(super) fn new(settled: Settled) -> Self {
        Behind(Some(settled))
    }

    /// Runs `work` and, at the same time, settles the batch behind on
    /// `session`, which `work` must leave alone: the one place where
    /// reading one batch and settling the one before overlap. Nothing is
    /// behind afterwards. Returns what `work` returned and how settling
    /// went.
    pub(super) async fn alongside<T>(
        &mut self,
        worker: &Worker,
        session: &mut Session,
        features: Features,
        uidvalidity: u32,
        work: impl Future<Output = T>,
    ) -> (T, Result<(), ImapError>) {
        tokio::join!(work, self.settle(worker, session, features, uidvalidity))
    }

    /// Settles the batch behind now, on `session`, if there is one.
    pub(super) async fn settle(
        &mut self,
        worker: &Worker,
        session: &mut Session,
        features: Features,
        uidvalidity: u32,
    ) -> Result<(), ImapError> {
        match self.0.take() {
            Some(settled) => worker.settle(session, features, uidvalidity, settled).await,
            None => Ok(()),
        }
    }
}

impl Worker {
    /// Acknowledges a batch's stored mail on the server (one command per
    /// destination), then records how far the mailbox is done.
    pub(super) async fn settle(
        &self,
        session: &mut Session,
        features: Features,
        uidvalidity: u32,
        mut settled: Settled,
    ) -> Result<(), ImapError> {
        let timeout = self.config.command_timeout.0;
        if !settled.again.is_empty() {
            self.finish_moves(session, features, uidvalidity, &mut settled)
                .await?;
        }
        let folders = self.folders();
        let ack = match self.config.processed {
            Processed::Move => Ack::MoveTo(&folders.processed),
            Processed::Seen => Ack::FlagSeen,
        };
        let count = (settled.processed.len() + settled.quarantined.len()) as u64;
        bounded(
            "acknowledge",
            timeout,
            fetch::acknowledge(session, features, &settled.processed, ack),
        )
        .await
        .map_err(|e| match ack {
            Ack::MoveTo(folder) => unacknowledged(e, count, folder),
            Ack::FlagSeen => unacknowledged(e, count, "(flag \\Seen)"),
        })?;
        bounded(
            "quarantine",
            timeout,
            fetch::acknowledge(
                session,
                features,
                &settled.quarantined,
                Ack::MoveTo(&folders.quarantine),
            ),
        )
        .await
        .map_err(|e| unacknowledged(e, count, &folders.quarantine))?;
        if count > 0 && self.health.state(&self.label) == Some(State::Unacknowledged) {
            tracing::info!(mailbox = %self.label, "the server acknowledges mail again");
            self.health.set(&self.label, State::Working, 0, None);
        }
        if let Some(last_uid) = settled.through {
            let saved = self
                .store
                .save(Checkpoint {
                    uidvalidity,
                    last_uid,
                })
                .await?;
            if !saved {
                tracing::warn!(mailbox = %self.label, "checkpoint not written: the lease is no longer ours");
            }
        }
        Ok(())
    }

    /// Records a mail stored before and read again: one that goes to a
    /// folder and can be recognised there is looked for there first (see
    /// [`Self::finish_moves`]); the rest is acknowledged as usual.
    pub(super) fn stored_before(
        &self,
        done: &mut Settled,
        uid: u32,
        dest: Dest,
        fingerprint: Option<Fingerprint>,
    ) {
        let moved = dest == Dest::Quarantine || self.config.processed == Processed::Move;
        match fingerprint {
            Some(fingerprint) if moved => done.again.push((dest, Candidate { uid, fingerprint })),
            _ => done.add(uid, dest),
        }
    }

    /// The batch's mail stored before and read again: expunges what a move
    /// the server did not finish has already copied to its folder (see
    /// [`recover`]) and hands the rest to the usual acknowledgement.
    async fn finish_moves(
        &self,
        session: &mut Session,
        features: Features,
        uidvalidity: u32,
        settled: &mut Settled,
    ) -> Result<(), ImapError> {
        let timeout = self.config.command_timeout.0;
        let again = std::mem::take(&mut settled.again);
        // The half-done moves were the last ones into the folder, at most
        // the two batches being acknowledged at the crash; the rest of the
        // window leaves room for other mailboxes moving there meanwhile.
        let window = again.len() + 2 * self.config.batch_size;
        let mut copied = HashSet::new();
        let folders = self.folders();
        for (dest, folder) in [
            (Dest::Processed, &folders.processed),
            (Dest::Quarantine, &folders.quarantine),
        ] {
            let candidates: Vec<&Candidate> = again
                .iter()
                .filter(|(d, _)| *d == dest)
                .map(|(_, c)| c)
                .collect();
            if candidates.is_empty() {
                continue;
            }
            copied.extend(
                bounded(
                    "look for half-moved mail",
                    timeout,
                    recover::already_copied(session, folder, &candidates, window),
                )
                .await?,
            );
        }
        // Back to the mailbox; its UIDs mean the same only under the same
        // UIDVALIDITY.
        let now = self.select(session).await?;
        if now != uidvalidity {
            return Err(ImapError::UidValidityChanged(self.mailbox.clone()));
        }
        if !copied.is_empty() {
            let uids: Vec<u32> = copied.iter().copied().collect();
            bounded("EXPUNGE", timeout, fetch::expunge(session, features, &uids)).await?;
            emit(Mails {
                outcome: "half_moved",
                count: uids.len() as u64,
            });
            if features.moves {
                tracing::warn!(mailbox = %self.label, mails = uids.len(), "mail already in its folder after a MOVE the server did not finish (it stopped mid-command) was expunged here, not moved a second time");
            } else {
                tracing::warn!(mailbox = %self.label, mails = uids.len(), "mail already copied to its folder by a COPY whose EXPUNGE never came (intake or the connection stopped between the two) was expunged here, not copied a second time");
            }
        }
        for (dest, candidate) in again {
            if !copied.contains(&candidate.uid) {
                settled.add(candidate.uid, dest);
            }
        }
        Ok(())
    }
}

/// A refused move or flag of stored mail: the mail stays in the mailbox,
/// stored, and is shown as unacknowledged. Other failures (a timeout, a
/// dropped connection) are the session's.
fn unacknowledged(error: ImapError, count: u64, folder: &str) -> ImapError {
    match error {
        ImapError::Refused { step, said } => ImapError::Unacknowledged {
            count,
            step,
            folder: folder.to_string(),
            said,
        },
        other => other,
    }
}
