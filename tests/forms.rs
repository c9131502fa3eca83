//! `POST /v1/forms/{form}` against a real gateway and the dev Redis: every
//! body type reaches `intake:desk`, every refusal has its status, and
//! nothing refused is written to the desk.

mod support;

use std::process::Command;

use reqwest::header;
use serde_json::Value;
use support::{client, Gateway};

#[tokio::test]
async fn urlencoded_post_reaches_the_desk_with_its_receipt() {
    let gw = Gateway::start("form_urlencoded").await;
    let response = client()
        .post(gw.form_url("contact"))
        .form(&[
            ("email", "ann@example.com"),
            ("name", "Ann Example"),
            ("message", "Where is order 1234?"),
            ("order", "1234"),
            ("_subject", "Order question"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202, "accepted");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "accepted");
    let id = body["id"].as_str().expect("receipt id").to_string();

    let desk = gw.entries("desk").await;
    assert_eq!(desk.len(), 1, "exactly one desk entry");
    assert_eq!(desk[0].field("id"), id, "entry id is the receipt");
    assert_eq!(desk[0].field("kind"), "message");
    let env = desk[0].envelope();
    assert_eq!(env["version"], 1);
    assert_eq!(env["id"], id.as_str());
    assert_eq!(env["channel"], "form");
    assert_eq!(env["source"]["type"], "form");
    assert_eq!(env["source"]["form"], "contact");
    assert_eq!(env["source"]["ip"], "127.0.0.1");
    assert_eq!(env["customer"]["email"], "ann@example.com");
    assert_eq!(env["customer"]["name"], "Ann Example");
    assert_eq!(env["subject"], "Order question");
    assert_eq!(env["text"], "Where is order 1234?");
    assert_eq!(env["fields"]["order"], "1234");
    assert!(
        env["fields"].get("_subject").is_none(),
        "reserved fields are removed"
    );
    assert_eq!(env["scan"]["status"], "unscanned");
}

#[tokio::test]
async fn multipart_post_turns_files_into_attachments() {
    let gw = Gateway::start("form_multipart").await;
    let file = reqwest::multipart::Part::bytes(b"%PDF-1.4 invoice".to_vec())
        .file_name("invoice.pdf")
        .mime_str("application/pdf")
        .unwrap();
    let form = reqwest::multipart::Form::new()
        .text("email", "bob@example.com")
        .text("message", "Invoice attached")
        .part("upload", file);
    let response = client()
        .post(gw.form_url("contact"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let env = gw.entries("desk").await[0].envelope();
    let attachments = env["attachments"].as_array().expect("attachments list");
    assert_eq!(attachments.len(), 1, "one upload, one attachment");
    assert_eq!(attachments[0]["filename"], "invoice.pdf");
    assert_eq!(attachments[0]["content_type"], "application/pdf");
    assert_eq!(attachments[0]["size"], 16);
    assert_eq!(attachments[0]["content_base64"], "JVBERi0xLjQgaW52b2ljZQ==");
    assert_eq!(attachments[0]["sha256"].as_str().unwrap().len(), 64);
}

#[tokio::test]
async fn json_post_is_accepted() {
    let gw = Gateway::start("form_json").await;
    let response = client()
        .post(gw.form_url("contact"))
        .json(&serde_json::json!({
            "email": "cem@example.com",
            "message": "Hello",
            "quantity": 3,
            "sizes": ["M", "L"],
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let env = gw.entries("desk").await[0].envelope();
    assert_eq!(env["customer"]["email"], "cem@example.com");
    assert_eq!(env["fields"]["quantity"], "3");
    assert_eq!(env["fields"]["sizes"], serde_json::json!(["M", "L"]));
}

#[tokio::test]
async fn browser_post_is_redirected_to_the_thank_you_page() {
    let gw = Gateway::start("form_browser").await;
    let response = client()
        .post(gw.form_url("contact"))
        .header(header::ACCEPT, "text/html,application/xhtml+xml")
        .header(header::ORIGIN, "https://shop.test")
        .form(&[("email", "ann@example.com"), ("message", "hi")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 303, "a browser gets a redirect");
    let location = response.headers()[header::LOCATION].to_str().unwrap();
    let id = gw.entries("desk").await[0].field("id").to_string();
    assert_eq!(location, format!("https://shop.test/thanks?receipt={id}"));

    // `_next` on an allowed origin wins over the form's redirect...
    let response = client()
        .post(gw.form_url("contact"))
        .header(header::ACCEPT, "text/html")
        .form(&[
            ("email", "ann@example.com"),
            ("_next", "https://shop.test/done?x=1"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 303);
    let location = response.headers()[header::LOCATION].to_str().unwrap();
    assert!(
        location.starts_with("https://shop.test/done?x=1&receipt="),
        "{location}"
    );
}

#[tokio::test]
async fn next_to_a_foreign_site_is_refused_not_followed() {
    let gw = Gateway::start("form_open_redirect").await;
    let response = client()
        .post(gw.form_url("contact"))
        .header(header::ACCEPT, "text/html")
        .form(&[
            ("email", "ann@example.com"),
            ("_next", "https://evil.example/phish"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400, "the gateway is no open redirector");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["fields"][0]["name"], "_next");
    assert!(
        gw.entries("desk").await.is_empty(),
        "refused posts are not stored"
    );
}

#[tokio::test]
async fn missing_required_field_names_the_field() {
    let gw = Gateway::start("form_missing").await;
    let response = client()
        .post(gw.form_url("contact"))
        .form(&[("message", "no address given")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "invalid_fields");
    assert_eq!(body["fields"][0]["name"], "email");
    assert_eq!(body["fields"][0]["problem"], "required");
    assert!(gw.entries("desk").await.is_empty());
}

#[tokio::test]
async fn invalid_email_is_a_field_error() {
    let gw = Gateway::start("form_bad_email").await;
    let response = client()
        .post(gw.form_url("contact"))
        .form(&[("email", "ann@example.com\r\nBcc: all@shop.test")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["fields"][0]["problem"], "not an email address");
}

#[tokio::test]
async fn unknown_form_is_404() {
    let gw = Gateway::start("form_unknown").await;
    let response = client()
        .post(gw.form_url("no-such-form"))
        .form(&[("email", "ann@example.com")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "unknown_form");
}

#[tokio::test]
async fn wrong_content_type_is_415() {
    let gw = Gateway::start("form_415").await;
    let response = client()
        .post(gw.form_url("contact"))
        .header(header::CONTENT_TYPE, "text/plain")
        .body("email=ann@example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 415);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("multipart/form-data"),
        "says what to send instead: {body}"
    );
}

#[tokio::test]
async fn too_large_body_is_413_declared_or_streamed() {
    let gw = Gateway::start("form_413").await;
    // The test form takes 200 KB.
    let big = "x".repeat(300_000);
    let response = client()
        .post(gw.form_url("contact"))
        .form(&[("email", "ann@example.com"), ("message", big.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        413,
        "declared Content-Length over the limit"
    );

    // Chunked, with no Content-Length: refused once the limit is crossed.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = (0..30)
        .map(|i| {
            Ok(if i == 0 {
                b"email=ann%40example.com&message=".to_vec()
            } else {
                vec![b'y'; 10_000]
            })
        })
        .collect();
    let response = client()
        .post(gw.form_url("contact"))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413, "streamed body over the limit");
    assert!(gw.entries("desk").await.is_empty());
}

#[tokio::test]
async fn disallowed_origin_is_403() {
    let gw = Gateway::start("form_403").await;
    let response = client()
        .post(gw.form_url("contact"))
        .header(header::ORIGIN, "https://evil.example")
        .form(&[("email", "ann@example.com")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let response = client()
        .post(gw.form_url("contact"))
        .header(header::REFERER, "https://evil.example/page")
        .form(&[("email", "ann@example.com")])
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        403,
        "Referer is checked when Origin is absent"
    );
    assert!(gw.entries("desk").await.is_empty());
}

#[tokio::test]
async fn cors_preflight_from_allowed_origin_is_answered() {
    let gw = Gateway::start("form_cors").await;
    let response = client()
        .request(reqwest::Method::OPTIONS, gw.form_url("contact"))
        .header(header::ORIGIN, "https://shop.test")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    assert_eq!(
        response.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN],
        "https://shop.test"
    );
}

#[tokio::test]
async fn refusals_carry_cors_headers_so_the_page_script_can_read_them() {
    let gw = support::Gateway::start_with(
        "form_cors_refusal",
        &support::redis_url(),
        "\n[[form]]\nid = \"open\"\n",
    )
    .await;
    // A 400 from an allowed origin: the script must read its fields.
    let response = client()
        .post(gw.form_url("contact"))
        .header(header::ORIGIN, "https://shop.test")
        .form(&[("name", "Ann")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(
        response.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN],
        "https://shop.test",
        "a refusal names the origin too, not only a 202"
    );
    let exposed = response.headers()[header::ACCESS_CONTROL_EXPOSE_HEADERS]
        .to_str()
        .unwrap();
    assert!(
        exposed.contains("retry-after") && exposed.contains("ratelimit"),
        "Retry-After and RateLimit are readable by scripts: {exposed}"
    );
    // A refused origin learns nothing more.
    let response = client()
        .post(gw.form_url("contact"))
        .header(header::ORIGIN, "https://evil.example")
        .form(&[("email", "ann@example.com")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    assert!(response
        .headers()
        .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
        .is_none());
    // A form open to every origin lets every page read its answers.
    let response = client()
        .post(gw.form_url("open"))
        .header(header::ORIGIN, "https://any.example")
        .form(&[("email", "ann@example.com")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    assert_eq!(response.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
}

#[tokio::test]
async fn browser_post_to_a_non_ascii_next_is_still_redirected() {
    let gw = Gateway::start("form_next_non_ascii").await;
    let response = client()
        .post(gw.form_url("contact"))
        .header(header::ACCEPT, "text/html")
        .form(&[
            ("email", "ann@example.com"),
            ("_next", "https://shop.test/danke-schön#oben"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 303);
    let id = gw.entries("desk").await[0].field("id").to_string();
    let location = response
        .headers()
        .get(header::LOCATION)
        .expect("a 303 always carries Location")
        .to_str()
        .unwrap();
    assert_eq!(
        location,
        format!("https://shop.test/danke-sch%C3%B6n?receipt={id}#oben"),
        "percent-encoded, receipt in the query, fragment kept last"
    );
}

#[tokio::test]
async fn filled_honeypot_looks_accepted_but_goes_to_suppressed() {
    let gw = Gateway::start("form_honeypot").await;
    let response = client()
        .post(gw.form_url("contact"))
        .form(&[
            ("email", "bot@example.com"),
            ("_gotcha", "http://spam.example"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202, "bots get the answer of a success");
    assert!(
        gw.entries("desk").await.is_empty(),
        "nothing reaches the desk"
    );
    let suppressed = gw.entries("suppressed").await;
    assert_eq!(suppressed.len(), 1, "the item is kept for audit");
    assert_eq!(suppressed[0].field("kind"), "trapped");
    assert!(suppressed[0].field("reason").contains("honeypot"));
}

#[tokio::test]
async fn curl_posts_a_form_like_a_shop_page() {
    let gw = Gateway::start("form_curl").await;
    let url = gw.form_url("contact");
    let output = tokio::task::spawn_blocking(move || {
        Command::new("curl")
            .args(["-sS", "-o", "-", "-w", "\n%{http_code}", "-X", "POST"])
            .args([
                "-F",
                "email=dora@example.com",
                "-F",
                "message=Hello from curl",
            ])
            .args(["-F", "file=@Cargo.toml;type=text/plain"])
            .arg(url)
            .output()
            .expect("curl is installed")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.ends_with("202"), "curl saw: {stdout}");
    let env = gw.entries("desk").await[0].envelope();
    assert_eq!(env["customer"]["email"], "dora@example.com");
    assert_eq!(env["attachments"][0]["filename"], "Cargo.toml");
}

#[tokio::test]
async fn health_and_readiness_answer() {
    let gw = Gateway::start("form_health").await;
    let response = client()
        .get(format!("{}/healthz", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let response = client()
        .get(format!("{}/readyz", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "ready while Redis is up");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["redis"], "up");
    let response = client()
        .get(format!("{}/nowhere", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
}

#[tokio::test]
async fn get_on_a_form_is_405_with_allow() {
    let gw = Gateway::start("form_405").await;
    let response = client().get(gw.form_url("contact")).send().await.unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()[header::ALLOW], "POST, OPTIONS");
}

#[tokio::test]
async fn client_that_stalls_mid_body_gets_408_and_nothing_is_stored() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gw = Gateway::start_edited("form_slow_body", &support::redis_url(), "", |text| {
        text.replace("request_timeout = \"10s\"", "request_timeout = \"1s\"")
    })
    .await;
    let mut stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    // Headers promise 100 bytes; only 10 ever come.
    stream
        .write_all(
            b"POST /v1/forms/contact HTTP/1.1\r\nHost: x\r\n\
              Content-Type: application/x-www-form-urlencoded\r\n\
              Content-Length: 100\r\n\r\nemail=ann@",
        )
        .await
        .unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(15),
        stream.read_to_end(&mut answer),
    )
    .await;
    assert!(
        read.is_ok(),
        "the gateway must not wait for the body forever"
    );
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 408"),
        "a stalled upload is answered 408: {answer}"
    );
    assert!(gw.entries("desk").await.is_empty());
}
