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
//!
//! | file | job |
//! | --- | --- |
//! | `config.rs` | the `[[imap]]` tables |
//! | `worker.rs` | one mailbox's task: the lease, and sessions one after another with backoff |
//! | `session.rs` | one connection: SELECT, where to resume, IDLE or polling |
//! | `read.rs` | the backlog batch by batch, each one read while the one before is settled |
//! | `deliver.rs` | one mail through the pipeline, and which folder it goes to |
//! | `settle.rs` | a stored batch acknowledged on the server, then the checkpoint |
//! | `connect.rs` | TCP, TLS and login |
//! | `folders.rs` | folder names as the server spells them (NAMESPACE, `\\Junk`) |
//! | `prepare.rs` | the folders resolved, checked and created at session start |
//! | `health.rs` | each mailbox's state, for `/readyz` |
//! | `fetch.rs` | the batched UID commands |
//! | `recover.rs` | finishing a move the server did not finish |
//! | `store.rs` | lease and checkpoint in Redis |
//! | `error.rs` | what can go wrong, as metric kinds |

pub mod config;
mod connect;
mod deliver;
mod error;
mod fetch;
mod folders;
pub mod health;
mod prepare;
mod read;
mod recover;
mod session;
mod settle;
mod store;
mod worker;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::pipeline::Pipeline;
use crate::redis_connection::RedisConnection;
pub use config::ImapConfig;
pub use error::ImapError;
use folders::Folders;
pub use health::ImapHealth;
use store::MailboxStore;

/// The IMAP source, ready to run: every mailbox of every account.
pub struct ImapSource {
    workers: Vec<Worker>,
    health: ImapHealth,
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
        let owner = format!("{}:{}", worker::hostname(), ulid::Ulid::new());
        let mut workers = Vec::new();
        let health = ImapHealth::default();
        for account in accounts {
            let tls = connect::tls_config(account.ca_file.as_deref())?;
            let config = Arc::new(account.clone());
            for mailbox in &account.mailboxes {
                let label = format!("{}/{}", account.account(), mailbox);
                health.set(&label, health::State::Connecting, 0, None);
                workers.push(Worker {
                    config: config.clone(),
                    tls: tls.clone(),
                    mailbox: mailbox.clone(),
                    folders: Mutex::new(Arc::new(Folders::configured(
                        mailbox,
                        &account.processed_folder,
                        &account.quarantine_folder,
                    ))),
                    health: health.clone(),
                    label,
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
        Ok(ImapSource { workers, health })
    }

    pub fn mailboxes(&self) -> usize {
        self.workers.len()
    }

    /// Each mailbox's state, for `/readyz` and the admin `GET /status`.
    pub fn health(&self) -> ImapHealth {
        self.health.clone()
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

/// One mailbox of one account. Its steps are spread over the files of
/// this module, one `impl` block each (see the table above).
struct Worker {
    config: Arc<ImapConfig>,
    tls: Arc<rustls::ClientConfig>,
    /// The mailbox as configured (the name in keys and labels).
    mailbox: String,
    /// The mailbox and its folders as the server names them, resolved at
    /// every session start (see `folders.rs`).
    folders: Mutex<Arc<Folders>>,
    /// Where this mailbox's state is shown (`/readyz`).
    health: ImapHealth,
    /// `account/mailbox`: the name in logs and the metric label.
    label: String,
    pipeline: Arc<Pipeline>,
    store: MailboxStore,
}

impl Worker {
    /// The names resolved at the last session start.
    fn folders(&self) -> Arc<Folders> {
        self.folders
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// `Some(repeats left out)` when a line about `topic` (`session`,
    /// `store`, ...) for this mailbox may be logged now: during an outage
    /// the same failure comes back at every retry, and one line a minute
    /// says enough.
    fn log_now(&self, topic: &str) -> Option<u64> {
        crate::telemetry::log_limit::errors().check(&format!("imap-{topic}:{}", self.label))
    }
}

/// Where an acknowledged mail goes on the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dest {
    Processed,
    Quarantine,
}
