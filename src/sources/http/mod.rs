//! The public HTTP source: web forms and raw mail in, receipts out.
//!
//! [`handle`] is the whole application as a function from request to
//! response, so tests can call it without a socket; [`server`] puts it on a
//! listener with TLS, connection limits and timeouts.

pub mod bots;
pub mod config;
pub mod form_body;
pub mod forms;
pub mod idempotency;
pub mod messages;
pub mod per_ip;
pub mod readiness;
pub mod request_body;
pub mod respond;
pub mod server;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderMap, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Body as HttpBody;

use crate::pipeline::Pipeline;
use crate::secret::SecretValue;
use crate::telemetry::events::emit;
use crate::telemetry::events::http::{RequestAnswered, TooManyInFlight};
use config::{FormConfig, HttpConfig, MessagesConfig};
use respond::{json_response, ApiError, Body};

/// What every request handler shares.
pub struct AppState {
    /// `[http]`: the answers' `Retry-After`, the body timeout.
    pub http: HttpConfig,
    /// `[messages]`: raw mail from `intake mailgate`.
    pub messages: MessagesConfig,
    /// The `[[form]]` declarations.
    pub forms: Vec<FormConfig>,
    pub pipeline: Arc<Pipeline>,
    /// The bearer token of `POST /v1/messages`; `None` switches it off.
    pub mailgate_token: Option<SecretValue>,
    /// Requests in flight per client IP (`http.max_requests_per_ip`).
    pub per_ip: per_ip::PerIpLimit,
    /// The forms' bot checks (tokens, their replay memory, honeypot, links).
    pub bots: bots::BotChecks,
    /// The process's memory budget for bodies in flight (`[memory]`),
    /// shared with the LMTP listener.
    pub budget: crate::budget::BodyBudget,
    /// Each IMAP mailbox's state, named by `/readyz`.
    pub imap: crate::sources::imap::ImapHealth,
    /// The delivery workers' states, named in `/readyz`.
    pub deliveries: crate::delivery::Registry,
}

impl AppState {
    /// The form declared with this id.
    pub fn form(&self, id: &str) -> Option<&FormConfig> {
        self.forms.iter().find(|f| f.id == id)
    }
}

/// Answers one request. Never fails: every refusal is an answer.
pub async fn handle<B>(
    state: Arc<AppState>,
    request: Request<B>,
    peer: SocketAddr,
) -> Response<Body>
where
    B: HttpBody,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let started = std::time::Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let endpoint = endpoint_label(&path);
    // No timeout around the whole request: once the body is in, the
    // pipeline is bounded by its own stage timeouts, and cutting it short
    // could answer "failed" for an item that was in fact stored.
    // Held until the answer is ready, so a slow upload counts against
    // its address for as long as it takes. Mail from `intake mailgate`
    // with a valid token is exempt: a mail server delivers many messages
    // in parallel from one address, and a 429 there only delays mail.
    let trusted = endpoint == "messages"
        && state
            .mailgate_token
            .as_ref()
            .is_some_and(|token| bearer_matches(request.headers(), token));
    let admitted = if trusted {
        Some(None)
    } else {
        state.per_ip.admit(peer.ip()).map(Some)
    };
    let response = match admitted {
        None => {
            emit(TooManyInFlight { peer });
            ApiError::TooManyInFlight.into_response()
        }
        Some(_in_flight) => match route(&state, request, peer).await {
            Ok(response) => response,
            Err(error) => error.into_response(),
        },
    };
    emit(RequestAnswered {
        endpoint,
        method: &method,
        path: &path,
        status: response.status().as_u16(),
        peer,
        took: started.elapsed(),
    });
    response
}

/// A bounded label for the metrics: never the form id a client made up.
fn endpoint_label(path: &str) -> &'static str {
    if path.starts_with("/v1/forms/") {
        "forms"
    } else if path == "/v1/messages" {
        "messages"
    } else if path == "/healthz" || path == "/readyz" {
        "health"
    } else {
        "other"
    }
}

async fn route<B>(
    state: &AppState,
    request: Request<B>,
    peer: SocketAddr,
) -> Result<Response<Body>, ApiError>
where
    B: HttpBody,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let path = request.uri().path().to_string();
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    match segments.as_slice() {
        ["v1", "forms", form] => forms::handle(state, form, request, peer).await,
        ["v1", "forms", form, "token"] => forms::token(state, form, &request),
        ["v1", "messages"] => messages::handle(state, request, peer).await,
        ["healthz"] => {
            only_get(&request)?;
            Ok(json_response(
                StatusCode::OK,
                &serde_json::json!({ "status": "alive" }),
            ))
        }
        ["readyz"] => {
            only_get(&request)?;
            Ok(readiness(state).await)
        }
        ["v1", "openapi.yaml"] => {
            only_get(&request)?;
            Ok(openapi())
        }
        _ => Err(ApiError::NotFound),
    }
}

/// Read-only endpoints answer GET (and HEAD, which hyper answers
/// without the body); anything else is a 405, not a silent 200.
fn only_get<B>(request: &Request<B>) -> Result<(), ApiError> {
    match *request.method() {
        http::Method::GET | http::Method::HEAD => Ok(()),
        _ => Err(ApiError::MethodNotAllowed { allow: "GET, HEAD" }),
    }
}

/// The OpenAPI document of this API (public and admin), as built in.
const OPENAPI: &str = include_str!("../../openapi.yaml");

fn openapi() -> Response<Body> {
    let mut response = Response::new(Body::from(OPENAPI));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/yaml"),
    );
    response
}

/// Ready when an item could be stored now (Redis answers). The answer
/// names each part and its state only; why a part is down is logged here
/// and shown on the admin listener's `GET /status`.
async fn readiness(state: &AppState) -> Response<Body> {
    let pipeline = &state.pipeline;
    let health = readiness::Health::check(
        pipeline.sink().as_ref(),
        pipeline.guard(),
        pipeline.scanner(),
        &state.deliveries,
    )
    .await
    .with_imap(&state.imap);
    if let Err(error) = &health.redis {
        if let Some(suppressed) = crate::telemetry::log_limit::errors().check("readyz-redis") {
            tracing::warn!(%error, suppressed, "not ready: Redis does not answer");
        }
    }
    json_response(health.status_code(), &health.public())
}

/// Reads a whole body, refusing it (413) when the declared or actual size
/// is over `limit`, before more than `limit` bytes are held in memory, and
/// (408) when the client takes longer than `http.request_timeout` to send
/// it or falls below `http.min_body_rate` (enforced by
/// [`request_body::RequestBody`]). Its bytes are taken from the memory
/// budget first (the declared length, else as they arrive; 503 when the
/// budget stays full for `memory.body_wait`); the caller holds the
/// [`Reservation`] until its answer is made. A body that cannot be read
/// gets a fixed sentence; why goes to the debug log.
pub(crate) async fn read_body<B>(
    state: &AppState,
    source: crate::budget::Source,
    body: B,
    limit: u64,
    headers: &HeaderMap,
) -> Result<(Bytes, crate::budget::Reservation), ApiError>
where
    B: HttpBody,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(ApiError::TooLarge { limit });
    }
    let busy = |e: crate::budget::BudgetError| ApiError::Unavailable {
        retry_after: state.http.retry_after.into(),
        cause: crate::pipeline::PipelineError::Busy(e.to_string()),
    };
    let mut held = state
        .budget
        .reserve(declared.unwrap_or(0), source)
        .await
        .map_err(busy)?;
    let timeout = state.http.request_timeout.into();
    let collected = tokio::time::timeout(timeout, collect(body, limit, declared, &mut held))
        .await
        .map_err(|_| ApiError::Timeout)?;
    match collected {
        Ok(bytes) => Ok((bytes, held)),
        Err(Collect::TooLarge) => Err(ApiError::TooLarge { limit }),
        Err(Collect::NoRoom(e)) => Err(busy(e)),
        Err(Collect::Read(e)) if request_body::is_too_slow(&*e) => Err(ApiError::Timeout),
        Err(Collect::Read(e)) => {
            tracing::debug!(error = %crate::telemetry::error_chain(&*e), "request body could not be read");
            Err(ApiError::BadRequest(
                "it ended early or its framing is broken".into(),
            ))
        }
    }
}

/// Why [`collect`] stopped.
enum Collect {
    TooLarge,
    NoRoom(crate::budget::BudgetError),
    Read(Box<dyn std::error::Error + Send + Sync>),
}

/// How far ahead of the data a body without a declared length reserves.
const RESERVE_STEP: u64 = 256 * 1024;

/// The body in one buffer of the declared size, filled frame by frame: it
/// is held once, not as a list of frames and then a copy of them.
async fn collect<B>(
    body: B,
    limit: u64,
    declared: Option<u64>,
    held: &mut crate::budget::Reservation,
) -> Result<Bytes, Collect>
where
    B: HttpBody,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    use bytes::{Buf, BufMut};
    let mut buf = Vec::with_capacity(usize::try_from(declared.unwrap_or(0)).unwrap_or(0));
    let mut body = std::pin::pin!(body);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Collect::Read(Box::new(e)))?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        let len = buf.len() as u64 + data.remaining() as u64;
        if len > limit {
            return Err(Collect::TooLarge);
        }
        if len > held.bytes() {
            let ahead = (len + RESERVE_STEP).min(limit);
            held.grow_to(ahead).await.map_err(Collect::NoRoom)?;
        }
        buf.put(data);
    }
    held.shrink_to(buf.len() as u64);
    Ok(Bytes::from(buf))
}

/// Whether the request carries `Authorization: Bearer <token>` with this
/// token. The scheme is case-insensitive (RFC 9110, 11.1); the comparison
/// takes the same time wherever the tokens differ.
pub fn bearer_matches(headers: &HeaderMap, token: &SecretValue) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .is_some_and(|(_, presented)| {
            constant_time_eq(presented.trim().as_bytes(), token.expose().as_bytes())
        })
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A response to a request without a body to read (used by the server
/// for protocol errors).
pub fn plain_error(status: StatusCode, message: &str) -> Response<Body> {
    json_response(
        status,
        &serde_json::json!({ "error": "bad_request", "message": message }),
    )
}
