//! Stage 3, scan: clamd sees the raw message and every decoded attachment
//! or upload before anything reaches the desk.
//!
//! Guarantees: at most `max_concurrent` scans run at once and at most
//! `queue_limit` wait; every scan is bounded by `timeout`; a blob above
//! `max_size` is never sent but gets the oversize policy. Archives are
//! checked first ([`archive`]): an item with one beyond the archive limits
//! is `unscannable` and nothing of it is sent. When clamd cannot answer
//! the scan is an error, never a pass: the pipeline holds the item in
//! `intake:held`, and the pipeline's `held::Redrive` re-scans it when clamd is back.

pub mod archive;
pub mod clamd;
pub mod config;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures_util::future::try_join_all;
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::parse::{Message, ScanTarget};
use crate::telemetry::events::emit;
use crate::telemetry::events::scan::{
    ArchiveBeyond, ArchiveChecked, ClamavVersion, Scanned, ScannerDown, ScannerUp,
};
use crate::verdict::ScanVerdict;
use clamd::{ClamVersion, Clamd, ClamdAddress, ClamdError, Reply};
pub use config::{OversizePolicy, ScanConfig};

/// The tag a `pass-with-tag` item carries to the desk.
pub const OVERSIZE_TAG: &str = "unscanned:oversize";

/// How long past `scan.timeout` an archive check is waited for before it
/// is taken for failed (it stops itself at `scan.timeout`).
const ARCHIVE_GRACE: Duration = Duration::from_secs(5);

/// Why the scanner could not decide (clamd down, timed out, too busy).
/// Not a verdict: such items are held, never passed on unscanned.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("the virus scanner is unavailable")]
    Unavailable(#[source] ClamdError),
    #[error("the virus scanner is busy ({queue_limit} scans already waiting)")]
    Busy { queue_limit: usize },
    #[error("no scan slot came free within {0:?}")]
    QueueTimeout(Duration),
}

/// What `/readyz` and the metrics say about the scanner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScannerState {
    /// No `[scan]` section, or `enabled = false`.
    Disabled,
    /// Not checked yet.
    Unknown,
    Up,
    /// Down, and why (for the admin listener and the logs only).
    Down(String),
}

impl ScannerState {
    /// The state's name, all the public `/readyz` says.
    pub fn name(&self) -> &'static str {
        match self {
            ScannerState::Disabled => "disabled",
            ScannerState::Unknown => "unknown",
            ScannerState::Up => "up",
            ScannerState::Down(_) => "down",
        }
    }
}

/// The virus scanner: cheap to clone, shared by the pipeline and the
/// re-drive task.
#[derive(Debug, Clone, Default)]
pub struct Scanner {
    inner: Option<Arc<Inner>>,
}

#[derive(Debug)]
struct Inner {
    clamd: Clamd,
    /// One permit per concurrent scan: clamd has a fixed number of
    /// threads, and more connections only queue inside it, out of sight.
    permits: Semaphore,
    /// Scans waiting for a permit, bounded by `queue_limit`.
    waiting: AtomicUsize,
    queue_limit: usize,
    /// Bound on the wait for a permit (the scan itself is bounded by the
    /// client's timeout).
    timeout: Duration,
    max_size: usize,
    oversize: OversizePolicy,
    /// The archive limits (without a deadline: each check sets its own).
    archives: archive::Limits,
    state: RwLock<Health>,
}

#[derive(Debug)]
struct Health {
    state: ScannerState,
    version: Option<ClamVersion>,
}

impl Scanner {
    /// No scanning: every item passes as `unscanned`.
    pub fn disabled() -> Self {
        Scanner { inner: None }
    }

    /// A scanner for `config` (already validated); `None` or
    /// `enabled = false` gives [`Scanner::disabled`].
    pub fn from_config(config: Option<&ScanConfig>) -> Result<Self, String> {
        let Some(config) = config.filter(|c| c.enabled) else {
            return Ok(Scanner::disabled());
        };
        let address: ClamdAddress = config.clamd.parse()?;
        Ok(Scanner {
            inner: Some(Arc::new(Inner {
                clamd: Clamd::new(address, config.timeout.into()),
                permits: Semaphore::new(config.max_concurrent),
                waiting: AtomicUsize::new(0),
                queue_limit: config.queue_limit,
                timeout: config.timeout.into(),
                max_size: config.max_size.as_usize(),
                oversize: config.oversize,
                archives: config.archive_limits(None),
                state: RwLock::new(Health {
                    state: ScannerState::Unknown,
                    version: None,
                }),
            })),
        })
    }

    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    pub fn state(&self) -> ScannerState {
        match &self.inner {
            None => ScannerState::Disabled,
            Some(inner) => inner.health().state.clone(),
        }
    }

    /// The engine name for envelopes (`ClamAV 1.4.6`), once known.
    pub fn engine(&self) -> Option<String> {
        self.inner
            .as_ref()
            .and_then(|i| i.health().version.as_ref().map(|v| v.engine.clone()))
    }

    /// The scanner's state with its details (clamd's address, engine,
    /// signatures, why it is down), for the admin listener's `GET /status`;
    /// never for a public answer.
    pub fn report(&self) -> serde_json::Value {
        let Some(inner) = &self.inner else {
            return serde_json::json!({ "state": ScannerState::Disabled.name() });
        };
        let health = inner.health();
        let error = match &health.state {
            ScannerState::Down(why) => Some(why.clone()),
            _ => None,
        };
        serde_json::json!({
            "state": health.state.name(),
            "error": error,
            "clamd": inner.clamd.address().to_string(),
            "engine": health.version.as_ref().map(|v| v.engine.clone()),
            "signatures": health.version.as_ref().and_then(|v| v.database.clone()),
            "signature_date": health.version.as_ref().and_then(|v| v.signature_date.clone()),
        })
    }

    /// Scans one message. Entry point of this stage.
    pub async fn scan(&self, message: &Message) -> Result<ScanVerdict, ScanError> {
        self.scan_targets(&message.scan_targets).await
    }

    /// Checks the archives among the targets, then scans every target
    /// (concurrently, within the pool's bound) and combines the results:
    /// an archive beyond its limits makes the item unscannable, whatever
    /// the oversize policy, and nothing is sent to clamd (a bomb is not a
    /// large file to let through tagged); else any signature makes it
    /// infected; else any part beyond the limits gets the oversize policy;
    /// else clean.
    pub async fn scan_targets(&self, targets: &[ScanTarget]) -> Result<ScanVerdict, ScanError> {
        let Some(inner) = &self.inner else {
            return Ok(ScanVerdict::Unscanned {
                reason: "virus scanning is not configured".into(),
            });
        };
        let engine = self.engine().unwrap_or_else(|| "ClamAV".to_string());
        if let Some(beyond) = inner.check_archives(targets).await? {
            return Ok(ScanVerdict::Unscannable {
                engine,
                reason: beyond.to_string(),
            });
        }
        let outcomes = try_join_all(targets.iter().map(|t| inner.scan_one(t))).await?;
        let mut signatures: Vec<String> = Vec::new();
        let mut oversize: Vec<String> = Vec::new();
        for (target, outcome) in targets.iter().zip(outcomes) {
            match outcome {
                Reply::Clean => {}
                Reply::Found(signature) => {
                    if !signatures.contains(&signature) {
                        signatures.push(signature);
                    }
                }
                Reply::LimitExceeded(why) => oversize.push(format!("{}: {why}", target.name)),
            }
        }
        if !signatures.is_empty() {
            return Ok(ScanVerdict::Infected { engine, signatures });
        }
        if !oversize.is_empty() {
            let reason = format!("too large to scan ({})", oversize.join("; "));
            return Ok(match inner.oversize {
                OversizePolicy::Quarantine => ScanVerdict::Unscannable { engine, reason },
                OversizePolicy::PassWithTag => ScanVerdict::PassedUnscanned {
                    engine,
                    reason,
                    tag: OVERSIZE_TAG.to_string(),
                },
            });
        }
        Ok(ScanVerdict::Clean { engine })
    }

    /// Asks clamd whether it is up and records the answer; on the way up,
    /// reads and logs its version and signature date. Called by the
    /// re-drive task on every tick.
    pub async fn check(&self) -> ScannerState {
        let Some(inner) = &self.inner else {
            return ScannerState::Disabled;
        };
        match inner.clamd.ping().await {
            Ok(()) => {
                let was_up = inner.health().state == ScannerState::Up;
                if !was_up || inner.health().version.is_none() {
                    match inner.clamd.version().await {
                        Ok(version) => inner.set_version(version),
                        Err(e) => tracing::warn!(error = %e, "clamd answered PING but not VERSION"),
                    }
                }
                inner.set_up();
            }
            Err(e) => inner.set_down(&e),
        }
        inner.health().state.clone()
    }
}

impl Inner {
    fn health(&self) -> std::sync::RwLockReadGuard<'_, Health> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn health_mut(&self) -> std::sync::RwLockWriteGuard<'_, Health> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    fn set_up(&self) {
        let mut health = self.health_mut();
        emit(ScannerUp {
            clamd: &self.clamd.address(),
            was_down: health.state != ScannerState::Up,
        });
        health.state = ScannerState::Up;
    }

    fn set_down(&self, error: &ClamdError) {
        let mut health = self.health_mut();
        let down = ScannerState::Down(error.to_string());
        emit(ScannerDown {
            clamd: &self.clamd.address(),
            error,
            cause: std::error::Error::source(error).map(ToString::to_string),
            changed: health.state != down,
        });
        health.state = down;
    }

    fn set_version(&self, version: ClamVersion) {
        emit(ClamavVersion {
            engine: &version.engine,
            signatures: version.database.as_deref().unwrap_or("unknown"),
            signature_date: version.signature_date.as_deref().unwrap_or("unknown"),
        });
        self.health_mut().version = Some(version);
    }

    /// Reads every archive among `targets` against the archive limits, in
    /// a blocking thread and under a scan slot: inflating is CPU work, and
    /// bounded like a scan. The first archive beyond a limit is returned.
    async fn check_archives(
        &self,
        targets: &[ScanTarget],
    ) -> Result<Option<archive::Beyond>, ScanError> {
        let archives: Vec<(String, bytes::Bytes)> = targets
            .iter()
            .filter(|t| archive::is_archive(&t.data))
            .map(|t| (t.name.clone(), t.data.clone()))
            .collect();
        let Some((first, _)) = archives.first() else {
            return Ok(None);
        };
        let first = first.clone();
        let _permit = self.permit().await.inspect_err(|_| {
            emit(ArchiveChecked {
                result: "busy",
                took: None,
            });
        })?;
        let started = Instant::now();
        let mut limits = self.archives.clone();
        limits.deadline = Some(started + self.timeout);
        let check = tokio::task::spawn_blocking(move || {
            archives
                .iter()
                .try_for_each(|(name, data)| archive::inspect(name, data, &limits).map(drop))
        });
        // The check stops itself at its deadline; this bound is for a
        // check that does not (a bug), and fails closed like one.
        let outcome = match tokio::time::timeout(self.timeout + ARCHIVE_GRACE, check).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) | Err(_) => {
                tracing::error!(archive = %first, "the archive check failed; the item is quarantined unscanned");
                Err(archive::Beyond {
                    path: first,
                    problem: archive::Problem::Malformed("the archive check failed".into()),
                })
            }
        };
        emit(ArchiveChecked {
            result: match &outcome {
                Ok(()) => "within",
                Err(beyond) => beyond.problem.label(),
            },
            took: Some(started.elapsed()),
        });
        match outcome {
            Ok(()) => Ok(None),
            Err(beyond) => {
                emit(ArchiveBeyond {
                    archive: &beyond.path,
                    limit: beyond.problem.label(),
                    reason: &beyond,
                });
                Ok(Some(beyond))
            }
        }
    }

    /// One blob through the pool to clamd; the size policy applies before
    /// anything is sent.
    async fn scan_one(&self, target: &ScanTarget) -> Result<Reply, ScanError> {
        if target.data.len() > self.max_size {
            emit(Scanned {
                result: "oversize",
                took: None,
            });
            return Ok(Reply::LimitExceeded(format!(
                "{} bytes, above scan.max_size ({} bytes)",
                target.data.len(),
                self.max_size
            )));
        }
        let _permit = self.permit().await.inspect_err(|_| {
            emit(Scanned {
                result: "busy",
                took: None,
            });
        })?;
        let started = Instant::now();
        let result = self.clamd.scan(&target.data).await;
        emit(Scanned {
            result: match &result {
                Ok(Reply::Clean) => "clean",
                Ok(Reply::Found(_)) => "infected",
                Ok(Reply::LimitExceeded(_)) => "oversize",
                Err(ClamdError::Timeout(_)) => "timeout",
                Err(_) => "error",
            },
            took: Some(started.elapsed()),
        });
        match result {
            Ok(reply) => {
                if self.health().state != ScannerState::Up {
                    self.set_up();
                }
                Ok(reply)
            }
            Err(e) => {
                if e.is_down() {
                    self.set_down(&e);
                }
                Err(ScanError::Unavailable(e))
            }
        }
    }

    /// A scan slot, or an error when too many scans wait already or none
    /// frees up in time.
    async fn permit(&self) -> Result<SemaphorePermit<'_>, ScanError> {
        if let Ok(permit) = self.permits.try_acquire() {
            return Ok(permit);
        }
        let queued = Queued::enter(&self.waiting);
        if queued.position >= self.queue_limit {
            return Err(ScanError::Busy {
                queue_limit: self.queue_limit,
            });
        }
        match tokio::time::timeout(self.timeout, self.permits.acquire()).await {
            Ok(Ok(permit)) => Ok(permit),
            // The semaphore is never closed; treat it like a timeout.
            Ok(Err(_)) | Err(_) => Err(ScanError::QueueTimeout(self.timeout)),
        }
    }
}

/// A place in the wait queue, given back when dropped (also on cancel).
struct Queued<'a> {
    counter: &'a AtomicUsize,
    position: usize,
}

impl<'a> Queued<'a> {
    fn enter(counter: &'a AtomicUsize) -> Self {
        let position = counter.fetch_add(1, Ordering::SeqCst);
        Queued { counter, position }
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.counter.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What there is to scan in a stored envelope (a held or quarantined
/// entry read back): the raw message when the entry carries it (mail),
/// and every attachment or upload.
pub fn envelope_targets(envelope: &crate::envelope::Envelope) -> Vec<ScanTarget> {
    let mut targets = Vec::with_capacity(envelope.attachments.len() + 1);
    if let Some(raw) = &envelope.raw {
        targets.push(ScanTarget {
            name: "message".into(),
            data: raw.bytes().clone(),
            whole_message: true,
        });
    }
    for (i, attachment) in envelope.attachments.iter().enumerate() {
        targets.push(ScanTarget {
            name: attachment
                .filename
                .clone()
                .unwrap_or_else(|| format!("part {}", i + 1)),
            data: attachment.content_base64.bytes().clone(),
            whole_message: false,
        });
    }
    targets
}

/// Prepares a message for `intake:held`: the envelope must carry what the
/// re-scan needs. Attachments and uploads are already in it
/// (`content_base64`); the raw message is added even when
/// `messages.keep_raw = false` (the re-drive takes it out again before the
/// item goes on), because parts the parser did not surface live only there.
pub fn prepare_for_hold(message: &mut Message) {
    if message.envelope.raw.is_none() {
        if let Some(raw) = message.scan_targets.iter().find(|t| t.whole_message) {
            message.envelope.raw = Some(crate::envelope::Base64(raw.data.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn scanner(max_size: &str, oversize: &str) -> Scanner {
        let config: ScanConfig = toml::from_str(&format!(
            "clamd = \"tcp://127.0.0.1:1\"\nmax_size = \"{max_size}\"\noversize = \"{oversize}\"\ntimeout = \"1s\""
        ))
        .unwrap();
        Scanner::from_config(Some(&config)).unwrap()
    }

    fn target(len: usize) -> ScanTarget {
        ScanTarget {
            name: "big.bin".into(),
            data: Bytes::from(vec![b'a'; len]),
            whole_message: false,
        }
    }

    #[tokio::test]
    async fn oversize_parts_get_the_policy_without_reaching_clamd() {
        // Port 1 refuses connections: an attempt to scan would be an error.
        let verdict = scanner("100B", "quarantine")
            .scan_targets(&[target(101)])
            .await
            .expect("oversize is a verdict, not an error");
        assert!(
            matches!(verdict, ScanVerdict::Unscannable { ref reason, .. } if reason.contains("max_size")),
            "quarantine policy: {verdict:?}"
        );
        let verdict = scanner("100B", "pass-with-tag")
            .scan_targets(&[target(101)])
            .await
            .unwrap();
        assert!(
            matches!(verdict, ScanVerdict::PassedUnscanned { ref tag, .. } if tag == OVERSIZE_TAG),
            "pass-with-tag policy: {verdict:?}"
        );
    }

    /// A zip of one deflated entry that declares `size` bytes (its data is
    /// no stream at all: the declared size is judged first).
    fn zip_declaring(size: u32) -> Vec<u8> {
        let name = b"zeros.bin";
        let fields = |out: &mut Vec<u8>| {
            out.extend_from_slice(&20u16.to_le_bytes());
            out.extend_from_slice(&0u16.to_le_bytes());
            out.extend_from_slice(&8u16.to_le_bytes());
            out.extend_from_slice(&[0; 8]);
            out.extend_from_slice(&16u32.to_le_bytes());
            out.extend_from_slice(&size.to_le_bytes());
            out.extend_from_slice(&(name.len() as u16).to_le_bytes());
            out.extend_from_slice(&0u16.to_le_bytes());
        };
        let mut zip = b"PK\x03\x04".to_vec();
        fields(&mut zip);
        zip.extend_from_slice(name);
        zip.extend_from_slice(&[0xff; 16]);
        let start = zip.len() as u32;
        zip.extend_from_slice(b"PK\x01\x02\x14\x00");
        fields(&mut zip);
        zip.extend_from_slice(&[0; 14]);
        zip.extend_from_slice(name);
        let len = zip.len() as u32 - start;
        zip.extend_from_slice(b"PK\x05\x06\0\0\0\0\x01\0\x01\0");
        zip.extend_from_slice(&len.to_le_bytes());
        zip.extend_from_slice(&start.to_le_bytes());
        zip.extend_from_slice(&[0, 0]);
        zip
    }

    #[tokio::test]
    async fn an_archive_beyond_a_limit_is_unscannable_without_reaching_clamd() {
        // Port 1 refuses connections: a scan sent there would be an error
        // and mark the scanner down. pass-with-tag lets oversize parts
        // through; a bomb is quarantined all the same.
        let scanner = scanner("25MB", "pass-with-tag");
        let bomb = ScanTarget {
            name: "photos.zip".into(),
            data: Bytes::from(zip_declaring(1 << 30)),
            whole_message: false,
        };
        let verdict = scanner
            .scan_targets(&[target(10), bomb])
            .await
            .expect("a bomb is a verdict, not an error");
        match verdict {
            ScanVerdict::Unscannable { reason, .. } => assert!(
                reason.contains("photos.zip") && reason.contains("scan.archive_max_expanded"),
                "the reason names the archive and the limit: {reason}"
            ),
            other => panic!("a bomb is unscannable whatever the policy: {other:?}"),
        }
        assert_eq!(
            scanner.state(),
            ScannerState::Unknown,
            "nothing of the item was sent to clamd"
        );
    }

    #[tokio::test]
    async fn unreachable_clamd_is_an_error_never_a_pass() {
        let scanner = scanner("1MB", "quarantine");
        let result = scanner.scan_targets(&[target(10)]).await;
        assert!(
            matches!(result, Err(ScanError::Unavailable(_))),
            "must fail closed: {result:?}"
        );
        assert!(matches!(scanner.state(), ScannerState::Down(_)));
    }

    #[tokio::test]
    async fn a_full_queue_refuses_instead_of_growing() {
        let config: ScanConfig = toml::from_str(
            "clamd = \"tcp://127.0.0.1:1\"\nmax_concurrent = 1\nqueue_limit = 0\ntimeout = \"1s\"",
        )
        .unwrap();
        let scanner = Scanner::from_config(Some(&config)).unwrap();
        let inner = scanner.inner.as_ref().unwrap();
        let _held = inner.permits.try_acquire().unwrap();
        let result = inner.scan_one(&target(10)).await;
        assert!(
            matches!(result, Err(ScanError::Busy { queue_limit: 0 })),
            "no room to wait: {result:?}"
        );
        assert_eq!(
            inner.waiting.load(Ordering::SeqCst),
            0,
            "queue place given back"
        );
    }
}
