//! What each delivery is doing, for `/readyz` and the admin `/status`:
//! `starting`, `delivering` (its last attempt was accepted, or it has had
//! nothing to do), `retrying` (its last attempt failed and will be tried
//! again) or `redis_down`. A delivery's trouble never makes the gateway
//! unready: items are still stored, and wait on the desk.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// The states of this process's deliveries, shared with the listeners.
#[derive(Debug, Clone, Default)]
pub struct Registry(Arc<Mutex<BTreeMap<String, &'static str>>>);

impl Registry {
    pub fn set(&self, delivery: &str, state: &'static str) {
        if let Ok(mut states) = self.0.lock() {
            states.insert(delivery.to_string(), state);
        }
    }

    /// Back to `delivering` after a step that reached Redis, unless the
    /// last attempt failed (`retrying` stays until one is accepted).
    pub fn reached_redis(&self, delivery: &str) {
        if let Ok(mut states) = self.0.lock() {
            let state = states.entry(delivery.to_string()).or_insert("delivering");
            if matches!(*state, "starting" | "redis_down") {
                *state = "delivering";
            }
        }
    }

    /// Every delivery and its state, by name.
    pub fn states(&self) -> BTreeMap<String, &'static str> {
        self.0.lock().map(|s| s.clone()).unwrap_or_default()
    }
}
