//! Repeated single-value form fields and hostile upload names, against a
//! real gateway and the dev Redis (and clamd for the scanner's report):
//! `email=ok@x.test&email=b@x.test%0d%0aBcc:...` is a 400 naming `email`
//! in every body type, with nothing stored; a file named to deceive
//! (U+202E, control characters, `../`, `C:\`, 2,000 characters) is
//! stored whole under a safe `filename` with the name as sent beside it;
//! and a bounded run of both from an attacker's address leaves a normal
//! client served and every receipt given stored once.

mod support;

use std::time::{Duration, Instant};

use base64::Engine as _;
use reqwest::header;
use serde_json::{json, Value};
use support::audit::{assert_receipts_stored_once, Receipts, Stored};
use support::bystander::{self, bystander_address, client_from, loopback};
use support::{client, redis_url, Gateway};

/// A form that takes several uploads (the default `contact` takes two).
const UPLOADS_FORM: &str = "[[form]]\nid = \"uploads\"\nmax_size = \"1MB\"\nmax_files = 8\n";

/// The single-value fields, each with a valid first value and a second
/// that would be trouble if it were stored unchecked.
const SINGLE_VALUE_FIELDS: [(&str, &str, &str); 6] = [
    ("email", "ok@x.test", "b@x.test\r\nBcc: victim@example.com"),
    (
        "_replyto",
        "ok@x.test",
        "b@x.test\r\nBcc: victim@example.com",
    ),
    ("name", "Ann", "Ann\r\nBcc: victim@example.com"),
    ("_subject", "Order", "Order\r\nBcc: victim@example.com"),
    (
        "_next",
        "https://shop.test/thanks",
        "https://evil.example/phish",
    ),
    (
        "message",
        "Where is my order?",
        "buy at https://spam.example https://spam.example",
    ),
];

const BOUNDARY: &str = "----intake-form-fields-7f3a";

/// A multipart/form-data body; each part is its `Content-Disposition`
/// parameters after `form-data; ` and its content. Parts with a file
/// name get a content type.
fn multipart_body(parts: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut body = Vec::new();
    for (params, content) in parts {
        body.extend_from_slice(format!("--{BOUNDARY}\r\n").as_bytes());
        body.extend_from_slice(b"Content-Disposition: form-data; ");
        body.extend_from_slice(params.as_bytes());
        body.extend_from_slice(b"\r\n");
        if params.contains("filename") {
            body.extend_from_slice(b"Content-Type: application/octet-stream\r\n");
        }
        body.extend_from_slice(b"\r\n");
        body.extend_from_slice(content);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    body
}

fn text_part(name: &str, value: &str) -> (String, Vec<u8>) {
    (format!("name=\"{name}\""), value.as_bytes().to_vec())
}

/// Sends a hand-made multipart body from `http`.
async fn post_multipart(
    http: &reqwest::Client,
    url: &str,
    parts: &[(String, Vec<u8>)],
) -> reqwest::Result<reqwest::Response> {
    http.post(url)
        .header(
            header::CONTENT_TYPE,
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .body(multipart_body(parts))
        .send()
        .await
}

/// Lower-case hex SHA-256.
fn sha256_hex(data: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Content that differs per file, binary bytes included.
fn content(seed: usize, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 + seed * 7) as u8).collect()
}

/// Asserts a 400 `invalid_fields` naming `field` (and nothing else) as
/// sent more than once.
async fn assert_refused_naming(response: reqwest::Response, field: &str, what: &str) {
    let status = response.status();
    let body: Value = response.json().await.unwrap_or_default();
    assert_eq!(
        status, 400,
        "{what}: a repeated `{field}` was not refused: {body}"
    );
    assert_eq!(body["error"], "invalid_fields", "{what}: {body}");
    let problems = body["fields"].as_array().cloned().unwrap_or_default();
    assert_eq!(
        problems.len(),
        1,
        "{what}: one problem, for `{field}`: {body}"
    );
    assert_eq!(
        problems[0]["name"], field,
        "{what}: the field named: {body}"
    );
    assert!(
        problems[0]["problem"]
            .as_str()
            .is_some_and(|p| p.contains("more than once")),
        "{what}: the problem says why: {body}"
    );
}

#[tokio::test]
async fn a_repeated_single_value_field_is_refused_naming_it_in_every_body_type() {
    let gw = Gateway::start("fields_repeated").await;
    let url = gw.form_url("contact");

    // The finding's post, byte for byte.
    let response = client()
        .post(&url)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body("email=ok@x.test&email=b@x.test%0d%0aBcc:victim@example.com&message=hi")
        .send()
        .await
        .unwrap();
    assert_refused_naming(response, "email", "the finding's urlencoded post").await;

    for (field, first, second) in SINGLE_VALUE_FIELDS {
        // `contact` requires an email: the other fields are posted beside one.
        let mut pairs: Vec<(&str, &str)> = Vec::new();
        if field != "email" {
            pairs.push(("email", "ann@example.com"));
        }
        pairs.extend([(field, first), (field, second)]);

        let response = client().post(&url).form(&pairs).send().await.unwrap();
        assert_refused_naming(response, field, "urlencoded").await;

        let parts: Vec<_> = pairs.iter().map(|(n, v)| text_part(n, v)).collect();
        let response = post_multipart(&client(), &url, &parts).await.unwrap();
        assert_refused_naming(response, field, "multipart").await;

        let mut object = serde_json::Map::new();
        if field != "email" {
            object.insert("email".into(), json!("ann@example.com"));
        }
        object.insert(field.into(), json!([first, second]));
        let response = client().post(&url).json(&object).send().await.unwrap();
        assert_refused_naming(response, field, "JSON list").await;
    }

    let stored = Stored::read(&gw.redis_url, &gw.prefix).await;
    for stream in support::audit::ITEM_STREAMS {
        assert_eq!(
            stored.count(stream),
            0,
            "a refused post was stored in {stream}"
        );
    }

    // The same fields sent once each are accepted: the check refuses the
    // repetition, not the fields. A list of one value is one value.
    let response = client()
        .post(&url)
        .json(&json!({
            "email": ["ann@example.com"],
            "_replyto": "ann@example.com",
            "name": "Ann",
            "_subject": "Order",
            "_next": "https://shop.test/thanks",
            "message": "Where is my order?",
            "size": ["M", "L"],
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202, "one value each is accepted");
    let receipt: Value = response.json().await.unwrap();
    let desk = gw.entries("desk").await;
    assert_eq!(desk.len(), 1, "only the accepted post is stored");
    assert_eq!(desk[0].field("id"), receipt["id"].as_str().unwrap());
    let env = desk[0].envelope();
    assert_eq!(env["fields"]["email"], "ann@example.com");
    assert_eq!(
        env["fields"]["size"],
        json!(["M", "L"]),
        "checkboxes repeat"
    );
}

/// One hostile upload name: how it is sent (`Content-Disposition`
/// parameter), the name as the gateway decodes it, and the safe name.
struct NamedUpload {
    param: String,
    sent: String,
    safe: String,
}

fn hostile_uploads() -> Vec<NamedUpload> {
    let long = format!("{}.pdf", "a".repeat(2_000));
    let named = |param: String, sent: &str, safe: &str| NamedUpload {
        param,
        sent: sent.to_string(),
        safe: safe.to_string(),
    };
    vec![
        named(
            "filename=\"invoice\u{202E}fdp.exe\"".into(),
            "invoice\u{202E}fdp.exe",
            "invoicefdp.exe",
        ),
        named(
            "filename*=UTF-8''report%0D%0A%07copy%00.pdf".into(),
            "report\r\n\u{7}copy\u{0}.pdf",
            "report copy .pdf",
        ),
        named(
            "filename=\"../../etc/passwd\"".into(),
            "../../etc/passwd",
            "passwd",
        ),
        named("filename=\"C:\\x\\y.pdf\"".into(), "C:\\x\\y.pdf", "y.pdf"),
        named(
            format!("filename=\"{long}\""),
            &long,
            &format!("{}.pdf", "a".repeat(251)),
        ),
        // Card numbers are masked in both names.
        named(
            "filename=\"../4111 1111 1111 1111.pdf\"".into(),
            "../**** **** **** 1111.pdf",
            "**** **** **** 1111.pdf",
        ),
        named("filename=\"notes.txt\"".into(), "notes.txt", "notes.txt"),
    ]
}

#[tokio::test]
async fn hostile_upload_names_are_stored_safe_with_the_name_as_sent_beside() {
    let gw = Gateway::start_with("fields_upload_names", &redis_url(), UPLOADS_FORM).await;
    let uploads = hostile_uploads();
    let mut parts = vec![
        text_part("email", "ann@example.com"),
        text_part("message", "files attached"),
    ];
    let contents: Vec<Vec<u8>> = (0..uploads.len())
        .map(|i| content(i, 100 * i + 17))
        .collect();
    for (i, upload) in uploads.iter().enumerate() {
        parts.push((
            format!("name=\"file{i}\"; {}", upload.param),
            contents[i].clone(),
        ));
    }
    let response = post_multipart(&client(), &gw.form_url("uploads"), &parts)
        .await
        .unwrap();
    assert_eq!(response.status(), 202, "the post is accepted");
    let receipt: Value = response.json().await.unwrap();
    let desk = gw.entries("desk").await;
    assert_eq!(desk.len(), 1, "one desk item");
    assert_eq!(desk[0].field("id"), receipt["id"].as_str().unwrap());
    let env = desk[0].envelope();
    support::envelope::assert_matches_schema("hostile upload names", &env);

    let attachments = env["attachments"].as_array().expect("attachments");
    assert_eq!(attachments.len(), uploads.len(), "no upload lost");
    for ((attachment, upload), data) in attachments.iter().zip(&uploads).zip(&contents) {
        let what = format!("upload sent as {:?}", upload.param);
        assert_eq!(attachment["filename"], upload.safe.as_str(), "{what}");
        if upload.sent == upload.safe {
            assert!(
                attachment.get("original_filename").is_none(),
                "{what}: a name that needed nothing keeps no second copy: {attachment}"
            );
        } else {
            assert_eq!(
                attachment["original_filename"],
                upload.sent.as_str(),
                "{what}: the name as sent is kept"
            );
        }
        assert_eq!(attachment["size"], data.len(), "{what}: size");
        assert_eq!(attachment["sha256"], sha256_hex(data), "{what}: sha256");
        let stored = base64::engine::general_purpose::STANDARD
            .decode(attachment["content_base64"].as_str().unwrap())
            .unwrap();
        assert!(stored == *data, "{what}: the content is stored unchanged");
    }
}

/// The virus scanner's report names a part by its safe name: an upload
/// too large to scan is quarantined with a reason an operator can read.
#[tokio::test]
async fn the_scanner_reports_an_upload_by_its_safe_name() {
    let scan = format!(
        "[scan]\nclamd = \"tcp://{}\"\nmax_size = \"1KB\"\noversize = \"quarantine\"\ntimeout = \"10s\"\n",
        support::clamd::dev_clamd()
    );
    let gw = Gateway::start_with(
        "fields_scan_name",
        &redis_url(),
        &format!("{UPLOADS_FORM}\n{scan}"),
    )
    .await;
    let parts = vec![
        text_part("email", "ann@example.com"),
        (
            "name=\"file\"; filename=\"invoice\u{202E}fdp.exe\"".into(),
            content(1, 4_096),
        ),
    ];
    let response = post_multipart(&client(), &gw.form_url("uploads"), &parts)
        .await
        .unwrap();
    assert_eq!(response.status(), 202, "an unscannable upload is kept");
    let quarantine = gw.entries("quarantine").await;
    assert_eq!(quarantine.len(), 1, "kept for an operator");
    let reason = quarantine[0].field("reason");
    assert!(
        reason.contains("invoicefdp.exe") && !reason.contains('\u{202E}'),
        "the reason names the safe name: {reason:?}"
    );
}

/// What the attacker's requests got, by answer.
#[derive(Debug, Default)]
struct Tally {
    /// Uploads under hostile names sent, and how many got a 202.
    uploads: usize,
    accepted: usize,
    /// Posts repeating a single-value field sent, and how many got a 400.
    repeats: usize,
    refused_400: usize,
    other: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attack_of_repeated_fields_and_hostile_names_leaves_a_normal_client_served() {
    const ATTACKERS: u8 = 4;
    const POSTS_EACH: usize = 60;
    const BYSTANDER_POSTS: usize = 25;
    let gw = Gateway::start_with("fields_attack", &redis_url(), UPLOADS_FORM).await;
    let receipts = Receipts::default();

    let bystander = client_from(bystander_address());
    let contact = gw.form_url("contact");
    let normal_post = |phase: &'static str| {
        let bystander = bystander.clone();
        let contact = contact.clone();
        let receipts = receipts.clone();
        move |i: usize| {
            let bystander = bystander.clone();
            let contact = contact.clone();
            let receipts = receipts.clone();
            async move {
                let message = format!("{phase} question {i} about my order");
                let response = bystander
                    .post(&contact)
                    .form(&[
                        ("email", "ann@example.com"),
                        ("name", "Ann Example"),
                        ("message", message.as_str()),
                    ])
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                let status = response.status();
                let body: Value = response.json().await.map_err(|e| e.to_string())?;
                if status != 202 {
                    return Err(format!("{status} {body}"));
                }
                receipts.add(body["id"].as_str().ok_or("202 without an id")?);
                Ok(())
            }
        }
    };

    let quiet = bystander::measure("quiet", BYSTANDER_POSTS, normal_post("quiet")).await;

    // The attack: each attacker alternates the finding's repeated-field
    // posts (every body type) with uploads under hostile names, from its
    // own loopback address, bounded in count and in time.
    let deadline = Instant::now() + Duration::from_secs(120);
    let uploads_url = gw.form_url("uploads");
    let mut attackers = Vec::new();
    for a in 0..ATTACKERS {
        let http = client_from(loopback(0, 10 + a));
        let contact = contact.clone();
        let uploads_url = uploads_url.clone();
        let receipts = receipts.clone();
        attackers.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            let uploads = hostile_uploads();
            for i in 0..POSTS_EACH {
                if Instant::now() > deadline {
                    break;
                }
                let (field, first, second) = SINGLE_VALUE_FIELDS[i % SINGLE_VALUE_FIELDS.len()];
                let pairs = [
                    ("email", "ann@example.com"),
                    (field, first),
                    (field, second),
                ];
                let pairs = if field == "email" {
                    &pairs[1..]
                } else {
                    &pairs[..]
                };
                let upload_post = i % 4 == 3;
                if upload_post {
                    tally.uploads += 1;
                } else {
                    tally.repeats += 1;
                }
                let response = match i % 4 {
                    0 => http.post(&contact).form(pairs).send().await,
                    1 => {
                        let parts: Vec<_> = pairs.iter().map(|(n, v)| text_part(n, v)).collect();
                        post_multipart(&http, &contact, &parts).await
                    }
                    2 => {
                        let mut object = serde_json::Map::new();
                        object.insert("email".into(), json!("mallory@example.com"));
                        object.insert(field.into(), json!([first, second]));
                        http.post(&contact).json(&object).send().await
                    }
                    _ => {
                        let upload = &uploads[i % uploads.len()];
                        let parts = vec![
                            text_part("email", "mallory@example.com"),
                            text_part("message", &format!("attack {a}/{i}")),
                            (format!("name=\"file\"; {}", upload.param), content(i, 64)),
                        ];
                        post_multipart(&http, &uploads_url, &parts).await
                    }
                };
                let response = match response {
                    Ok(response) => response,
                    Err(e) => {
                        tally.other.push(format!("request failed: {e}"));
                        continue;
                    }
                };
                let status = response.status().as_u16();
                let body: Value = response.json().await.unwrap_or_default();
                match (status, upload_post) {
                    (202, true) => {
                        tally.accepted += 1;
                        receipts.add(body["id"].as_str().expect("202 carries an id"));
                    }
                    (400, false) if body["fields"][0]["name"] == field => tally.refused_400 += 1,
                    _ => tally.other.push(format!(
                        "{} post got {status} {body}",
                        if upload_post {
                            "an upload"
                        } else {
                            "a repeated-field"
                        }
                    )),
                }
            }
            tally
        }));
    }
    let attacked =
        bystander::measure("under attack", BYSTANDER_POSTS, normal_post("attacked")).await;
    let started = Instant::now();
    let mut tally = Tally::default();
    for attacker in attackers {
        let t = attacker.await.expect("attacker task");
        tally.uploads += t.uploads;
        tally.repeats += t.repeats;
        tally.accepted += t.accepted;
        tally.refused_400 += t.refused_400;
        tally.other.extend(t.other);
    }
    bystander::report("form_fields", &quiet, &attacked);
    println!(
        "attack form_fields: {ATTACKERS} attackers; {} hostile-name uploads, {} accepted; {} repeated-field posts, {} refused 400; {} other; attackers done {:?} after the bystander",
        tally.uploads,
        tally.accepted,
        tally.repeats,
        tally.refused_400,
        tally.other.len(),
        started.elapsed()
    );
    assert!(
        tally.other.is_empty(),
        "an upload is a 202 and a repeated field a 400 naming it: {:?}",
        &tally.other[..tally.other.len().min(5)]
    );
    assert!(
        tally.uploads > 0 && tally.repeats > 0,
        "the attack ran: {tally:?}"
    );

    let stored = assert_receipts_stored_once(&gw.redis_url, &gw.prefix, &receipts.all()).await;
    let items: usize = support::audit::ITEM_STREAMS
        .iter()
        .map(|s| stored.count(s))
        .sum();
    assert_eq!(
        items,
        receipts.len(),
        "every stored item is one a client was given a receipt for (no refused post stored)"
    );
    // Nothing an attacker sent reached the desk unsafe.
    for entry in gw.entries("desk").await {
        let env = entry.envelope();
        for value in env["fields"].as_object().unwrap().values() {
            assert!(
                value.is_string(),
                "a single-value field stored as a list: {}",
                env["fields"]
            );
        }
        for attachment in env["attachments"].as_array().unwrap() {
            let name = attachment["filename"].as_str().unwrap();
            assert!(
                !name.contains(['/', '\\', '\u{202E}']) && !name.chars().any(char::is_control),
                "an unsafe name reached the desk: {name:?}"
            );
        }
    }
}
