//! Virus scanning against real clamd: the dev stack's for verdicts, and
//! private instances for a clamd that dies, never answers or has small
//! limits. Nothing infected reaches the desk, nothing unscanned slips
//! through, nothing is lost.

mod support;

use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use serde_json::Value;
use support::clamd::{dev_clamd, eicar, zip_of, PrivateClamd, SilentClamd, EICAR_SIGNATURE};
use support::{client, Gateway, TOKEN};

/// Settings of one test gateway with scanning on.
struct Setup<'a> {
    clamd: String,
    /// `[admin] listen` port, for tests that read /metrics.
    admin_port: Option<u16>,
    scan_extra: &'a str,
    messages_max: &'a str,
    keep_raw: bool,
    timeout: &'a str,
}

impl Default for Setup<'_> {
    fn default() -> Self {
        Setup {
            clamd: format!("tcp://{}", dev_clamd()),
            admin_port: None,
            scan_extra: "",
            messages_max: "5MB",
            keep_raw: true,
            timeout: "10s",
        }
    }
}

async fn gateway(test: &str, setup: Setup<'_>) -> Gateway {
    let redis_url = support::redis_url();
    Gateway::start_custom(test, &redis_url.clone(), |prefix, token| {
        format!(
            r#"
[http]
listen = "127.0.0.1:0"
request_timeout = "60s"

{admin}
[redis]
url = "{redis_url}"
prefix = "{prefix}"
timeout = "2s"

[messages]
token = {{ file = "{token}" }}
max_size = "{messages_max}"
keep_raw = {keep_raw}

[[form]]
id = "contact"
required = ["email"]
max_size = "2MB"
max_files = 5

[scan]
clamd = "{clamd}"
timeout = "{timeout}"
redrive_interval = "100ms"
redrive_max_backoff = "400ms"
{scan_extra}
"#,
            token = token.display(),
            messages_max = setup.messages_max,
            keep_raw = setup.keep_raw,
            clamd = setup.clamd,
            scan_extra = setup.scan_extra,
            timeout = setup.timeout,
            admin = setup
                .admin_port
                .map(|port| format!(
                    "[admin]\nlisten = \"127.0.0.1:{port}\"\ntoken = {{ file = \"{}\" }}\n",
                    token.display()
                ))
                .unwrap_or_default(),
        )
    })
    .await
}

/// A mail with a text body and base64 attachments.
fn mail_with(subject: &str, attachments: &[(&str, &str, &[u8])]) -> Vec<u8> {
    let mut mail = format!(
        "From: Ann <ann@example.com>\r\nTo: support@shop.test\r\nSubject: {subject}\r\n\
         MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n\
         --b1\r\nContent-Type: text/plain\r\n\r\nPlease see the attachment.\r\n"
    );
    for (name, content_type, data) in attachments {
        mail.push_str(&format!(
            "--b1\r\nContent-Type: {content_type}; name=\"{name}\"\r\n\
             Content-Transfer-Encoding: base64\r\n\
             Content-Disposition: attachment; filename=\"{name}\"\r\n\r\n{}\r\n",
            wrapped_base64(data)
        ));
    }
    mail.push_str("--b1--\r\n");
    mail.into_bytes()
}

fn wrapped_base64(data: &[u8]) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(data);
    let mut out = String::with_capacity(encoded.len() + encoded.len() / 38);
    for (i, chunk) in encoded.as_bytes().chunks(76).enumerate() {
        if i > 0 {
            out.push_str("\r\n");
        }
        out.push_str(std::str::from_utf8(chunk).unwrap());
    }
    out
}

async fn post_mail(gw: &Gateway, raw: Vec<u8>) -> reqwest::Response {
    client()
        .post(format!("{}/v1/messages", gw.url))
        .bearer_auth(TOKEN)
        .header("content-type", "message/rfc822")
        .body(raw)
        .timeout(Duration::from_secs(120))
        .send()
        .await
        .expect("gateway answers")
}

async fn assert_quarantined_as_infected(gw: &Gateway, what: &str) {
    let quarantine = gw.entries("quarantine").await;
    assert_eq!(quarantine.len(), 1, "{what}: one quarantine entry");
    assert_eq!(quarantine[0].field("kind"), "infected", "{what}: kind");
    let env = quarantine[0].envelope();
    assert_eq!(env["scan"]["status"], "infected", "{what}: scan status");
    assert!(
        env["scan"]["signatures"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s == EICAR_SIGNATURE),
        "{what}: signature named: {}",
        env["scan"]
    );
    assert!(
        quarantine[0].field("reason").contains(EICAR_SIGNATURE),
        "{what}: reason names the signature"
    );
    assert!(
        gw.entries("desk").await.is_empty(),
        "{what}: nothing on the desk"
    );
}

async fn assert_refused_as_infected(response: reqwest::Response, what: &str) {
    assert_eq!(response.status(), 422, "{what}: infected is refused");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "infected", "{what}: error code");
    assert!(
        body["message"].as_str().unwrap().contains(EICAR_SIGNATURE),
        "{what}: the reason names the signature: {body}"
    );
}

/// Polls `check` until it holds or `within` passes.
async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn eicar_attachment_is_quarantined_and_the_sender_refused() {
    let gw = gateway("scan_eicar_attachment", Setup::default()).await;
    let raw = mail_with(
        "invoice",
        &[("invoice.com", "application/octet-stream", &eicar())],
    );
    let response = post_mail(&gw, raw).await;
    assert_refused_as_infected(response, "attachment").await;
    assert_quarantined_as_infected(&gw, "attachment").await;
    let env = gw.entries("quarantine").await[0].envelope();
    assert!(env["raw"].is_string(), "the mail is kept whole for audit");
}

#[tokio::test]
async fn eicar_inside_a_zip_is_found() {
    let gw = gateway("scan_eicar_zip", Setup::default()).await;
    let zip = zip_of("readme.txt", &eicar());
    assert!(
        !zip.windows(16).any(|w| w == &eicar()[..16]),
        "the zip is deflated, so only unpacking finds the virus"
    );
    let raw = mail_with("photos", &[("photos.zip", "application/zip", &zip)]);
    assert_refused_as_infected(post_mail(&gw, raw).await, "zip").await;
    assert_quarantined_as_infected(&gw, "zip").await;
}

#[tokio::test]
async fn eicar_base64_inside_a_nested_message_is_found() {
    let gw = gateway("scan_eicar_nested", Setup::default()).await;
    let inner = String::from_utf8(mail_with(
        "inner",
        &[("tool.com", "application/octet-stream", &eicar())],
    ))
    .unwrap();
    let raw = format!(
        "From: ann@example.com\r\nTo: support@shop.test\r\nSubject: Fwd: inner\r\n\
         MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"outer\"\r\n\r\n\
         --outer\r\nContent-Type: text/plain\r\n\r\nForwarding this.\r\n\
         --outer\r\nContent-Type: message/rfc822\r\n\r\n{inner}\r\n--outer--\r\n"
    );
    assert_refused_as_infected(post_mail(&gw, raw.into_bytes()).await, "nested").await;
    assert_quarantined_as_infected(&gw, "nested").await;
}

#[tokio::test]
async fn infected_form_upload_is_refused_with_422_and_kept() {
    let gw = gateway("scan_form_upload", Setup::default()).await;
    let file = reqwest::multipart::Part::bytes(eicar())
        .file_name("receipt.pdf")
        .mime_str("application/pdf")
        .unwrap();
    let form = reqwest::multipart::Form::new()
        .text("email", "bob@example.com")
        .text("message", "My receipt")
        .part("upload", file);
    let response = client()
        .post(gw.form_url("contact"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_refused_as_infected(response, "form upload").await;
    assert_quarantined_as_infected(&gw, "form upload").await;
}

#[tokio::test]
async fn eicar_split_across_body_chunks_of_an_upload_is_found() {
    // The virus arrives in two HTTP body chunks, cut in its middle: the
    // gateway must scan the reassembled upload, not what each chunk held.
    let gw = gateway("scan_split_upload", Setup::default()).await;
    let mut body = Vec::new();
    body.extend_from_slice(
        b"--XyZ\r\nContent-Disposition: form-data; name=\"email\"\r\n\r\ncid@example.com\r\n\
          --XyZ\r\nContent-Disposition: form-data; name=\"upload\"; filename=\"a.bin\"\r\n\
          Content-Type: application/octet-stream\r\n\r\nheader bytes ",
    );
    let cut = body.len() + 30;
    body.extend_from_slice(&eicar());
    body.extend_from_slice(b" trailer\r\n--XyZ--\r\n");
    let body = Bytes::from(body);
    let chunks = futures_util::stream::iter([
        Ok::<_, std::io::Error>(body.slice(..cut)),
        Ok(body.slice(cut..)),
    ]);
    let response = client()
        .post(gw.form_url("contact"))
        .header("content-type", "multipart/form-data; boundary=XyZ")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_refused_as_infected(response, "split upload").await;
    assert_quarantined_as_infected(&gw, "split upload").await;
}

#[tokio::test]
async fn clean_files_of_several_types_reach_the_desk_as_clean() {
    let admin_port = support::free_port();
    let gw = gateway(
        "scan_clean_types",
        Setup {
            admin_port: Some(admin_port),
            ..Setup::default()
        },
    )
    .await;
    let pdf = b"%PDF-1.4\n1 0 obj<</Type/Catalog>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n".to_vec();
    let png = [
        &[0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a][..],
        &[0u8; 64][..],
    ]
    .concat();
    let text = "Order 1234: two mugs, one teapot.\n"
        .repeat(50)
        .into_bytes();
    let html = b"<html><body><p>Hello</p></body></html>".to_vec();
    let zip = zip_of("order.txt", &text);
    let raw = mail_with(
        "order documents",
        &[
            ("order.pdf", "application/pdf", &pdf),
            ("photo.png", "image/png", &png),
            ("notes.txt", "text/plain", &text),
            ("page.html", "text/html", &html),
            ("order.zip", "application/zip", &zip),
        ],
    );
    let response = post_mail(&gw, raw).await;
    assert_eq!(response.status(), 202, "clean mail is accepted");
    let desk = gw.entries("desk").await;
    assert_eq!(desk.len(), 1, "on the desk");
    let env = desk[0].envelope();
    assert_eq!(env["scan"]["status"], "clean");
    assert!(
        env["scan"]["engine"]
            .as_str()
            .unwrap()
            .starts_with("ClamAV"),
        "engine named: {}",
        env["scan"]
    );
    assert_eq!(env["attachments"].as_array().unwrap().len(), 5);
    assert!(gw.entries("quarantine").await.is_empty());
    assert!(gw.entries("held").await.is_empty());
    // The ClamAV version is read at start and shown on the admin
    // listener's /status; the public /readyz says only "up".
    let status = format!("http://127.0.0.1:{admin_port}/status");
    eventually(
        Duration::from_secs(10),
        "the admin status names the engine",
        || async {
            let status: Value = client()
                .get(&status)
                .bearer_auth(TOKEN)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            status["scanner"]["state"] == "up"
                && status["scanner"]["engine"]
                    .as_str()
                    .is_some_and(|e| e.starts_with("ClamAV "))
        },
    )
    .await;
    let ready: Value = client()
        .get(format!("{}/readyz", gw.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["scanner"], "up", "readyz: {ready}");
}

#[tokio::test]
async fn clamd_stopped_mid_test_holds_items_and_releases_them_when_back() {
    let mut clamd = PrivateClamd::start("");
    let admin_port = support::free_port();
    let gw = gateway(
        "scan_clamd_stopped",
        Setup {
            clamd: clamd.url(),
            admin_port: Some(admin_port),
            keep_raw: false,
            ..Setup::default()
        },
    )
    .await;
    let clean = |n: u32| {
        mail_with(
            &format!("clean {n}"),
            &[("notes.txt", "text/plain", b"nothing to see")],
        )
    };
    assert_eq!(post_mail(&gw, clean(0)).await.status(), 202);
    assert_eq!(
        gw.entries("desk").await.len(),
        1,
        "scanned while clamd runs"
    );

    clamd.stop();
    let mut ids = Vec::new();
    for n in 1..=2 {
        let response = post_mail(&gw, clean(n)).await;
        assert_eq!(response.status(), 202, "held items are accepted");
        ids.push(response.json::<Value>().await.unwrap()["id"].clone());
    }
    let infected = mail_with("bad", &[("bad.com", "application/octet-stream", &eicar())]);
    assert_eq!(
        post_mail(&gw, infected).await.status(),
        202,
        "an item nobody could scan is accepted and held, not refused"
    );
    let upload = reqwest::multipart::Part::bytes(eicar()).file_name("x.bin");
    let form = reqwest::multipart::Form::new()
        .text("email", "dora@example.com")
        .part("upload", upload);
    let response = client()
        .post(gw.form_url("contact"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202, "form upload held");

    let held = gw.entries("held").await;
    assert_eq!(held.len(), 4, "every item waits in held");
    assert!(held.iter().all(|e| e.field("kind") == "held"));
    let mail_held = held[0].envelope();
    assert!(
        mail_held["raw"].is_string(),
        "a held mail carries its raw message for the re-scan, even with keep_raw = false"
    );
    assert_eq!(
        gw.entries("desk").await.len(),
        1,
        "nothing forwarded unscanned"
    );
    assert!(gw.entries("quarantine").await.is_empty());
    let ready: Value = client()
        .get(format!("{}/readyz", gw.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        ready["status"], "ready",
        "a dead scanner does not make the gateway unready"
    );
    assert_eq!(
        ready["scanner"], "down",
        "readyz reports the scanner down: {ready}"
    );

    clamd.restart();
    eventually(Duration::from_secs(20), "held drained", || async {
        gw.entries("held").await.is_empty()
    })
    .await;
    let desk = gw.entries("desk").await;
    assert_eq!(
        desk.len(),
        3,
        "the two clean mails are released to the desk"
    );
    for entry in &desk[1..] {
        let env = entry.envelope();
        assert_eq!(env["scan"]["status"], "clean");
        assert!(
            env.get("raw").is_none(),
            "keep_raw = false: raw taken out again"
        );
        assert!(
            ids.contains(&env["id"]),
            "released under the receipt the sender got"
        );
    }
    let quarantine = gw.entries("quarantine").await;
    assert_eq!(
        quarantine.len(),
        2,
        "the infected mail and upload go to quarantine"
    );
    assert!(quarantine.iter().all(|e| e.field("kind") == "infected"));
    let ready: Value = client()
        .get(format!("{}/readyz", gw.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["scanner"], "up", "readyz: {ready}");
    let metrics = client()
        .get(format!("http://127.0.0.1:{admin_port}/metrics"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("intake_redriven_items_total{stream=\"desk\"}")
            && metrics.contains("intake_redriven_items_total{stream=\"quarantine\"}"),
        "re-driven items are counted by stream"
    );
}

#[tokio::test]
async fn clamd_over_a_unix_socket_scans_too() {
    let socket = std::env::var("INTAKE_TEST_CLAMD_SOCKET")
        .unwrap_or_else(|_| "/work/main/target/dev-state/clamav/clamd.sock".into());
    assert!(
        std::path::Path::new(&socket).exists(),
        "the dev clamd's socket {socket} exists (deploy/dev/services start clamd)"
    );
    let gw = gateway(
        "scan_unix_socket",
        Setup {
            clamd: format!("unix://{socket}"),
            ..Setup::default()
        },
    )
    .await;
    let raw = mail_with("x", &[("x.com", "application/octet-stream", &eicar())]);
    assert_refused_as_infected(post_mail(&gw, raw).await, "unix socket").await;
    assert_quarantined_as_infected(&gw, "unix socket").await;
}

#[tokio::test]
async fn clamd_that_never_answers_times_out_and_the_item_is_held() {
    let silent = SilentClamd::start();
    let gw = gateway(
        "scan_silent_clamd",
        Setup {
            clamd: silent.url(),
            timeout: "500ms",
            ..Setup::default()
        },
    )
    .await;
    let raw = mail_with("hello", &[("a.txt", "text/plain", b"hi")]);
    let started = Instant::now();
    let response = post_mail(&gw, raw).await;
    assert_eq!(response.status(), 202, "held, so accepted");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "the scan was cut off by its timeout, not the request's"
    );
    let held = gw.entries("held").await;
    assert_eq!(held.len(), 1, "the item is held");
    assert!(
        held[0].field("reason").contains("virus scanner"),
        "reason: {}",
        held[0].field("reason")
    );
    assert!(
        gw.entries("desk").await.is_empty(),
        "never on the desk unscanned"
    );
}

#[tokio::test]
async fn a_60mb_attachment_gets_the_oversize_policy() {
    let gw = gateway(
        "scan_60mb",
        Setup {
            scan_extra: "max_size = \"50MB\"",
            messages_max: "100MB",
            keep_raw: false,
            ..Setup::default()
        },
    )
    .await;
    let big = vec![b'x'; 60 * 1024 * 1024];
    let raw = mail_with("big", &[("video.bin", "application/octet-stream", &big)]);
    drop(big);
    let response = post_mail(&gw, raw).await;
    assert_eq!(
        response.status(),
        202,
        "stored for an operator, so accepted"
    );
    let quarantine = gw.entries("quarantine").await;
    assert_eq!(quarantine.len(), 1, "quarantine policy (the default)");
    assert_eq!(quarantine[0].field("kind"), "unscannable");
    assert!(
        quarantine[0].field("reason").contains("max_size"),
        "reason says why: {}",
        quarantine[0].field("reason")
    );
    assert_eq!(quarantine[0].envelope()["scan"]["status"], "unscanned");
    assert!(gw.entries("desk").await.is_empty(), "not on the desk");
    // 80 MB of base64 in the shared Redis: clean up.
    let mut conn = support::test_connection(&gw.redis_url).await;
    let _: () = redis::cmd("DEL")
        .arg(format!("{}:quarantine", gw.prefix))
        .query_async(&mut conn)
        .await
        .unwrap();
}

#[tokio::test]
async fn pass_with_tag_sends_an_oversize_item_to_the_desk_tagged() {
    let gw = gateway(
        "scan_pass_with_tag",
        Setup {
            scan_extra: "max_size = \"100KB\"\noversize = \"pass-with-tag\"",
            ..Setup::default()
        },
    )
    .await;
    let big = vec![b'y'; 200_000];
    let raw = mail_with("big", &[("data.bin", "application/octet-stream", &big)]);
    assert_eq!(post_mail(&gw, raw).await.status(), 202);
    let desk = gw.entries("desk").await;
    assert_eq!(desk.len(), 1, "policy lets it through");
    let env = desk[0].envelope();
    assert_eq!(env["scan"]["status"], "unscanned", "not claimed clean");
    assert!(
        env["abuse"]["tags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t == "unscanned:oversize"),
        "tagged: {}",
        env["abuse"]
    );
}

#[tokio::test]
async fn clamd_limits_map_to_the_oversize_policy_not_to_infected() {
    // Our max_size is above this clamd's StreamMaxLength: clamd refuses the
    // stream itself. A file above MaxFileSize gets clamd's
    // Heuristics.Limits.Exceeded alert. Both are "too large", not viruses.
    let clamd = PrivateClamd::start("StreamMaxLength 2M\nMaxFileSize 1M");
    let gw = gateway(
        "scan_clamd_limits",
        Setup {
            clamd: clamd.url(),
            scan_extra: "max_size = \"20MB\"",
            messages_max: "10MB",
            ..Setup::default()
        },
    )
    .await;
    let heuristic = mail_with(
        "a",
        &[("a.bin", "application/octet-stream", &[b'a'; 1_400_000])],
    );
    let too_long = mail_with(
        "b",
        &[("b.bin", "application/octet-stream", &[b'b'; 3_000_000])],
    );
    for raw in [heuristic, too_long] {
        assert_eq!(post_mail(&gw, raw).await.status(), 202);
    }
    let quarantine = gw.entries("quarantine").await;
    assert_eq!(
        quarantine.len(),
        2,
        "both quarantined by the oversize policy"
    );
    for entry in &quarantine {
        assert_eq!(entry.field("kind"), "unscannable", "not 'infected'");
        assert_eq!(entry.envelope()["scan"]["status"], "unscanned");
    }
    assert!(
        quarantine[0]
            .field("reason")
            .contains("Heuristics.Limits.Exceeded"),
        "first: {}",
        quarantine[0].field("reason")
    );
    assert!(
        quarantine[1].field("reason").contains("StreamMaxLength"),
        "second: {}",
        quarantine[1].field("reason")
    );
    assert!(
        gw.entries("held").await.is_empty(),
        "a limit is a verdict, not an outage"
    );
}
