//! Reading the backlog: every mail above the checkpoint, batch by batch.
//! A batch is sizes first, then the headers of mail too big to download
//! and the whole of the rest, in groups that fit `batch_bytes`; mail
//! stored before is recognised by its idempotency key and not delivered
//! again. Each batch is read while the one before it is settled
//! ([`Worker::batch`] shows where), so the server acknowledges one batch
//! while it sends the next.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::config::Processed;
use super::connect::{Features, Session};
use super::deliver::destination;
use super::error::{bounded, ImapError};
use super::fetch;
use super::recover::Fingerprint;
use super::settle::Settled;
use super::{Dest, Worker};

impl Worker {
    /// Reads every mail above `after`, batch by batch, until none is left.
    /// A batch's acknowledgement runs while the next batch is read: on a
    /// second connection when the backlog is longer than one batch (the
    /// server moves one batch while it sends the next), else on this
    /// session while the next batch's mails are in the pipeline. The last
    /// one is settled before returning.
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
        let mut pending: Option<Settled> = None;
        let mut second: Option<Session> = None;
        let drained: Result<(), ImapError> = async {
            loop {
                let uids = bounded(
                    "UID SEARCH",
                    timeout,
                    fetch::pending(session, after, unseen_only),
                )
                .await?;
                backlog.set(uids.len() as f64);
                let Some(&last) = uids.last() else {
                    if let Some(settled) = pending.take() {
                        self.settle(session, features, uidvalidity, settled).await?;
                    }
                    return Ok(());
                };
                if second.is_none()
                    && self.config.second_connection
                    && uids.len() > self.config.batch_size
                {
                    second = self.open_second(uidvalidity, uids.len()).await;
                }
                for (i, chunk) in uids.chunks(self.config.batch_size).enumerate() {
                    if lost.is_cancelled() {
                        return Ok(());
                    }
                    pending = Some(
                        self.batch(
                            session,
                            second.as_mut(),
                            features,
                            uidvalidity,
                            chunk,
                            pending.take(),
                        )
                        .await?,
                    );
                    let left = uids.len() - (i * self.config.batch_size + chunk.len());
                    backlog.set(left as f64);
                }
                after = last;
            }
        }
        .await;
        // Only while a backlog is read: an idle second connection would
        // just be logged out by the server.
        if let Some(mut second) = second {
            let _ = bounded("LOGOUT", Duration::from_secs(2), async {
                second.logout().await.map_err(ImapError::protocol("LOGOUT"))
            })
            .await;
        }
        drained
    }

    /// One batch read and delivered, with `earlier` (the batch before)
    /// settled meanwhile: on `second` when there is one, else inside
    /// [`Self::read`] on the same session. Returns what was stored, for
    /// the caller to settle later. On a failure everything stored so far is
    /// settled at once, and the rest stays for the next try.
    async fn batch(
        self: &Arc<Self>,
        session: &mut Session,
        second: Option<&mut Session>,
        features: Features,
        uidvalidity: u32,
        chunk: &[u32],
        earlier: Option<Settled>,
    ) -> Result<Settled, ImapError> {
        let (done, failure) = match second {
            Some(second) => {
                let settling = async {
                    match earlier {
                        Some(settled) => self.settle(second, features, uidvalidity, settled).await,
                        None => Ok(()),
                    }
                };
                let (read, settled) = tokio::join!(
                    self.read(session, features, uidvalidity, chunk, None),
                    settling
                );
                // On an error, what this batch stored is read again on the
                // next session and recognised by its idempotency key.
                settled?;
                read?
            }
            None => {
                self.read(session, features, uidvalidity, chunk, earlier)
                    .await?
            }
        };
        match failure {
            Some(e) => {
                self.settle(session, features, uidvalidity, done).await?;
                Err(e)
            }
            None => Ok(done),
        }
    }

    /// Reads one batch: sizes, then headers of the oversized and whole
    /// mails of the rest, each mail through the pipeline. Returns what was
    /// stored and the failure that stopped the batch, if one did; `earlier`
    /// is settled on this session while the batch's mails go through the
    /// pipeline.
    async fn read(
        self: &Arc<Self>,
        session: &mut Session,
        features: Features,
        uidvalidity: u32,
        chunk: &[u32],
        mut earlier: Option<Settled>,
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
                metrics::counter!("intake_imap_mails_total", "outcome" => "fetched")
                    .increment(mails.len() as u64);
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
                            metrics::counter!("intake_imap_mails_total", "outcome" => "already_stored")
                                .increment(1);
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
                // In order, a bounded number at once, each on its own task
                // so parsing uses every core: the first failure stops the
                // batch, and only what came before it is acknowledged. (A
                // task still running then may store its mail; it is read
                // again later and recognised by its idempotency key.)
                let deliveries = async {
                    let mut results = futures_util::stream::iter(fresh)
                        .map(|(uid, raw, key)| {
                            let worker = self.clone();
                            let task = tokio::spawn(async move {
                                worker.deliver(uidvalidity, uid, raw, key).await
                            });
                            async move { (uid, task.await) }
                        })
                        .buffered(self.config.concurrency);
                    while let Some((uid, result)) = results.next().await {
                        match result {
                            Ok(Ok(dest)) => done.add(uid, dest),
                            Ok(Err(e)) => return Some(e),
                            Err(e) => return Some(ImapError::Task(e.to_string())),
                        }
                    }
                    None
                };
                // The session is free while the pipeline works: settle the
                // batch before on it meanwhile.
                let settling = async {
                    match earlier.take() {
                        Some(settled) => self.settle(session, features, uidvalidity, settled).await,
                        None => Ok(()),
                    }
                };
                let (delivered, settled_earlier) = tokio::join!(deliveries, settling);
                failure = delivered;
                // On an error, what this batch stored is read again on the
                // next session and recognised by its idempotency key.
                settled_earlier?;
                if failure.is_some() {
                    break;
                }
            }
        }

        if let Some(settled) = earlier.take() {
            // No mail of this batch went through the pipeline (all too big,
            // or gone): nothing to overlap with.
            self.settle(session, features, uidvalidity, settled).await?;
        }
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
