//! What can go wrong while working a mailbox. Every variant means "the
//! mail stays on the server and is read again": none loses a mail. The
//! `kind` is the bounded metric label; `is_auth` picks the long backoff.

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ImapError {
    #[error("cannot connect to {addr}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the IMAP server gave no answer to {step} within {timeout:?}")]
    Timeout {
        step: &'static str,
        timeout: Duration,
    },
    #[error("TLS with {host} failed (is the certificate valid for this name and signed by a trusted CA? see imap.ca_file)")]
    Tls {
        host: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot load the trusted CA certificates: {0}")]
    Ca(String),
    #[error("the server does not offer STARTTLS; use tls = \"implicit\" (port 993)")]
    NoStarttls,
    #[error("the server refused the login of `{user}`: {reason} (check imap.username and imap.password)")]
    Auth { user: String, reason: String },
    #[error("cannot read the password or token: {0}")]
    Secret(String),
    #[error("the IMAP server refused {step}: {said}")]
    Refused { step: &'static str, said: String },
    #[error("IMAP {step} failed")]
    Protocol {
        step: &'static str,
        #[source]
        source: async_imap::error::Error,
    },
    #[error("the server sent no UIDVALIDITY for mailbox `{0}`")]
    NoUidValidity(String),
    #[error("mailbox `{0}` changed its UIDVALIDITY during the session (re-created or restored); it is read again from the start")]
    UidValidityChanged(String),
    #[error("{0}")]
    FolderMissing(Box<MissingFolder>),
    #[error("{count} stored mails cannot be acknowledged: the IMAP server refused {step} to \"{folder}\": {said}")]
    Unacknowledged {
        count: u64,
        step: &'static str,
        folder: String,
        said: String,
    },
    #[error("a mail could not be stored; it stays on the server")]
    Store(#[source] crate::pipeline::PipelineError),
    #[error("a mail's pipeline task failed: {0}")]
    Task(String),
    #[error("Redis did not keep the checkpoint or lease")]
    Redis(#[source] redis::RedisError),
    #[error("Redis did not answer within {0:?}")]
    RedisTimeout(Duration),
}

/// A folder the mailbox needs that does not exist and cannot be made.
#[derive(Debug, thiserror::Error)]
#[error("folder \"{folder}\" ({key} = \"{configured}\") does not exist on the server and cannot be created{said}; this server names personal folders with {personal}: set {key} to a folder that exists or that this account may create, such as \"{example}\"")]
pub struct MissingFolder {
    pub key: &'static str,
    pub configured: String,
    pub folder: String,
    /// `: the server said ...`, or empty when CREATE was not tried.
    pub said: String,
    pub personal: String,
    pub example: String,
}

impl ImapError {
    /// The metric label: a small fixed set.
    pub fn kind(&self) -> &'static str {
        match self {
            ImapError::Connect { .. } => "connect",
            ImapError::Timeout { .. } => "timeout",
            ImapError::Tls { .. } | ImapError::Ca(_) | ImapError::NoStarttls => "tls",
            ImapError::Auth { .. } | ImapError::Secret(_) => "auth",
            ImapError::Protocol { .. }
            | ImapError::Refused { .. }
            | ImapError::NoUidValidity(_)
            | ImapError::UidValidityChanged(_) => "protocol",
            ImapError::Store(_) | ImapError::Task(_) => "store",
            ImapError::FolderMissing(_) => "folder",
            ImapError::Unacknowledged { .. } => "unacknowledged",
            ImapError::Redis(_) | ImapError::RedisTimeout(_) => "redis",
        }
    }

    /// A refused login or unreadable secret: retrying soon will not help and
    /// may lock the account, so the wait is long.
    pub fn is_auth(&self) -> bool {
        matches!(self, ImapError::Auth { .. } | ImapError::Secret(_))
    }

    /// Maps a client error of `step`; a NO or BAD answer becomes
    /// [`ImapError::Refused`] with the server's own words.
    pub(crate) fn protocol(step: &'static str) -> impl FnOnce(async_imap::error::Error) -> Self {
        move |source| match &source {
            async_imap::error::Error::No(text) | async_imap::error::Error::Bad(text) => {
                ImapError::Refused {
                    step,
                    said: server_text(text),
                }
            }
            _ => ImapError::Protocol { step, source },
        }
    }
}

/// The human text of a NO / BAD answer. async-imap hands it over as the
/// Debug form of the parsed outcome (`... information: Some("...") }` or
/// `code: None, info: Some("...")`);
/// the quoted information is what the server said.
pub(crate) fn server_text(text: &str) -> String {
    const MARK: &str = "Some(\"";
    match text.find(MARK) {
        Some(start) => {
            let rest = &text[start + MARK.len()..];
            let end = rest.rfind("\")").unwrap_or(rest.len());
            rest[..end].replace("\\\"", "\"")
        }
        None => text.trim().to_string(),
    }
}

/// Runs `fut` with a bound; past it the step is reported as a timeout.
pub(crate) async fn bounded<T>(
    step: &'static str,
    timeout: Duration,
    fut: impl std::future::Future<Output = Result<T, ImapError>>,
) -> Result<T, ImapError> {
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| ImapError::Timeout { step, timeout })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_servers_own_words_are_kept() {
        let debug = r#"outcome: Outcome { code: None, information: Some("Mailbox doesn't exist: x (0.001 secs).") }"#;
        assert_eq!(server_text(debug), "Mailbox doesn't exist: x (0.001 secs).");
        assert_eq!(server_text(" plain words "), "plain words");
        let login = r#"code: None, info: Some("[AUTHENTICATIONFAILED] Authentication failed.")"#;
        assert_eq!(
            server_text(login),
            "[AUTHENTICATIONFAILED] Authentication failed."
        );
    }
}
