//! Every metric the gateway exports, described once: name, kind, unit and
//! what it counts. [`describe`] hands them to the recorder, so
//! `GET /metrics` says what each one means; a test keeps the table in step
//! with the names the code records.

use metrics::Unit;

/// What kind of value a metric is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One exported metric.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    pub name: &'static str,
    pub kind: Kind,
    pub unit: Option<Unit>,
    /// What it counts, and its labels.
    pub help: &'static str,
}

const fn metric(name: &'static str, kind: Kind, unit: Option<Unit>, help: &'static str) -> Metric {
    Metric {
        name,
        kind,
        unit,
        help,
    }
}

/// The catalogue, grouped by the part of the flow that records them.
pub const METRICS: &[Metric] = &[
    metric(
        "intake_http_requests_total",
        Kind::Counter,
        None,
        "HTTP requests answered, by endpoint and status code",
    ),
    metric(
        "intake_form_bot_checks_total",
        Kind::Counter,
        None,
        "Form posts taken for bots (answered 202, stored as trapped), by check",
    ),
    metric(
        "intake_http_limit_refusals_total",
        Kind::Counter,
        None,
        "Requests or connections refused by an HTTP limit, by limit (requests_per_ip, connections_per_ip, connections, headers, header_timeout, min_body_rate)",
    ),
    metric(
        "intake_connections_shed_total",
        Kind::Counter,
        None,
        "Connections closed to make room for a newcomer when every slot was taken, by listener (http, lmtp) and phase (idle, head, body)",
    ),
    metric(
        "intake_http_idle_closed_total",
        Kind::Counter,
        None,
        "Kept-alive connections closed by the server after http.idle_timeout with no request in flight",
    ),
    metric(
        "intake_http_request_duration_seconds",
        Kind::Histogram,
        Some(Unit::Seconds),
        "Time from request to answer, by endpoint",
    ),
    metric(
        "intake_cards_redacted_total",
        Kind::Counter,
        None,
        "Payment card numbers masked before storing ([privacy] redact_cards)",
    ),
    metric(
        "intake_acknowledgements_total",
        Kind::Counter,
        None,
        "Acknowledgements to customers, by result (queued, skipped, sent, refused, duplicate, retry) and, for skipped, the reason (window, auto_submitted, list, null_sender, role_address, unauthenticated, ...)",
    ),
    metric(
        "intake_auth_results_total",
        Kind::Counter,
        None,
        "Sender-authentication verdicts, by check (dkim, spf, dmarc, arc), result and where they came from (verified, trusted-header)",
    ),
    metric(
        "intake_mime_limit_total",
        Kind::Counter,
        None,
        "Mails quarantined for exceeding a [mime] limit",
    ),
    metric(
        "intake_items_total",
        Kind::Counter,
        None,
        "Items stored, by stream, kind and channel",
    ),
    metric(
        "intake_items_already_stored_total",
        Kind::Counter,
        None,
        "Items handed in again and recognised by their idempotency key",
    ),
    metric(
        "intake_mail_copies_folded_total",
        Kind::Counter,
        None,
        "Copies of a stored mail for more recipients (per-recipient delivery) added to its first item",
    ),
    metric(
        "intake_store_failures_total",
        Kind::Counter,
        None,
        "Items that could not be stored (the source did not acknowledge), by cause",
    ),
    metric(
        "intake_scans_total",
        Kind::Counter,
        None,
        "Blobs scanned (raw messages and parts), by result: clean, infected, oversize, timeout, error, busy",
    ),
    metric(
        "intake_scan_duration_seconds",
        Kind::Histogram,
        Some(Unit::Seconds),
        "Time clamd took for one blob, connect included",
    ),
    metric(
        "intake_scanner_up",
        Kind::Gauge,
        None,
        "1 when clamd answered the last check or scan, else 0",
    ),
    metric(
        "intake_held_items",
        Kind::Gauge,
        None,
        "Entries in the held stream, waiting for the scanner",
    ),
    metric(
        "intake_redriven_items_total",
        Kind::Counter,
        None,
        "Held items re-scanned and stored, by the stream they went to",
    ),
    metric(
        "intake_clamav_info",
        Kind::Gauge,
        None,
        "Always 1; labels give the ClamAV engine, signature version and date",
    ),
    metric(
        "intake_imap_mails_total",
        Kind::Counter,
        None,
        "IMAP mails by outcome: fetched, stored, already_stored (re-read after a crash), oversize, unreadable",
    ),
    metric(
        "intake_imap_errors_total",
        Kind::Counter,
        None,
        "IMAP failures by kind: connect, timeout, tls, auth, protocol, store, redis, folder (a folder missing and not creatable), unacknowledged (the server refused to move or flag stored mail)",
    ),
    metric(
        "intake_imap_reconnects_total",
        Kind::Counter,
        None,
        "IMAP sessions given up and started again after a failure",
    ),
    metric(
        "intake_imap_wakeups_total",
        Kind::Counter,
        None,
        "Looks for new mail after waiting, by how: idle or poll",
    ),
    metric(
        "intake_imap_uidvalidity_changes_total",
        Kind::Counter,
        None,
        "Mailboxes found with a new UIDVALIDITY and read again from the start",
    ),
    metric(
        "intake_imap_lease_held",
        Kind::Gauge,
        None,
        "1 while this replica holds the mailbox's lease and works it",
    ),
    metric(
        "intake_imap_backlog",
        Kind::Gauge,
        None,
        "Mails in the mailbox not yet read, as of the last search (stored but unacknowledged mail included)",
    ),
    metric(
        "intake_imap_unacknowledged",
        Kind::Gauge,
        None,
        "Mails of the mailbox stored but not acknowledged on the server (it refused the move or flag); retried at long intervals",
    ),
    metric(
        "intake_redis_up",
        Kind::Gauge,
        None,
        "1 when the last Redis check answered, else 0",
    ),
    metric(
        "intake_backpressure",
        Kind::Gauge,
        None,
        "1 while new items are refused (desk past its high-water mark or Redis near maxmemory)",
    ),
    metric(
        "intake_backpressure_refusals_total",
        Kind::Counter,
        None,
        "Items refused with 'retry later' under backpressure (nothing taken, nothing lost)",
    ),
    metric(
        "intake_rule_matches_total",
        Kind::Counter,
        None,
        "Items a rule's match held for, by rule",
    ),
    metric(
        "intake_rule_actions_total",
        Kind::Counter,
        None,
        "Items past a rule's quota (not in shadow), by rule and action; the strongest such action is the verdict. Block-list hits count as action block",
    ),
    metric(
        "intake_rule_shadow_hits_total",
        Kind::Counter,
        None,
        "Items a shadow rule would have acted on, by rule and action",
    ),
    metric(
        "intake_rule_keys",
        Kind::Gauge,
        None,
        "Keys tracked in memory by a local rule after evicting idle ones, by rule",
    ),
    metric(
        "intake_rule_keys_overflow_total",
        Kind::Counter,
        None,
        "Checks that used a rule's shared overflow bucket because max_keys was reached",
    ),
    metric(
        "intake_rule_fast_path_total",
        Kind::Counter,
        None,
        "Cluster-rule refusals answered from the local cache without a Redis round trip",
    ),
    metric(
        "intake_collapsed_total",
        Kind::Counter,
        None,
        "Items folded into an earlier desk item, by rule (dedupe-exact, dedupe-near or a rate rule)",
    ),
    metric(
        "intake_rules_loaded",
        Kind::Gauge,
        None,
        "Rules in force",
    ),
    metric(
        "intake_rules_reloads_total",
        Kind::Counter,
        None,
        "Rule reloads, by result (ok, failed)",
    ),
    metric(
        "intake_rules_reload_failed",
        Kind::Gauge,
        None,
        "1 when the last reload failed and the previous rules are still in force",
    ),
    metric(
        "intake_quarantine_releases_total",
        Kind::Counter,
        None,
        "Quarantine releases asked for on the admin listener, by result (released, already_released, infected, unscannable, not_releasable, scanner_off, scanner_unavailable, redis_unavailable, not_found)",
    ),
    metric(
        "intake_events_failures_total",
        Kind::Counter,
        None,
        "Fold updates for intake:events that could not be written",
    ),
    metric(
        "intake_body_budget_in_flight_bytes",
        Kind::Gauge,
        Some(Unit::Bytes),
        "Body bytes held in memory now ([memory] body_budget)",
    ),
    metric(
        "intake_body_budget_waits_total",
        Kind::Counter,
        None,
        "Bodies that had to wait for room in the body budget, by source",
    ),
    metric(
        "intake_body_budget_refusals_total",
        Kind::Counter,
        None,
        "Bodies refused with 'retry later' because the body budget stayed full for memory.body_wait, by source",
    ),
    metric(
        "intake_archive_checks_total",
        Kind::Counter,
        None,
        "Archives checked against the scan.archive_* limits before clamd, by result (within, depth, expanded, ratio, files, nested_size, malformed, time, busy)",
    ),
    metric(
        "intake_archive_check_duration_seconds",
        Kind::Histogram,
        Some(Unit::Seconds),
        "Time one archive check took",
    ),
    metric(
        "intake_audit_copies_total",
        Kind::Counter,
        None,
        "Items kept off the desk, by how much of them the stream holds (whole, metadata, counted)",
    ),
    metric(
        "intake_dedupe_confirm_failures_total",
        Kind::Counter,
        None,
        "Stored items that could not be recorded for dedupe (a later duplicate then becomes a desk item of its own)",
    ),
    metric(
        "intake_dedupe_reservation_waits_total",
        Kind::Counter,
        None,
        "Items whose duplicate's write stayed unresolved past its reservation's lifetime and were stored without one, by result (gave_up)",
    ),
    metric(
        "intake_idempotency_key_reused_total",
        Kind::Counter,
        None,
        "Items refused (422) because their idempotency key was first used for another payload",
    ),
    metric(
        "intake_unknown_writes_total",
        Kind::Counter,
        None,
        "Writes whose answer did not come, by what looking up their key found (stored, not_found, unknown)",
    ),
    metric(
        "intake_lmtp_connections_total",
        Kind::Counter,
        None,
        "LMTP connections, by result (accepted, refused_per_ip, refused)",
    ),
    metric(
        "intake_lmtp_recipients_total",
        Kind::Counter,
        None,
        "LMTP RCPT commands, by result (accepted, refused)",
    ),
    metric(
        "intake_lmtp_messages_total",
        Kind::Counter,
        None,
        "LMTP messages, by outcome (stored, rejected, deferred, and the verdicts' other outcomes)",
    ),
    metric(
        "intake_lmtp_message_duration_seconds",
        Kind::Histogram,
        Some(Unit::Seconds),
        "Time from the end of DATA to the replies",
    ),
    metric(
        "intake_lmtp_timeouts_total",
        Kind::Counter,
        None,
        "LMTP sessions closed for slowness, by phase (command, data, data_rate)",
    ),
    metric(
        "intake_lmtp_command_errors_total",
        Kind::Counter,
        None,
        "LMTP commands answered with an error (unknown, out of order, malformed)",
    ),
    metric(
        "intake_delivery_delivered_total",
        Kind::Counter,
        None,
        "Entries a delivery target accepted (2xx), by delivery and target",
    ),
    metric(
        "intake_delivery_retries_total",
        Kind::Counter,
        None,
        "Failed delivery attempts to be retried, by delivery, target and status (408, 429, 5xx, timeout, unreachable)",
    ),
    metric(
        "intake_delivery_dead_total",
        Kind::Counter,
        None,
        "Entries moved to the dead stream, by delivery, target and reason (refused, max_age)",
    ),
    metric(
        "intake_delivery_lag_seconds",
        Kind::Gauge,
        Some(Unit::Seconds),
        "Age of the oldest entry a delivery has not delivered yet (0 when caught up), by delivery and target",
    ),
    metric(
        "intake_delivery_redis_errors_total",
        Kind::Counter,
        None,
        "Redis commands of a delivery worker that failed (the entries stay pending), by delivery",
    ),
];

/// Describes every metric of [`METRICS`] to the installed recorder.
pub fn describe() {
    for m in METRICS {
        let (name, help) = (m.name, m.help);
        match (m.kind, m.unit) {
            (Kind::Counter, Some(unit)) => metrics::describe_counter!(name, unit, help),
            (Kind::Counter, None) => metrics::describe_counter!(name, help),
            (Kind::Gauge, Some(unit)) => metrics::describe_gauge!(name, unit, help),
            (Kind::Gauge, None) => metrics::describe_gauge!(name, help),
            (Kind::Histogram, Some(unit)) => metrics::describe_histogram!(name, unit, help),
            (Kind::Histogram, None) => metrics::describe_histogram!(name, help),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::path::Path;

    /// `intake_*` names the code records (`counter!("intake_...")`,
    /// `gauge!`, `histogram!`), by name, with the files that record them.
    fn recorded() -> BTreeMap<String, (Kind, Vec<String>)> {
        let mut found = BTreeMap::new();
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut stack = vec![root.clone()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).expect("src/ is readable") {
                let path = entry.expect("a directory entry").path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                if path.extension().is_none_or(|e| e != "rs") {
                    continue;
                }
                let text = std::fs::read_to_string(&path).expect("a source file");
                let file = path.strip_prefix(&root).unwrap().display().to_string();
                if file == "telemetry/catalogue.rs" {
                    continue; // this table, and this test's own examples
                }
                for (macro_name, kind) in [
                    ("counter!(", Kind::Counter),
                    ("gauge!(", Kind::Gauge),
                    ("histogram!(", Kind::Histogram),
                ] {
                    for (at, _) in text.match_indices(macro_name) {
                        let rest = text[at + macro_name.len()..].trim_start();
                        let Some(rest) = rest.strip_prefix("\"intake_") else {
                            continue;
                        };
                        let end = rest.find('"').expect("a closed string");
                        let name = format!("intake_{}", &rest[..end]);
                        let slot = found.entry(name).or_insert((kind, Vec::new()));
                        slot.1.push(file.clone());
                    }
                }
            }
        }
        found
    }

    #[test]
    fn every_recorded_metric_is_described_once_with_its_kind() {
        let recorded = recorded();
        assert!(
            recorded.len() > 40,
            "the scan found the metrics: {recorded:?}"
        );
        let mut problems = Vec::new();
        for (name, (kind, files)) in &recorded {
            match METRICS
                .iter()
                .filter(|m| m.name == name)
                .collect::<Vec<_>>()[..]
            {
                [] => problems.push(format!(
                    "{name} (recorded in {files:?}) is not in METRICS: add it with what it counts"
                )),
                [m] if m.kind != *kind => problems.push(format!(
                    "{name} is a {kind:?} in {files:?} but a {:?} in METRICS",
                    m.kind
                )),
                [_] => {}
                _ => problems.push(format!("{name} is in METRICS more than once")),
            }
        }
        for m in METRICS {
            if !recorded.contains_key(m.name) {
                problems.push(format!(
                    "{} is in METRICS but nothing records it: remove it",
                    m.name
                ));
            }
        }
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }
}
