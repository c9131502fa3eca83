//! The accept loop: HTTP/1.1 and HTTP/2 (by ALPN over TLS, by preface in
//! clear text), optional TLS with rustls, a cap on open connections, a
//! header-read timeout against slow clients, an idle timeout for kept-alive
//! connections, and graceful shutdown.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use http::{Request, Response};
use hyper::body::Incoming;

use super::respond::Body;
use super::{handle, AppState};

/// Why TLS could not be set up; start-up stops with this.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read certificate chain {path}")]
    Cert {
        path: String,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("cannot read private key {path}")]
    Key {
        path: String,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("the certificate and key do not make a TLS configuration")]
    Config(#[source] rustls::Error),
}

/// Builds a TLS acceptor offering HTTP/2 and HTTP/1.1 by ALPN.
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|iter| iter.collect())
        .map_err(|source| TlsError::Cert {
            path: cert.display().to_string(),
            source,
        })?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::Key {
        path: key.display().to_string(),
        source,
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(TlsError::Config)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// How a listener treats its connections.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Time a client has to send its request headers (and finish the TLS
    /// handshake): slow-loris clients are cut off here.
    pub header_timeout: Duration,
    /// Time a kept-alive connection may stay open with no request in
    /// flight; then the server closes it (HTTP/2: GOAWAY).
    pub idle_timeout: Duration,
    /// Open connections served at once.
    pub max_connections: usize,
    /// Largest request head in bytes (431 past it).
    pub max_header_bytes: usize,
    /// Most header fields in one request (431 past it).
    pub max_headers: usize,
}

impl ConnectionLimits {
    pub fn from_config(http: &crate::config::HttpConfig) -> Self {
        ConnectionLimits {
            header_timeout: http.header_timeout.into(),
            idle_timeout: http.idle_timeout.into(),
            max_connections: http.max_connections,
            max_header_bytes: usize::try_from(http.max_header_bytes.0).unwrap_or(usize::MAX),
            max_headers: http.max_headers,
        }
    }
}

/// Answers one request; the server calls it for every request of every
/// connection.
pub trait Handler: Clone + Send + Sync + 'static {
    fn call(&self, request: Request<Incoming>, peer: SocketAddr) -> ResponseFuture;
}

/// The answer a [`Handler`] will give.
pub type ResponseFuture = std::pin::Pin<Box<dyn Future<Output = Response<Body>> + Send>>;

/// The public application.
impl Handler for Arc<AppState> {
    fn call(&self, request: Request<Incoming>, peer: SocketAddr) -> ResponseFuture {
        Box::pin(handle(self.clone(), request, peer))
    }
}

/// Serves until `shutdown` completes, then stops accepting and gives open
/// requests up to `drain` to finish.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    limits: ConnectionLimits,
    handler: H,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) {
    let header_timeout = limits.header_timeout;
    // Caps open connections: past it, clients wait in the kernel's accept
    // queue instead of costing memory and file descriptors here.
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        // hyper answers 431 itself when the head outgrows its read buffer
        // or has more fields than this; hyper refuses a buffer under 8KiB.
        .max_buf_size(limits.max_header_bytes.max(8192))
        .max_headers(limits.max_headers)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20))
        .max_concurrent_streams(64)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    let builder = Arc::new(builder);
    // Cancelled when the listener stops: every open connection finishes
    // its request in flight and closes (HTTP/2: GOAWAY).
    let closing = CancellationToken::new();
    let local = listener.local_addr().ok();
    tokio::pin!(shutdown);

    loop {
        let permit = tokio::select! {
            permit = connections.clone().acquire_owned() => permit.expect("semaphore never closed"),
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait, don't spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let builder = builder.clone();
        let tls = tls.clone();
        let closing = closing.clone();
        tokio::spawn(async move {
            // Held until the connection is done: the drain below waits for
            // every permit to come back.
            let _permit = permit;
            let io: Box<dyn Io> = match tls {
                None => Box::new(stream),
                Some(acceptor) => match handshake(&acceptor, stream, header_timeout).await {
                    Ok(tls_stream) => Box::new(tls_stream),
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                },
            };
            let activity = Arc::new(Activity::new());
            let service = service_fn({
                let activity = activity.clone();
                move |request| {
                    let busy = activity.begin();
                    let answer = handler.call(request, peer);
                    async move {
                        let response = answer.await;
                        drop(busy);
                        Ok::<_, std::convert::Infallible>(response)
                    }
                }
            });
            let conn = builder.serve_connection(TokioIo::new(io), service);
            tokio::pin!(conn);
            let idle = activity.idle_for(limits.idle_timeout);
            tokio::pin!(idle);
            let mut shutting_down = false;
            let result = loop {
                tokio::select! {
                    result = conn.as_mut() => break result,
                    () = closing.cancelled(), if !shutting_down => {
                        shutting_down = true;
                        conn.as_mut().graceful_shutdown();
                    }
                    () = &mut idle, if !shutting_down => {
                        shutting_down = true;
                        metrics::counter!("intake_http_idle_closed_total").increment(1);
                        tracing::debug!(%peer, "idle connection closed");
                        conn.as_mut().graceful_shutdown();
                    }
                }
            };
            if let Err(e) = result {
                count_connection_error(&*e);
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }

    tracing::info!(listener = ?local, "listener closed; draining open requests");
    closing.cancel();
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    tokio::select! {
        _ = connections.acquire_many(all) => tracing::info!(listener = ?local, "all connections finished"),
        () = tokio::time::sleep(drain) => {
            tracing::warn!(listener = ?local, deadline = ?drain, "drain deadline passed; closing remaining connections");
        }
    }
}

/// A client connection, plain or TLS, behind one type.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Io for T {}

/// What the idle watch of one connection knows: how many requests are
/// being answered, and when the last one began or ended.
struct Activity {
    in_flight: AtomicUsize,
    last: Mutex<Instant>,
}

/// One request being answered; it ends (and touches the clock) when
/// dropped, also when the client goes away mid-request.
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.0.touch();
    }
}

impl Activity {
    fn new() -> Self {
        Activity {
            in_flight: AtomicUsize::new(0),
            last: Mutex::new(Instant::now()),
        }
    }

    fn touch(&self) {
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }

    fn last(&self) -> Instant {
        *self.last.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn begin(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.touch();
        Busy(self.clone())
    }

    /// Completes once no request has been in flight for `limit`.
    async fn idle_for(&self, limit: Duration) {
        loop {
            let deadline = self.last() + limit;
            tokio::time::sleep_until(deadline).await;
            if self.in_flight.load(Ordering::SeqCst) > 0 {
                // A long request is not idleness: look again later.
                tokio::time::sleep(limit).await;
                continue;
            }
            if self.last() + limit <= Instant::now() {
                return;
            }
        }
    }
}

/// Counts a connection hyper closed for a limit: a head too large or with
/// too many fields (hyper has answered 431), or headers not sent within
/// `http.header_timeout` (a slow client, cut off).
fn count_connection_error(error: &(dyn std::error::Error + 'static)) {
    let mut source = Some(error);
    while let Some(e) = source {
        if let Some(hyper_error) = e.downcast_ref::<hyper::Error>() {
            let limit = if hyper_error.is_parse_too_large() {
                "headers"
            } else if hyper_error.is_timeout() {
                "header_timeout"
            } else {
                return;
            };
            metrics::counter!("intake_http_limit_refusals_total", "limit" => limit).increment(1);
            return;
        }
        source = e.source();
    }
}

async fn handshake(
    acceptor: &TlsAcceptor,
    stream: TcpStream,
    timeout: Duration,
) -> io::Result<tokio_rustls::server::TlsStream<TcpStream>> {
    tokio::time::timeout(timeout, acceptor.accept(stream))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))?
}
