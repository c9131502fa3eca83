//! The SMTP relay acknowledgements are handed to (lettre over rustls), and
//! what its answers mean: a 250 is sent; a 5xx is refused for good (the
//! address does not exist: counted, never retried); anything else (4xx,
//! no connection, a timeout, TLS) is tried again with backoff.

use lettre::address::Envelope;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, CertificateStore, Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

use super::config::{AcknowledgeConfig, RelayTls};

/// What one hand-over came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handover {
    Sent,
    /// Refused for good (5xx): what the relay said.
    Refused(String),
    /// Try again later: what failed.
    Failed(String),
}

pub struct Relay {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    /// `host:port`, for logs.
    pub name: String,
}

impl Relay {
    pub fn new(config: &AcknowledgeConfig) -> Result<Relay, String> {
        let relay = &config.relay;
        let port = config.port();
        let mut builder =
            AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(relay.host.as_str())
                .port(port)
                .timeout(Some(relay.timeout.0));
        if relay.tls != RelayTls::None {
            let bundle = crate::tls_roots::bundle_path(relay.ca_file.as_deref())
                .map_err(|e| format!("acknowledge.relay.ca_file: {e}"))?;
            let pem = std::fs::read(&bundle).map_err(|e| {
                format!(
                    "acknowledge.relay.ca_file: cannot read {}: {e}",
                    bundle.display()
                )
            })?;
            let certificate = Certificate::from_pem(&pem)
                .map_err(|e| format!("acknowledge.relay.ca_file {}: {e}", bundle.display()))?;
            let parameters = TlsParameters::builder(relay.host.clone())
                .certificate_store(CertificateStore::None)
                .add_root_certificate(certificate)
                .build_rustls()
                .map_err(|e| format!("acknowledge.relay: TLS: {e}"))?;
            builder = builder.tls(match relay.tls {
                RelayTls::Implicit => Tls::Wrapper(parameters),
                _ => Tls::Required(parameters),
            });
        }
        if let (Some(user), Some(password)) = (&relay.username, &relay.password) {
            let password = password
                .resolve()
                .map_err(|e| format!("acknowledge.relay.password: {e}"))?;
            builder = builder.credentials(Credentials::new(
                user.clone(),
                password.expose().to_string(),
            ));
        }
        if let Some(helo) = &relay.helo {
            builder = builder.hello_name(ClientId::Domain(helo.clone()));
        }
        Ok(Relay {
            transport: builder.build(),
            name: format!("{}:{port}", relay.host),
        })
    }

    /// Hands `mail` over for `to`, from the null sender `<>`.
    pub async fn send(&self, to: &str, mail: &[u8]) -> Handover {
        let recipient = match to.parse() {
            Ok(r) => r,
            Err(e) => return Handover::Refused(format!("`{to}` is not an address: {e}")),
        };
        let envelope = match Envelope::new(None, vec![recipient]) {
            Ok(e) => e,
            Err(e) => return Handover::Refused(e.to_string()),
        };
        match self.transport.send_raw(&envelope, mail).await {
            Ok(_) => Handover::Sent,
            Err(e) if e.is_permanent() => Handover::Refused(e.to_string()),
            Err(e) => Handover::Failed(e.to_string()),
        }
    }
}
