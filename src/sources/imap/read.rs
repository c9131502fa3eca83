//! Reading the backlog: every mail above the checkpoint, batch by batch.
//! A batch is sizes first, then the headers of mail too big to download
//! and the whole of the rest, in groups that fit `batch_bytes`; mail
//! stored before is recognised by its idempotency key and not delivered
//! again. Each batch is read while the one before it is settled
//! ([`Worker::batch`] shows where), so the server acknowledges one batch
//! while it sends the next.

use crate::telemetry::events::emit;
use crate::telemetry::events::imap::Mails;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use super::config::Processed;
use super::connect::{Features, Session};
use super::deliver::destination;
use super::error::{bounded, ImapError};
use super::fetch;
use super::recover::Fingerprint;
use super::session::logout;
use super::settle::{Behind, Settled};
use super::{Dest, Worker};

impl Worker {
    /// Reads every mail above `after`, batch by batch, until none is left.
    /// The last batch is settled before returning; when `lost` stops the
    /// drain, what is stored and not settled is read again later.
    pub(super) async fn drain(
        self: &Arc<Self>,
        session: &mut Session,
        features: Features,
        uidvalidity: u32,
        mut after: u32,
        lost: &CancellationToken,
    ) -> Result<(), ImapError> {
        let timeout = self.config.command_timeout.0;
        let unseen_only = self.config.processed == Processed::Seen;
        let backlog = metrics::gauge!("intake_imap_backlog", "mailbox" => self.label.clone());
        let start = after;
        let mut second: Option<Session> = None;
        // The second connection is opened beside the reading, never in its
        // way: it is used from the first batch boundary after it is ready.
        let mut opening: Option<tokio::task::JoinHandle<Option<Session>>> = None;
        let drained: Result<(), ImapError> = async {
            let mut behind = Behind::default();
            loop {
                let uids = bounded(
                    "UID SEARCH",
                    timeout,
                    fetch::pending(session, after, unseen_only),
                )
                .await?;
                backlog.set(uids.len() as f64);
                let Some(&last) = uids.last() else {
                    return behind.settle(self, session, features, uidvalidity).await;
                };
                if second.is_none()
                    && opening.is_none()
                    && self.config.second_connection
                    && uids.len() > self.config.batch_size
                {
                    let worker = self.clone();
                    let backlog = uids.len();
                    opening = Some(tokio::spawn(async move {
                        worker.open_second(uidvalidity, backlog).await
                    }));
                }
                for (i, chunk) in uids.chunks(self.config.batch_size).enumerate() {
                    if lost.is_cancelled() {
                        return Ok(());
                    }
                    if opening.as_ref().is_some_and(|o| o.is_finished()) {
                        if let Some(task) = opening.take() {
                            second = task.await.ok().flatten();
                        }
                    }
                    behind = self
                        .batch(
                            session,
                            second.as_mut(),
                            features,
                            uidvalidity,
                            chunk,
                            behind,
                        )
                        .await?;
                    let left = uids.len() - (i * self.config.batch_size + chunk.len());
                    backlog.set(left as f64);
                }
                after = last;
            }
        }
        .await;
        // Only while a backlog is read: an idle second connection would
        // just be logged out by the server.
        if let Some(task) = opening {
            task.abort();
        }
        if let Some(second) = second {
            logout(second).await;
        }
        // Mail the server would not take off the mailbox is still pending
        // there: the backlog says so.
        if let Err(ImapError::Unacknowledged { .. }) = &drained {
            if let Ok(pending) = bounded(
                "UID SEARCH",
                timeout,
                fetch::pending(session, start, unseen_only),
            )
            .await
            {
                backlog.set(pending.len() as f64);
            }
        }
        drained
    }

    /// One batch read and delivered while `behind`, the batch before it, is
    /// settled: where the two overlap. With a second connection, `behind`
    /// is settled there over the whole read (the server moves one batch
    /// while it sends the next); without one, on this session while this
    /// batch's mails are in the pipeline, the only time the session is
    /// free ([`Self::read`] takes `behind` for that). Returns this batch,
    /// stored, as the next one behind. On a failure everything stored so
    /// far is settled at once, and the rest stays for the next try.
    async fn batch(
        self: &Arc<Self>,
        session: &mut Session,
        second: Option<&mut Session>,
        features: Features,
        uidvalidity: u32,
        chunk: &[u32],
        mut behind: Behind,
    ) -> Result<Behind, ImapError> {
        let (read, settled) = match second {
            Some(second) => {
                let read = self.read(session, features, uidvalidity, chunk, Behind::default());
                behind
                    .alongside(self, second, features, uidvalidity, read)
                    .await
            }
            None => {
                let read = self.read(session, features, uidvalidity, chunk, behind);
                (read.await, Ok(()))
            }
        };
        // On an error, what this batch stored is read again on the next
        // session and recognised by its idempotency key.
        settled?;
        let (done, failure) = read?;
        match failure {
            Some(e) => {
                self.settle(session, features, uidvalidity, done).await?;
                Err(e)
            }
            None => Ok(Behind::new(done)),
        }
    }

    /// Reads one batch: sizes, then headers of the oversized and whole
    /// mails of the rest, each mail through the pipeline. Returns what was
    /// stored and the failure that stopped the batch, if one did. `behind`
    /// is settled on this session while the batch's first mails go through
    /// the pipeline, or at the end when none does.
    async fn read(
        self: &Arc<Self>,
        session: &mut Session,
        features: Features,
        uidvalidity: u32,
        chunk: &[u32],
        mut behind: Behind,
    ) -> Result<(Settled, Option<ImapError>), ImapError> {
        let timeout = self.config.command_timeout.0;
        let max_size = self.config.max_size.bytes();
        let sizes = bounded("UID FETCH sizes", timeout, fetch::sizes(session, chunk)).await?;
        let mut vanished: HashSet<u32> = chunk
            .iter()
            .filter(|uid| !sizes.contains_key(uid))
            .copied()
            .collect();
        let (oversized, fitting): (Vec<u32>, Vec<u32>) = chunk
            .iter()
            .filter(|uid| sizes.contains_key(uid))
            .partition(|uid| u64::from(sizes[uid]) > max_size);

        let mut done = Settled::default();
        let mut failure = None;

        if !oversized.is_empty() {
            match bounded(
                "UID FETCH headers",
                timeout,
                fetch::headers(session, &oversized),
            )
            .await
            {
                Err(e) => failure = Some(e),
                Ok(headers) => {
                    for uid in &oversized {
                        let Some(header) = headers.get(uid) else {
                            vanished.insert(*uid);
                            continue;
                        };
                        match self
                            .set_aside_oversized(uidvalidity, *uid, sizes[uid], header.clone())
                            .await
                        {
                            Ok(true) => self.stored_before(
                                &mut done,
                                *uid,
                                Dest::Quarantine,
                                Fingerprint::of(header, sizes[uid]),
                            ),
                            Ok(false) => done.add(*uid, Dest::Quarantine),
                            Err(e) => {
                                failure = Some(e);
                                break;
                            }
                        }
                    }
                }
            }
        }

        if failure.is_none() {
            for group in by_bytes(&fitting, &sizes, self.config.batch_bytes.bytes()) {
                let mails =
                    match bounded("UID FETCH mails", timeout, fetch::bodies(session, &group)).await
                    {
                        Ok(mails) => mails,
                        Err(e) => {
                            failure = Some(e);
                            break;
                        }
                    };
                emit(Mails {
                    outcome: "fetched",
                    count: mails.len() as u64,
                });
                let present: Vec<(u32, Bytes)> = group
                    .iter()
                    .filter_map(|uid| match mails.get(uid) {
                        Some(raw) => Some((*uid, raw.clone())),
                        None => {
                            vanished.insert(*uid);
                            None
                        }
                    })
                    .collect();
                drop(mails);
                // One round trip tells which mails were stored before (read
                // again after a crash or a failed acknowledgement): they are
                // acknowledged without going through the pipeline again.
                let keys: Vec<String> = present
                    .iter()
                    .map(|(uid, raw)| self.idempotency_key(uidvalidity, *uid, raw))
                    .collect();
                let known = match self.pipeline.recognise(&keys).await {
                    Ok(known) => known,
                    Err(e) => {
                        failure = Some(ImapError::Store(e));
                        break;
                    }
                };
                let mut fresh = Vec::with_capacity(present.len());
                for ((uid, raw), (key, known)) in
                    present.into_iter().zip(keys.into_iter().zip(known))
                {
                    match known {
                        Some(stored) => {
                            emit(Mails {
                                outcome: "already_stored",
                                count: 1,
                            });
                            self.stored_before(
                                &mut done,
                                uid,
                                destination(&stored),
                                Fingerprint::of(&raw, sizes[&uid]),
                            );
                        }
                        None => fresh.push((uid, raw, key)),
                    }
                }
                // The session is free while the pipeline works: settle the
                // batch behind on it meanwhile (the first group only; after
                // that nothing is behind).
                let deliveries = self.deliver_all(uidvalidity, fresh, &mut done);
                let (delivered, settled) = behind
                    .alongside(self, session, features, uidvalidity, deliveries)
                    .await;
                failure = delivered;
                // On an error, what this batch stored is read again on the
                // next session and recognised by its idempotency key.
                settled?;
                if failure.is_some() {
                    break;
                }
            }
        }

        // No mail of this batch went through the pipeline (all too big, or
        // gone): nothing to overlap with.
        behind.settle(self, session, features, uidvalidity).await?;
        let finished: HashSet<u32> = done.uids().chain(vanished).collect();
        done.through = chunk
            .iter()
            .take_while(|uid| finished.contains(uid))
            .last()
            .copied();
        Ok((done, failure))
    }
}

/// Splits `uids` into groups whose mails together stay within `budget`
/// bytes (a single larger mail makes a group of its own).
fn by_bytes(uids: &[u32], sizes: &HashMap<u32, u32>, budget: u64) -> Vec<Vec<u32>> {
    let mut groups = Vec::new();
    let mut group = Vec::new();
    let mut bytes = 0u64;
    for uid in uids {
        let size = u64::from(sizes.get(uid).copied().unwrap_or(0));
        if !group.is_empty() && bytes + size > budget {
            groups.push(std::mem::take(&mut group));
            bytes = 0;
        }
        group.push(*uid);
        bytes += size;
    }
    if !group.is_empty() {
        groups.push(group);
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_stay_within_the_byte_budget() {
        let sizes = [(1, 60), (2, 60), (3, 200), (4, 10)].into_iter().collect();
        assert_eq!(
            by_bytes(&[1, 2, 3, 4], &sizes, 100),
            vec![vec![1], vec![2], vec![3], vec![4]]
        );
        assert_eq!(by_bytes(&[1, 4], &sizes, 100), vec![vec![1, 4]]);
    }
}
