//! What each mailbox's task is doing, for `/readyz` and the admin
//! `GET /status`: working, mail stored but not acknowledged on the server,
//! or stopped because a folder it needs is missing. Each task writes its
//! own entry; the HTTP side reads a copy when asked.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

/// One mailbox's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Not yet logged in, or reconnecting after a failure.
    Connecting,
    /// Reading and acknowledging as it should.
    Working,
    /// Mail is stored but the server refuses to move or flag it: it stays
    /// in the mailbox and is retried at long intervals.
    Unacknowledged,
    /// A folder it needs does not exist and cannot be created: nothing is
    /// read until that is fixed.
    Stopped,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Connecting => "connecting",
            State::Working => "working",
            State::Unacknowledged => "unacknowledged",
            State::Stopped => "stopped",
        }
    }
}

/// A mailbox's entry.
#[derive(Debug, Clone)]
pub struct Entry {
    pub state: State,
    /// Mails stored but not acknowledged on the server, at the last try.
    pub unacknowledged: u64,
    /// Why it is not working (for the admin listener only).
    pub error: Option<String>,
}

/// Every mailbox's entry, by `account/mailbox`; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct ImapHealth(Arc<Mutex<BTreeMap<String, Entry>>>);

impl ImapHealth {
    /// Sets `label`'s entry and its `intake_imap_unacknowledged` gauge.
    pub fn set(&self, label: &str, state: State, unacknowledged: u64, error: Option<String>) {
        metrics::gauge!("intake_imap_unacknowledged", "mailbox" => label.to_string())
            .set(unacknowledged as f64);
        self.0.lock().unwrap_or_else(|e| e.into_inner()).insert(
            label.to_string(),
            Entry {
                state,
                unacknowledged,
                error,
            },
        );
    }

    /// `label`'s state, if it has an entry.
    pub fn state(&self, label: &str) -> Option<State> {
        self.snapshot().get(label).map(|e| e.state)
    }

    pub fn snapshot(&self) -> BTreeMap<String, Entry> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// `{"account/mailbox": "working", ...}`: states only, for `/readyz`.
    /// `None` without IMAP mailboxes.
    pub fn public(&self) -> Option<Value> {
        let all = self.snapshot();
        (!all.is_empty()).then(|| {
            Value::Object(
                all.into_iter()
                    .map(|(label, e)| (label, Value::from(e.state.name())))
                    .collect(),
            )
        })
    }

    /// The same with the count and the reason, for the admin listener.
    pub fn detailed(&self) -> Option<Value> {
        let all = self.snapshot();
        (!all.is_empty()).then(|| {
            Value::Object(
                all.into_iter()
                    .map(|(label, e)| {
                        (
                            label,
                            json!({
                                "state": e.state.name(),
                                "unacknowledged": e.unacknowledged,
                                "error": e.error,
                            }),
                        )
                    })
                    .collect(),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_names_states_and_admin_says_why() {
        let health = ImapHealth::default();
        assert_eq!(health.public(), None, "no mailboxes, no key");
        health.set("shop/INBOX", State::Working, 0, None);
        health.set(
            "shop/Sales",
            State::Unacknowledged,
            20,
            Some("UID MOVE refused".into()),
        );
        assert_eq!(
            health.public().unwrap(),
            json!({"shop/INBOX": "working", "shop/Sales": "unacknowledged"})
        );
        let detailed = health.detailed().unwrap();
        assert_eq!(detailed["shop/Sales"]["unacknowledged"], 20);
        assert_eq!(detailed["shop/Sales"]["error"], "UID MOVE refused");
        assert!(!health.public().unwrap().to_string().contains("refused"));
    }
}
