//! Hot reload: on SIGHUP, on `POST /v1/rules/reload` (admin listener) and
//! when a file in the rules folder changes (polled by modification time:
//! no watcher dependency, and it works on every filesystem). A set that
//! does not load is never applied: the old rules stay, and every problem
//! is logged and exported (`intake_rules_reload_failed`).

use crate::telemetry::events::emit;
use crate::telemetry::events::guard::{RulesReloadFailed, RulesReloaded};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use super::rules::{rule_files, LoadError, RuleSet};
use super::Guard;

/// What a successful reload loaded.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Reloaded {
    pub rules: usize,
    pub files: Vec<String>,
}

type Snapshot = Vec<(PathBuf, Option<SystemTime>, u64)>;

impl Guard {
    /// Reloads the rules folder; on failure the old rules stay.
    pub fn reload(&self, why: &str) -> Result<Reloaded, LoadError> {
        let Some(dir) = &self.inner.dir else {
            return Ok(Reloaded {
                rules: 0,
                files: vec![],
            });
        };
        match RuleSet::load_dir(dir) {
            Ok(set) => {
                let names: Vec<&str> = set.rules.iter().map(|r| r.name.as_str()).collect();
                self.inner.limiters.retain(&names);
                let report = Reloaded {
                    rules: set.rules.len(),
                    files: set.files.iter().map(|f| f.display().to_string()).collect(),
                };
                super::export_rule_count(&set);
                *self.inner.rules.write().expect("rules lock") = Arc::new(set);
                *self.inner.last_error.lock().expect("error lock") = None;
                emit(RulesReloaded {
                    why,
                    rules: report.rules,
                });
                Ok(report)
            }
            Err(error) => {
                emit(RulesReloadFailed);
                for problem in &error.0 {
                    tracing::error!(why, file = %problem.file.display(), line = problem.line, key = problem.key.as_deref(), "rule file rejected, old rules stay: {}", problem.message);
                }
                *self.inner.last_error.lock().expect("error lock") = Some(error.to_string());
                Err(error)
            }
        }
    }

    /// The problems of the last failed reload, if the last one failed.
    pub fn last_reload_error(&self) -> Option<String> {
        self.inner.last_error.lock().expect("error lock").clone()
    }

    /// Reloads on SIGHUP and on file changes, and evicts idle limiter
    /// keys, until `stop`.
    pub async fn watch(self, poll: Duration, stop: CancellationToken) {
        let Some(dir) = self.inner.dir.clone() else {
            return;
        };
        let snapshot = |dir: &PathBuf| -> Snapshot { rule_files(dir).unwrap_or_default() };
        let mut seen = snapshot(&dir);
        let mut tick = tokio::time::interval(poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        #[cfg(unix)]
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        loop {
            #[cfg(unix)]
            let hangup = async {
                match hup.as_mut() {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            #[cfg(not(unix))]
            let hangup = std::future::pending::<()>();
            tokio::select! {
                () = stop.cancelled() => return,
                () = hangup => {
                    seen = snapshot(&dir);
                    let _ = self.reload("SIGHUP");
                }
                _ = tick.tick() => {
                    self.housekeep();
                    let now = snapshot(&dir);
                    if now != seen {
                        seen = now;
                        let _ = self.reload("a rule file changed");
                    }
                }
            }
        }
    }
}
