//! `POST /v1/messages`: a raw RFC 5322 message, handed over by
//! `intake mailgate` (or any client holding the bearer token).
//!
//! The envelope sender and recipients, which only the mail server knows,
//! come in `X-Intake-Envelope-Sender` and `X-Intake-Envelope-Recipient`;
//! the SMTP client it took the mail from (for SPF) in
//! `X-Intake-Client-Address` and `X-Intake-Client-Helo`. Only a holder of
//! the bearer token gets that far, so only a trusted mail server can say
//! who the client was; its values are checked as LMTP's XFORWARD is
//! (src/sources/smtp_client.rs): over 255 bytes is 400, an address that is
//! no IP address or a HELO that is no text is left out.

use std::net::SocketAddr;

use http::{header, HeaderMap, Method, Request, Response, StatusCode};
use hyper::body::Body as HttpBody;

use super::forms::header_str;
use super::respond::{json_response, ApiError, Body};
use super::{read_body, AppState};
use crate::envelope::{SmtpClient, Source};
use crate::parse::ParseOptions;
use crate::route::{Answer, Refusal};
use crate::submission::{Payload, Submission};

pub const SENDER_HEADER: &str = "x-intake-envelope-sender";
pub const RECIPIENT_HEADER: &str = "x-intake-envelope-recipient";
pub const CLIENT_ADDRESS_HEADER: &str = "x-intake-client-address";
pub const CLIENT_HELO_HEADER: &str = "x-intake-client-helo";

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
    // Checked before the body is read: a refusal costs no upload.
    let client = smtp_client(&headers)?;
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
            client,
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

/// The SMTP client of `X-Intake-Client-Address` and `X-Intake-Client-Helo`;
/// `None` when neither says anything usable.
fn smtp_client(headers: &HeaderMap) -> Result<Option<SmtpClient>, ApiError> {
    use crate::sources::smtp_client::{address, client, helo, MAX_VALUE};
    let too_long = |name: &'static str| {
        ApiError::BadHeader(format!(
            "the {name} header is over {MAX_VALUE} bytes; send at most {MAX_VALUE}, or leave it out"
        ))
    };
    let value = |name: &str| headers.get(name).map(|v| v.as_bytes().trim_ascii());
    let ip = match value(CLIENT_ADDRESS_HEADER) {
        Some(v) => address(v).map_err(|_| too_long("X-Intake-Client-Address"))?,
        None => None,
    };
    let name = match value(CLIENT_HELO_HEADER) {
        Some(v) => helo(v).map_err(|_| too_long("X-Intake-Client-Helo"))?,
        None => None,
    };
    Ok(client(ip, name))
}
