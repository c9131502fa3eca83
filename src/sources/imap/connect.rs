//! One authenticated IMAP session: TCP, then TLS (implicit or STARTTLS,
//! the certificate always verified), then LOGIN, AUTHENTICATE PLAIN or
//! XOAUTH2. Every step is bounded by a timeout.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use async_imap::types::Capabilities;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::config::{AuthMethod, ImapConfig, TlsMode};
use super::error::{bounded, ImapError};

/// Any byte stream a session runs over: clear TCP (loopback tests) or TLS.
pub trait ImapIo: AsyncRead + AsyncWrite + Unpin + Send + fmt::Debug {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + fmt::Debug> ImapIo for T {}

pub type Session = async_imap::Session<Box<dyn ImapIo>>;

/// What the server offers that changes how the mailbox is worked.
#[derive(Debug, Clone, Copy, Default)]
pub struct Features {
    pub idle: bool,
    /// RFC 6851 MOVE; without it, COPY + STORE \Deleted + EXPUNGE.
    pub moves: bool,
    /// RFC 4315 UID EXPUNGE, so only our own mails are expunged.
    pub uidplus: bool,
    /// RFC 2342 NAMESPACE: where the user's folders live.
    pub namespace: bool,
}

impl Features {
    fn from_capabilities(caps: &Capabilities) -> Self {
        Features {
            idle: caps.has_str("IDLE"),
            moves: caps.has_str("MOVE"),
            uidplus: caps.has_str("UIDPLUS"),
            namespace: caps.has_str("NAMESPACE"),
        }
    }
}

/// The TLS settings of one account, built once at start.
pub fn tls_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, ImapError> {
    let roots = crate::tls_roots::load(ca_file)
        .map_err(|e| ImapError::Ca(crate::telemetry::error_chain(&e)))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ImapError::Ca(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Connects, secures and logs in. The password (or token) is read now, so
/// a rotated token file is picked up at the next login.
pub async fn connect(
    config: &ImapConfig,
    tls: &Arc<rustls::ClientConfig>,
) -> Result<(Session, Features), ImapError> {
    let connect_timeout = config.connect_timeout.0;
    let command_timeout = config.command_timeout.0;
    let addr = format!("{}:{}", config.host, config.port());
    let tcp = bounded("connect", connect_timeout, async {
        TcpStream::connect((config.host.as_str(), config.port()))
            .await
            .map_err(|source| ImapError::Connect {
                addr: addr.clone(),
                source,
            })
    })
    .await?;
    let _ = tcp.set_nodelay(true);

    let client: async_imap::Client<Box<dyn ImapIo>> = match config.tls {
        TlsMode::Implicit => {
            let stream = bounded(
                "TLS handshake",
                connect_timeout,
                handshake(config, tls, tcp),
            )
            .await?;
            let mut client = async_imap::Client::new(Box::new(stream) as Box<dyn ImapIo>);
            bounded("greeting", command_timeout, greeting(&mut client)).await?;
            client
        }
        TlsMode::Starttls => {
            let mut client = async_imap::Client::new(tcp);
            bounded("greeting", command_timeout, greeting(&mut client)).await?;
            bounded("STARTTLS", command_timeout, async {
                client
                    .run_command_and_check_ok("STARTTLS", None)
                    .await
                    .map_err(|e| match ImapError::protocol("STARTTLS")(e) {
                        ImapError::Refused { .. } => ImapError::NoStarttls,
                        other => other,
                    })
            })
            .await?;
            // No greeting follows STARTTLS (RFC 3501 6.2.1).
            let tcp = client.into_inner();
            let stream = bounded(
                "TLS handshake",
                connect_timeout,
                handshake(config, tls, tcp),
            )
            .await?;
            async_imap::Client::new(Box::new(stream) as Box<dyn ImapIo>)
        }
        TlsMode::None => {
            let mut client = async_imap::Client::new(Box::new(tcp) as Box<dyn ImapIo>);
            bounded("greeting", command_timeout, greeting(&mut client)).await?;
            client
        }
    };

    let secret = config.password.resolve().map_err(ImapError::Secret)?;
    let user = config.username.clone();
    let refused = |e: async_imap::error::Error| match e {
        async_imap::error::Error::No(reason) | async_imap::error::Error::Bad(reason) => {
            ImapError::Auth {
                user: user.clone(),
                reason: super::error::server_text(&reason),
            }
        }
        other => ImapError::protocol("login")(other),
    };
    let mut session = bounded("login", command_timeout, async {
        match config.auth {
            AuthMethod::Login => client
                .login(&config.username, secret.expose())
                .await
                .map_err(|(e, _)| refused(e)),
            AuthMethod::Plain => client
                .authenticate("PLAIN", Plain::new(&config.username, secret.expose()))
                .await
                .map_err(|(e, _)| refused(e)),
            AuthMethod::Xoauth2 => client
                .authenticate("XOAUTH2", XOAuth2::new(&config.username, secret.expose()))
                .await
                .map_err(|(e, _)| refused(e)),
        }
    })
    .await?;
    let caps = bounded("CAPABILITY", command_timeout, async {
        session
            .capabilities()
            .await
            .map_err(ImapError::protocol("CAPABILITY"))
    })
    .await?;
    Ok((session, Features::from_capabilities(&caps)))
}

async fn handshake(
    config: &ImapConfig,
    tls: &Arc<rustls::ClientConfig>,
    tcp: TcpStream,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ImapError> {
    let host = config.host.trim_start_matches('[').trim_end_matches(']');
    let name = ServerName::try_from(host.to_string()).map_err(|e| ImapError::Tls {
        host: config.host.clone(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
    })?;
    tokio_rustls::TlsConnector::from(tls.clone())
        .connect(name, tcp)
        .await
        .map_err(|source| ImapError::Tls {
            host: config.host.clone(),
            source,
        })
}

/// Reads the server's greeting; a `BYE` (server full, shutting down) is a
/// connection failure.
async fn greeting<T>(client: &mut async_imap::Client<T>) -> Result<(), ImapError>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + fmt::Debug,
{
    let response = client
        .read_response()
        .await
        .map_err(|e| ImapError::protocol("greeting")(e.into()))?;
    match response {
        None => Err(ImapError::protocol("greeting")(
            async_imap::error::Error::ConnectionLost,
        )),
        Some(response) => match response.parsed() {
            async_imap::imap_proto::Response::Data {
                status: async_imap::imap_proto::Status::Bye,
                outcome,
                ..
            } => Err(ImapError::protocol("greeting")(
                async_imap::error::Error::No(
                    outcome.information.as_deref().unwrap_or("BYE").to_string(),
                ),
            )),
            _ => Ok(()),
        },
    }
}

/// SASL PLAIN (RFC 4616): one message, `\0user\0password`.
struct Plain {
    message: Vec<u8>,
}

impl Plain {
    fn new(user: &str, password: &str) -> Self {
        Plain {
            message: format!("\0{user}\0{password}").into_bytes(),
        }
    }
}

impl async_imap::Authenticator for Plain {
    type Response = Vec<u8>;
    fn process(&mut self, _challenge: &[u8]) -> Vec<u8> {
        std::mem::take(&mut self.message)
    }
}

/// SASL XOAUTH2 (Gmail, Microsoft 365): the user and bearer token in one
/// message. On failure the server sends an error challenge, which is
/// answered with an empty message, as the protocol wants.
struct XOAuth2 {
    message: Vec<u8>,
}

impl XOAuth2 {
    fn new(user: &str, token: &str) -> Self {
        XOAuth2 {
            message: format!("user={user}\x01auth=Bearer {token}\x01\x01").into_bytes(),
        }
    }
}

impl async_imap::Authenticator for XOAuth2 {
    type Response = Vec<u8>;
    fn process(&mut self, _challenge: &[u8]) -> Vec<u8> {
        std::mem::take(&mut self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_imap::Authenticator;

    #[test]
    fn xoauth2_sends_user_and_token_once_then_an_empty_answer() {
        let mut auth = XOAuth2::new("me@shop.example", "ya29.token");
        assert_eq!(
            auth.process(b""),
            b"user=me@shop.example\x01auth=Bearer ya29.token\x01\x01".to_vec()
        );
        assert!(
            auth.process(br#"{"status":"401"}"#).is_empty(),
            "an error challenge is answered with an empty message"
        );
    }

    #[test]
    fn plain_is_authzid_user_password() {
        let mut auth = Plain::new("u", "p");
        assert_eq!(auth.process(b""), b"\0u\0p".to_vec());
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let err = tls_config(Some(&path)).expect_err("no certificate");
        assert!(err.to_string().contains("no PEM certificate"), "{err}");
    }
}
