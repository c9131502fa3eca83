//! `intake mailgate`: the client a mail server's pipe transport (Postfix
//! `pipe`, Exim `pipe`, procmail) runs once per mail. It reads one raw
//! RFC 5322 message on stdin and POSTs it to a running gateway's
//! `/v1/messages`.
//!
//! The guarantee is the one rule of the project seen from the mail server's
//! side: exit 0 only after the gateway answered 2xx (the message is stored);
//! every failure that a retry could fix, including our own misconfiguration,
//! exits 75 (EX_TEMPFAIL) so the mail server keeps the mail. Only a verdict
//! of the gateway that will not change (malformed, too big, refused by
//! policy) or a command line that cannot work exits with a permanent code.
//! Every run prints an RFC 3463 enhanced status line first on stdout (Postfix
//! puts it in its log and in any bounce) and, unless the mail was stored, one
//! plain line on stderr saying why. The token never appears in either.
//!
//! | outcome | exit | status |
//! | --- | --- | --- |
//! | 2xx | 0 | `2.0.0 stored as <id>` |
//! | 5xx, 408, 425, 429, 401, 404, 405, 407, 421, 1xx/3xx, no answer, garbled answer, timeout, TLS failure, missing or empty token, unreadable `--ca-file`, unreadable stdin | 75 EX_TEMPFAIL | `4.x.x ...` |
//! | 400, 413, 415, other 4xx, stdin over `--max-size` | 65 EX_DATAERR | `5.6.0`, `5.3.4`, `5.6.1` |
//! | 403, 422 (infected) | 77 EX_NOPERM | `5.7.1 refused by policy: ...` |
//! | bad arguments, including a `--url` that is not http(s) | 64 EX_USAGE | (clap's message, from `main.rs`) |
//!
//! A Postfix `master.cf` entry (the `=` form keeps an empty bounce sender,
//! and makes Postfix repeat `--recipient=` once per recipient):
//!
//! ```text
//! intake  unix  -  n  n  -  10  pipe
//!   user=intake argv=/usr/bin/intake mailgate --url http://127.0.0.1:8080
//!   --token-file /etc/intake/mailgate.token --sender=${sender} --recipient=${recipient}
//! ```

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HOST, RETRY_AFTER, USER_AGENT};
use http::uri::{PathAndQuery, Scheme};
use http::{HeaderName, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::telemetry::error_chain;
use crate::units::ByteSize;

/// The environment variable that carries the token when `--token-file` is
/// not given. Read by hand rather than through clap: a clap `env` needs a
/// flag, and a `--token` flag would put the secret in `ps` output and shell
/// history.
pub const TOKEN_ENV: &str = "INTAKE_MAILGATE_TOKEN";

/// The gateway's endpoint for raw messages, appended to a base `--url`.
const MESSAGES_PATH: &str = "/v1/messages";

/// Header carrying the SMTP envelope sender (empty for a bounce, `<>`).
const ENVELOPE_SENDER: HeaderName = HeaderName::from_static("x-intake-envelope-sender");

/// Header carrying one SMTP envelope recipient; repeated per recipient.
const ENVELOPE_RECIPIENT: HeaderName = HeaderName::from_static("x-intake-envelope-recipient");

/// The most of the gateway's answer body we read: it is a small JSON
/// receipt or error, and a misbehaving peer must not make us buffer more.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// The longest piece of gateway-supplied text we repeat on one output line,
/// so a chatty or hostile answer cannot flood the mail log or a bounce.
const MAX_ECHO_CHARS: usize = 200;

/// `intake mailgate`: hand one message on stdin to a running gateway.
#[derive(Debug, Clone, clap::Args)]
pub struct MailgateArgs {
    /// The gateway: a base URL such as `http://127.0.0.1:8080` (then
    /// `/v1/messages` is appended), or the full `.../v1/messages` endpoint.
    /// Only http and https; no user:password part (the token is the
    /// credential).
    #[arg(long, value_name = "URL", value_parser = GatewayUrl::parse)]
    pub url: GatewayUrl,

    /// File holding the bearer token (trailing whitespace and newline are
    /// trimmed; an empty file is refused). Without it, the token comes from
    /// the environment variable INTAKE_MAILGATE_TOKEN.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,

    /// SMTP envelope sender (Postfix `--sender=${sender}`); may be empty for
    /// a bounce. Sent as `X-Intake-Envelope-Sender`.
    #[arg(long, value_name = "ADDR", value_parser = envelope_address)]
    pub sender: Option<HeaderValue>,

    /// SMTP envelope recipient (Postfix `--recipient=${recipient}`);
    /// repeatable, and one flag may take several. Each is sent as its own
    /// `X-Intake-Envelope-Recipient` header.
    #[arg(long, value_name = "ADDR", num_args = 1.., value_parser = envelope_address)]
    pub recipient: Vec<HeaderValue>,

    /// Deadline for the whole exchange with the gateway (name lookup,
    /// connect, TLS, upload, answer), e.g. `30s` or `2m`. Past it the mail
    /// is kept for a retry rather than waited on.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_timeout)]
    pub timeout: Duration,

    /// Largest message accepted on stdin, e.g. `25MB` (10^6) or `50MiB`
    /// (2^20). A bigger one is refused for good (5.3.4) before the gateway
    /// is contacted, so it never costs a retry loop.
    #[arg(long, value_name = "SIZE", default_value = "50MiB", value_parser = parse_max_size)]
    pub max_size: ByteSize,

    /// PEM file with the CA certificate(s) that sign the gateway's
    /// certificate, for an https URL under a private CA. Only these are
    /// then trusted; without it the system's CA bundle is used. Ignored for
    /// http.
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
}

/// Runs `intake mailgate` and turns its outcome into the process exit code,
/// after printing the status line (stdout) and the reason (stderr).
pub fn main(args: MailgateArgs) -> ExitCode {
    let outcome = run(&args);
    let disposition = outcome.disposition();
    // A closed stdout or stderr must not change the exit code: the mail
    // server decides on the code, the lines only explain it.
    let _ = writeln!(io::stdout().lock(), "{}", disposition.status_line());
    if disposition.exit != Sysexit::Ok {
        let _ = writeln!(
            io::stderr().lock(),
            "intake mailgate: {}; {} (exit {})",
            disposition.reason,
            disposition.exit.consequence(),
            disposition.exit.code()
        );
    }
    ExitCode::from(disposition.exit.code())
}

/// Does the work in a fixed order; each step can end the run early with
/// its outcome.
fn run(args: &MailgateArgs) -> Outcome {
    // 1. Take the whole message off stdin first, whatever happens next: a
    //    mail server whose write fails with a broken pipe may log a
    //    misleading error, and the size verdict must not need the network.
    let message = match read_message(&mut io::stdin().lock(), args.max_size.bytes()) {
        Ok(Message::Complete(body)) => body,
        Ok(Message::TooBig { size }) => {
            return Outcome::TooBig {
                limit: args.max_size,
                size,
            }
        }
        Err(err) => return Outcome::Failed(err),
    };

    // 2. Local configuration: the token, and for https the trusted roots.
    //    All failures here are ours to fix, so they keep the mail (75).
    let token = match load_token(args.token_file.as_ref()) {
        Ok(token) => token,
        Err(err) => return Outcome::Failed(err),
    };
    let tls = match args.url.scheme {
        GatewayScheme::Http => None,
        GatewayScheme::Https => match tls_connector(args.ca_file.as_ref()) {
            Ok(tls) => Some(tls),
            Err(err) => return Outcome::Failed(err),
        },
    };
    let request = build_request(args, &token, message);

    // 3. The exchange, bounded as a whole by --timeout. A single-threaded
    //    runtime is plenty for one request and starts fast.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => return Outcome::Failed(MailgateError::Runtime(err)),
    };
    let deadline = Instant::now() + args.timeout;
    match runtime.block_on(deliver(&args.url, tls, request, deadline, args.timeout)) {
        Ok(answer) => Outcome::Answered(answer),
        Err(err) => Outcome::Failed(err),
    }
}

// ---------------------------------------------------------------------------
// Outcomes, and the one place that turns them into exit codes.
// ---------------------------------------------------------------------------

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
    pub exit: Sysexit,
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

/// The exit codes of sysexits.h that mailgate uses. Mail servers know them:
/// Postfix and Exim defer on 75 and bounce on the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sysexit {
    /// Stored by the gateway.
    Ok,
    /// EX_DATAERR (65): the message was rejected for good.
    DataErr,
    /// EX_TEMPFAIL (75): keep the mail and retry later.
    TempFail,
    /// EX_NOPERM (77): refused by policy (blocked sender, virus).
    NoPerm,
}

impl Sysexit {
    /// The numeric exit code.
    pub fn code(self) -> u8 {
        match self {
            Sysexit::Ok => 0,
            Sysexit::DataErr => 65,
            Sysexit::TempFail => 75,
            Sysexit::NoPerm => 77,
        }
    }

    /// What the mail server will do with the mail, in words for the log.
    fn consequence(self) -> &'static str {
        match self {
            Sysexit::Ok => "stored",
            Sysexit::TempFail => "the mail server keeps the mail and retries",
            Sysexit::DataErr | Sysexit::NoPerm => "the mail server returns the mail to its sender",
        }
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
        use Sysexit::{DataErr, TempFail};
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
fn answer_disposition(answer: &GatewayAnswer) -> (Sysexit, &'static str, String, String) {
    use Sysexit::{DataErr, NoPerm, TempFail};
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
            (Sysexit::Ok, "2.0.0", text, format!("stored: {said}"))
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

// ---------------------------------------------------------------------------
// Errors: why no verdict could be had.
// ---------------------------------------------------------------------------

/// Why mailgate could not get a verdict from the gateway. None of these
/// messages contains the token.
#[derive(Debug, thiserror::Error)]
pub enum MailgateError {
    /// Reading the message from stdin failed.
    #[error("cannot read the message from stdin")]
    Stdin(#[source] io::Error),

    /// Neither `--token-file` nor the environment gave a token.
    #[error("no token: pass --token-file or set {TOKEN_ENV}")]
    NoToken,

    /// The token file could not be read.
    #[error("cannot read token file {}", path.display())]
    TokenFile {
        /// The file named by `--token-file`.
        path: PathBuf,
        /// Why it could not be read.
        #[source]
        source: io::Error,
    },

    /// The token file, or the environment variable, is empty.
    #[error("the token in {origin} is empty")]
    EmptyToken {
        /// Where the token came from (a file path or the variable name).
        origin: String,
    },

    /// The token holds bytes that cannot go into an HTTP header (a
    /// newline in the middle, a control character, non-UTF-8).
    #[error("the token holds characters not allowed in an HTTP header")]
    BadToken,

    /// `--ca-file` could not be read, or holds no usable certificate.
    #[error("cannot load CA certificates from {}", path.display())]
    CaFile {
        /// The file named by `--ca-file`.
        path: PathBuf,
        /// Why it was refused.
        #[source]
        source: Box<dyn StdError + Send + Sync>,
    },

    /// No CA bundle of the system could be found for an https URL.
    #[error("no system CA certificates found (set SSL_CERT_FILE or pass --ca-file)")]
    NoSystemRoots,

    /// The async runtime could not be created.
    #[error("cannot start the async runtime")]
    Runtime(#[source] io::Error),

    /// The gateway's host name did not resolve.
    #[error("cannot resolve {host}")]
    Resolve {
        /// The host of `--url`.
        host: String,
        /// The resolver's error.
        #[source]
        source: io::Error,
    },

    /// No address of the gateway accepted a connection.
    #[error("cannot connect to {addr}")]
    Connect {
        /// The `host:port` tried.
        addr: String,
        /// The error of the last address tried.
        #[source]
        source: io::Error,
    },

    /// The TLS handshake failed: an untrusted or expired certificate, a
    /// name mismatch, or a peer that does not speak TLS. A configuration
    /// problem more often than not, but keeping the mail is the safe side.
    #[error("TLS handshake with {host} failed")]
    Tls {
        /// The server name checked against the certificate.
        host: String,
        /// rustls' reason.
        #[source]
        source: io::Error,
    },

    /// `--timeout` passed before the gateway answered.
    #[error("no answer within {} {stage}", humantime::format_duration(*after))]
    Timeout {
        /// The `--timeout` in force.
        after: Duration,
        /// What was under way when it passed.
        stage: &'static str,
    },

    /// The HTTP exchange failed: the connection broke, or the answer was
    /// not HTTP.
    #[error("HTTP exchange with the gateway failed")]
    Http(#[source] hyper::Error),
}

// ---------------------------------------------------------------------------
// The gateway's answer.
// ---------------------------------------------------------------------------

/// The gateway's answer as far as mailgate cares. The body is parsed
/// leniently: an answer that is not JSON leaves the text fields empty, and
/// the status alone decides.
#[derive(Debug, Clone)]
pub struct GatewayAnswer {
    /// The HTTP status.
    pub status: StatusCode,
    /// `Retry-After` in seconds, when given as a number (429, 503).
    pub retry_after: Option<u64>,
    /// The receipt id of a stored message (`{"id": ...}`).
    pub id: Option<String>,
    /// The machine-readable error code (`{"error": ...}`).
    pub error: Option<String>,
    /// The human-readable error text (`{"message": ...}`).
    pub message: Option<String>,
}

impl GatewayAnswer {
    /// Reads what we need from the status, headers and (possibly absent)
    /// body. Every text taken from the body is cut to one short line.
    fn new(status: StatusCode, headers: &http::HeaderMap, body: Option<&[u8]>) -> Self {
        let retry_after = headers
            .get(RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.trim().parse::<u64>().ok());
        let json = body.and_then(|body| serde_json::from_slice::<serde_json::Value>(body).ok());
        let text = |key: &str| {
            json.as_ref()
                .and_then(|json| json.get(key))
                .and_then(serde_json::Value::as_str)
                .map(one_line)
                .filter(|text| !text.is_empty())
        };
        GatewayAnswer {
            status,
            retry_after,
            id: text("id"),
            error: text("error"),
            message: text("message"),
        }
    }

    /// The gateway's human text, else its error code.
    fn message_or_error(&self) -> Option<&str> {
        self.message.as_deref().or(self.error.as_deref())
    }

    /// `HTTP 503 Service Unavailable (code: text)`, for stderr.
    fn describe(&self) -> String {
        let mut said = format!("gateway answered HTTP {}", self.status);
        match (&self.error, &self.message) {
            (Some(error), Some(message)) => said.push_str(&format!(" ({error}: {message})")),
            (Some(text), None) | (None, Some(text)) => said.push_str(&format!(" ({text})")),
            (None, None) => {}
        }
        said
    }
}

/// Makes text from the gateway safe for one output line: control
/// characters become spaces, and it is cut to [`MAX_ECHO_CHARS`].
fn one_line(text: &str) -> String {
    let mut line: String = text
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_ECHO_CHARS)
        .collect();
    if text.trim().chars().count() > MAX_ECHO_CHARS {
        line.push_str("...");
    }
    line
}

// ---------------------------------------------------------------------------
// Step 1: the message.
// ---------------------------------------------------------------------------

/// What was found on stdin.
#[derive(Debug)]
enum Message {
    /// The whole message, within the limit.
    Complete(Bytes),
    /// More than the limit; the rest was read and discarded.
    TooBig {
        /// Bytes read in all.
        size: u64,
    },
}

/// Reads the whole of `input`, keeping at most `limit` bytes. Over the
/// limit it reads on and discards, so the writer sees its data taken rather
/// than a broken pipe, then reports the size.
fn read_message(input: &mut impl Read, limit: u64) -> Result<Message, MailgateError> {
    let mut body = Vec::new();
    // One byte past the limit tells "exactly at the limit" from "over it".
    input
        .take(limit.saturating_add(1))
        .read_to_end(&mut body)
        .map_err(MailgateError::Stdin)?;
    let kept = body.len() as u64;
    if kept <= limit {
        return Ok(Message::Complete(Bytes::from(body)));
    }
    drop(body);
    let rest = io::copy(input, &mut io::sink()).map_err(MailgateError::Stdin)?;
    Ok(Message::TooBig { size: kept + rest })
}

// ---------------------------------------------------------------------------
// Step 2: local configuration.
// ---------------------------------------------------------------------------

/// The `Authorization: Bearer ...` value, checked and marked sensitive
/// (hyper then never logs it nor puts it in an HTTP/2 header table). Its
/// `Debug` hides the value too, so no log line or panic message carries it.
struct Token(HeaderValue);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// The token from `--token-file`, else from [`TOKEN_ENV`]. A file given
/// on the command line wins over the environment, as a flag beats an
/// inherited default.
fn load_token(token_file: Option<&PathBuf>) -> Result<Token, MailgateError> {
    let (raw, origin) = match token_file {
        Some(path) => {
            let raw = std::fs::read_to_string(path).map_err(|source| MailgateError::TokenFile {
                path: path.clone(),
                source,
            })?;
            (raw, path.display().to_string())
        }
        None => match std::env::var(TOKEN_ENV) {
            Ok(raw) => (raw, TOKEN_ENV.to_owned()),
            Err(std::env::VarError::NotPresent) => return Err(MailgateError::NoToken),
            Err(std::env::VarError::NotUnicode(_)) => return Err(MailgateError::BadToken),
        },
    };
    // Editors and `echo` leave a final newline; it is not part of the token.
    let token = raw.trim_end();
    if token.is_empty() {
        return Err(MailgateError::EmptyToken { origin });
    }
    // The error of from_str says nothing of the value, so it cannot leak it.
    let mut bearer =
        HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| MailgateError::BadToken)?;
    bearer.set_sensitive(true);
    Ok(Token(bearer))
}

/// A TLS connector trusting `--ca-file` alone when given, else the system's
/// CA bundle (`SSL_CERT_FILE` first, as OpenSSL does).
fn tls_connector(ca_file: Option<&PathBuf>) -> Result<tokio_rustls::TlsConnector, MailgateError> {
    let roots = crate::tls_roots::load(ca_file.map(PathBuf::as_path)).map_err(|err| match err {
        crate::tls_roots::RootsError::NoSystemBundle => MailgateError::NoSystemRoots,
        other => MailgateError::CaFile {
            path: ca_file.cloned().unwrap_or_default(),
            source: Box::new(other),
        },
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| MailgateError::CaFile {
            path: ca_file.cloned().unwrap_or_default(),
            source: Box::new(err),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // We speak HTTP/1.1 only: one request per process needs nothing more.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// The POST to the gateway. The body is the stdin bytes as read, not a copy.
fn build_request(args: &MailgateArgs, token: &Token, message: Bytes) -> Request<Full<Bytes>> {
    let mut request = Request::new(Full::new(message));
    *request.method_mut() = Method::POST;
    *request.uri_mut() = Uri::from(args.url.path_and_query.clone());
    let headers = request.headers_mut();
    // hyper's connection-level client does not add Host by itself.
    headers.insert(HOST, args.url.host_header.clone());
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("message/rfc822"));
    headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
    headers.insert(
        USER_AGENT,
        HeaderValue::from_static(concat!("intake-mailgate/", env!("CARGO_PKG_VERSION"))),
    );
    headers.insert(AUTHORIZATION, token.0.clone());
    if let Some(sender) = &args.sender {
        headers.insert(ENVELOPE_SENDER, sender.clone());
    }
    for recipient in &args.recipient {
        headers.append(ENVELOPE_RECIPIENT, recipient.clone());
    }
    request
}

// ---------------------------------------------------------------------------
// Step 3: the exchange.
// ---------------------------------------------------------------------------

/// Connects, sends the request and reads the answer, all before `deadline`.
async fn deliver(
    url: &GatewayUrl,
    tls: Option<tokio_rustls::TlsConnector>,
    request: Request<Full<Bytes>>,
    deadline: Instant,
    timeout: Duration,
) -> Result<GatewayAnswer, MailgateError> {
    let tcp = within(deadline, timeout, "connecting", connect(url)).await?;
    match tls {
        None => {
            within(
                deadline,
                timeout,
                "waiting for the answer",
                exchange(tcp, request, deadline),
            )
            .await
        }
        Some(tls) => {
            let name =
                ServerName::try_from(url.host.clone()).map_err(|err| MailgateError::Tls {
                    host: url.host.clone(),
                    source: io::Error::new(io::ErrorKind::InvalidInput, err),
                })?;
            let handshake = async {
                tls.connect(name, tcp)
                    .await
                    .map_err(|source| MailgateError::Tls {
                        host: url.host.clone(),
                        source,
                    })
            };
            let stream = within(deadline, timeout, "in the TLS handshake", handshake).await?;
            within(
                deadline,
                timeout,
                "waiting for the answer",
                exchange(stream, request, deadline),
            )
            .await
        }
    }
}

/// Runs `step` until `deadline`, naming the step if time runs out.
async fn within<T>(
    deadline: Instant,
    timeout: Duration,
    stage: &'static str,
    step: impl Future<Output = Result<T, MailgateError>>,
) -> Result<T, MailgateError> {
    tokio::time::timeout_at(deadline, step)
        .await
        .map_err(|_elapsed| MailgateError::Timeout {
            after: timeout,
            stage,
        })?
}

/// Resolves the gateway's host and connects to the first address that
/// answers.
async fn connect(url: &GatewayUrl) -> Result<TcpStream, MailgateError> {
    let addrs: Vec<_> = tokio::net::lookup_host((url.host.as_str(), url.port))
        .await
        .map_err(|source| MailgateError::Resolve {
            host: url.host.clone(),
            source,
        })?
        .collect();
    let addr = format!("{}:{}", url.host_for_display(), url.port);
    let mut last_error = io::Error::new(io::ErrorKind::NotFound, "the name has no address");
    for socket_addr in addrs {
        match TcpStream::connect(socket_addr).await {
            Ok(stream) => {
                // One request, written at once: Nagle would only add delay.
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Err(err) => last_error = err,
        }
    }
    Err(MailgateError::Connect {
        addr,
        source: last_error,
    })
}

/// One HTTP/1.1 request on an open connection. Once a 2xx status is in,
/// the message is stored whatever happens to the body: the body is read
/// only for the receipt id, until the deadline, and its loss is no failure.
async fn exchange<S>(
    stream: S,
    request: Request<Full<Bytes>>,
    deadline: Instant,
) -> Result<GatewayAnswer, MailgateError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(MailgateError::Http)?;
    // The connection future does the actual I/O; its own error also comes
    // out of send_request, so it is not looked at here.
    tokio::spawn(connection);
    let response = sender
        .send_request(request)
        .await
        .map_err(MailgateError::Http)?;
    let (head, body) = response.into_parts();
    let body = tokio::time::timeout_at(deadline, Limited::new(body, MAX_ANSWER_BYTES).collect())
        .await
        .ok()
        .and_then(Result::ok)
        .map(|collected| collected.to_bytes());
    Ok(GatewayAnswer::new(
        head.status,
        &head.headers,
        body.as_deref(),
    ))
}

// ---------------------------------------------------------------------------
// Argument types.
// ---------------------------------------------------------------------------

/// The transport of `--url`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatewayScheme {
    /// Plain HTTP (loopback, or a host-local deployment).
    Http,
    /// HTTPS with rustls.
    Https,
}

/// A checked `--url`, reduced to what the exchange needs.
#[derive(Debug, Clone)]
pub struct GatewayUrl {
    /// http or https.
    pub scheme: GatewayScheme,
    /// The host without IPv6 brackets, as resolved and as checked against
    /// the TLS certificate.
    pub host: String,
    /// The port, defaulted by scheme.
    pub port: u16,
    /// The request target: the URL's path with `/v1/messages` appended
    /// unless it already ends so, and its query if any.
    pub path_and_query: PathAndQuery,
    /// The `Host` header: the URL's authority as written.
    host_header: HeaderValue,
}

impl GatewayUrl {
    /// Checks a `--url`. Errors become clap usage errors (exit 64): a URL
    /// that cannot work will not start working on a retry.
    pub fn parse(text: &str) -> Result<Self, String> {
        let uri: Uri = text
            .parse()
            .map_err(|err| format!("not a URL ({err}); expected e.g. http://127.0.0.1:8080"))?;
        let scheme = match uri.scheme() {
            Some(scheme) if *scheme == Scheme::HTTP => GatewayScheme::Http,
            Some(scheme) if *scheme == Scheme::HTTPS => GatewayScheme::Https,
            Some(other) => return Err(format!("scheme {other} not supported; use http or https")),
            None => return Err("no scheme; expected e.g. http://127.0.0.1:8080".to_owned()),
        };
        let authority = uri.authority().ok_or("no host in the URL")?;
        if authority.as_str().contains('@') {
            return Err(
                "no user:password in the URL, please: the token is the credential".to_owned(),
            );
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if host.is_empty() {
            return Err("no host in the URL".to_owned());
        }
        let port = authority.port_u16().unwrap_or(match scheme {
            GatewayScheme::Http => 80,
            GatewayScheme::Https => 443,
        });
        let path = uri.path();
        let path = if path.ends_with(MESSAGES_PATH) {
            path.to_owned()
        } else {
            format!("{}{MESSAGES_PATH}", path.trim_end_matches('/'))
        };
        let target = match uri.query() {
            Some(query) => format!("{path}?{query}"),
            None => path,
        };
        let path_and_query =
            PathAndQuery::from_str(&target).map_err(|err| format!("bad path: {err}"))?;
        let host_header =
            HeaderValue::from_str(authority.as_str()).map_err(|err| format!("bad host: {err}"))?;
        Ok(GatewayUrl {
            scheme,
            host,
            port,
            path_and_query,
            host_header,
        })
    }

    /// The host as written in a URL (IPv6 in brackets), for messages.
    fn host_for_display(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        }
    }
}

impl fmt::Display for GatewayUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.scheme {
            GatewayScheme::Http => "http",
            GatewayScheme::Https => "https",
        };
        write!(
            f,
            "{scheme}://{}:{}{}",
            self.host_for_display(),
            self.port,
            self.path_and_query
        )
    }
}

/// Checks an envelope address for use as a header value. UTF-8 (SMTPUTF8
/// addresses) passes; CR, LF and other control characters, which could
/// forge headers, do not. Empty is allowed: the null sender of a bounce.
fn envelope_address(text: &str) -> Result<HeaderValue, String> {
    HeaderValue::from_bytes(text.as_bytes())
        .map_err(|_| "control characters are not allowed in an address".to_owned())
}

/// Parses `--timeout`; zero would fail every delivery, so it is refused.
fn parse_timeout(text: &str) -> Result<Duration, String> {
    let duration =
        humantime::parse_duration(text).map_err(|err| format!("{err}; expected e.g. 30s, 2m"))?;
    if duration.is_zero() {
        return Err("must be more than zero".to_owned());
    }
    Ok(duration)
}

/// Parses `--max-size` with the config file's size grammar, so that a
/// size reads the same on the command line and in `intake.toml`; zero
/// would refuse every mail, so it is refused.
fn parse_max_size(text: &str) -> Result<ByteSize, String> {
    let size = ByteSize::parse(text)?;
    if size.bytes() == 0 {
        return Err("must be more than zero".to_owned());
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn base_url_gets_the_messages_path_appended() {
        let url = GatewayUrl::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!(url.path_and_query.as_str(), "/v1/messages");
        assert_eq!(url.port, 8080);
        let url = GatewayUrl::parse("https://desk.example/intake/").unwrap();
        assert_eq!(url.path_and_query.as_str(), "/intake/v1/messages");
        assert_eq!(url.port, 443);
    }

    #[test]
    fn full_endpoint_url_is_used_as_is() {
        let url = GatewayUrl::parse("http://[::1]:9000/v1/messages?tenant=a").unwrap();
        assert_eq!(url.path_and_query.as_str(), "/v1/messages?tenant=a");
        assert_eq!(
            url.host, "::1",
            "IPv6 host must lose its brackets for lookup and TLS"
        );
        assert_eq!(url.to_string(), "http://[::1]:9000/v1/messages?tenant=a");
    }

    #[test]
    fn url_with_other_scheme_or_credentials_is_refused() {
        assert!(
            GatewayUrl::parse("ftp://gw/").is_err(),
            "ftp must be refused"
        );
        assert!(
            GatewayUrl::parse("127.0.0.1:8080").is_err(),
            "a URL needs a scheme"
        );
        assert!(
            GatewayUrl::parse("http://user:secret@gw/").is_err(),
            "credentials in the URL must be refused"
        );
    }

    #[test]
    fn zero_max_size_is_refused() {
        assert!(
            parse_max_size("0").is_err(),
            "a zero limit would refuse every mail"
        );
        assert_eq!(parse_max_size("1KB").unwrap().bytes(), 1_000);
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
                Sysexit::Ok => '2',
                Sysexit::TempFail => '4',
                Sysexit::DataErr | Sysexit::NoPerm => '5',
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
            Sysexit::Ok,
            "a 2xx is stored even with a garbled body"
        );
    }

    #[test]
    fn oversized_input_is_drained_and_reported() {
        let input = vec![b'a'; 5_000];
        match read_message(&mut input.as_slice(), 1_000).unwrap() {
            Message::TooBig { size } => {
                assert_eq!(size, 5_000, "the rest must be read and counted")
            }
            Message::Complete(_) => panic!("5000 bytes passed a 1000-byte limit"),
        }
        match read_message(&mut input.as_slice(), 5_000).unwrap() {
            Message::Complete(body) => assert_eq!(body.len(), 5_000),
            Message::TooBig { .. } => panic!("a message exactly at the limit was refused"),
        }
    }

    #[test]
    fn token_debug_output_hides_the_secret() {
        let token = Token(HeaderValue::from_static("Bearer s3cret"));
        assert!(
            !format!("{token:?}").contains("s3cret"),
            "Debug printed the token"
        );
    }
}
