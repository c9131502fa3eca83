//! The IMAP source: every configured mailbox is watched by one task that
//! holds the mailbox's lease in Redis, reads new mail in batches, hands
//! each mail to the pipeline and acknowledges it on the server (move or
//! flag) only after it is stored.
//!
//! Guarantees: at-least-once reading (a mail is acknowledged only after
//! `Pipeline::process` returned `Ok`, and the checkpoint advances only past
//! acknowledged mail) plus an idempotency key per mail (account, mailbox,
//! UIDVALIDITY, UID, Message-ID), so a mail read twice after a crash is
//! stored once. One replica works a mailbox at a time; it stops working
//! before its lease could expire.

pub mod config;
mod connect;
mod error;
mod fetch;
mod recover;
mod store;

use std::collections::HashSet;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::redis_connection::RedisConnection;
use bytes::Bytes;
use futures_util::StreamExt;
use sha2::Digest;
use tokio_util::sync::CancellationToken;

use crate::envelope::Source;
use crate::parse::ParseOptions;
use crate::pipeline::{Pipeline, PipelineError, Stored};
use crate::route::{Answer, Refusal, Stream};
use crate::submission::{Payload, Submission};
use crate::telemetry::error_chain;
pub use config::ImapConfig;
use config::Processed;
use connect::{Features, Session};
use error::bounded;
pub use error::ImapError;
use fetch::Ack;
use recover::{Candidate, Fingerprint};
use store::{Checkpoint, MailboxStore};

/// How long an IDLE may stay silent before the link is tested with DONE;
/// servers send a keepalive every few minutes (Dovecot: 2), so a silent
/// one is probably gone. Re-issuing is cheap.
const IDLE_SILENCE: Duration = Duration::from_secs(5 * 60);

/// The IMAP source, ready to run: every mailbox of every account.
pub struct ImapSource {
    workers: Vec<Worker>,
}

impl ImapSource {
    /// Prepares the workers; fails only on a CA file that cannot be used.
    pub fn new(
        accounts: &[ImapConfig],
        pipeline: Arc<Pipeline>,
        redis: RedisConnection,
        prefix: &str,
        redis_timeout: Duration,
    ) -> Result<ImapSource, ImapError> {
        // One id per process: the lease says which replica holds a mailbox.
        let owner = format!("{}:{}", hostname(), ulid::Ulid::new());
        let mut workers = Vec::new();
        for account in accounts {
            let tls = connect::tls_config(account.ca_file.as_deref())?;
            let config = Arc::new(account.clone());
            for mailbox in &account.mailboxes {
                workers.push(Worker {
                    config: config.clone(),
                    tls: tls.clone(),
                    mailbox: mailbox.clone(),
                    label: format!("{}/{}", account.account(), mailbox),
                    pipeline: pipeline.clone(),
                    store: MailboxStore::new(
                        redis.clone(),
                        prefix,
                        account.account(),
                        mailbox,
                        owner.clone(),
                        redis_timeout,
                    ),
                });
            }
        }
        Ok(ImapSource { workers })
    }

    pub fn mailboxes(&self) -> usize {
        self.workers.len()
    }

    /// Works every mailbox until `stop` is cancelled; then each task
    /// drops what it has not acknowledged (it is read again later) and
    /// releases its lease.
    pub async fn run(self, stop: CancellationToken) {
        let mut tasks = tokio::task::JoinSet::new();
        for worker in self.workers {
            let stop = stop.clone();
            tasks.spawn(async move { Arc::new(worker).run(stop).await });
        }
        while let Some(result) = tasks.join_next().await {
            if let Err(e) = result {
                tracing::error!(error = %e, "an IMAP mailbox task failed");
            }
        }
    }
}

/// One mailbox of one account.
struct Worker {
    config: Arc<ImapConfig>,
    tls: Arc<rustls::ClientConfig>,
    mailbox: String,
    /// `account/mailbox`: the name in logs and the metric label.
    label: String,
    pipeline: Arc<Pipeline>,
    store: MailboxStore,
}

/// A batch whose mail is stored but not yet acknowledged on the server.
#[derive(Default)]
struct Settled {
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
    through: Option<u32>,
}

impl Settled {
    /// Records a stored mail under where it goes on the server.
    fn add(&mut self, uid: u32, dest: Dest) {
        match dest {
            Dest::Processed => self.processed.push(uid),
            Dest::Quarantine => self.quarantined.push(uid),
        }
    }

    /// Every UID of the batch that is stored.
    fn uids(&self) -> impl Iterator<Item = u32> + '_ {
        self.processed
            .iter()
            .chain(&self.quarantined)
            .copied()
            .chain(self.again.iter().map(|(_, c)| c.uid))
    }
}

/// Where an acknowledged mail goes on the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dest {
    Processed,
    Quarantine,
}

impl Worker {
    /// Claim the lease, work the mailbox while it is held, repeat until
    /// shutdown.
    async fn run(self: Arc<Self>, stop: CancellationToken) {
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
                    metrics::counter!("intake_imap_errors_total", "kind" => e.kind()).increment(1);
                    tracing::warn!(mailbox = %self.label, error = %error_chain(&e), "cannot claim the mailbox lease; retrying");
                    if sleep_or_stop(retry, &stop).await {
                        break;
                    }
                    continue;
                }
            }
            waiting_logged = false;
            tracing::info!(mailbox = %self.label, owner = self.store.owner(), "lease taken: working the mailbox");
            metrics::gauge!("intake_imap_lease_held", "mailbox" => self.label.clone()).set(1.0);
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
            metrics::gauge!("intake_imap_lease_held", "mailbox" => self.label.clone()).set(0.0);
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
        loop {
            if lost.is_cancelled() {
                return;
            }
            let error = match self.session(lost, &mut backoff).await {
                Ok(()) => return,
                Err(e) => e,
            };
            metrics::counter!("intake_imap_errors_total", "kind" => error.kind()).increment(1);
            metrics::counter!("intake_imap_reconnects_total").increment(1);
            let wait = if error.is_auth() {
                let wait = self
                    .config
                    .auth_backoff
                    .0
                    .mul_f64(0.8 + 0.2 * random_fraction());
                if let Some(suppressed) = crate::telemetry::log_limit::errors()
                    .check(&format!("imap-auth:{}", self.label))
                {
                    tracing::error!(
                        mailbox = %self.label,
                        error = %error_chain(&error),
                        retry_in = ?wait,
                        suppressed,
                        "IMAP login refused; not trying again for a while, to spare the server and the account: fix the credentials"
                    );
                }
                wait
            } else {
                let wait = backoff.next();
                if let Some(suppressed) = crate::telemetry::log_limit::errors()
                    .check(&format!("imap-session:{}", self.label))
                {
                    tracing::warn!(
                        mailbox = %self.label,
                        error = %error_chain(&error),
                        kind = error.kind(),
                        retry_in = ?wait,
                        suppressed,
                        "IMAP session failed; unacknowledged mail stays on the server; reconnecting"
                    );
                }
                wait
            };
            if sleep_or_stop(wait, lost).await {
                return;
            }
        }
    }

    /// One connection: catch up with the backlog, then wait for news (IDLE
    /// or polling), again and again.
    async fn session(
        self: &Arc<Self>,
        lost: &CancellationToken,
        backoff: &mut Backoff,
    ) -> Result<(), ImapError> {
        let timeout = self.config.command_timeout.0;
        let (mut session, features) = connect::connect(&self.config, &self.tls).await?;
        tracing::info!(mailbox = %self.label, idle = features.idle, r#move = features.moves, "IMAP session open");
        if self.config.create_folders {
            let mut folders = vec![self.config.quarantine_folder.as_str()];
            if self.config.processed == Processed::Move {
                folders.push(self.config.processed_folder.as_str());
            }
            for folder in folders {
                // Fails when the folder exists, which is what we want.
                let _ = bounded("CREATE", timeout, async {
                    session
                        .create(folder)
                        .await
                        .map_err(ImapError::protocol("CREATE"))
                })
                .await;
            }
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
                    metrics::counter!("intake_imap_errors_total", "kind" => error.kind())
                        .increment(1);
                    let wait = backoff.next();
                    if let Some(suppressed) = crate::telemetry::log_limit::errors()
                        .check(&format!("imap-store:{}", self.label))
                    {
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
                let _ = bounded("LOGOUT", Duration::from_secs(2), async {
                    session
                        .logout()
                        .await
                        .map_err(ImapError::protocol("LOGOUT"))
                })
                .await;
                return Ok(());
            }
            if features.idle && self.config.idle {
                let (back, woke) = self.idle(session, lost).await?;
                session = back;
                if woke {
                    metrics::counter!("intake_imap_wakeups_total", "via" => "idle").increment(1);
                }
            } else {
                if sleep_or_stop(self.config.poll_interval.0, lost).await {
                    continue;
                }
                metrics::counter!("intake_imap_wakeups_total", "via" => "poll").increment(1);
            }
        }
    }

    /// SELECTs the mailbox on `session`; returns its UIDVALIDITY.
    async fn select(&self, session: &mut Session) -> Result<u32, ImapError> {
        let selected = bounded("SELECT", self.config.command_timeout.0, async {
            session
                .select(&self.mailbox)
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
                metrics::counter!("intake_imap_uidvalidity_changes_total").increment(1);
                tracing::warn!(
                    mailbox = %self.label,
                    old = cp.uidvalidity,
                    new = uidvalidity,
                    "UIDVALIDITY changed (mailbox re-created or restored): reading it again from the start; mail already acknowledged is not in it"
                );
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

    /// Reads every mail above `after`, batch by batch, until none is left.
    /// A batch's acknowledgement runs while the next batch is read: on a
    /// second connection when the backlog is longer than one batch (the
    /// server moves one batch while it sends the next), else on this
    /// session while the next batch's mails are in the pipeline. The last
    /// one is settled before returning.
    async fn drain(
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

    /// A second connection to the mailbox, selected, for acknowledging
    /// while the first reads. `None` when it cannot be had (the server may
    /// limit connections per account): the first then does both, as fast
    /// as before, so this is not an error.
    async fn open_second(&self, uidvalidity: u32, backlog: usize) -> Option<Session> {
        let opened = async {
            let (mut session, _) = connect::connect(&self.config, &self.tls).await?;
            // UIDs mean the same on both only under the same UIDVALIDITY.
            let same = self.select(&mut session).await? == uidvalidity;
            Ok::<_, ImapError>(same.then_some(session))
        }
        .await;
        match opened {
            Ok(Some(session)) => {
                tracing::info!(mailbox = %self.label, backlog, "backlog longer than one batch: acknowledging on a second IMAP connection while the next batch is read");
                Some(session)
            }
            // Changed between the two SELECTs: the next round sees it.
            Ok(None) => None,
            Err(e) => {
                if let Some(suppressed) = crate::telemetry::log_limit::errors()
                    .check(&format!("imap-second:{}", self.label))
                {
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

    /// Acknowledges a batch's stored mail on the server (one command per
    /// destination), then records how far the mailbox is done.
    async fn settle(
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
        let ack = match self.config.processed {
            Processed::Move => Ack::MoveTo(&self.config.processed_folder),
            Processed::Seen => Ack::FlagSeen,
        };
        bounded(
            "acknowledge",
            timeout,
            fetch::acknowledge(session, features, &settled.processed, ack),
        )
        .await?;
        bounded(
            "quarantine",
            timeout,
            fetch::acknowledge(
                session,
                features,
                &settled.quarantined,
                Ack::MoveTo(&self.config.quarantine_folder),
            ),
        )
        .await?;
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
    fn stored_before(
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
        for (dest, folder) in [
            (Dest::Processed, &self.config.processed_folder),
            (Dest::Quarantine, &self.config.quarantine_folder),
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
            metrics::counter!("intake_imap_mails_total", "outcome" => "half_moved")
                .increment(uids.len() as u64);
            tracing::warn!(mailbox = %self.label, mails = uids.len(), "mail already copied to its folder by a move the server did not finish (it stopped mid-command) was expunged here, not moved a second time");
        }
        for (dest, candidate) in again {
            if !copied.contains(&candidate.uid) {
                settled.add(candidate.uid, dest);
            }
        }
        Ok(())
    }

    /// One mail through the pipeline. `Ok` means stored (or stored before)
    /// and says where the mail goes on the server; `Err` means not stored.
    /// `key` was just looked up and is not stored yet.
    async fn deliver(
        &self,
        uidvalidity: u32,
        uid: u32,
        raw: Bytes,
        key: String,
    ) -> Result<Dest, ImapError> {
        let mut submission = Submission::new(self.source(uidvalidity, uid), Payload::Mail(raw));
        submission.idempotency_key = Some(crate::submission::IdempotencyKey::named(key));
        submission.idempotency_checked = true;
        let options = ParseOptions {
            form: None,
            keep_raw: self.config.keep_raw,
        };
        match self.pipeline.process(submission, options).await {
            Ok(stored) => {
                let outcome = if stored.already_stored {
                    "already_stored"
                } else {
                    "stored"
                };
                metrics::counter!("intake_imap_mails_total", "outcome" => outcome).increment(1);
                Ok(destination(&stored))
            }
            // Only an empty mail fails to parse: nothing to store, so it is
            // kept in the quarantine folder for a person to look at.
            Err(PipelineError::Parse(e)) => {
                metrics::counter!("intake_imap_mails_total", "outcome" => "unreadable")
                    .increment(1);
                tracing::warn!(mailbox = %self.label, uid, error = %e, folder = %self.config.quarantine_folder, "unreadable mail moved to the quarantine folder");
                Ok(Dest::Quarantine)
            }
            Err(e) => Err(ImapError::Store(e)),
        }
    }

    /// Records a mail over `max_size` by its headers in `quarantine` and
    /// sends it to the quarantine folder; its body is never downloaded.
    /// `true` when it was recorded before (read again after a failure).
    async fn set_aside_oversized(
        &self,
        uidvalidity: u32,
        uid: u32,
        size: u32,
        header: Bytes,
    ) -> Result<bool, ImapError> {
        let key = self.idempotency_key(uidvalidity, uid, &header);
        let mut submission = Submission::new(self.source(uidvalidity, uid), Payload::Mail(header));
        submission.idempotency_key = Some(crate::submission::IdempotencyKey::named(key));
        let reason = format!(
            "mail of {size} bytes is over imap.max_size ({}); not downloaded, moved to folder {}",
            self.config.max_size, self.config.quarantine_folder
        );
        let options = ParseOptions {
            form: None,
            keep_raw: self.config.keep_raw,
        };
        match self
            .pipeline
            .set_aside(submission, options, Stream::Quarantine, "oversize", reason)
            .await
        {
            Ok(stored) => {
                metrics::counter!("intake_imap_mails_total", "outcome" => "oversize").increment(1);
                tracing::warn!(mailbox = %self.label, uid, size, limit = %self.config.max_size, "mail over the size limit recorded in quarantine by its headers");
                Ok(stored.already_stored)
            }
            Err(PipelineError::Parse(e)) => {
                tracing::warn!(mailbox = %self.label, uid, error = %e, "oversized mail without readable headers moved to the quarantine folder");
                Ok(false)
            }
            Err(e) => Err(ImapError::Store(e)),
        }
    }

    fn source(&self, uidvalidity: u32, uid: u32) -> Source {
        Source::Imap {
            account: self.config.account().to_string(),
            mailbox: self.mailbox.clone(),
            uidvalidity,
            uid,
        }
    }

    /// (account, mailbox, UIDVALIDITY, UID, Message-ID): the same mail read
    /// again gets the same key; the Message-ID (hashed, to bound the key)
    /// guards against a server that reuses UIDs without changing
    /// UIDVALIDITY.
    fn idempotency_key(&self, uidvalidity: u32, uid: u32, raw: &[u8]) -> String {
        let message_id = fetch::message_id(raw).unwrap_or_default();
        let digest = sha2::Sha256::digest(message_id.as_bytes());
        let short: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        format!("imap:{}:{uidvalidity}:{uid}:{short}", self.label)
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

/// Which server folder a stored mail goes to: refused mail (virus, policy)
/// and mail routed to `quarantine` to the quarantine folder, the rest
/// (desk, suppressed, held) to the processed one.
fn destination(stored: &Stored) -> Dest {
    let refused = matches!(
        stored.answer,
        Answer::Refused(Refusal::Infected { .. } | Refusal::Policy)
    );
    if refused || stored.stream == Stream::Quarantine {
        Dest::Quarantine
    } else {
        Dest::Processed
    }
}

/// Splits `uids` into groups whose mails together stay within `budget`
/// bytes (a single larger mail makes a group of its own).
fn by_bytes(
    uids: &[u32],
    sizes: &std::collections::HashMap<u32, u32>,
    budget: u64,
) -> Vec<Vec<u32>> {
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
struct Backoff {
    attempt: u32,
    max: Duration,
}

impl Backoff {
    fn new(max: Duration) -> Self {
        Backoff { attempt: 0, max }
    }

    fn next(&mut self) -> Duration {
        let ceiling = Duration::from_secs(1)
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        ceiling
            .mul_f64(random_fraction())
            .max(Duration::from_millis(100))
    }

    fn reset(&mut self) {
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
async fn sleep_or_stop(wait: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        () = tokio::time::sleep(wait) => false,
        () = stop.cancelled() => true,
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "intake".into())
}

#[cfg(test)]
mod tests {
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
    fn batches_stay_within_the_byte_budget() {
        let sizes = [(1, 60), (2, 60), (3, 200), (4, 10)].into_iter().collect();
        assert_eq!(
            by_bytes(&[1, 2, 3, 4], &sizes, 100),
            vec![vec![1], vec![2], vec![3], vec![4]]
        );
        assert_eq!(by_bytes(&[1, 4], &sizes, 100), vec![vec![1, 4]]);
    }

    fn stored(stream: Stream, answer: Answer) -> Stored {
        Stored {
            id: crate::submission::ReceiptId::new(),
            stream,
            entry_id: "1-0".into(),
            already_stored: false,
            answer,
            kept: crate::pipeline::Kept::Whole,
        }
    }

    #[test]
    fn refused_and_quarantined_mail_goes_to_the_quarantine_folder() {
        let infected = Answer::Refused(Refusal::Infected {
            signatures: vec!["Test".into()],
        });
        assert_eq!(
            destination(&stored(Stream::Quarantine, infected)),
            Dest::Quarantine
        );
        assert_eq!(
            destination(&stored(Stream::Quarantine, Answer::Accepted)),
            Dest::Quarantine,
            "a rule's quarantine"
        );
        assert_eq!(
            destination(&stored(
                Stream::Suppressed,
                Answer::Refused(Refusal::Policy)
            )),
            Dest::Quarantine,
            "a blocklisted sender"
        );
        let limited = Answer::Refused(Refusal::RateLimited {
            retry_after: Duration::from_secs(60),
            policy: None,
        });
        assert_eq!(
            destination(&stored(Stream::Suppressed, limited)),
            Dest::Processed,
            "a throttled mail is recorded in suppressed; nobody to tell, nothing to keep apart"
        );
        assert_eq!(
            destination(&stored(Stream::Desk, Answer::Accepted)),
            Dest::Processed
        );
        assert_eq!(
            destination(&stored(Stream::Held, Answer::Accepted)),
            Dest::Processed
        );
    }

    #[test]
    fn jitter_is_spread() {
        let draws: HashSet<u64> = (0..20).map(|_| (random_fraction() * 1e9) as u64).collect();
        assert!(draws.len() > 15, "random draws differ: {draws:?}");
    }
}
