//! The guard's one error type, in a file of its own so that everything in
//! the guard that talks to Redis (the store, the limiters, dedupe) can
//! name it without importing the guard's entry point, which imports them.

use std::time::Duration;

/// Why the guard could not decide (its shared state in Redis was
/// unreachable, say). Not a verdict: the pipeline answers "retry later".
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error("the rate-limit store is unavailable")]
    StoreUnavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("the rate-limit store did not answer within {0:?}")]
    StoreTimeout(Duration),
}
