//! The HTTP client both targets use: one request on one fresh HTTP/1.1
//! connection (TLS by rustls with the system roots or a CA file), and the
//! answer's status, `Retry-After` and first bytes. A fresh connection per
//! request keeps a broken or half-read one from ever being reused; the
//! targets bound each exchange with their own timeout.

use std::io;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::header::{HOST, RETRY_AFTER, USER_AGENT};
use http::{HeaderValue, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::policy::parse_retry_after;

/// Where requests go: a URL's scheme, host and port (its path is the
/// caller's).
pub struct Endpoint {
    /// The URL as configured, for paths relative to it.
    pub uri: Uri,
    host: String,
    port: u16,
    host_header: HeaderValue,
    /// `Some` for `https://`.
    tls: Option<tokio_rustls::TlsConnector>,
}

/// What came back.
#[derive(Debug)]
pub struct Response {
    pub code: u16,
    pub retry_after: Option<std::time::Duration>,
    /// The body's first bytes, up to the caller's limit.
    pub body: Vec<u8>,
}

impl Endpoint {
    /// Parses `url` and loads the trust anchors for `https://`.
    pub fn new(url: &str, ca_file: Option<&std::path::Path>) -> Result<Endpoint, String> {
        let uri: Uri = url.parse().map_err(|e| format!("url: {e}"))?;
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
            Some(tls_connector(ca_file)?)
        } else {
            None
        };
        Ok(Endpoint {
            uri,
            host,
            port,
            host_header,
            tls,
        })
    }

    /// Sends `request` (its URI the path and query only; `Host` and
    /// `User-Agent` are added) and reads at most `max_body` bytes of the
    /// answer. `Err` says why there was no answer.
    pub async fn send(
        &self,
        mut request: Request<Full<Bytes>>,
        max_body: usize,
    ) -> Result<Response, String> {
        let headers = request.headers_mut();
        headers.insert(HOST, self.host_header.clone());
        headers.insert(
            USER_AGENT,
            HeaderValue::from_static(concat!("intake-delivery/", env!("CARGO_PKG_VERSION"))),
        );
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| format!("connect to {}:{}: {e}", self.host, self.port))?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => exchange(tcp, request, max_body).await,
            Some(tls) => {
                let name = ServerName::try_from(self.host.clone())
                    .map_err(|e| format!("TLS name {}: {e}", self.host))?;
                let stream = tls
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("TLS with {}: {e}", self.host))?;
                exchange(stream, request, max_body).await
            }
        }
    }
}

async fn exchange<S>(
    stream: S,
    request: Request<Full<Bytes>>,
    max_body: usize,
) -> Result<Response, String>
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
        let mut bytes = Vec::new();
        while bytes.len() < max_body {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        bytes.extend_from_slice(data);
                    }
                }
                // A broken body after the status: the status stands.
                Some(Err(_)) | None => break,
            }
        }
        bytes.truncate(max_body);
        Ok(Response {
            code,
            retry_after,
            body: bytes,
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
