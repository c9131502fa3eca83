//! Target `webhook`: one signed `POST` of an item's JSON to a URL, over
//! HTTP/1.1 (TLS by rustls with the system roots or `ca_file`). The whole
//! exchange (connect, TLS, request, the answer's head and first bytes) is
//! bounded by `timeout`, so a receiver that never answers, or answers a
//! byte a minute, holds an attempt no longer than that.
//!
//! Headers: `Idempotency-Key` (the receipt id; for an `events` update
//! `events-<entry id>`), `Intake-Attempt` (1, 2, ...), `Intake-Kind`
//! (`message`, `duplicates`, `recipients`), `Intake-Signature` (see
//! [`sign`]). A re-drive from the dead stream keeps the same key.

pub mod body;
pub mod sign;

use std::io;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST, RETRY_AFTER, USER_AGENT};
use http::{HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::config::WebhookConfig;
use super::item::Item;
use super::policy::{parse_retry_after, Answer};

/// The most of an answer's body kept (for the dead stream and the log).
pub const EXCERPT_BYTES: usize = 512;

/// A configured webhook, ready to send.
pub struct Webhook {
    uri: Uri,
    host: String,
    port: u16,
    host_header: HeaderValue,
    /// `Some` for `https://`.
    tls: Option<tokio_rustls::TlsConnector>,
    signer: sign::Signer,
    include_raw: bool,
    max_body: usize,
    timeout: Duration,
}

impl Webhook {
    /// Reads the secrets and the trust anchors; fails as the config check
    /// would.
    pub fn new(config: &WebhookConfig) -> Result<Webhook, String> {
        let uri: Uri = config.url.parse().map_err(|e| format!("url: {e}"))?;
        let host = uri
            .host()
            .ok_or("url: no host")?
            .trim_matches(['[', ']'])
            .to_string();
        let https = uri.scheme_str() == Some("https");
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let host_header =
            HeaderValue::from_str(uri.authority().map(|a| a.as_str()).unwrap_or(&host))
                .map_err(|e| format!("url: {e}"))?;
        let tls = if https {
            Some(tls_connector(config.ca_file.as_deref())?)
        } else {
            None
        };
        let mut secrets = vec![config
            .secret
            .resolve()
            .map_err(|e| format!("secret: {e}"))?];
        if let Some(previous) = &config.previous_secret {
            secrets.push(
                previous
                    .resolve()
                    .map_err(|e| format!("previous_secret: {e}"))?,
            );
        }
        let signer = sign::Signer::new(secrets.iter().map(|s| s.expose().as_bytes()));
        Ok(Webhook {
            uri,
            host,
            port,
            host_header,
            tls,
            signer,
            include_raw: config.include_raw,
            max_body: config.max_body.as_usize(),
            timeout: config.timeout.into(),
        })
    }

    /// One attempt: the answer, a timeout, or why there was no connection.
    pub async fn deliver(&self, item: &Item<'_>) -> Answer {
        let shaped = body::shape(item.envelope, self.include_raw, self.max_body);
        let now = SystemTime::now();
        let t = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let signature = self.signer.header(t, &shaped.body);
        let mut request = Request::new(Full::new(Bytes::from(shaped.body)));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = self
            .uri
            .path_and_query()
            .map(|p| Uri::from(p.clone()))
            .unwrap_or_else(|| Uri::from_static("/"));
        let headers = request.headers_mut();
        headers.insert(HOST, self.host_header.clone());
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(
            USER_AGENT,
            HeaderValue::from_static(concat!("intake-delivery/", env!("CARGO_PKG_VERSION"))),
        );
        for (name, value) in [
            ("idempotency-key", item.idempotency_key.to_string()),
            ("intake-attempt", item.attempt.to_string()),
            ("intake-kind", item.kind.to_string()),
            ("intake-signature", signature),
        ] {
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.insert(name, value);
            }
        }
        match tokio::time::timeout(self.timeout, self.exchange(request)).await {
            Err(_elapsed) => Answer::Timeout,
            Ok(Err(failure)) => Answer::Unreachable(failure),
            Ok(Ok(answer)) => answer,
        }
    }

    async fn exchange(&self, request: Request<Full<Bytes>>) -> Result<Answer, String> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| format!("connect to {}:{}: {e}", self.host, self.port))?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => send(tcp, request).await,
            Some(tls) => {
                let name = ServerName::try_from(self.host.clone())
                    .map_err(|e| format!("TLS name {}: {e}", self.host))?;
                let stream = tls
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("TLS with {}: {e}", self.host))?;
                send(stream, request).await
            }
        }
    }
}

/// The request on one fresh HTTP/1.1 connection, and the answer's head
/// and first [`EXCERPT_BYTES`].
async fn send<S>(stream: S, request: Request<Full<Bytes>>) -> Result<Answer, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    let connection = tokio::spawn(connection);
    let result = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("HTTP exchange: {e}"))?;
        let code = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        let mut body = response.into_body();
        let mut excerpt = Vec::new();
        while excerpt.len() < EXCERPT_BYTES {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        excerpt.extend_from_slice(data);
                    }
                }
                // A broken body after the status: the status stands.
                Some(Err(_)) | None => break,
            }
        }
        excerpt.truncate(EXCERPT_BYTES);
        Ok(Answer::Status {
            code,
            retry_after,
            excerpt: String::from_utf8_lossy(&excerpt).into_owned(),
        })
    }
    .await;
    // One request per connection: drop it, whatever is left unread.
    connection.abort();
    result
}

/// A TLS client trusting `ca_file` alone when given, else the system roots.
fn tls_connector(ca_file: Option<&std::path::Path>) -> Result<tokio_rustls::TlsConnector, String> {
    let roots = crate::tls_roots::load(ca_file).map_err(|e| format!("ca_file: {e}"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e: rustls::Error| io::Error::other(e).to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}
