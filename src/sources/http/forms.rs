//! `POST /v1/forms/{form}`: a shop page's form post becomes a submission.
//!
//! The checks run cheapest first: form known (404), origin allowed (403),
//! body type (415), declared size (413), body read within the limit (413),
//! fields decoded (400/413), required fields present (400), bot checks
//! (crate::sources::http::bots: a bot is answered like a person and its post
//! trapped); only then does the item enter the pipeline. A browser post (Accept: text/html) is
//! answered with a 303 to the form's thank-you page.

use std::net::SocketAddr;
use std::time::Duration;

use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Body as HttpBody;

use super::bots;
use super::form_body::{self, BodyKind};
use super::respond::{ApiError, Body, FieldProblem};
use super::{read_body, AppState};
use crate::envelope::Source;
use crate::parse::ParseOptions;
use crate::route::{Answer, Refusal};
use crate::sources::http::config::FormConfig;
use crate::submission::{FormPost, Payload, Submission};

pub async fn handle<B>(
    state: &AppState,
    form_id: &str,
    request: Request<B>,
    peer: SocketAddr,
) -> Result<Response<Body>, ApiError>
where
    B: HttpBody,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let form = state
        .form(form_id)
        .ok_or_else(|| ApiError::UnknownForm(form_id.to_string()))?;
    let origin = request_origin(request.headers());
    // Refusals carry the CORS headers too: a shop page's script must be
    // able to read a 400's fields or a 429's Retry-After, not only a 202.
    let mut response = post(state, form, origin.as_deref(), request, peer)
        .await
        .unwrap_or_else(ApiError::into_response);
    allow_origin(&mut response, origin.as_deref(), form);
    Ok(response)
}

async fn post<B>(
    state: &AppState,
    form: &FormConfig,
    origin: Option<&str>,
    request: Request<B>,
    peer: SocketAddr,
) -> Result<Response<Body>, ApiError>
where
    B: HttpBody,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    if let Some(origin) = origin {
        if !origin_allowed(form, origin) {
            return Err(ApiError::OriginNotAllowed(origin.to_string()));
        }
    }
    match *request.method() {
        Method::POST => {}
        Method::OPTIONS => return Ok(preflight()),
        _ => {
            return Err(ApiError::MethodNotAllowed {
                allow: "POST, OPTIONS",
            })
        }
    }
    let kind = BodyKind::from_content_type(header_str(request.headers(), header::CONTENT_TYPE))?;
    // The headers are kept for the source's fields; taken, not cloned.
    let (http::request::Parts { headers, .. }, body) = request.into_parts();
    let client_key = super::idempotency::from_header(&headers, &format!("form:{}", form.id))?;
    // The body's bytes count against the memory budget until the answer.
    let (body, _held) = read_body(
        state,
        crate::budget::Source::Forms,
        body,
        form.max_size.bytes(),
        &headers,
    )
    .await?;
    let mut post = form_body::decode(kind, body, form).await?;
    check_fields(form, &post)?;
    // A client's key stands for this post from this address; without one,
    // the post itself is the key for the form's retry window, so a double
    // click or a resend gets the first receipt.
    let post_digest = super::idempotency::digest_of_post(&post);
    let key = match client_key {
        Some(key) => super::idempotency::client_key(key, &post_digest, peer.ip()),
        None => {
            super::idempotency::of_post(&form.id, peer.ip(), &post_digest, form.retry_window.into())
        }
    };
    let retry_after = state.http.retry_after.into();
    let next = post.field("_next").map(str::to_string);
    // Before the bot checks: a resend carries the token of the first post,
    // which the replay check would take for a bot's.
    if let Some(stored) = state
        .pipeline
        .recognise_key(&key)
        .await
        .map_err(|cause| ApiError::not_stored(cause, retry_after))?
    {
        return Ok(accepted(
            form,
            &headers,
            next.as_deref(),
            &stored.id.to_string(),
        ));
    }
    // Answered like a success; the guard traps it (suppressed, kind
    // `trapped`), so the bot learns nothing.
    post.bot_check = state.bots.check(form, &post).await;

    let source = Source::Form {
        form: form.id.clone(),
        ip: peer.ip().to_string(),
        user_agent: header_str(&headers, header::USER_AGENT).map(str::to_string),
        origin: header_str(&headers, header::ORIGIN).map(str::to_string),
        referer: header_str(&headers, header::REFERER).map(str::to_string),
        accept_language: header_str(&headers, header::ACCEPT_LANGUAGE).map(str::to_string),
    };
    let mut submission = Submission::new(source, Payload::Form(post));
    submission.idempotency_key = Some(key);
    submission.idempotency_checked = true;
    submission.refusal_judged_again = true;
    let fields = form.fields();
    let options = ParseOptions {
        form: Some(&fields),
        keep_raw: false,
    };
    let stored = state
        .pipeline
        .process(submission, options)
        .await
        .map_err(|cause| ApiError::not_stored(cause, retry_after))?;
    match stored.answer {
        Answer::Accepted => Ok(accepted(
            form,
            &headers,
            next.as_deref(),
            &stored.id.to_string(),
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

/// Which bot check, if any, the post fails: honeypot, links, token
/// (signature and age), then replay (the token is remembered in Redis for
/// `token_max_age`; a second use within it fails).
/// `GET /v1/forms/{form}/token`: a signed timestamp token for the form's
/// page to post back in `_token`. 404 for forms without tokens.
pub fn token<B>(
    state: &AppState,
    form_id: &str,
    request: &Request<B>,
) -> Result<Response<Body>, ApiError> {
    let form = state
        .form(form_id)
        .ok_or_else(|| ApiError::UnknownForm(form_id.to_string()))?;
    // A form without tokens has no token endpoint (not "no such form").
    let key = state.bots.token_key(form).ok_or(ApiError::NotFound)?;
    let origin = request_origin(request.headers());
    let mut response = issue_token(form, key, origin.as_deref(), request.method())
        .unwrap_or_else(ApiError::into_response);
    allow_origin(&mut response, origin.as_deref(), form);
    Ok(response)
}

fn issue_token(
    form: &FormConfig,
    key: &crate::sources::http::bots::TokenKey,
    origin: Option<&str>,
    method: &Method,
) -> Result<Response<Body>, ApiError> {
    if let Some(origin) = origin {
        if !origin_allowed(form, origin) {
            return Err(ApiError::OriginNotAllowed(origin.to_string()));
        }
    }
    if method != Method::GET {
        return Err(ApiError::MethodNotAllowed { allow: "GET" });
    }
    let mut response = super::respond::json_response(
        StatusCode::OK,
        &serde_json::json!({
            "token": key.issue(&form.id, bots::unix_now()),
            "field": bots::TOKEN_FIELD,
            "expires_in": Duration::from(form.token_max_age).as_secs(),
        }),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// 303 to the thank-you page for a browser, 202 JSON for scripts.
fn accepted(
    form: &FormConfig,
    headers: &HeaderMap,
    next: Option<&str>,
    id: &str,
) -> Response<Body> {
    let wants_html = header_str(headers, header::ACCEPT).is_some_and(|a| a.contains("text/html"));
    let target = next
        .filter(|n| redirect_allowed(form, n))
        .or(form.redirect.as_deref());
    match (wants_html, target) {
        (true, Some(target)) => {
            let mut response = Response::new(Body::default());
            *response.status_mut() = StatusCode::SEE_OTHER;
            let location = HeaderValue::from_str(&with_receipt(target, id))
                .expect("with_receipt leaves only visible ASCII");
            response.headers_mut().insert(header::LOCATION, location);
            response
        }
        _ => super::respond::json_response(
            StatusCode::ACCEPTED,
            &serde_json::json!({ "id": id, "status": "accepted" }),
        ),
    }
}

/// `target` with `receipt=<id>` added to its query (before any
/// `#fragment`, where it would not reach the page's server), and every
/// character that is not visible ASCII percent-encoded as UTF-8, so an
/// address like `/danke-schön` still makes a valid `Location` header.
fn with_receipt(target: &str, id: &str) -> String {
    let (base, fragment) = match target.split_once('#') {
        Some((base, fragment)) => (base, Some(fragment)),
        None => (target, None),
    };
    let separator = if base.contains('?') { '&' } else { '?' };
    let mut url = format!("{base}{separator}receipt={id}");
    if let Some(fragment) = fragment {
        url.push('#');
        url.push_str(fragment);
    }
    let mut encoded = String::with_capacity(url.len());
    for c in url.chars() {
        if c.is_ascii_graphic() {
            encoded.push(c);
        } else {
            let mut buf = [0u8; 4];
            for byte in c.encode_utf8(&mut buf).bytes() {
                encoded.push_str(&format!("%{byte:02X}"));
            }
        }
    }
    encoded
}

/// Checks a decoded post against its form: single-value fields sent once,
/// required fields, a plausible reply address (no header injection), an
/// allowed `_next`. Every problem is reported at once; a field sent more
/// than once is reported for that alone. Public for the fuzz targets
/// (tests/fuzz), which run a post through the same checks.
pub fn check_fields(form: &FormConfig, post: &FormPost) -> Result<(), ApiError> {
    let repeated = repeated_single_values(form, post);
    let mut problems: Vec<FieldProblem> = repeated
        .iter()
        .map(|name| FieldProblem {
            name: name.to_string(),
            problem: "sent more than once; send one value".into(),
        })
        .collect();
    let once = |name: &str| !repeated.contains(&name);
    for name in form.required.iter().filter(|name| once(name)) {
        if post.field(name).is_none() && !post.files.iter().any(|f| &f.field == name) {
            problems.push(FieldProblem {
                name: name.clone(),
                problem: "required".into(),
            });
        }
    }
    let email_field = if post.field(&form.email_field).is_some() {
        form.email_field.as_str()
    } else {
        "_replyto"
    };
    if let Some(email) = post.field(email_field).filter(|_| once(email_field)) {
        if !looks_like_email(email) {
            problems.push(FieldProblem {
                name: email_field.to_string(),
                problem: "not an email address".into(),
            });
        }
    }
    if let Some(next) = post.field("_next").filter(|_| once("_next")) {
        if !redirect_allowed(form, next) {
            problems.push(FieldProblem {
                name: "_next".into(),
                problem: "must be an http(s) URL on one of the form's allowed origins".into(),
            });
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ApiError::InvalidFields(problems))
    }
}

/// The fields of which the gateway reads one value, in the order they are
/// reported: the address, name and message fields, and the reserved
/// `_replyto`, `_subject` and `_next`. A second value would be stored in
/// `fields` unchecked (an address or `_next` with a line break), and
/// the message field's would reach the desk beside `text` without being
/// counted by the link cap (super::bots), which reads the first.
fn single_value_fields(form: &FormConfig) -> [&str; 6] {
    [
        form.email_field.as_str(),
        "_replyto",
        form.name_field.as_str(),
        "_subject",
        form.message_field.as_str(),
        "_next",
    ]
}

/// The single-value fields posted more than once (blank values count: a
/// blank first value would hide the second from the checks), each once.
fn repeated_single_values<'f>(form: &'f FormConfig, post: &FormPost) -> Vec<&'f str> {
    let mut repeated: Vec<&str> = Vec::new();
    for name in single_value_fields(form) {
        let many = matches!(
            post.fields.get(name),
            Some(crate::envelope::FieldValue::Many(values)) if values.len() > 1
        );
        if many && !repeated.contains(&name) {
            repeated.push(name);
        }
    }
    repeated
}

#[cfg(test)]
mod single_value_tests {
    use super::*;

    fn form() -> FormConfig {
        toml::from_str(
            "id = \"contact\"\nrequired = [\"email\"]\nredirect = \"https://shop.test/thanks\"\n",
        )
        .expect("test form config")
    }

    fn post(fields: &[(&str, &str)]) -> FormPost {
        let mut post = FormPost::default();
        for (name, value) in fields {
            post.add_field(name.to_string(), value.to_string());
        }
        post
    }

    fn problems(post: &FormPost) -> Vec<FieldProblem> {
        match check_fields(&form(), post) {
            Ok(()) => Vec::new(),
            Err(ApiError::InvalidFields(problems)) => problems,
            Err(other) => panic!("expected invalid_fields, got {other:?}"),
        }
    }

    #[test]
    fn each_single_value_field_sent_twice_is_named() {
        for field in ["email", "_replyto", "name", "_subject", "message", "_next"] {
            let value = match field {
                "email" | "_replyto" => "ok@x.test",
                "_next" => "https://shop.test/thanks",
                _ => "text",
            };
            let mut fields = vec![("email", "ann@example.com"), (field, value), (field, value)];
            if field == "email" {
                fields.remove(0);
            }
            let found = problems(&post(&fields));
            assert_eq!(
                found,
                [FieldProblem {
                    name: field.into(),
                    problem: "sent more than once; send one value".into(),
                }],
                "{field} sent twice"
            );
        }
    }

    #[test]
    fn a_repeated_address_is_reported_once_whatever_its_values() {
        let found = problems(&post(&[
            ("email", "ok@x.test"),
            ("email", "b@x.test\r\nBcc: victim@example.com"),
        ]));
        assert_eq!(found.len(), 1, "one problem for one field: {found:?}");
        assert_eq!(found[0].name, "email");
        // A blank first value does not hide the second.
        let found = problems(&post(&[
            ("email", ""),
            ("email", "b@x.test\r\nBcc: v@x.test"),
        ]));
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].name, "email");
    }

    #[test]
    fn other_fields_may_repeat_and_one_value_passes() {
        let found = problems(&post(&[
            ("email", "ann@example.com"),
            ("size", "M"),
            ("size", "L"),
            ("message", "hello"),
        ]));
        assert!(found.is_empty(), "checkboxes repeat: {found:?}");
    }
}

/// A plausible single address: one `@`, a dotted domain, no spaces or
/// line breaks (which would let a form inject mail headers).
fn looks_like_email(value: &str) -> bool {
    let Some((local, domain)) = value.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains('@')
        && !value
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == ',' || c == '<' || c == '>')
        && value.len() <= 254
}

/// `scheme://host[:port]` of a URL, lower-cased.
fn origin_of(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return None;
    }
    let host = rest.split(['/', '?', '#']).next()?;
    if host.is_empty() || host.contains('@') {
        return None;
    }
    Some(format!("{scheme}://{}", host.to_ascii_lowercase()))
}

/// The origin a browser says it posts from: `Origin`, else `Referer`'s.
fn request_origin(headers: &HeaderMap) -> Option<String> {
    match header_str(headers, header::ORIGIN) {
        // Privacy-sensitive contexts send the literal "null".
        Some(origin) if origin != "null" => Some(origin.trim_end_matches('/').to_ascii_lowercase()),
        _ => header_str(headers, header::REFERER).and_then(origin_of),
    }
}

fn origin_allowed(form: &FormConfig, origin: &str) -> bool {
    form.allowed_origins.is_empty()
        || form
            .allowed_origins
            .iter()
            .any(|allowed| allowed.trim_end_matches('/').eq_ignore_ascii_case(origin))
}

/// `_next` must be http(s) and lead to an allowed origin (or the origin of
/// the form's own redirect): the gateway is no open redirector.
fn redirect_allowed(form: &FormConfig, next: &str) -> bool {
    let Some(origin) = origin_of(next) else {
        return false;
    };
    if next.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return false;
    }
    let own = form.redirect.as_deref().and_then(origin_of);
    own.as_deref() == Some(origin.as_str())
        || form
            .allowed_origins
            .iter()
            .any(|allowed| allowed.trim_end_matches('/').eq_ignore_ascii_case(&origin))
}

/// CORS preflight for script posts from an allowed origin (the caller
/// adds the origin).
fn preflight() -> Response<Body> {
    let mut response = Response::new(Body::default());
    *response.status_mut() = StatusCode::NO_CONTENT;
    let headers = response.headers_mut();
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("POST"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("content-type, accept, idempotency-key"),
    );
    headers.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    response
}

/// Lets a page on an allowed origin read the answer: the origin itself
/// for a form with `allowed_origins`, `*` for a form open to any origin
/// (no credentials are involved). `Retry-After` and the RateLimit fields
/// are not CORS-safelisted, so they are exposed by name.
fn allow_origin(response: &mut Response<Body>, origin: Option<&str>, form: &FormConfig) {
    let Some(origin) = origin else { return };
    if !origin_allowed(form, origin) {
        return;
    }
    let headers = response.headers_mut();
    if form.allowed_origins.is_empty() {
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
    } else if let Ok(value) = HeaderValue::from_str(origin) {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
        headers.insert(header::VARY, HeaderValue::from_static("Origin"));
    } else {
        return;
    }
    headers.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("retry-after, ratelimit, ratelimit-policy"),
    );
}

pub(super) fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_check_refuses_header_injection() {
        assert!(looks_like_email("ann@example.com"));
        assert!(!looks_like_email("ann@example.com\r\nBcc: x@y.z"));
        assert!(!looks_like_email("ann"));
        assert!(!looks_like_email("a@b@c.d"));
        assert!(!looks_like_email("a@localhost"));
    }

    #[test]
    fn receipt_goes_into_the_query_and_the_location_stays_valid() {
        assert_eq!(
            with_receipt("https://shop.test/thanks", "01ABC"),
            "https://shop.test/thanks?receipt=01ABC"
        );
        assert_eq!(
            with_receipt("https://shop.test/thanks?lang=de#top", "01ABC"),
            "https://shop.test/thanks?lang=de&receipt=01ABC#top"
        );
        let location = with_receipt("https://shop.test/danke-schön", "01ABC");
        assert_eq!(location, "https://shop.test/danke-sch%C3%B6n?receipt=01ABC");
        assert!(HeaderValue::from_str(&location).is_ok());
    }

    #[test]
    fn origins_are_scheme_and_host() {
        assert_eq!(
            origin_of("https://Shop.example:8443/thanks?x=1").as_deref(),
            Some("https://shop.example:8443")
        );
        assert_eq!(origin_of("javascript:alert(1)"), None);
        assert_eq!(origin_of("https://user@evil.example/"), None);
    }
}
