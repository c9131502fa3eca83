//! Why mailgate could not get a verdict from the gateway: every local or
//! transient failure, each of which keeps the mail (exit 75).

use std::error::Error as StdError;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use super::args::TOKEN_ENV;

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
