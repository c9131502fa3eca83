//! `POST /v1/messages`: a raw RFC 5322 message, handed over by
//! `intake mailgate` (or any client holding the bearer token).
//!
//! The envelope sender and recipients, which only the mail server knows,
//! come in `X-Intake-Envelope-Sender` and `X-Intake-Envelope-Recipient`.

use std::net::SocketAddr;

use http::{header, Method, Request, Response, StatusCode};
use hyper::body::Body as HttpBody;

use super::forms::header_str;
use super::respond::{json_response, ApiError, Body};
use super::{read_body, AppState};
use crate::envelope::Source;
use crate::parse::ParseOptions;
use crate::route::{Answer, Refusal};
use crate::submission::{Payload, Submission};

pub const SENDER_HEADER: &str = "x-intake-envelope-sender";
pub const RECIPIENT_HEADER: &str = "x-intake-envelope-recipient";

pub async fn handle<B>(
    state: &AppState,
    request: Request<B>,
    peer: SocketAddr,
) -> Result<Response<Body>, ApiError>
where
    B: HttpBody,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    // Without a configured token the endpoint does not exist.
    let Some(token) = &state.mailgate_token else {
        return Err(ApiError::NotFound);
    };
    if request.method() != Method::POST {
        return Err(ApiError::MethodNotAllowed { allow: "POST" });
    }
    if !super::bearer_matches(request.headers(), token) {
        return Err(ApiError::Unauthorized);
    }
    let content_type = header_str(request.headers(), header::CONTENT_TYPE).map(|v| {
        v.split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase()
    });
    if content_type.as_deref() != Some("message/rfc822") {
        return Err(ApiError::UnsupportedType {
            got: content_type.unwrap_or_else(|| "(none)".into()),
            expected: "message/rfc822",
        });
    }
    let (http::request::Parts { headers, .. }, body) = request.into_parts();
    let client_key = super::idempotency::from_header(&headers, "messages")?;
    let limit = state.messages.max_size.bytes();
    // Mail with the token counts against the memory budget too: it is
    // exempt from the per-IP cap, so nothing else bounds it. Held through
    // the whole pipeline.
    let (raw, held) = read_body(
        state,
        crate::budget::Source::Messages,
        body,
        limit,
        &headers,
    )
    .await?;

    let sender = header_str(&headers, SENDER_HEADER.parse().expect("valid header name"))
        .map(|s| s.trim().trim_matches(['<', '>']).to_string());
    let recipients: Vec<String> = headers
        .get_all(RECIPIENT_HEADER)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(|s| s.trim().trim_matches(['<', '>']).to_string())
        .filter(|s| !s.is_empty())
        .collect();
    let options = ParseOptions {
        form: None,
        keep_raw: state.messages.keep_raw,
    };
    let ip = peer.ip();
    let retry_after = state.http.retry_after.into();
    // A big mail's hashing (its key below), parsing and encoding run off
    // the async workers; its bytes stay reserved until that is done, even
    // if the client left.
    let pipeline = state.pipeline.clone();
    let processed = crate::sources::offload::process(raw.len(), async move {
        let _held = held;
        // A mail server that lost our answer (gateway killed after the
        // write, its own timeout) delivers the same bytes again: the
        // derived key turns that retry into the first receipt, not a
        // second desk item. A client's own key stands for this message
        // from this address.
        let delivery = super::idempotency::of_mail(sender.as_deref(), &recipients, &raw);
        let key = match client_key {
            Some(key) => super::idempotency::client_key(key, &delivery.key, ip),
            None => delivery,
        };
        let source = Source::Mailgate {
            sender,
            recipients,
            ip: ip.to_string(),
            client: None,
        };
        let mut submission = Submission::new(source, Payload::Mail(raw));
        submission.idempotency_key = Some(key);
        submission.refusal_judged_again = true;
        pipeline.process(submission, options).await
    });
    let stored = processed
        .await
        .map_err(|cause| ApiError::not_stored(cause, retry_after))?;
    match stored.answer {
        Answer::Accepted => Ok(json_response(
            StatusCode::ACCEPTED,
            &serde_json::json!({ "id": stored.id.to_string(), "status": "accepted" }),
        )),
        Answer::Refused(Refusal::RateLimited {
            retry_after,
            policy,
        }) => Err(ApiError::RateLimited {
            retry_after,
            policy,
        }),
        Answer::Refused(Refusal::Infected { signatures }) => Err(ApiError::Infected { signatures }),
        Answer::Refused(Refusal::Policy) => Err(ApiError::Refused),
    }
}
