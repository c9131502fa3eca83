//! How a run ended, and the one place that turns it into what the mail
//! server is told: the exit code, the RFC 3463 status line on stdout and
//! the reason on stderr (the table at the top of `mod.rs`). When in
//! doubt it keeps the mail: a bounce is final, a deferral costs only a
//! retry.

use super::answer::GatewayAnswer;
use super::error::MailgateError;
use crate::cli::exit::Exit;
use crate::telemetry::error_chain;
use crate::units::ByteSize;

/// How one run ended. [`Outcome::disposition`] is the only place that maps
/// it to an exit code and status line.
#[derive(Debug)]
pub enum Outcome {
    /// The gateway answered; its status decides.
    Answered(GatewayAnswer),
    /// The message on stdin is bigger than `--max-size`; refused locally
    /// without contacting the gateway.
    TooBig {
        /// The limit in force.
        limit: ByteSize,
        /// How many bytes stdin held.
        size: u64,
    },
    /// No verdict could be had from the gateway, for a local or a transient
    /// reason.
    Failed(MailgateError),
}

/// What a mail server gets told: the exit code, the RFC 3463 status line and
/// the plain reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disposition {
    /// The process exit code (sysexits.h).
    pub exit: Exit,
    /// The RFC 3463 enhanced status code, e.g. `4.3.0`. Its class (2, 4, 5)
    /// always agrees with `exit`.
    pub dsn: &'static str,
    /// Short text after the status code on stdout.
    pub text: String,
    /// The plain-words reason for stderr, with the error's causes.
    pub reason: String,
}

impl Disposition {
    /// The first (and only) stdout line, e.g. `4.3.0 gateway unavailable`.
    pub fn status_line(&self) -> String {
        format!("{} {}", self.dsn, self.text)
    }
}

/// What the mail server will do with the mail after `exit`, in words for
/// the log. mailgate exits 0, 65, 75 or 77 (64 comes from `main.rs`).
pub(super) fn consequence(exit: Exit) -> &'static str {
    match exit {
        Exit::Ok => "stored",
        Exit::TempFail => "the mail server keeps the mail and retries",
        // Postfix and Exim bounce on every code but 0 and 75.
        _ => "the mail server returns the mail to its sender",
    }
}

impl Outcome {
    /// The exit code of this outcome.
    pub fn exit_code(&self) -> u8 {
        self.disposition().exit.code()
    }

    /// The single mapping from outcome to exit code, status line and
    /// reason. When in doubt it keeps the mail: a bounce is final, a
    /// deferral costs only a retry.
    pub fn disposition(&self) -> Disposition {
        use Exit::{DataErr, TempFail};
        let (exit, dsn, text, reason) = match self {
            Outcome::TooBig { limit, size } => (
                DataErr,
                "5.3.4",
                format!("message too big (limit {limit})"),
                format!("the message has {size} bytes, over --max-size {limit}"),
            ),
            Outcome::Answered(answer) => answer_disposition(answer),
            Outcome::Failed(err) => {
                let reason = error_chain(err);
                let (exit, dsn, text) = match err {
                    MailgateError::Stdin(_) => {
                        (TempFail, "4.3.0", "cannot read the message".to_owned())
                    }
                    MailgateError::NoToken
                    | MailgateError::TokenFile { .. }
                    | MailgateError::EmptyToken { .. }
                    | MailgateError::BadToken
                    | MailgateError::CaFile { .. }
                    | MailgateError::NoSystemRoots => {
                        (TempFail, "4.3.5", format!("mailgate misconfigured: {err}"))
                    }
                    MailgateError::Runtime(_) => {
                        (TempFail, "4.3.0", "mailgate cannot start".to_owned())
                    }
                    MailgateError::Resolve { host, .. } => (
                        TempFail,
                        "4.4.3",
                        format!("gateway unavailable: cannot resolve {host}"),
                    ),
                    MailgateError::Connect { addr, .. } => (
                        TempFail,
                        "4.4.1",
                        format!("gateway unavailable: cannot connect to {addr}"),
                    ),
                    MailgateError::Tls { host, .. } => (
                        TempFail,
                        "4.7.5",
                        format!("gateway unavailable: TLS handshake with {host} failed"),
                    ),
                    MailgateError::Timeout { after, stage } => (
                        TempFail,
                        "4.4.2",
                        format!(
                            "gateway unavailable: timed out after {} {stage}",
                            humantime::format_duration(*after)
                        ),
                    ),
                    MailgateError::Http(source) if source.is_parse() => (
                        TempFail,
                        "4.3.0",
                        "gateway unavailable: garbled answer".to_owned(),
                    ),
                    MailgateError::Http(_) => (
                        TempFail,
                        "4.4.2",
                        "gateway unavailable: connection failed".to_owned(),
                    ),
                };
                (exit, dsn, text, reason)
            }
        };
        Disposition {
            exit,
            dsn,
            text,
            reason,
        }
    }
}

/// The status-code half of [`Outcome::disposition`].
fn answer_disposition(answer: &GatewayAnswer) -> (Exit, &'static str, String, String) {
    use Exit::{DataErr, NoPerm, TempFail};
    let status = answer.status;
    // What the gateway said about itself, for stderr: "HTTP 503 Service
    // Unavailable (storage_unavailable: Redis is down)".
    let said = answer.describe();
    // The gateway's human text for stdout, which may reach the customer in
    // a bounce; the gateway writes it for clients, never internal errors.
    let detail = |fallback: &str| answer.message_or_error().unwrap_or(fallback).to_owned();
    let retry = match answer.retry_after {
        Some(secs) => format!(", retry after {secs} s"),
        None => String::new(),
    };
    match status.as_u16() {
        200..=299 => {
            let text = match &answer.id {
                Some(id) => format!("stored as {id}"),
                None => "stored (the gateway gave no receipt id)".to_owned(),
            };
            (Exit::Ok, "2.0.0", text, format!("stored: {said}"))
        }
        // A wrong token is our configuration, not the customer's fault: keep
        // the mail until the operator fixes the token, then the queue drains.
        401 => (
            TempFail,
            "4.3.5",
            "gateway refused the mailgate token".to_owned(),
            format!("{said}: the mailgate token is wrong or missing on the gateway; fix the token"),
        ),
        // No such endpoint, or a proxy in between wants credentials: a
        // wrong --url or a proxy setup, again ours to fix, not the mail's.
        404 | 405 | 407 | 421 => (
            TempFail,
            "4.3.5",
            format!(
                "gateway has no message endpoint at the configured URL (HTTP {})",
                status.as_u16()
            ),
            format!("{said}: check --url"),
        ),
        403 => (
            NoPerm,
            "5.7.1",
            format!("refused by policy: {}", detail("forbidden")),
            said,
        ),
        // 422 is how the gateway says "infected" (src/openapi.yaml, `Infected`).
        422 => (
            NoPerm,
            "5.7.1",
            format!("refused by policy: {}", detail("infected content")),
            said,
        ),
        429 => (
            TempFail,
            "4.7.1",
            format!("rate limited{retry}"),
            format!("{said}{retry}"),
        ),
        408 | 425 => (
            TempFail,
            "4.4.2",
            format!("gateway unavailable: HTTP {}", status.as_u16()),
            said,
        ),
        413 => (DataErr, "5.3.4", "message too big".to_owned(), said),
        415 => (
            DataErr,
            "5.6.1",
            format!("media not supported: {}", detail("not a mail message")),
            said,
        ),
        400..=499 => (
            DataErr,
            "5.6.0",
            format!("rejected: {}", detail("malformed message")),
            said,
        ),
        500..=599 => (
            TempFail,
            "4.3.0",
            format!("gateway unavailable: HTTP {}{retry}", status.as_u16()),
            format!("{said}{retry}"),
        ),
        // 1xx as a final answer, or a redirect: not what the gateway does,
        // so something between us (a proxy, a wrong URL) is misconfigured.
        _ => (
            TempFail,
            "4.3.5",
            format!("unexpected answer from gateway: HTTP {}", status.as_u16()),
            format!("{said}: check --url"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    fn answer(status: u16, body: &str) -> GatewayAnswer {
        GatewayAnswer::new(
            StatusCode::from_u16(status).unwrap(),
            &http::HeaderMap::new(),
            Some(body.as_bytes()),
        )
    }

    fn exit_of(status: u16) -> u8 {
        Outcome::Answered(answer(status, "")).exit_code()
    }

    #[test]
    fn status_codes_map_to_sysexits() {
        for (status, expected) in [
            (200, 0),
            (202, 0),
            (400, 65),
            (401, 75),
            (403, 77),
            (404, 75),
            (408, 75),
            (409, 65),
            (413, 65),
            (415, 65),
            (422, 77),
            (429, 75),
            (500, 75),
            (502, 75),
            (503, 75),
            (301, 75),
        ] {
            assert_eq!(exit_of(status), expected, "HTTP {status} mapped wrongly");
        }
    }

    #[test]
    fn status_line_class_agrees_with_exit_code() {
        for status in [200, 301, 400, 401, 403, 404, 413, 415, 422, 429, 500, 503] {
            let disposition = Outcome::Answered(answer(status, "")).disposition();
            let class = match disposition.exit {
                Exit::Ok => '2',
                Exit::TempFail => '4',
                Exit::DataErr | Exit::NoPerm => '5',
                other => panic!("HTTP {status}: mailgate never exits {other:?}"),
            };
            assert!(
                disposition.status_line().starts_with(class),
                "HTTP {status}: status line {:?} disagrees with exit {:?}",
                disposition.status_line(),
                disposition.exit
            );
        }
    }

    #[test]
    fn gateway_text_is_echoed_on_one_short_line() {
        let long = "x".repeat(1_000);
        let body = format!(r#"{{"error":"blocked","message":"line one\nline two {long}"}}"#);
        let disposition = Outcome::Answered(answer(403, &body)).disposition();
        let line = disposition.status_line();
        assert!(
            line.starts_with("5.7.1 refused by policy: line one line two"),
            "got {line:?}"
        );
        assert!(
            !line.contains('\n'),
            "a newline from the gateway leaked into the status line"
        );
        assert!(
            line.len() < 300,
            "gateway text was not cut: {} chars",
            line.len()
        );
    }

    #[test]
    fn stored_answer_reports_the_receipt_id() {
        let disposition =
            Outcome::Answered(answer(202, r#"{"id":"01J0RECEIPT","status":"accepted"}"#))
                .disposition();
        assert_eq!(disposition.status_line(), "2.0.0 stored as 01J0RECEIPT");
        let disposition = Outcome::Answered(answer(202, "not json")).disposition();
        assert_eq!(
            disposition.exit,
            Exit::Ok,
            "a 2xx is stored even with a garbled body"
        );
    }
}
