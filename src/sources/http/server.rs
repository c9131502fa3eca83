//! The accept loop: HTTP/1.1 and HTTP/2 (by ALPN over TLS, by preface in
//! clear text), optional TLS with rustls, caps on open connections (per
//! client address and in all, the slowest shed to make room; see
//! `crate::sources::connections`), a header-read timeout against slow
//! clients, a minimum body rate, an idle timeout for kept-alive
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
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use http::{Request, Response};
use hyper::body::Incoming;

use super::request_body::{MinBodyRate, RequestBody, RequestProgress};
use super::respond::Body;
use super::{handle, AppState};
use crate::sources::connections::{self, Admission, Counted, Refusal, Registry, Slot};
use crate::telemetry::events::emit;
use crate::telemetry::events::http::{ConnectionRefused, HeadRefused, IdleClosed};

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
    /// handshake): slow-loris clients are cut off here. Also how long a
    /// newcomer waits for a slot when none can be made.
    pub header_timeout: Duration,
    /// Time a kept-alive connection may stay open with no request in
    /// flight; then the server closes it (HTTP/2: GOAWAY).
    pub idle_timeout: Duration,
    /// Open connections served at once.
    pub max_connections: usize,
    /// Open connections from one client address (IPv6: its /64).
    pub max_connections_per_ip: usize,
    /// How long a connection is safe from being shed in a new phase.
    pub shed_grace: Duration,
    /// The slowest request body accepted after its grace.
    pub min_body_rate: MinBodyRate,
    /// Largest request head in bytes (431 past it).
    pub max_header_bytes: usize,
    /// Most header fields in one request (431 past it).
    pub max_headers: usize,
}

impl ConnectionLimits {
    pub fn from_config(http: &crate::sources::http::config::HttpConfig) -> Self {
        ConnectionLimits {
            header_timeout: http.header_timeout.into(),
            idle_timeout: http.idle_timeout.into(),
            max_connections: http.max_connections,
            max_connections_per_ip: http.max_connections_per_ip,
            shed_grace: http.shed_grace.into(),
            min_body_rate: MinBodyRate {
                per_second: http.min_body_rate.bytes(),
                grace: http.body_rate_grace.into(),
            },
            max_header_bytes: usize::try_from(http.max_header_bytes.0).unwrap_or(usize::MAX),
            max_headers: http.max_headers,
        }
    }
}

/// Answers one request; the server calls it for every request of every
/// connection.
pub trait Handler: Clone + Send + Sync + 'static {
    fn call(&self, request: Request<RequestBody>, peer: SocketAddr) -> ResponseFuture;
}

/// The answer a [`Handler`] will give.
pub type ResponseFuture = std::pin::Pin<Box<dyn Future<Output = Response<Body>> + Send>>;

/// The public application.
impl Handler for Arc<AppState> {
    fn call(&self, request: Request<RequestBody>, peer: SocketAddr) -> ResponseFuture {
        Box::pin(handle(self.clone(), request, peer))
    }
}

/// How often newcomers waiting for a slot are looked at again (a
/// connection may have passed its grace meanwhile).
const REBALANCE_EVERY: Duration = Duration::from_millis(100);

/// What every connection task of one listener shares.
struct Shared<H> {
    handler: H,
    builder: auto::Builder<TokioExecutor>,
    tls: Option<TlsAcceptor>,
    limits: ConnectionLimits,
    /// Cancelled when the listener stops: every open connection finishes
    /// its request in flight and closes (HTTP/2: GOAWAY).
    closing: CancellationToken,
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
    // Every connection is accepted and judged by its address first; the
    // registry keeps the caps and makes room by shedding the slowest.
    let registry = Registry::new(
        "http",
        connections::Limits {
            max_connections: limits.max_connections,
            max_per_client: limits.max_connections_per_ip,
            grace: limits.shed_grace,
            max_waiting: limits.max_connections,
        },
    );
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
    let shared = Arc::new(Shared {
        handler,
        builder,
        tls,
        limits,
        closing: CancellationToken::new(),
    });
    let local = listener.local_addr().ok();
    let mut rebalance = tokio::time::interval(REBALANCE_EVERY);
    rebalance.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    tokio::pin!(shutdown);

    loop {
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
            _ = rebalance.tick() => {
                registry.rebalance();
                continue;
            }
            () = &mut shutdown => break,
        };
        match registry.admit(peer.ip()) {
            Admission::Admitted(slot) => {
                tokio::spawn(connection(shared.clone(), slot, stream, peer));
            }
            Admission::Queued(queued) => {
                let shared = shared.clone();
                tokio::spawn(async move {
                    let slot = tokio::select! {
                        slot = queued.slot() => slot,
                        () = tokio::time::sleep(header_timeout) => None,
                        () = shared.closing.cancelled() => None,
                    };
                    match slot {
                        Some(slot) => connection(shared, slot, stream, peer).await,
                        None => refused(Refusal::Full, peer),
                    }
                });
            }
            Admission::Refused(why) => {
                // Closed at once: nothing is read, nothing is held.
                drop(stream);
                refused(why, peer);
            }
        }
    }

    tracing::info!(listener = ?local, "listener closed; draining open requests");
    registry.close();
    shared.closing.cancel();
    tokio::select! {
        () = registry.wait_empty() => tracing::info!(listener = ?local, "all connections finished"),
        () = tokio::time::sleep(drain) => {
            tracing::warn!(listener = ?local, deadline = ?drain, "drain deadline passed; closing remaining connections");
        }
    }
}

/// Counts and logs a newcomer closed without being served.
fn refused(why: Refusal, peer: SocketAddr) {
    let (limit, why) = match why {
        Refusal::PerClient => (
            "connections_per_ip",
            "http.max_connections_per_ip reached for this address",
        ),
        Refusal::Full => (
            "connections",
            "every slot taken, none could be shed in time",
        ),
    };
    emit(ConnectionRefused { limit, peer, why });
}

/// Serves one connection to its end, or until the registry sheds it.
async fn connection<H: Handler>(
    shared: Arc<Shared<H>>,
    slot: Slot,
    stream: TcpStream,
    peer: SocketAddr,
) {
    let _ = stream.set_nodelay(true);
    let conn = slot.conn().clone();
    let stream = Counted::new(stream, conn.clone());
    let limits = shared.limits;
    let io: Box<dyn Io> = match &shared.tls {
        None => Box::new(stream),
        Some(acceptor) => {
            let accepted = tokio::select! {
                accepted = handshake(acceptor, stream, limits.header_timeout) => accepted,
                () = conn.shed_requested() => return,
            };
            match accepted {
                Ok(tls_stream) => Box::new(tls_stream),
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
            }
        }
    };
    let activity = Arc::new(Activity::new());
    let service = service_fn({
        let activity = activity.clone();
        let handler = shared.handler.clone();
        let conn = conn.clone();
        move |request: Request<Incoming>| {
            let busy = activity.begin();
            let version = request.version();
            let progress = RequestProgress::start(conn.clone());
            let request =
                request.map(|body| RequestBody::new(body, progress.clone(), limits.min_body_rate));
            let answer = handler.call(request, peer);
            async move {
                let mut response = answer.await;
                // A body cut off for its rate leaves the rest unread: the
                // connection cannot carry another request.
                if progress.was_too_slow() && version < http::Version::HTTP_2 {
                    response.headers_mut().insert(
                        http::header::CONNECTION,
                        http::HeaderValue::from_static("close"),
                    );
                }
                drop(progress);
                drop(busy);
                Ok::<_, std::convert::Infallible>(response)
            }
        }
    });
    let conn_future = shared.builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn_future);
    let idle = activity.idle_for(limits.idle_timeout);
    tokio::pin!(idle);
    let mut shutting_down = false;
    let result = loop {
        tokio::select! {
            result = conn_future.as_mut() => break result,
            // Shed to make room: closed at once (the registry has already
            // given its slot away).
            () = conn.shed_requested() => break Ok(()),
            () = shared.closing.cancelled(), if !shutting_down => {
                shutting_down = true;
                conn_future.as_mut().graceful_shutdown();
            }
            () = &mut idle, if !shutting_down => {
                shutting_down = true;
                emit(IdleClosed { peer });
                conn_future.as_mut().graceful_shutdown();
            }
        }
    };
    if let Err(e) = result {
        count_connection_error(&*e);
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
    drop(slot);
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
            emit(HeadRefused { limit });
            return;
        }
        source = e.source();
    }
}

async fn handshake<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    acceptor: &TlsAcceptor,
    stream: S,
    timeout: Duration,
) -> io::Result<tokio_rustls::server::TlsStream<S>> {
    tokio::time::timeout(timeout, acceptor.accept(stream))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))?
}
