//! Hostile and broken input the other suites do not cover, through a real
//! gateway and the dev Redis (and clamd where a file must be scanned):
//! every bad input gets a clear error or is stored safely, and nothing a
//! customer sent is lost or slips past the scanner.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::clamd::{dev_clamd, eicar};
use support::{client, redis_url, Gateway, TOKEN};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Test card numbers (Luhn-valid, published by the card schemes for tests).
const VISA: &str = "4111111111111111";
const MASTERCARD: &str = "5555555555554444";
const AMEX: &str = "378282246310005";

/// A form without required fields, so `_replyto` supplies the address.
const CALLBACK_FORM: &str = "[[form]]\nid = \"callback\"\nmax_size = \"200KB\"\nmax_files = 2\n";

async fn gateway(test: &str) -> Gateway {
    Gateway::start_with(test, &redis_url(), CALLBACK_FORM).await
}

/// Posts `body` as `content_type` to the form.
async fn post(gw: &Gateway, form: &str, content_type: &str, body: Vec<u8>) -> reqwest::Response {
    client()
        .post(gw.form_url(form))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .expect("gateway answers")
}

/// Sends raw bytes and reads the answer's head (or whatever comes before
/// the server closes).
async fn raw_exchange(gw: &Gateway, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    answer.extend_from_slice(&buf[..n]);
                    if answer.windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
            }
        }
    })
    .await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// One multipart part: field name, file name (for an upload), content.
type Part<'a> = (&'a [u8], Option<&'a [u8]>, &'a [u8]);

fn multipart(parts: &[Part<'_>]) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, filename, data) in parts {
        body.extend_from_slice(b"--BOUNDARY\r\nContent-Disposition: form-data; name=\"");
        body.extend_from_slice(name);
        body.extend_from_slice(b"\"");
        if let Some(filename) = filename {
            body.extend_from_slice(b"; filename=\"");
            body.extend_from_slice(filename);
            body.extend_from_slice(b"\"\r\nContent-Type: application/octet-stream");
        }
        body.extend_from_slice(b"\r\n\r\n");
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"--BOUNDARY--\r\n");
    body
}

const MULTIPART: &str = "multipart/form-data; boundary=BOUNDARY";

#[tokio::test]
async fn ten_thousand_json_fields_and_a_thousand_multipart_parts_are_refused_413() {
    let gw = gateway("hostile_many_fields").await;
    let mut json = String::from("{\"email\":\"ann@example.com\"");
    for i in 0..10_000 {
        json.push_str(&format!(",\"f{i}\":\"x\""));
    }
    json.push('}');
    let response = post(&gw, "contact", "application/json", json.into_bytes()).await;
    assert_eq!(response.status(), 413, "10,000 JSON fields");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "too_many_parts");

    let names: Vec<String> = (0..1_000).map(|i| format!("f{i}")).collect();
    let mut parts: Vec<Part<'_>> = vec![(b"email", None, b"ann@example.com")];
    parts.extend(names.iter().map(|n| (n.as_bytes(), None, &b"x"[..])));
    let response = post(&gw, "contact", MULTIPART, multipart(&parts)).await;
    assert_eq!(response.status(), 413, "1,000 multipart fields");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "too_many_parts");

    let mut parts: Vec<Part<'_>> = vec![(b"email", None, b"ann@example.com")];
    parts.extend(
        names
            .iter()
            .map(|n| (&b"file"[..], Some(n.as_bytes()), &b"data"[..])),
    );
    let response = post(&gw, "contact", MULTIPART, multipart(&parts)).await;
    assert_eq!(response.status(), 413, "1,000 multipart files");
    let body: Value = response.json().await.unwrap();
    assert!(
        body["message"].as_str().unwrap().contains("files"),
        "says which limit: {body}"
    );
    assert!(gw.entries("desk").await.is_empty(), "nothing stored");
    assert!(gw.entries("suppressed").await.is_empty(), "nothing stored");
}

#[tokio::test]
async fn a_5gb_declared_mail_is_refused_413_without_reading_it() {
    let gw = gateway("hostile_5gb_mail").await;
    let request = format!(
        "POST /v1/messages HTTP/1.1\r\nHost: shop.test\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: message/rfc822\r\nContent-Length: 5000000000\r\n\r\nFrom: a@b.c\r\n"
    );
    let answer = raw_exchange(&gw, request.as_bytes()).await;
    assert!(
        answer.starts_with("HTTP/1.1 413"),
        "a 5 GB mail must be answered 413 at once, got: {answer:?}"
    );
    assert!(gw.entries("desk").await.is_empty(), "nothing stored");
}

#[tokio::test]
async fn latin1_and_broken_percent_escapes_in_urlencoded_posts_are_kept_whole() {
    let gw = gateway("hostile_urlencoded").await;
    let response = post(
        &gw,
        "contact",
        "application/x-www-form-urlencoded",
        b"email=ann%40example.com&name=J%FCrgen+M%FCller&message=100%25+sure+%zz+%F+%FF%FE&order%FF=7"
            .to_vec(),
    )
    .await;
    assert_eq!(response.status(), 202, "stored, not refused over a byte");
    let desk = gw.entries("desk").await;
    assert_eq!(desk.len(), 1);
    let env = desk[0].envelope();
    assert_eq!(
        env["customer"]["name"], "Jürgen Müller",
        "a Latin-1 page's post reads right"
    );
    assert_eq!(
        env["text"], "100% sure %zz %F ÿþ",
        "broken escapes kept as written, invalid bytes kept one by one"
    );
    assert_eq!(env["fields"]["orderÿ"], "7", "field names too");
}

#[tokio::test]
async fn invalid_bytes_in_multipart_names_values_and_filenames_are_stored() {
    let gw = gateway("hostile_multipart_bytes").await;
    let body = multipart(&[
        (b"email", None, b"ann@example.com"),
        (b"message", None, b"Gr\xfc\xdfe \xff\xfe end"),
        (b"n\xe4me", None, b"val\xfce"),
        (b"file", Some(b"Rechnung M\xfcller.pdf"), b"%PDF-1.4 body"),
    ]);
    let response = post(&gw, "contact", MULTIPART, body).await;
    assert_eq!(response.status(), 202, "stored");
    let desk = gw.entries("desk").await;
    assert_eq!(desk.len(), 1);
    let env = desk[0].envelope();
    assert_eq!(env["text"], "Grüße ÿþ end");
    assert_eq!(env["fields"]["näme"], "valüe");
    let attachments = env["attachments"].as_array().unwrap();
    assert_eq!(attachments.len(), 1, "the upload stays an upload: {env}");
    assert_eq!(attachments[0]["filename"], "Rechnung Müller.pdf");
    assert_eq!(attachments[0]["size"], 13);
}

#[tokio::test]
async fn a_virus_with_a_filename_that_is_not_utf8_is_still_scanned_and_refused() {
    let extra = format!(
        "{CALLBACK_FORM}\n[scan]\nclamd = \"tcp://{}\"\ntimeout = \"10s\"\n",
        dev_clamd()
    );
    let gw = Gateway::start_with("hostile_virus_latin1", &redis_url(), &extra).await;
    let body = multipart(&[
        (b"email", None, b"eve@example.com"),
        (b"file", Some(b"Rechnung \xfc.com"), &eicar()),
    ]);
    let response = post(&gw, "contact", MULTIPART, body).await;
    assert_eq!(
        response.status(),
        422,
        "the upload is scanned as a file, not passed as text"
    );
    assert!(gw.entries("desk").await.is_empty(), "nothing on the desk");
    let quarantine = gw.entries("quarantine").await;
    assert_eq!(quarantine.len(), 1, "kept in quarantine");
    assert_eq!(quarantine[0].field("kind"), "infected");
}

#[tokio::test]
async fn json_that_is_not_utf8_gets_a_400_that_says_so() {
    let gw = gateway("hostile_json_bytes").await;
    let response = post(
        &gw,
        "contact",
        "application/json",
        b"{\"email\":\"ann@example.com\",\"message\":\"caf\xe9\"}".to_vec(),
    )
    .await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["message"].as_str().unwrap().contains("UTF-8"),
        "the answer says what to fix: {body}"
    );
    assert!(gw.entries("desk").await.is_empty(), "nothing stored");
}

#[tokio::test]
async fn invalid_percent_encoding_or_bytes_in_the_form_path_are_refused_clearly() {
    let gw = gateway("hostile_path").await;
    for path in ["%FF", "%zz", "%", "contact%00", "%E2%80%AE"] {
        let response = client()
            .post(format!("{}/v1/forms/{path}", gw.url))
            .form(&[("email", "ann@example.com")])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404, "{path}: no such form");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], "unknown_form", "{path}: {body}");
    }
    // Raw bytes that are not allowed in a URI at all.
    let answer = raw_exchange(
        &gw,
        b"POST /v1/forms/\xff\xfe HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    assert!(
        answer.starts_with("HTTP/1.1 400"),
        "a path with raw non-ASCII bytes is a 400: {answer:?}"
    );
    assert!(gw.entries("desk").await.is_empty(), "nothing stored");
}

#[tokio::test]
async fn crlf_in_replyto_subject_and_name_cannot_add_headers() {
    let gw = gateway("hostile_crlf").await;
    // `_replyto` is the address when the form has no email field: a line
    // break in it is refused, naming the field.
    let response = client()
        .post(gw.form_url("callback"))
        .form(&[
            ("_replyto", "ann@example.com\r\nBcc: victim@example.com"),
            ("message", "call me"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400, "an address with CR/LF is refused");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["fields"][0]["name"], "_replyto", "{body}");
    let response = client()
        .post(gw.form_url("callback"))
        .form(&[("_replyto", "ann@example.com\nBcc: victim@example.com")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400, "a bare LF too");
    assert!(gw.entries("desk").await.is_empty(), "nothing stored");

    let response = client()
        .post(gw.form_url("callback"))
        .form(&[
            ("_replyto", "ann@example.com"),
            ("name", "Ann\rBcc: victim@example.com"),
            (
                "_subject",
                "Hi\nBcc: victim@example.com\r\n\r\nInjected body",
            ),
            ("message", "line one\r\nline two"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let desk = gw.entries("desk").await;
    assert_eq!(desk.len(), 1);
    let env = desk[0].envelope();
    let subject = env["subject"].as_str().unwrap();
    assert!(
        !subject.contains('\r') && !subject.contains('\n'),
        "the subject is one line: {subject:?}"
    );
    for address in [&env["from"], &env["reply_to"][0]] {
        assert_eq!(address["email"], "ann@example.com");
        let name = address["name"].as_str().unwrap();
        assert!(
            !name.contains('\r') && !name.contains('\n'),
            "names are one line: {name:?}"
        );
    }
    let headers = env["headers"].as_array().cloned().unwrap_or_default();
    assert!(
        headers
            .iter()
            .all(|h| !h["name"].as_str().unwrap().eq_ignore_ascii_case("bcc")),
        "the envelope gained no Bcc header: {headers:?}"
    );
    assert!(env.get("bcc").is_none(), "no bcc anywhere: {env}");
    assert_eq!(env["to"], serde_json::json!([]), "no recipients were added");
}

#[tokio::test]
async fn card_numbers_in_names_json_multipart_and_filenames_are_masked() {
    let gw = gateway("hostile_cards").await;
    let response = client()
        .post(gw.form_url("contact"))
        .json(&serde_json::json!({
            "email": "ann@example.com",
            "name": format!("Ann {VISA}"),
            "message": format!("card {MASTERCARD}"),
            "extra": [AMEX, "plain"],
            "_subject": format!("refund {VISA}"),
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202, "JSON post");
    let body = multipart(&[
        (b"email", None, b"bob@example.com"),
        (b"name", None, format!("Bob {AMEX}").as_bytes()),
        (b"note", None, format!("pay {VISA}").as_bytes()),
        (
            b"file",
            Some(format!("card-{MASTERCARD}.txt").as_bytes()),
            b"see name",
        ),
    ]);
    let response = post(&gw, "contact", MULTIPART, body).await;
    assert_eq!(response.status(), 202, "multipart post");
    let desk = gw.entries("desk").await;
    assert_eq!(desk.len(), 2);
    for entry in &desk {
        let stored = entry.field("envelope").replace([' ', '-'], "");
        for card in [VISA, MASTERCARD, AMEX] {
            assert!(
                !stored.contains(card),
                "card {card} stored in an envelope: {stored}"
            );
        }
        let env = entry.envelope();
        assert!(
            env["abuse"]["tags"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t == "card-redacted"),
            "tagged: {env}"
        );
    }
    let json_env = desk[0].envelope();
    assert_eq!(
        json_env["from"]["name"], "Ann ************1111",
        "last four kept"
    );
    assert_eq!(json_env["reply_to"][0]["name"], "Ann ************1111");
    let multipart_env = desk[1].envelope();
    let filename = multipart_env["attachments"][0]["filename"]
        .as_str()
        .unwrap();
    assert!(
        filename.ends_with("4444.txt") && !filename.contains(MASTERCARD),
        "a card in a file name is masked, last four kept: {filename}"
    );
}
