//! `POST /v1/messages` against a real gateway and the dev Redis: a stored
//! message gets 202 and its receipt, the envelope keeps the exact bytes and
//! the envelope sender and recipients, and every refusal has its status
//! with nothing written to any stream.

mod support;

use base64::Engine as _;
use reqwest::{header, StatusCode};
use serde_json::{json, Value};
use support::{client, Gateway, TOKEN};

/// The test gateway's `messages.max_size` ("1MB", decimal).
const LIMIT: usize = 1_000_000;

const MESSAGE: &[u8] = b"From: Ann Example <ann@example.com>\r\n\
To: support@shop.test\r\n\
Subject: Where is my order?\r\n\
\r\n\
Order 1234 has not arrived.\r\n";

fn messages_url(gw: &Gateway) -> String {
    format!("{}/v1/messages", gw.url)
}

/// A well-formed request: token, type, body.
fn post(gw: &Gateway, body: impl Into<reqwest::Body>) -> reqwest::RequestBuilder {
    client()
        .post(messages_url(gw))
        .bearer_auth(TOKEN)
        .header(header::CONTENT_TYPE, "message/rfc822")
        .body(body)
}

/// A message of exactly `len` bytes: headers, then a body of `x` lines.
fn message_of_size(len: usize) -> Vec<u8> {
    let mut raw = b"From: ann@example.com\r\nSubject: big\r\n\r\n".to_vec();
    while raw.len() < len {
        let line_left = (len - raw.len()).min(78);
        if line_left >= 2 {
            raw.extend(std::iter::repeat_n(b'x', line_left - 2));
            raw.extend_from_slice(b"\r\n");
        } else {
            raw.extend(std::iter::repeat_n(b'x', line_left));
        }
    }
    raw
}

/// The status and JSON body of a refusal, checked for the shape every
/// error answer has.
async fn refusal(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let text = response.text().await.expect("the answer has a body");
    let body: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("a {status} answer must be JSON ({e}): {text:?}"));
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "a {status} answer names its error code: {body}"
    );
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "a {status} answer says what is wrong: {body}"
    );
    (status, body)
}

/// Nothing was written to any stream of this gateway.
async fn assert_nothing_stored(gw: &Gateway, after: &str) {
    for stream in ["desk", "suppressed", "quarantine", "held"] {
        let entries = gw.entries(stream).await;
        assert!(
            entries.is_empty(),
            "{after}: {} entr(ies) reached `{stream}`, which a refused request must never do",
            entries.len()
        );
    }
}

/// A body sent chunked (no Content-Length): `chunks` pieces of `size` bytes.
fn chunked(chunks: usize, size: usize) -> reqwest::Body {
    let pieces: Vec<Result<Vec<u8>, std::io::Error>> = (0..chunks)
        .map(|i| {
            Ok(if i == 0 {
                b"From: ann@example.com\r\nSubject: streamed\r\n\r\n".to_vec()
            } else {
                [vec![b'y'; size - 2], b"\r\n".to_vec()].concat()
            })
        })
        .collect();
    reqwest::Body::wrap_stream(futures_util::stream::iter(pieces))
}

// ---------------------------------------------------------------------------
// Stored.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn stored_message_gets_202_with_the_receipt_of_its_desk_entry() {
    let gw = Gateway::start("messages_stored").await;
    let response = post(&gw, MESSAGE).send().await.unwrap();
    assert_eq!(response.status(), 202, "a good message is accepted");
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "application/json",
        "the receipt is JSON"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "accepted");
    let id = body["id"].as_str().expect("the 202 carries a receipt id");
    assert_eq!(id.len(), 26, "the receipt is a ULID: {id}");

    let desk = gw.entries("desk").await;
    assert_eq!(desk.len(), 1, "exactly one desk entry per accepted message");
    assert_eq!(
        desk[0].field("id"),
        id,
        "the desk entry's id is the receipt"
    );
    assert_eq!(desk[0].field("kind"), "message");
    let env = desk[0].envelope();
    assert_eq!(env["id"], id, "the envelope's id is the receipt");
    assert_eq!(env["channel"], "email");
    assert_eq!(env["subject"], "Where is my order?");
}

#[tokio::test]
async fn raw_holds_the_exact_bytes_posted() {
    let gw = Gateway::start("messages_raw").await;
    // CRLF and bare LF mixed, 8-bit Latin-1 without a charset, a NUL, a tab,
    // trailing spaces and no final line break: all must survive.
    let raw: &[u8] = b"From: Customer <customer@example.com>\r\n\
To: support@shop.test\n\
Subject: where is my order?  \r\n\
\r\n\
Gr\xfc\xdfe,\torder 1234\x00 has not arrived.   \n\
-- \r\nCustomer";
    let response = post(&gw, raw).send().await.unwrap();
    assert_eq!(response.status(), 202);
    let env = gw.entries("desk").await[0].envelope();
    let stored = base64::engine::general_purpose::STANDARD
        .decode(env["raw"].as_str().expect("`raw` is kept for mail"))
        .expect("`raw` is standard base64");
    assert!(
        stored == raw,
        "`raw` is not byte for byte what was posted:\n posted {:?}\n stored {:?}",
        String::from_utf8_lossy(raw),
        String::from_utf8_lossy(&stored)
    );
}

#[tokio::test]
async fn envelope_sender_and_recipients_are_recorded_in_source() {
    let gw = Gateway::start("messages_envelope").await;
    let response = post(&gw, MESSAGE)
        .header("x-intake-envelope-sender", "<ann@example.com>")
        .header("x-intake-envelope-recipient", "<support@shop.test>")
        .header("x-intake-envelope-recipient", "sales@shop.test")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let env = gw.entries("desk").await[0].envelope();
    assert_eq!(
        env["source"],
        json!({
            "type": "mailgate",
            "sender": "ann@example.com",
            "recipients": ["support@shop.test", "sales@shop.test"],
            "ip": "127.0.0.1",
        }),
        "sender and every recipient, angle brackets removed, and the client's address"
    );
}

#[tokio::test]
async fn smtp_client_headers_are_recorded_in_source() {
    let gw = Gateway::start("messages_client").await;
    let response = post(&gw, MESSAGE)
        .header("x-intake-client-address", "IPv6:2001:DB8::7")
        .header("x-intake-client-helo", "mx.customer.test")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let env = gw.entries("desk").await[0].envelope();
    assert_eq!(
        env["source"]["client"],
        json!({ "address": "2001:db8::7", "helo": "mx.customer.test" }),
        "the address in its canonical form, the HELO as given: {}",
        env["source"]
    );
    assert_eq!(env["source"]["ip"], "127.0.0.1", "ip stays the poster");
}

#[tokio::test]
async fn an_address_that_is_no_ip_is_left_out_and_an_overlong_helo_is_400() {
    let gw = Gateway::start("messages_client_odd").await;
    let response = post(&gw, MESSAGE)
        .header("x-intake-client-address", "unknown")
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        202,
        "an odd address never costs the mail"
    );
    let env = gw.entries("desk").await[0].envelope();
    assert!(
        env["source"].get("client").is_none(),
        "no address and no HELO is no client: {}",
        env["source"]
    );
    let response = post(
        &gw,
        &b"From: bob@example.com\r\nSubject: long\r\n\r\nhi\r\n"[..],
    )
    .header("x-intake-client-address", "192.0.2.1")
    .header("x-intake-client-helo", "h".repeat(256))
    .send()
    .await
    .unwrap();
    let (status, body) = refusal(response).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "bad_request");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("X-Intake-Client-Helo header is over 255 bytes"),
        "names the header and the bound: {body}"
    );
    assert_eq!(
        gw.entries("desk").await.len(),
        1,
        "the refused one is not stored"
    );
}

/// Runs the real `intake mailgate` against `gw` with `flags`, off the
/// runtime the in-process gateway answers on; its exit code and stderr.
async fn run_mailgate(gw: &Gateway, message: &'static [u8], flags: &[&str]) -> (i32, String) {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let url = gw.url.clone();
    let flags: Vec<String> = flags.iter().map(|f| f.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let token_file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(token_file.path(), TOKEN).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_intake"))
            .args([
                "mailgate",
                "--url",
                &url,
                "--timeout",
                "10s",
                "--token-file",
            ])
            .arg(token_file.path())
            .args(&flags)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(message).unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn mailgate_client_flags_reach_source_and_unknown_or_empty_leave_it_out() {
    let gw = Gateway::start("messages_mailgate_client").await;
    let (code, stderr) = run_mailgate(
        &gw,
        b"From: ann@example.com\r\nSubject: from the mx\r\n\r\none\r\n",
        &["--client-address=203.0.113.7", "--helo=mx.customer.test"],
    )
    .await;
    assert_eq!(code, 0, "stored: {stderr}");
    assert!(stderr.is_empty(), "nothing to warn about: {stderr}");
    // What Postfix's pipe passes for a locally submitted mail.
    let (code, stderr) = run_mailgate(
        &gw,
        b"From: ann@example.com\r\nSubject: local\r\n\r\ntwo\r\n",
        &["--client-address=", "--helo=unknown"],
    )
    .await;
    assert_eq!(code, 0, "stored: {stderr}");
    assert!(
        stderr.is_empty(),
        "empty and unknown are no client, not odd: {stderr}"
    );
    let (code, stderr) = run_mailgate(
        &gw,
        b"From: ann@example.com\r\nSubject: odd\r\n\r\nthree\r\n",
        &[
            "--client-address=mx.customer.test",
            "--helo=mx.customer.test",
        ],
    )
    .await;
    assert_eq!(code, 0, "an odd address never costs the mail: {stderr}");
    assert!(
        stderr.contains("warning: --client-address mx.customer.test is not an IP address"),
        "{stderr}"
    );

    let desk = gw.entries("desk").await;
    let sources: Vec<Value> = desk
        .iter()
        .map(|e| e.envelope()["source"].clone())
        .collect();
    assert_eq!(sources.len(), 3);
    assert_eq!(
        sources[0]["client"],
        json!({ "address": "203.0.113.7", "helo": "mx.customer.test" })
    );
    assert!(sources[1].get("client").is_none(), "{}", sources[1]);
    assert_eq!(
        sources[2]["client"],
        json!({ "helo": "mx.customer.test" }),
        "the HELO goes without the odd address"
    );
}

#[tokio::test]
async fn message_without_envelope_headers_has_no_sender_and_no_recipients() {
    let gw = Gateway::start("messages_no_envelope").await;
    let response = post(&gw, MESSAGE).send().await.unwrap();
    assert_eq!(response.status(), 202);
    let env = gw.entries("desk").await[0].envelope();
    assert!(
        env["source"].get("sender").is_none(),
        "an unknown sender is omitted, not a bounce: {}",
        env["source"]
    );
    assert_eq!(env["source"]["recipients"], json!([]));
    assert_eq!(env["abuse"]["auto_submitted"], false, "not a bounce");
}

#[tokio::test]
async fn content_type_parameters_and_case_do_not_matter() {
    let gw = Gateway::start("messages_ct_params").await;
    for content_type in ["message/rfc822; charset=utf-8", "Message/RFC822"] {
        let response = client()
            .post(messages_url(&gw))
            .bearer_auth(TOKEN)
            .header(header::CONTENT_TYPE, content_type)
            // Other bytes each time: the same bytes again are a retry,
            // stored once.
            .body([format!("X-Attempt: {content_type}\r\n").as_bytes(), MESSAGE].concat())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202, "`{content_type}` is message/rfc822");
    }
    assert_eq!(gw.entries("desk").await.len(), 2);
}

#[tokio::test]
async fn message_of_exactly_the_size_limit_is_accepted() {
    let gw = Gateway::start("messages_at_limit").await;
    let raw = message_of_size(LIMIT);
    assert_eq!(raw.len(), LIMIT);
    let response = post(&gw, raw.clone()).send().await.unwrap();
    assert_eq!(response.status(), 202, "the limit itself is allowed");
    let env = gw.entries("desk").await[0].envelope();
    let stored = base64::engine::general_purpose::STANDARD
        .decode(env["raw"].as_str().unwrap())
        .unwrap();
    assert_eq!(stored.len(), LIMIT, "the whole message is kept");
}

// ---------------------------------------------------------------------------
// Refused, and nothing stored.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn missing_token_is_401() {
    let gw = Gateway::start("messages_no_token").await;
    let response = client()
        .post(messages_url(&gw))
        .header(header::CONTENT_TYPE, "message/rfc822")
        .body(MESSAGE)
        .send()
        .await
        .unwrap();
    let (status, body) = refusal(response).await;
    assert_eq!(status, 401, "no token, no entry: {body}");
    assert_eq!(body["error"], "unauthorized");
    assert_nothing_stored(&gw, "missing token").await;
}

#[tokio::test]
async fn wrong_token_is_401_and_not_echoed() {
    let gw = Gateway::start("messages_wrong_token").await;
    for authorization in [
        "Bearer not-the-token".to_string(),
        format!("Bearer {TOKEN}x"),
        format!("Basic {TOKEN}"),
        TOKEN.to_string(),
        "Bearer ".to_string(),
    ] {
        let response = client()
            .post(messages_url(&gw))
            .header(header::AUTHORIZATION, &authorization)
            .header(header::CONTENT_TYPE, "message/rfc822")
            .body(MESSAGE)
            .send()
            .await
            .unwrap();
        let (status, body) = refusal(response).await;
        assert_eq!(
            status, 401,
            "`Authorization: {authorization}` must be refused"
        );
        assert!(
            !body.to_string().contains(TOKEN),
            "the answer must not echo the token: {body}"
        );
    }
    assert_nothing_stored(&gw, "wrong token").await;
}

#[tokio::test]
async fn token_is_checked_before_the_body_is_read() {
    let gw = Gateway::start("messages_token_first").await;
    // Over the size limit and without a token: the caller learns it is not
    // allowed, not that its message is too big.
    let response = client()
        .post(messages_url(&gw))
        .header(header::CONTENT_TYPE, "message/rfc822")
        .body(message_of_size(LIMIT + 1))
        .send()
        .await
        .unwrap();
    let (status, body) = refusal(response).await;
    assert_eq!(status, 401, "authentication comes first: {body}");
    assert_nothing_stored(&gw, "too large without a token").await;
}

#[tokio::test]
async fn text_plain_is_415_and_says_what_to_send() {
    let gw = Gateway::start("messages_text_plain").await;
    let response = client()
        .post(messages_url(&gw))
        .bearer_auth(TOKEN)
        .header(header::CONTENT_TYPE, "text/plain")
        .body(MESSAGE)
        .send()
        .await
        .unwrap();
    let (status, body) = refusal(response).await;
    assert_eq!(status, 415, "text/plain is not a message: {body}");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("text/plain"),
        "says what it got: {message}"
    );
    assert!(
        message.contains("message/rfc822"),
        "says what to send: {message}"
    );
    assert_nothing_stored(&gw, "text/plain").await;
}

#[tokio::test]
async fn missing_content_type_is_415() {
    let gw = Gateway::start("messages_no_type").await;
    let response = client()
        .post(messages_url(&gw))
        .bearer_auth(TOKEN)
        .body(MESSAGE)
        .send()
        .await
        .unwrap();
    let (status, body) = refusal(response).await;
    assert_eq!(status, 415, "a body of unknown type is refused: {body}");
    assert!(
        body["message"].as_str().unwrap().contains("message/rfc822"),
        "says what to send: {body}"
    );
    assert_nothing_stored(&gw, "no content type").await;
}

#[tokio::test]
async fn too_large_declared_body_is_413() {
    let gw = Gateway::start("messages_413_declared").await;
    let response = post(&gw, message_of_size(LIMIT + 1)).send().await.unwrap();
    let (status, body) = refusal(response).await;
    assert_eq!(status, 413, "one byte over the limit: {body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains(&LIMIT.to_string()),
        "names the limit: {body}"
    );
    assert_nothing_stored(&gw, "declared too large").await;
}

#[tokio::test]
async fn too_large_chunked_body_without_length_is_413() {
    let gw = Gateway::start("messages_413_chunked").await;
    // 1.2 MB in 10 KB chunks, no Content-Length.
    let response = post(&gw, chunked(120, 10_000)).send().await.unwrap();
    let (status, body) = refusal(response).await;
    assert_eq!(
        status, 413,
        "refused once the stream crossed the limit: {body}"
    );
    assert_nothing_stored(&gw, "chunked too large").await;
}

#[tokio::test]
async fn chunked_body_within_the_limit_is_accepted() {
    let gw = Gateway::start("messages_chunked_ok").await;
    let response = post(&gw, chunked(20, 10_000)).send().await.unwrap();
    assert_eq!(response.status(), 202, "chunked encoding itself is fine");
    assert_eq!(gw.entries("desk").await.len(), 1);
}

#[tokio::test]
async fn empty_body_is_400() {
    let gw = Gateway::start("messages_empty").await;
    let response = post(&gw, Vec::new()).send().await.unwrap();
    let (status, body) = refusal(response).await;
    assert_eq!(status, 400, "an empty message is a client error: {body}");
    assert!(
        body["message"].as_str().unwrap().contains("empty"),
        "says the message is empty: {body}"
    );
    assert_nothing_stored(&gw, "empty body").await;
}

#[tokio::test]
async fn get_is_405_with_allow_post() {
    let gw = Gateway::start("messages_get").await;
    let response = client()
        .get(messages_url(&gw))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(
        response
            .headers()
            .get(header::ALLOW)
            .map(|v| v.to_str().unwrap()),
        Some("POST"),
        "405 says which method to use"
    );
    let (status, body) = refusal(response).await;
    assert_eq!(status, 405, "GET does not read messages: {body}");
    assert_nothing_stored(&gw, "GET").await;
}

/// RFC 9110 section 11.1: the authentication scheme is case-insensitive, so
/// `bearer` is the same scheme as `Bearer`.
#[tokio::test]
async fn lower_case_bearer_scheme_is_accepted() {
    let gw = Gateway::start("messages_bearer_case").await;
    let response = client()
        .post(messages_url(&gw))
        .header(header::AUTHORIZATION, format!("bearer {TOKEN}"))
        .header(header::CONTENT_TYPE, "message/rfc822")
        .body(MESSAGE)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202, "`bearer` is the Bearer scheme");
}
