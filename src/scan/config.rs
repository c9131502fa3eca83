//! The `[scan]` section: where clamd is, how many scans run at once, how
//! long one may take, what happens to items too large to scan, and the
//! archive limits checked before clamd sees anything.
//!
//! Without the section scanning is off and items say `unscanned`.

use std::time::Duration;

use serde::Deserialize;

use super::clamd::ClamdAddress;
use crate::units::{ByteSize, HumanDuration};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScanConfig {
    /// Scan at all. `false` keeps the section but passes items as
    /// `unscanned` (for a short maintenance window, not for production).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// clamd's address: `tcp://host:port` or `unix:///path/to/clamd.sock`.
    pub clamd: String,
    /// Scans running at once (one clamd connection each). Keep it at or
    /// below clamd's `MaxThreads`.
    #[serde(default = "default_max_concurrent")]
    pub max_concurrent: usize,
    /// Scans waiting for a free slot; past it an item is held, not scanned
    /// later in memory, so a peak cannot grow the queue without bound.
    #[serde(default = "default_queue_limit")]
    pub queue_limit: usize,
    /// Longest wait for one scan, connect and the wait for a slot each
    /// included; past it the item is held and re-scanned later.
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
    /// Largest blob sent to clamd. Keep it below clamd's `StreamMaxLength`
    /// (25M by default); anything larger gets the `oversize` policy
    /// without being sent.
    #[serde(default = "default_max_size")]
    pub max_size: ByteSize,
    /// What happens to an item with a part too large to scan:
    /// `quarantine` (kept for an operator) or `pass-with-tag` (to the desk
    /// tagged `unscanned:oversize`, `scan.status = "unscanned"`).
    #[serde(default)]
    pub oversize: OversizePolicy,
    /// How often held items are retried and clamd's health is checked.
    #[serde(default = "default_redrive_interval")]
    pub redrive_interval: HumanDuration,
    /// Longest pause between re-drive attempts while clamd stays down
    /// (the pause doubles from `redrive_interval` up to this).
    #[serde(default = "default_redrive_max_backoff")]
    pub redrive_max_backoff: HumanDuration,
    /// Held items read from Redis per re-drive step.
    #[serde(default = "default_redrive_batch")]
    pub redrive_batch: usize,
    /// Deepest nesting of archives (zip or gzip inside zip or gzip) read
    /// before the scan; the outermost archive is depth 1. Deeper nesting
    /// is quarantined as `unscannable`. At most 16, below clamd's
    /// `MaxRecursion`.
    #[serde(default = "default_archive_max_depth")]
    pub archive_max_depth: usize,
    /// Most uncompressed bytes an archive may hold: what a zip declares and
    /// a gzip inflates to, nested archives and their contents included.
    /// Keep it at or below clamd's `MaxFileSize`: clamd cuts a zip entry
    /// above that short and answers OK for the part it read.
    #[serde(default = "default_archive_max_expanded")]
    pub archive_max_expanded: ByteSize,
    /// Most uncompressed bytes per byte of an archive (its own size),
    /// judged once it expands past 1 MiB; a bomb expands a thousandfold.
    #[serde(default = "default_archive_max_ratio")]
    pub archive_max_ratio: u64,
    /// Most entries in an archive, nested archives' included. Keep it at or
    /// below clamd's `MaxFiles`.
    #[serde(default = "default_archive_max_files")]
    pub archive_max_files: u64,
}

/// The policy for parts above `max_size` (or above clamd's own limits).
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum OversizePolicy {
    #[default]
    Quarantine,
    PassWithTag,
}

impl ScanConfig {
    /// The archive limits of one check that must end by `deadline`.
    pub fn archive_limits(&self, deadline: Option<std::time::Instant>) -> super::archive::Limits {
        super::archive::Limits {
            max_depth: self.archive_max_depth,
            max_expanded: self.archive_max_expanded.bytes(),
            max_ratio: self.archive_max_ratio,
            max_files: self.archive_max_files,
            // A nested archive is inflated into memory to be read; one
            // larger than the largest blob clamd is sent is not.
            max_nested: self.max_size.as_usize(),
            deadline,
        }
    }
}

impl crate::validate::Validate for ScanConfig {
    fn validate(&self, at: &str, problems: &mut Vec<String>) {
        if let Err(e) = self.clamd.parse::<ClamdAddress>() {
            problems.push(format!("{at}.clamd: {e}"));
        }
        if self.max_concurrent == 0 {
            problems.push(format!("{at}.max_concurrent: must be at least 1"));
        }
        if self.timeout.0 < Duration::from_millis(100) {
            problems.push(format!("{at}.timeout: must be at least 100ms"));
        }
        if self.max_size.bytes() == 0 {
            problems.push(format!("{at}.max_size: must be more than 0"));
        }
        if self.redrive_interval.0 < Duration::from_millis(10) {
            problems.push(format!("{at}.redrive_interval: must be at least 10ms"));
        }
        if self.redrive_max_backoff < self.redrive_interval {
            problems.push(format!(
                "{at}.redrive_max_backoff: must be at least scan.redrive_interval"
            ));
        }
        if self.redrive_batch == 0 {
            problems.push(format!("{at}.redrive_batch: must be at least 1"));
        }
        if !(1..=MAX_ARCHIVE_DEPTH).contains(&self.archive_max_depth) {
            problems.push(format!(
                "{at}.archive_max_depth: must be from 1 to {MAX_ARCHIVE_DEPTH}"
            ));
        }
        if self.archive_max_expanded.bytes() == 0 {
            problems.push(format!("{at}.archive_max_expanded: must be more than 0"));
        }
        if self.archive_max_ratio == 0 {
            problems.push(format!("{at}.archive_max_ratio: must be at least 1"));
        }
        if self.archive_max_files == 0 {
            problems.push(format!("{at}.archive_max_files: must be at least 1"));
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_max_concurrent() -> usize {
    4
}
fn default_queue_limit() -> usize {
    64
}
fn default_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}
fn default_max_size() -> ByteSize {
    // clamd's default StreamMaxLength is 25M (MiB); 25MB stays below it.
    ByteSize(25_000_000)
}
fn default_redrive_interval() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}
fn default_redrive_max_backoff() -> HumanDuration {
    HumanDuration(Duration::from_secs(300))
}
fn default_redrive_batch() -> usize {
    16
}
/// clamd's `MaxRecursion` defaults to 17; deeper than this is no real mail.
const MAX_ARCHIVE_DEPTH: usize = 16;
fn default_archive_max_depth() -> usize {
    // An invoice zip holding a zipped folder, or an office file (a zip)
    // inside a zip: depth 2. One more for good measure.
    3
}
fn default_archive_max_expanded() -> ByteSize {
    // A photo archive or a folder of invoices within scan.max_size expands
    // little (JPEG and PDF are compressed already); clamd's MaxFileSize
    // defaults to 100M (MiB), so 100MB stays below it.
    ByteSize(100_000_000)
}
fn default_archive_max_ratio() -> u64 {
    // Text and office files compress 5 to 20 times; zeros 1000 times.
    100
}
fn default_archive_max_files() -> u64 {
    // clamd's MaxFiles defaults to 10000; a shop's customer sends tens.
    1000
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ScanConfig, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_fill_everything_but_the_address() {
        let config = parse(r#"clamd = "tcp://127.0.0.1:3310""#).unwrap();
        assert!(config.enabled);
        assert_eq!(config.oversize, OversizePolicy::Quarantine);
        assert_eq!(config.max_size.bytes(), 25_000_000);
        assert_eq!(config.archive_max_depth, 3);
        assert_eq!(config.archive_max_expanded.bytes(), 100_000_000);
        assert_eq!(config.archive_max_ratio, 100);
        assert_eq!(config.archive_max_files, 1000);
        let mut problems = Vec::new();
        crate::validate::Validate::validate(&config, "scan", &mut problems);
        assert!(problems.is_empty(), "defaults are valid: {problems:?}");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let config = parse(
            r#"
clamd = "http://clamd"
max_concurrent = 0
timeout = "1ms"
redrive_interval = "10s"
redrive_max_backoff = "1s"
oversize = "pass-with-tag"
archive_max_depth = 17
archive_max_expanded = "0B"
archive_max_ratio = 0
archive_max_files = 0
"#,
        )
        .unwrap();
        let mut problems = Vec::new();
        crate::validate::Validate::validate(&config, "scan", &mut problems);
        let all = problems.join("\n");
        for key in [
            "scan.clamd",
            "scan.max_concurrent",
            "scan.timeout",
            "scan.redrive_max_backoff",
            "scan.archive_max_depth",
            "scan.archive_max_expanded",
            "scan.archive_max_ratio",
            "scan.archive_max_files",
        ] {
            assert!(all.contains(key), "{key} not reported in:\n{all}");
        }
    }

    #[test]
    fn unknown_keys_and_policies_are_refused() {
        assert!(parse("clamd = \"tcp://a:1\"\nmax_scans = 3").is_err());
        let err = parse("clamd = \"tcp://a:1\"\noversize = \"drop\"").unwrap_err();
        assert!(err.contains("quarantine"), "names the choices: {err}");
    }

    #[test]
    fn the_dev_config_scans_with_the_dev_clamd() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/dev/intake.toml");
        // Parsed, not loaded: loading also checks files the dev stack creates
        // when it starts (the IMAP CA), which a unit test must not need.
        let text = std::fs::read_to_string(&path).expect("deploy/dev/intake.toml is readable");
        let file: toml::Table = toml::from_str(&text).expect("deploy/dev/intake.toml parses");
        let scan: ScanConfig = file
            .get("scan")
            .cloned()
            .expect("the dev config has [scan]")
            .try_into()
            .expect("its [scan] parses");
        assert_eq!(scan.clamd, "tcp://127.0.0.1:13310");
        assert!(
            scan.max_size.bytes() < 100 * 1024 * 1024,
            "below the dev clamd's StreamMaxLength (100M)"
        );
        assert!(
            scan.archive_max_expanded.bytes() <= 100 * 1024 * 1024,
            "at or below the dev clamd's MaxFileSize (100M), which clamd cuts entries to silently"
        );
        assert!(
            scan.archive_max_files <= 10_000 && scan.archive_max_depth < 16,
            "within the dev clamd's MaxFiles and MaxRecursion"
        );
    }
}
