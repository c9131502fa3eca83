//! The one HTTP/1.1 POST to the gateway: the request, the TLS trust for an
//! https `--url` (`--ca-file` alone, else the system's CA bundle), and the
//! exchange (name lookup, connect, TLS, upload, answer) bounded as a whole
//! by `--timeout`. mailgate never retries by itself: a failure exits 75 and
//! the mail server, which keeps the mail, retries later.

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HOST, USER_AGENT};
use http::{HeaderName, HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::answer::GatewayAnswer;
use super::args::{GatewayUrl, MailgateArgs};
use super::client::{ClientHeaders, CLIENT_ADDRESS, CLIENT_HELO};
use super::error::MailgateError;
use super::token::Token;

/// Header carrying the SMTP envelope sender (empty for a bounce, `<>`).
const ENVELOPE_SENDER: HeaderName = HeaderName::from_static("x-intake-envelope-sender");

/// Header carrying one SMTP envelope recipient; repeated per recipient.
const ENVELOPE_RECIPIENT: HeaderName = HeaderName::from_static("x-intake-envelope-recipient");

/// The most of the gateway's answer body we read: it is a small JSON
/// receipt or error, and a misbehaving peer must not make us buffer more.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// A TLS connector trusting `--ca-file` alone when given, else the system's
/// CA bundle (`SSL_CERT_FILE` first, as OpenSSL does).
pub(super) fn tls_connector(
    ca_file: Option<&PathBuf>,
) -> Result<tokio_rustls::TlsConnector, MailgateError> {
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
pub(super) fn build_request(
    args: &MailgateArgs,
    client: &ClientHeaders,
    token: &Token,
    message: Bytes,
) -> Request<Full<Bytes>> {
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
    if let Some(sender) = args.envelope_sender() {
        headers.insert(ENVELOPE_SENDER, sender);
    }
    for recipient in args.all_recipients() {
        headers.append(ENVELOPE_RECIPIENT, recipient.clone());
    }
    if let Some(address) = &client.address {
        headers.insert(CLIENT_ADDRESS, address.clone());
    }
    if let Some(helo) = &client.helo {
        headers.insert(CLIENT_HELO, helo.clone());
    }
    request
}

/// Connects, sends the request and reads the answer, all before `deadline`.
pub(super) async fn deliver(
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
