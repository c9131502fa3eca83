//! The admin listener: what operators and their tools reach, never the
//! public. Every request needs the admin bearer token.
//!
//! `GET /metrics` renders every `intake_*` metric in the Prometheus text
//! format; `GET /status` tells what the public `/readyz` does with the
//! details it leaves out (clamd's address and engine, failure texts, the
//! rules in force); `GET /v1/quarantine` lists quarantined items and
//! `POST /v1/quarantine/{entry_id}/release` moves one to the desk after a
//! re-scan ([`crate::pipeline::quarantine`]); `GET /v1/dead` lists what
//! the delivery targets refused and `POST /v1/dead/{entry_id}/redrive` (or
//! `POST /v1/dead/redrive` for all) hands it back to its delivery under
//! the same idempotency key ([`crate::delivery::dead`]).

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use metrics_exporter_prometheus::PrometheusHandle;

use serde::Deserialize;

use crate::secret::{Secret, SecretValue};
use crate::sources::http::request_body::RequestBody;
use crate::sources::http::respond::{ApiError, Body};
use crate::sources::http::server::{Handler, ResponseFuture};

mod dead;

/// The admin listener; it starts only when a token is configured, since
/// metrics and operations must never be open.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address of the admin listener; keep it off the public network.
    #[serde(default = "default_admin_listen")]
    pub listen: SocketAddr,
    /// Bearer token every admin request must carry.
    #[serde(default)]
    pub token: Option<Secret>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: default_admin_listen(),
            token: None,
        }
    }
}

fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9090))
}

impl crate::validate::Validate for AdminConfig {
    fn validate(&self, at: &str, problems: &mut Vec<String>) {
        if let Some(secret) = &self.token {
            if let Err(e) = secret.resolve() {
                problems.push(format!("{at}.token: {e}"));
            }
        }
    }
}

/// What the admin handler needs.
pub struct AdminState {
    /// The bearer token every admin request must carry.
    pub token: SecretValue,
    pub metrics: PrometheusHandle,
    /// For `POST /v1/rules/reload` and `GET /v1/rules`.
    pub guard: crate::guard::Guard,
    /// For `GET /v1/quarantine` and its releases.
    pub quarantine: crate::pipeline::quarantine::Quarantine,
    /// For `GET /status`: Redis, the rules and the scanner as the public
    /// listener's items meet them.
    pub pipeline: Arc<crate::pipeline::Pipeline>,
    /// What `Retry-After` says when Redis or the scanner cannot answer.
    pub retry_after: std::time::Duration,
    /// For `GET /status`: each IMAP mailbox's state and why.
    pub imap: crate::sources::imap::ImapHealth,
    /// For `GET /v1/dead` and its re-drives.
    pub redis: crate::redis_connection::RedisConnection,
    /// `redis.prefix`: where the dead stream is.
    pub prefix: String,
    /// The deliveries' states, for `GET /status`.
    pub deliveries: crate::delivery::Registry,
}

#[derive(Clone)]
pub struct Admin(pub Arc<AdminState>);

impl Handler for Admin {
    fn call(&self, request: Request<RequestBody>, peer: SocketAddr) -> ResponseFuture {
        let state = self.0.clone();
        Box::pin(async move {
            let response = match route(&state, &request).await {
                Ok(response) => response,
                Err(error) => error.into_response(),
            };
            tracing::debug!(path = %request.uri().path(), status = response.status().as_u16(), %peer, "admin request");
            response
        })
    }
}

async fn route(
    state: &AdminState,
    request: &Request<RequestBody>,
) -> Result<Response<Body>, ApiError> {
    if !crate::sources::http::bearer_matches(request.headers(), &state.token) {
        return Err(ApiError::Unauthorized);
    }
    let path = request.uri().path();
    if let Some(entry_id) = path
        .strip_prefix("/v1/quarantine/")
        .and_then(|rest| rest.strip_suffix("/release"))
    {
        if request.method() != Method::POST {
            return Err(ApiError::MethodNotAllowed { allow: "POST" });
        }
        if !crate::pipeline::quarantine::is_entry_id(entry_id) {
            return Err(ApiError::NotFound);
        }
        return Ok(release(state, entry_id).await);
    }
    if let Some(entry_id) = path
        .strip_prefix("/v1/dead/")
        .and_then(|rest| rest.strip_suffix("/redrive"))
    {
        if request.method() != Method::POST {
            return Err(ApiError::MethodNotAllowed { allow: "POST" });
        }
        if !crate::delivery::store::is_entry_id(entry_id) {
            return Err(ApiError::NotFound);
        }
        return Ok(dead::redrive_one(state, entry_id).await);
    }
    match (request.method(), path) {
        (&Method::GET, "/v1/dead") => Ok(dead::list(state, request.uri().query()).await),
        (_, "/v1/dead") => Err(ApiError::MethodNotAllowed { allow: "GET" }),
        (&Method::POST, "/v1/dead/redrive") => {
            Ok(dead::redrive_all(state, request.uri().query()).await)
        }
        (_, "/v1/dead/redrive") => Err(ApiError::MethodNotAllowed { allow: "POST" }),
        (&Method::GET, "/v1/quarantine") => match list(state, request.uri().query()).await {
            Ok(response) | Err(response) => Ok(response),
        },
        (_, "/v1/quarantine") => Err(ApiError::MethodNotAllowed { allow: "GET" }),
        (&Method::GET, "/metrics") => Ok(metrics(state)),
        (_, "/metrics") => Err(ApiError::MethodNotAllowed { allow: "GET" }),
        (&Method::GET, "/status") => Ok(status(state).await),
        (_, "/status") => Err(ApiError::MethodNotAllowed { allow: "GET" }),
        (&Method::POST, "/v1/rules/reload") => Ok(reload(state)),
        (_, "/v1/rules/reload") => Err(ApiError::MethodNotAllowed { allow: "POST" }),
        (&Method::GET, "/v1/rules") => Ok(rules(state)),
        (_, "/v1/rules") => Err(ApiError::MethodNotAllowed { allow: "GET" }),
        _ => Err(ApiError::NotFound),
    }
}

/// `GET /v1/quarantine?count=N&after=ENTRY_ID`: one page, oldest first.
async fn list(state: &AdminState, query: Option<&str>) -> Result<Response<Body>, Response<Body>> {
    use crate::pipeline::quarantine::{is_entry_id, DEFAULT_PAGE, MAX_PAGE};
    let mut count = DEFAULT_PAGE;
    let mut after = None;
    for (name, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match &*name {
            "count" => {
                count = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_PAGE).contains(n))
                    .ok_or_else(|| {
                        bad_query(format!("count must be a number from 1 to {MAX_PAGE}"))
                    })?;
            }
            "after" if is_entry_id(&value) => after = Some(value.into_owned()),
            "after" => return Err(bad_query(
                "after must be a stream entry id (`<ms>-<seq>`), the `next` of the previous page"
                    .into(),
            )),
            other => {
                return Err(bad_query(format!(
                    "unknown query parameter `{other}`; use count and after"
                )))
            }
        }
    }
    match state.quarantine.list(after.as_deref(), count).await {
        Ok(page) => Ok(crate::sources::http::respond::json_response(
            StatusCode::OK,
            &page,
        )),
        Err(error) => {
            tracing::warn!(error = %crate::telemetry::error_chain(&error), "quarantine listing failed");
            Ok(unavailable(
                state,
                "Redis did not answer; retry later".into(),
            ))
        }
    }
}

/// `POST /v1/quarantine/{entry_id}/release`: 200 when the item is on the
/// desk; otherwise it stays in quarantine and the answer says why.
async fn release(state: &AdminState, entry_id: &str) -> Response<Body> {
    use crate::pipeline::quarantine::ReleaseError;
    use crate::sources::http::respond::json_response;
    match state.quarantine.release(entry_id).await {
        Ok(released) => json_response(
            StatusCode::OK,
            &serde_json::json!({
                "status": if released.already_released { "already_released" } else { "released" },
                "id": released.id,
                "desk_entry_id": released.desk_entry_id,
            }),
        ),
        Err(error) => {
            let (status, code) = match &error {
                ReleaseError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
                ReleaseError::Infected { .. } => (StatusCode::CONFLICT, "infected"),
                ReleaseError::Unscannable(_) => (StatusCode::CONFLICT, "unscannable"),
                ReleaseError::ScannerOff => (StatusCode::CONFLICT, "scanner_off"),
                ReleaseError::NotReleasable(_) => {
                    (StatusCode::UNPROCESSABLE_ENTITY, "not_releasable")
                }
                ReleaseError::Scan(_) | ReleaseError::Sink(_) => {
                    tracing::warn!(entry = entry_id, error = %crate::telemetry::error_chain(&error), "release not done; the item stays in quarantine");
                    return unavailable(state, error.to_string());
                }
                ReleaseError::Encode(_) => {
                    tracing::error!(entry = entry_id, error = %crate::telemetry::error_chain(&error), "release failed");
                    (StatusCode::INTERNAL_SERVER_ERROR, "error")
                }
            };
            tracing::info!(entry = entry_id, reason = %error, "release refused");
            json_response(
                status,
                &serde_json::json!({"error": code, "message": error.to_string()}),
            )
        }
    }
}

/// 400 for a query the listing does not understand.
pub(crate) fn bad_query(message: String) -> Response<Body> {
    crate::sources::http::respond::json_response(
        StatusCode::BAD_REQUEST,
        &serde_json::json!({"error": "bad_request", "message": message}),
    )
}

/// 503 with `Retry-After`: nothing changed, try again later.
pub(crate) fn unavailable(state: &AdminState, message: String) -> Response<Body> {
    let mut response = crate::sources::http::respond::json_response(
        StatusCode::SERVICE_UNAVAILABLE,
        &serde_json::json!({"error": "unavailable", "message": message}),
    );
    response.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from(state.retry_after.as_secs().max(1)),
    );
    response
}

/// Reloads the rules: 200 with what loaded, or 422 with every problem
/// (file, line, key) while the old rules stay in force.
fn reload(state: &AdminState) -> Response<Body> {
    use crate::sources::http::respond::json_response;
    match state.guard.reload("admin request") {
        Ok(done) => json_response(
            StatusCode::OK,
            &serde_json::json!({"status": "reloaded", "rules": done.rules, "files": done.files}),
        ),
        Err(error) => json_response(
            StatusCode::UNPROCESSABLE_ENTITY,
            &serde_json::json!({
                "status": "failed",
                "message": "the rule files have problems; the previous rules stay in force",
                "errors": error.0.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
            }),
        ),
    }
}

/// The rules in force, and the last reload's problems if it failed.
fn rules(state: &AdminState) -> Response<Body> {
    let set = state.guard.rules();
    let rules: Vec<_> = set
        .rules
        .iter()
        .map(|r| {
            serde_json::json!({
                "name": r.name, "action": r.action.name(),
                "rate": r.quota.map(|q| q.rate.to_string()),
                "burst": r.quota.map(|q| q.burst), "shadow": r.shadow, "origin": r.origin,
            })
        })
        .collect();
    crate::sources::http::respond::json_response(
        StatusCode::OK,
        &serde_json::json!({"rules": rules, "last_reload_error": state.guard.last_reload_error()}),
    )
}

/// `GET /status`: 200 when ready, 503 when not (as `/readyz`), with every
/// part's state and details.
async fn status(state: &AdminState) -> Response<Body> {
    let pipeline = &state.pipeline;
    let health = crate::sources::http::readiness::Health::check(
        pipeline.sink().as_ref(),
        pipeline.guard(),
        pipeline.scanner(),
        &state.deliveries,
    )
    .await
    .with_imap(&state.imap);
    crate::sources::http::respond::json_response(health.status_code(), &health.detailed())
}

fn metrics(state: &AdminState) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(state.metrics.render())));
    *response.status_mut() = StatusCode::OK;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}
