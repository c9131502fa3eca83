//! The admin listener: what operators and their tools reach, never the
//! public. Every request needs the admin bearer token.
//!
//! `GET /metrics` renders every `intake_*` metric in the Prometheus text
//! format.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::config::SecretValue;
use crate::sources::http::respond::{ApiError, Body};
use crate::sources::http::server::{Handler, ResponseFuture};

/// What the admin handler needs.
pub struct AdminState {
    /// The bearer token every admin request must carry.
    pub token: SecretValue,
    pub metrics: PrometheusHandle,
    /// For `POST /v1/rules/reload` and `GET /v1/rules`.
    pub guard: crate::guard::Guard,
}

#[derive(Clone)]
pub struct Admin(pub Arc<AdminState>);

impl Handler for Admin {
    fn call(&self, request: Request<Incoming>, peer: SocketAddr) -> ResponseFuture {
        let state = self.0.clone();
        Box::pin(async move {
            let response = match route(&state, &request) {
                Ok(response) => response,
                Err(error) => error.into_response(),
            };
            tracing::debug!(path = %request.uri().path(), status = response.status().as_u16(), %peer, "admin request");
            response
        })
    }
}

fn route(state: &AdminState, request: &Request<Incoming>) -> Result<Response<Body>, ApiError> {
    if !crate::sources::http::bearer_matches(request.headers(), &state.token) {
        return Err(ApiError::Unauthorized);
    }
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics") => Ok(metrics(state)),
        (_, "/metrics") => Err(ApiError::MethodNotAllowed { allow: "GET" }),
        (&Method::POST, "/v1/rules/reload") => Ok(reload(state)),
        (_, "/v1/rules/reload") => Err(ApiError::MethodNotAllowed { allow: "POST" }),
        (&Method::GET, "/v1/rules") => Ok(rules(state)),
        (_, "/v1/rules") => Err(ApiError::MethodNotAllowed { allow: "GET" }),
        _ => Err(ApiError::NotFound),
    }
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
                "name": r.name, "action": r.action.name(), "rate": r.rate.to_string(),
                "burst": r.burst, "shadow": r.shadow, "origin": r.origin,
            })
        })
        .collect();
    crate::sources::http::respond::json_response(
        StatusCode::OK,
        &serde_json::json!({"rules": rules, "last_reload_error": state.guard.last_reload_error()}),
    )
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
