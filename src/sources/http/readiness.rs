//! What the gateway says about the parts an item needs (Redis, the rules,
//! the scanner), in two depths: `/readyz` on the public listener names each
//! part and its state and nothing more; `GET /status` on the admin listener
//! adds what an operator needs (clamd's address and engine, failure texts,
//! the rule counts and the last reload's error). A public client never
//! learns an address, a version or an internal error from it.

use http::StatusCode;
use serde_json::{json, Value};

use crate::guard::Guard;
use crate::scan::{Scanner, ScannerState};
use crate::sink::Sink;

/// One look at the parts, taken when asked.
#[derive(Debug, Clone)]
pub struct Health {
    /// Redis answered a PING, or why not.
    pub redis: Result<(), String>,
    pub rules_loaded: usize,
    pub rule_files: usize,
    /// The last reload's problems; the previous rules stay in force.
    pub last_reload_error: Option<String>,
    pub scanner: ScannerState,
    /// clamd's address, engine and signatures, for the admin answer.
    pub scanner_details: Value,
    /// Each IMAP mailbox's state. A mailbox that is stopped or cannot
    /// acknowledge is named here but does not make the gateway unready:
    /// items from every other source are still stored.
    pub imap: crate::sources::imap::ImapHealth,
    /// Each delivery worker's state (`starting`, `delivering`, `retrying`,
    /// `redis_down`); a delivery in trouble does not make the gateway
    /// unready: items wait on the desk.
    pub deliveries: std::collections::BTreeMap<String, &'static str>,
}

impl Health {
    /// Pings Redis (bounded by `redis.timeout`) and reads the rest.
    pub async fn check(
        sink: &dyn Sink,
        guard: &Guard,
        scanner: &Scanner,
        deliveries: &crate::delivery::Registry,
    ) -> Health {
        let redis = sink.ping().await.map_err(|e| e.to_string());
        crate::telemetry::events::emit(crate::telemetry::events::http::RedisUp {
            up: redis.is_ok(),
        });
        let rules = guard.rules();
        Health {
            redis,
            rules_loaded: rules.rules.len(),
            rule_files: rules.files.len(),
            last_reload_error: guard.last_reload_error(),
            scanner: scanner.state(),
            scanner_details: scanner.report(),
            imap: Default::default(),
            deliveries: deliveries.states(),
        }
    }

    /// Adds the IMAP mailboxes' states.
    pub fn with_imap(mut self, imap: &crate::sources::imap::ImapHealth) -> Health {
        self.imap = imap.clone();
        self
    }

    /// Ready when an item could be stored now: Redis answers. A dead
    /// scanner does not make the gateway unready: items are held and
    /// re-scanned later, never lost.
    pub fn ready(&self) -> bool {
        self.redis.is_ok()
    }

    /// 200 when ready, else 503.
    pub fn status_code(&self) -> StatusCode {
        if self.ready() {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        }
    }

    fn status(&self) -> &'static str {
        if self.ready() {
            "ready"
        } else {
            "not_ready"
        }
    }

    fn redis_state(&self) -> &'static str {
        if self.redis.is_ok() {
            "up"
        } else {
            "down"
        }
    }

    fn rules_state(&self) -> &'static str {
        if self.last_reload_error.is_some() {
            "reload_failed"
        } else {
            "loaded"
        }
    }

    /// The `/readyz` body: names and states only.
    pub fn public(&self) -> Value {
        let mut body = json!({
            "status": self.status(),
            "redis": self.redis_state(),
            "rules": self.rules_state(),
            "scanner": self.scanner.name(),
        });
        if let Some(imap) = self.imap.public() {
            body["imap"] = imap;
        }
        if !self.deliveries.is_empty() {
            body["deliveries"] = json!(self.deliveries);
        }
        body
    }

    /// The admin `GET /status` body: the same states with their details.
    pub fn detailed(&self) -> Value {
        let mut body = json!({
            "status": self.status(),
            "redis": {
                "state": self.redis_state(),
                "error": self.redis.as_ref().err(),
            },
            "rules": {
                "state": self.rules_state(),
                "loaded": self.rules_loaded,
                "files": self.rule_files,
                "last_reload_error": self.last_reload_error,
            },
            "scanner": self.scanner_details,
            "deliveries": self.deliveries,
        });
        if let Some(imap) = self.imap.detailed() {
            body["imap"] = imap;
        }
        body
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::memory::MemorySink;

    #[tokio::test]
    async fn the_public_answer_names_states_only_and_the_admin_one_says_why() {
        let sink = MemorySink::default();
        sink.set_down(true);
        let scanner = Scanner::from_config(Some(
            &toml::from_str("clamd = \"tcp://10.1.2.3:3310\"").unwrap(),
        ))
        .unwrap();
        let health = Health::check(
            &sink,
            &Guard::without_rules(),
            &scanner,
            &crate::delivery::Registry::default(),
        )
        .await;
        assert_eq!(health.status_code(), StatusCode::SERVICE_UNAVAILABLE);
        let public = health.public();
        assert_eq!(
            public,
            json!({"status": "not_ready", "redis": "down", "rules": "loaded", "scanner": "unknown"}),
            "names and states only"
        );
        let detailed = health.detailed();
        assert_eq!(detailed["redis"]["state"], "down");
        assert!(
            detailed["redis"]["error"].is_string(),
            "the admin answer says why: {detailed}"
        );
        assert_eq!(detailed["scanner"]["clamd"], "tcp://10.1.2.3:3310");
        assert!(
            !public.to_string().contains("10.1.2.3"),
            "no address in public"
        );
    }
}
