//! Metrics: one process-wide Prometheus recorder behind the `metrics`
//! facade, so any module counts with `metrics::counter!` and the admin
//! listener renders them all. Names are `intake_*`; labels are bounded
//! sets (stream, kind, endpoint, status), never customer data.

pub mod log_limit;

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` for people, `json` for log collectors.
    #[serde(default)]
    pub format: LogFormat,
    /// A tracing filter, e.g. `info` or `intake=debug,info`; the
    /// `RUST_LOG` environment variable overrides it.
    #[serde(default = "default_log_level")]
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: default_log_level(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

fn default_log_level() -> String {
    "info".into()
}

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Latency buckets in seconds: from a fast form post to a slow scan.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Installs the recorder once per process and returns its handle. Tests
/// start several gateways in one process; they share it.
pub fn metrics() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(LATENCY_BUCKETS)
                .expect("buckets are not empty")
                .build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder was installed first, in which
            // case metrics go there; the handle still renders ours (empty).
            let _ = metrics::set_global_recorder(recorder);
            describe();
            handle
        })
        .clone()
}

/// An error and its causes on one line, `outer: inner: innermost`, for
/// logs and operator-facing messages (never for HTTP clients).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Runs the recorder's housekeeping (histogram rotation) until shutdown.
pub async fn upkeep(handle: PrometheusHandle) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        handle.run_upkeep();
    }
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        "intake_http_requests_total",
        "HTTP requests answered, by endpoint and status code"
    );
    describe_counter!(
        "intake_form_bot_checks_total",
        "Form posts taken for bots (answered 202, stored as trapped), by check"
    );
    describe_counter!(
        "intake_http_limit_refusals_total",
        "Requests or connections refused by an HTTP limit, by limit (requests_per_ip, connections_per_ip, connections, headers, header_timeout, min_body_rate)"
    );
    describe_counter!(
        "intake_connections_shed_total",
        "Connections closed to make room for a newcomer when every slot was taken, by listener (http, lmtp) and phase (idle, head, body)"
    );

    describe_counter!(
        "intake_http_idle_closed_total",
        "Kept-alive connections closed by the server after http.idle_timeout with no request in flight"
    );
    describe_histogram!(
        "intake_http_request_duration_seconds",
        Unit::Seconds,
        "Time from request to answer, by endpoint"
    );
    describe_counter!(
        "intake_cards_redacted_total",
        "Payment card numbers masked before storing ([privacy] redact_cards)"
    );
    describe_counter!(
        "intake_mime_limit_total",
        "Mails quarantined for exceeding a [mime] limit"
    );
    describe_counter!(
        "intake_items_total",
        "Items stored, by stream, kind and channel"
    );
    describe_counter!(
        "intake_items_already_stored_total",
        "Items handed in again and recognised by their idempotency key"
    );
    describe_counter!(
        "intake_store_failures_total",
        "Items that could not be stored (the source did not acknowledge), by cause"
    );
    describe_counter!(
        "intake_scans_total",
        "Blobs scanned (raw messages and parts), by result: clean, infected, oversize, timeout, error, busy"
    );
    describe_histogram!(
        "intake_scan_duration_seconds",
        Unit::Seconds,
        "Time clamd took for one blob, connect included"
    );
    describe_gauge!(
        "intake_scanner_up",
        "1 when clamd answered the last check or scan, else 0"
    );
    describe_gauge!(
        "intake_held_items",
        "Entries in the held stream, waiting for the scanner"
    );
    describe_counter!(
        "intake_redriven_items_total",
        "Held items re-scanned and stored, by the stream they went to"
    );
    describe_gauge!(
        "intake_clamav_info",
        "Always 1; labels give the ClamAV engine, signature version and date"
    );
    describe_counter!(
        "intake_imap_mails_total",
        "IMAP mails by outcome: fetched, stored, already_stored (re-read after a crash), oversize, unreadable"
    );
    describe_counter!(
        "intake_imap_errors_total",
        "IMAP failures by kind: connect, timeout, tls, auth, protocol, store, redis"
    );
    describe_counter!(
        "intake_imap_reconnects_total",
        "IMAP sessions given up and started again after a failure"
    );
    describe_counter!(
        "intake_imap_wakeups_total",
        "Looks for new mail after waiting, by how: idle or poll"
    );
    describe_counter!(
        "intake_imap_uidvalidity_changes_total",
        "Mailboxes found with a new UIDVALIDITY and read again from the start"
    );
    describe_gauge!(
        "intake_imap_lease_held",
        "1 while this replica holds the mailbox's lease and works it"
    );
    describe_gauge!(
        "intake_imap_backlog",
        "Mails in the mailbox not yet read, as of the last search"
    );
    describe_gauge!(
        "intake_redis_up",
        "1 when the last Redis check answered, else 0"
    );
    describe_gauge!(
        "intake_backpressure",
        "1 while new items are refused (desk past its high-water mark or Redis near maxmemory)"
    );
    describe_counter!(
        "intake_backpressure_refusals_total",
        "Items refused with 'retry later' under backpressure (nothing taken, nothing lost)"
    );
    describe_counter!(
        "intake_rule_matches_total",
        "Items a rule's match held for, by rule"
    );
    describe_counter!(
        "intake_rule_actions_total",
        "Items past a rule's quota (not in shadow), by rule and action; the strongest such action is the verdict. Block-list hits count as action block"
    );
    describe_counter!(
        "intake_rule_shadow_hits_total",
        "Items a shadow rule would have acted on, by rule and action"
    );
    describe_gauge!(
        "intake_rule_keys",
        "Keys tracked in memory by a local rule after evicting idle ones, by rule"
    );
    describe_counter!(
        "intake_rule_keys_overflow_total",
        "Checks that used a rule's shared overflow bucket because max_keys was reached"
    );
    describe_counter!(
        "intake_rule_fast_path_total",
        "Cluster-rule refusals answered from the local cache without a Redis round trip"
    );
    describe_counter!(
        "intake_collapsed_total",
        "Items folded into an earlier desk item, by rule (dedupe-exact, dedupe-near or a rate rule)"
    );
    describe_gauge!("intake_rules_loaded", "Rules in force");
    describe_counter!(
        "intake_rules_reloads_total",
        "Rule reloads, by result (ok, failed)"
    );
    describe_gauge!(
        "intake_rules_reload_failed",
        "1 when the last reload failed and the previous rules are still in force"
    );
    describe_counter!(
        "intake_quarantine_releases_total",
        "Quarantine releases asked for on the admin listener, by result (released, already_released, infected, unscannable, not_releasable, scanner_off, scanner_unavailable, redis_unavailable, not_found)"
    );
    describe_counter!(
        "intake_events_failures_total",
        "Fold updates for intake:events that could not be written"
    );
}
