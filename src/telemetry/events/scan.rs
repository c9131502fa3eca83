//! Events of the virus scanner and of the memory budget the listeners
//! share: scans, archive checks, clamd up and down, bodies waiting.

use std::fmt::Display;
use std::time::Duration;

use super::{log_now, Event};

/// One blob scanned, by result (`clean`, `infected`, `oversize`,
/// `timeout`, `error`, `busy`); `took` when clamd was asked.
pub struct Scanned {
    pub result: &'static str,
    pub took: Option<Duration>,
}

impl Event for Scanned {
    fn emit(self) {
        if let Some(took) = self.took {
            metrics::histogram!("intake_scan_duration_seconds").record(took.as_secs_f64());
        }
        metrics::counter!("intake_scans_total", "result" => self.result).increment(1);
    }
}

/// One archive checked against the `scan.archive_*` limits, by result.
pub struct ArchiveChecked {
    pub result: &'static str,
    pub took: Option<Duration>,
}

impl Event for ArchiveChecked {
    fn emit(self) {
        if let Some(took) = self.took {
            metrics::histogram!("intake_archive_check_duration_seconds").record(took.as_secs_f64());
        }
        metrics::counter!("intake_archive_checks_total", "result" => self.result).increment(1);
    }
}

/// An archive beyond a limit: the item is quarantined unscanned.
pub struct ArchiveBeyond<'a> {
    pub archive: &'a dyn Display,
    pub limit: &'static str,
    pub reason: &'a dyn Display,
}

impl Event for ArchiveBeyond<'_> {
    fn emit(self) {
        if let Some(suppressed) = log_now("archive-beyond") {
            tracing::warn!(
                archive = %self.archive,
                limit = self.limit,
                reason = %self.reason,
                suppressed,
                "archive beyond a limit: the item is quarantined unscanned, clamd never sees it"
            );
        }
    }
}

/// clamd answered after being down (or for the first time).
pub struct ScannerUp<'a> {
    pub clamd: &'a dyn Display,
    /// Whether it was down before (logged only then).
    pub was_down: bool,
}

impl Event for ScannerUp<'_> {
    fn emit(self) {
        if self.was_down {
            tracing::info!(clamd = %self.clamd, "virus scanner is up");
        }
        metrics::gauge!("intake_scanner_up").set(1.0);
    }
}

/// clamd did not answer; logged when the reason changes.
pub struct ScannerDown<'a> {
    pub clamd: &'a dyn Display,
    pub error: &'a dyn Display,
    pub cause: Option<String>,
    pub changed: bool,
}

impl Event for ScannerDown<'_> {
    fn emit(self) {
        if self.changed {
            tracing::warn!(
                clamd = %self.clamd,
                error = %self.error,
                cause = ?self.cause,
                "virus scanner is down; items are held until it is back"
            );
        }
        metrics::gauge!("intake_scanner_up").set(0.0);
    }
}

/// The ClamAV engine and signatures clamd reported.
pub struct ClamavVersion<'a> {
    pub engine: &'a str,
    pub signatures: &'a str,
    pub signature_date: &'a str,
}

impl Event for ClamavVersion<'_> {
    fn emit(self) {
        tracing::info!(
            engine = self.engine,
            signatures = self.signatures,
            signature_date = self.signature_date,
            "ClamAV version"
        );
        metrics::gauge!(
            "intake_clamav_info",
            "engine" => self.engine.to_string(),
            "signatures" => self.signatures.to_string(),
            "signature_date" => self.signature_date.to_string()
        )
        .set(1.0);
    }
}

/// A body waits for room in the memory budget.
pub struct BodyWaits {
    pub source: &'static str,
    pub bytes: u64,
    pub in_flight: u64,
}

impl Event for BodyWaits {
    fn emit(self) {
        metrics::counter!("intake_body_budget_waits_total", "source" => self.source).increment(1);
        tracing::debug!(
            bytes = self.bytes,
            in_flight = self.in_flight,
            source = self.source,
            "body waits for room in the budget"
        );
    }
}

/// A body refused with "retry later": the budget stayed full.
pub struct BodyRefused<'a> {
    pub source: &'static str,
    pub in_flight: u64,
    pub budget: u64,
    pub error: &'a dyn Display,
}

impl Event for BodyRefused<'_> {
    fn emit(self) {
        metrics::counter!("intake_body_budget_refusals_total", "source" => self.source)
            .increment(1);
        if let Some(suppressed) = log_now("body-budget") {
            tracing::warn!(
                source = self.source,
                in_flight = self.in_flight,
                budget = self.budget,
                error = %self.error,
                suppressed,
                "body refused with 'retry later': the memory budget for bodies stayed full"
            );
        }
    }
}

/// Body bytes held now.
pub struct BodiesInFlight {
    pub bytes: u64,
}

impl Event for BodiesInFlight {
    fn emit(self) {
        metrics::gauge!("intake_body_budget_in_flight_bytes").set(self.bytes as f64);
    }
}
