//! Stage 2, guard: the cheap abuse checks (rate limits, flood collapse,
//! dedupe, loops, allow and block lists) that run before the expensive
//! scan, so a flood never reaches clamd.
//!
//! Today the guard knows one trap, the form honeypot; the rule engine plugs
//! in behind [`Guard::check`] without its callers changing.

use crate::parse::Message;
use crate::verdict::GuardVerdict;

/// Why the guard could not decide (its shared state in Redis was
/// unreachable, say). Not a verdict: the pipeline answers "retry later".
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error("the rate-limit store is unavailable")]
    StoreUnavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// The abuse checks.
#[derive(Debug, Default)]
pub struct Guard {}

impl Guard {
    /// A guard with no rules: every item passes except bot traps.
    pub fn without_rules() -> Self {
        Guard {}
    }

    /// Decides what happens to one message. Entry point of this stage.
    pub async fn check(&self, message: &Message) -> Result<GuardVerdict, GuardError> {
        if let Some(trap) = &message.trap {
            return Ok(GuardVerdict::Trap {
                reason: trap.clone(),
            });
        }
        Ok(GuardVerdict::Pass)
    }
}
