//! `[mime]` limits through `POST /v1/messages` on a real gateway and the dev
//! Redis: a hostile mail (1,000 parts, 100-deep nesting, endless header
//! lines, a decoded size past the limit) is stored in `intake:quarantine`
//! with kind `mime-limit` and the limit named, answered 202, and never
//! reaches the desk; the gateway keeps serving.

mod support;

use reqwest::header;
use support::{client, Gateway, TOKEN};

async fn post_mail(gw: &Gateway, raw: Vec<u8>) -> reqwest::StatusCode {
    client()
        .post(format!("{}/v1/messages", gw.url))
        .bearer_auth(TOKEN)
        .header(header::CONTENT_TYPE, "message/rfc822")
        .body(raw)
        .send()
        .await
        .expect("the gateway answers")
        .status()
}

/// One multipart/mixed with `n` small text parts.
fn many_parts(n: usize) -> Vec<u8> {
    let mut raw = b"From: ann@example.com\r\nSubject: many parts\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n"
        .to_vec();
    for i in 0..n {
        raw.extend_from_slice(
            format!("--b\r\nContent-Type: text/plain\r\n\r\npart {i}\r\n").as_bytes(),
        );
    }
    raw.extend_from_slice(b"--b--\r\n");
    raw
}

/// multipart/mixed nested `depth` times around one text part.
fn nested_multipart(depth: usize) -> Vec<u8> {
    let mut raw = b"From: ann@example.com\r\nSubject: deep\r\nMIME-Version: 1.0\r\n".to_vec();
    for level in 0..depth {
        raw.extend_from_slice(
            format!("Content-Type: multipart/mixed; boundary=\"b{level}\"\r\n\r\n--b{level}\r\n")
                .as_bytes(),
        );
    }
    raw.extend_from_slice(b"Content-Type: text/plain\r\n\r\ninnermost\r\n");
    for level in (0..depth).rev() {
        raw.extend_from_slice(format!("--b{level}--\r\n").as_bytes());
    }
    raw
}

/// message/rfc822 nested `depth` times.
fn nested_messages(depth: usize) -> Vec<u8> {
    let mut raw = Vec::new();
    for level in 0..depth {
        raw.extend_from_slice(
            format!(
                "From: ann@example.com\r\nSubject: level {level}\r\nMIME-Version: 1.0\r\n\
Content-Type: message/rfc822\r\n\r\n"
            )
            .as_bytes(),
        );
    }
    raw.extend_from_slice(b"From: ann@example.com\r\nSubject: core\r\n\r\ncore\r\n");
    raw
}

/// Posts `raw`, expects 202, one quarantine entry of kind `mime-limit` with
/// `reason`, and nothing on the desk.
async fn assert_quarantined(gw: &Gateway, raw: Vec<u8>, reason: &str) {
    assert_eq!(
        post_mail(gw, raw).await,
        202,
        "a mail beyond a limit is stored, not refused"
    );
    let quarantine = gw.entries("quarantine").await;
    assert_eq!(quarantine.len(), 1, "one quarantine entry");
    assert_eq!(quarantine[0].field("kind"), "mime-limit");
    assert_eq!(quarantine[0].field("reason"), reason);
    let env = quarantine[0].envelope();
    assert_eq!(
        env["from"]["email"], "ann@example.com",
        "headers still read"
    );
    assert!(
        gw.entries("desk").await.is_empty(),
        "nothing beyond a limit reaches the desk"
    );
}

#[tokio::test]
async fn a_thousand_part_mail_is_quarantined_naming_the_part_limit() {
    let gw = Gateway::start("mime_parts").await;
    assert_quarantined(
        &gw,
        many_parts(1000),
        "1001 MIME parts exceed mime.max_parts 500",
    )
    .await;
    gw.stop().await;
}

#[tokio::test]
async fn a_thousand_part_mail_within_a_raised_limit_reaches_the_desk() {
    let gw = Gateway::start_with(
        "mime_parts_raised",
        &support::redis_url(),
        "[mime]\nmax_parts = 2000\n",
    )
    .await;
    assert_eq!(post_mail(&gw, many_parts(1000)).await, 202);
    let desk = gw.entries("desk").await;
    assert_eq!(desk.len(), 1, "within the limit: the desk gets it");
    let text = desk[0].envelope()["text"].as_str().unwrap().to_string();
    assert!(text.contains("part 999"), "every part read: {}", text.len());
    assert!(gw.entries("quarantine").await.is_empty());
    gw.stop().await;
}

#[tokio::test]
async fn a_hundred_deep_multipart_is_quarantined_naming_the_depth_limit() {
    let gw = Gateway::start("mime_depth").await;
    assert_quarantined(
        &gw,
        nested_multipart(100),
        "nesting depth 100 exceeds mime.max_depth 20",
    )
    .await;
    gw.stop().await;
}

#[tokio::test]
async fn a_hundred_deep_nest_of_attached_messages_is_quarantined() {
    let gw = Gateway::start("mime_depth_rfc822").await;
    assert_eq!(post_mail(&gw, nested_messages(100)).await, 202);
    let quarantine = gw.entries("quarantine").await;
    assert_eq!(quarantine.len(), 1, "one quarantine entry");
    assert_eq!(quarantine[0].field("kind"), "mime-limit");
    let reason = quarantine[0].field("reason");
    assert!(
        reason.starts_with("nesting depth ") && reason.ends_with("exceeds mime.max_depth 20"),
        "the depth limit is named: {reason}"
    );
    // The gateway still serves after it.
    assert_eq!(
        post_mail(
            &gw,
            b"From: bob@example.com\r\nSubject: ok\r\n\r\nfine\r\n".to_vec()
        )
        .await,
        202
    );
    assert_eq!(gw.entries("desk").await.len(), 1, "the next mail is served");
    gw.stop().await;
}

#[tokio::test]
async fn an_overlong_header_line_is_quarantined() {
    let gw = Gateway::start("mime_header_line").await;
    let raw = format!(
        "From: ann@example.com\r\nSubject: long\r\nX-Junk: {}\r\n\r\nhello\r\n",
        "a".repeat(20_000)
    );
    assert_quarantined(
        &gw,
        raw.into_bytes(),
        "a header line of 20008 bytes exceeds mime.max_header_line 10000",
    )
    .await;
    gw.stop().await;
}

#[tokio::test]
async fn decoded_content_past_the_limit_is_quarantined() {
    let gw = Gateway::start_with(
        "mime_decoded",
        &support::redis_url(),
        "[mime]\nmax_decoded_size = \"10KB\"\n",
    )
    .await;
    let mut raw = b"From: ann@example.com\r\nSubject: big\r\n\r\n".to_vec();
    for _ in 0..200 {
        raw.extend_from_slice(&[b'x'; 98]);
        raw.extend_from_slice(b"\r\n");
    }
    assert_quarantined(
        &gw,
        raw,
        "decoded content of 20000 bytes exceeds mime.max_decoded_size 10000",
    )
    .await;
    gw.stop().await;
}

#[tokio::test]
async fn twenty_thousand_nested_messages_do_not_crash_the_gateway() {
    // 640 KB of hostile nesting, within messages.max_size: parsing and
    // dropping it must not overflow a worker's stack.
    let gw = Gateway::start("mime_depth_hostile").await;
    let mut raw = Vec::new();
    for _ in 0..20_000 {
        raw.extend_from_slice(b"Content-Type: message/rfc822\r\n\r\n");
    }
    raw.extend_from_slice(b"From: ann@example.com\r\nSubject: core\r\n\r\ncore\r\n");
    assert_eq!(post_mail(&gw, raw).await, 202, "stored, not crashed");
    let quarantine = gw.entries("quarantine").await;
    assert_eq!(quarantine.len(), 1, "one quarantine entry");
    assert_eq!(quarantine[0].field("kind"), "mime-limit");
    assert_eq!(
        post_mail(
            &gw,
            b"From: bob@example.com\r\nSubject: ok\r\n\r\nfine\r\n".to_vec()
        )
        .await,
        202,
        "the gateway still serves"
    );
    gw.stop().await;
}
