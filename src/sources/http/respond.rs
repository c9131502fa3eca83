//! The one place where an HTTP answer is derived from what happened: every
//! refusal is an [`ApiError`], and [`ApiError::into_response`] picks its
//! status, headers and JSON body. Internal error text never reaches a
//! client; it is logged here instead, with its whole source chain.

use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use serde::Serialize;

use crate::pipeline::PipelineError;
use crate::telemetry::error_chain;

pub type Body = Full<Bytes>;

/// One problem with one posted field, as the client sees it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FieldProblem {
    pub name: String,
    pub problem: String,
}

/// Everything that keeps a request from being answered 202.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("no such endpoint")]
    NotFound,
    #[error("no form named `{0}` is declared")]
    UnknownForm(String),
    #[error("method not allowed here; use {allow}")]
    MethodNotAllowed { allow: &'static str },
    #[error("this form does not accept posts from {0}")]
    OriginNotAllowed(String),
    #[error("content type {got} is not accepted here; send {expected}")]
    UnsupportedType { got: String, expected: &'static str },
    #[error("the body is larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("{0}")]
    TooMany(String),
    #[error("some fields are missing or invalid")]
    InvalidFields(Vec<FieldProblem>),
    #[error("the body cannot be read: {0}")]
    BadRequest(String),
    /// A request header that cannot be taken as sent; the text names it
    /// and says what to send.
    #[error("{0}")]
    BadHeader(String),
    #[error("a valid bearer token is required")]
    Unauthorized,
    #[error("the request took too long")]
    Timeout,
    #[error("{}", if cause.maybe_stored() {
        "the item may have been stored; send the same request again (with the same Idempotency-Key, if you sent one) to get its receipt"
    } else {
        "the item cannot be stored right now; retry later"
    })]
    Unavailable {
        retry_after: Duration,
        #[source]
        cause: PipelineError,
    },
    #[error(
        "this Idempotency-Key was used for a different request; send a new key with a new request"
    )]
    KeyReused,
    #[error("too many messages; retry later")]
    RateLimited {
        retry_after: Duration,
        policy: Option<crate::verdict::RatePolicy>,
    },
    #[error("an attachment carries a virus ({})", signatures.join(", "))]
    Infected { signatures: Vec<String> },
    #[error("refused by policy")]
    Refused,
    #[error("too many requests in flight from your address; retry in a second")]
    TooManyInFlight,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    /// A stable machine-readable code.
    error: &'static str,
    /// A sentence for people.
    message: String,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    fields: &'a [FieldProblem],
    /// Set on a 503 whose write may have landed: the same request again
    /// learns its receipt.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    maybe_stored: bool,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::NotFound | ApiError::UnknownForm(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::OriginNotAllowed(_) | ApiError::Refused => StatusCode::FORBIDDEN,
            ApiError::UnsupportedType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::TooLarge { .. } | ApiError::TooMany(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::InvalidFields(_) | ApiError::BadRequest(_) | ApiError::BadHeader(_) => {
                StatusCode::BAD_REQUEST
            }
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Timeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::RateLimited { .. } | ApiError::TooManyInFlight => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ApiError::Infected { .. } | ApiError::KeyReused => StatusCode::UNPROCESSABLE_ENTITY,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            ApiError::NotFound => "not_found",
            ApiError::UnknownForm(_) => "unknown_form",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::OriginNotAllowed(_) => "origin_not_allowed",
            ApiError::UnsupportedType { .. } => "unsupported_media_type",
            ApiError::TooLarge { .. } => "too_large",
            ApiError::TooMany(_) => "too_many_parts",
            ApiError::InvalidFields(_) => "invalid_fields",
            ApiError::BadRequest(_) | ApiError::BadHeader(_) => "bad_request",
            ApiError::Unauthorized => "unauthorized",
            ApiError::Timeout => "timeout",
            ApiError::Unavailable { .. } => "unavailable",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::Infected { .. } => "infected",
            ApiError::Refused => "refused",
            ApiError::TooManyInFlight => "too_many_requests",
            ApiError::KeyReused => "idempotency_key_reused",
        }
    }

    /// The answer the client gets.
    pub fn into_response(self) -> Response<Body> {
        let status = self.status();
        if let ApiError::Unavailable { cause, .. } = &self {
            // The client hears only "retry later"; the operator reads why.
            // One line a minute during an outage, not one per request.
            if let Some(suppressed) = crate::telemetry::log_limit::errors().check("http-not-stored")
            {
                tracing::warn!(error = %error_chain(cause), suppressed, "item not stored, client told to retry");
            }
        }
        let fields: &[FieldProblem] = match &self {
            ApiError::InvalidFields(fields) => fields,
            _ => &[],
        };
        let body = ErrorBody {
            error: self.code(),
            message: self.to_string(),
            fields,
            maybe_stored: matches!(&self, ApiError::Unavailable { cause, .. } if cause.maybe_stored()),
        };
        let mut response = json_response(status, &body);
        let headers = response.headers_mut();
        match &self {
            ApiError::Unavailable { retry_after, .. } => {
                headers.insert(header::RETRY_AFTER, seconds(*retry_after));
            }
            ApiError::RateLimited {
                retry_after,
                policy,
            } => {
                headers.insert(header::RETRY_AFTER, seconds(*retry_after));
                // IETF draft "RateLimit header fields for HTTP" (-09):
                // the policy is the rule's quota (q items per w seconds),
                // the state says none remain (r=0) until t seconds.
                let name = policy.as_ref().map_or("default", |p| p.name.as_str());
                if let Some(p) = policy {
                    if let Ok(value) = HeaderValue::from_str(&format!(
                        "\"{name}\";q={};w={}",
                        p.quota,
                        p.window.as_secs().max(1)
                    )) {
                        headers.insert("ratelimit-policy", value);
                    }
                }
                if let Ok(value) = HeaderValue::from_str(&format!(
                    "\"{name}\";r=0;t={}",
                    retry_after.as_secs().max(1)
                )) {
                    headers.insert("ratelimit", value);
                }
            }
            ApiError::TooManyInFlight => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(1u64));
            }
            ApiError::MethodNotAllowed { allow } => {
                headers.insert(header::ALLOW, HeaderValue::from_static(allow));
            }
            _ => {}
        }
        response
    }
}

impl ApiError {
    /// The answer for an item the pipeline did not store: a reused key is
    /// the client's mistake (422), an empty message its own (400);
    /// anything else means "retry later" (503 with `Retry-After`).
    pub fn not_stored(cause: PipelineError, retry_after: Duration) -> ApiError {
        match cause {
            PipelineError::KeyReused => ApiError::KeyReused,
            PipelineError::Parse(crate::parse::ParseError::Empty) => {
                ApiError::BadRequest("the message is empty".into())
            }
            cause => ApiError::Unavailable { retry_after, cause },
        }
    }
}

/// `Retry-After` in whole seconds, at least one.
fn seconds(d: Duration) -> HeaderValue {
    HeaderValue::from(d.as_secs().max(1))
}

/// A JSON answer.
pub fn json_response(status: StatusCode, body: &impl Serialize) -> Response<Body> {
    let bytes = serde_json::to_vec(body).expect("answer bodies always serialize");
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::SinkError;

    #[test]
    fn unavailable_tells_when_to_retry_and_hides_the_cause() {
        let err = ApiError::Unavailable {
            retry_after: Duration::from_secs(30),
            cause: PipelineError::Sink(SinkError::Timeout(Duration::from_secs(2))),
        };
        let response = err.into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "30");
        let body = format!("{:?}", response.body());
        assert!(!body.contains("Redis"), "internal cause leaked: {body}");
    }

    #[test]
    fn a_timed_out_write_says_it_may_be_stored() {
        let response = ApiError::not_stored(
            PipelineError::Sink(SinkError::Timeout(Duration::from_secs(2))),
            Duration::from_secs(30),
        )
        .into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = format!("{:?}", response.body());
        assert!(body.contains("maybe_stored"), "{body}");
        assert!(body.contains("may have been stored"), "{body}");
        let reused =
            ApiError::not_stored(PipelineError::KeyReused, Duration::from_secs(30)).into_response();
        assert_eq!(reused.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert!(format!("{:?}", reused.body()).contains("idempotency_key_reused"));
    }

    #[test]
    fn rate_limited_carries_retry_after_and_ratelimit() {
        let response = ApiError::RateLimited {
            retry_after: Duration::from_secs(90),
            policy: Some(crate::verdict::RatePolicy {
                name: "form-per-network".into(),
                quota: 20,
                window: Duration::from_secs(3600),
            }),
        }
        .into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "90");
        assert_eq!(
            response.headers()["ratelimit-policy"],
            "\"form-per-network\";q=20;w=3600"
        );
        assert_eq!(
            response.headers()["ratelimit"],
            "\"form-per-network\";r=0;t=90"
        );
    }
}
