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
        _ => Err(ApiError::NotFound),
    }
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
