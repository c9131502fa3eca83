//! Stage 3, scan: the virus scanner sees the raw message and every decoded
//! attachment or upload before anything reaches the desk.
//!
//! Scanning is switched off until the clamd scanner lands behind
//! [`Scanner::scan`]; items then carry `scan.status = "unscanned"` so the
//! desk can tell.

use crate::parse::Message;
use crate::verdict::ScanVerdict;

/// Why the scanner could not decide (clamd down, timed out). Not a
/// verdict: such items are held, never passed on unscanned.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("the virus scanner is unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// The virus scanner.
#[derive(Debug, Default)]
pub struct Scanner {}

impl Scanner {
    /// No scanning: every item passes as `unscanned`.
    pub fn disabled() -> Self {
        Scanner {}
    }

    /// Scans one message. Entry point of this stage.
    pub async fn scan(&self, _message: &Message) -> Result<ScanVerdict, ScanError> {
        Ok(ScanVerdict::Unscanned {
            reason: "virus scanning is not configured".into(),
        })
    }
}
