//! Backpressure instead of loss: with the desk past its high-water mark,
//! forms hear 503 + Retry-After and mailgate exits 75 (nothing is taken, so
//! nothing is lost); once the desk drains, both are served again without a
//! restart.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{client, redis_url, Gateway, TOKEN};

async fn post(gw: &Gateway, n: usize) -> reqwest::Response {
    client()
        .post(gw.form_url("contact"))
        .form(&[
            ("email", "ann@example.com"),
            // Unique: the same post again within the form's retry window
            // would get its first receipt without being judged, and a 202
            // would no longer show that the gateway takes new items.
            ("message", &format!("note {n} {}", ulid::Ulid::new())),
        ])
        .send()
        .await
        .unwrap()
}

/// Posts until the answer has `status`, at most 10 s (the watch samples
/// every 50 ms in this test). Returns how many posts were accepted on the way.
async fn post_until(gw: &Gateway, status: u16) -> usize {
    let started = Instant::now();
    let mut accepted = 0;
    for n in 0.. {
        let response = post(gw, n).await;
        if response.status() == status {
            return accepted;
        }
        if response.status() == 202 {
            accepted += 1;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no {status} within 10 s (last answer {})",
            response.status()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    unreachable!()
}

/// mailgate's exit code and what it wrote to stderr (for the failure message).
fn mailgate(url: &str) -> (i32, String) {
    let token_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(token_file.path(), TOKEN).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_intake"))
        .args(["mailgate", "--url", url, "--timeout", "10s", "--token-file"])
        .arg(token_file.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"From: ann@example.com\r\nSubject: busy\r\n\r\nhello\r\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn full_desk_refuses_new_items_until_it_drains() {
    let extra = "[backpressure]\ndesk_high_water = 3\ncheck_interval = \"50ms\"\n";
    let gw = Gateway::start_with("backpressure_desk", &redis_url(), extra).await;

    // Fill the desk past its mark; the watch notices within a sample.
    let accepted = post_until(&gw, 503).await;
    assert!(
        accepted >= 4,
        "the mark (3) was passed first: {accepted} accepted"
    );
    let stored_before = gw.entries("desk").await.len();
    assert_eq!(stored_before, accepted, "every 202 is on the desk");

    let response = post(&gw, 999).await;
    assert_eq!(
        response.status(),
        503,
        "still refused while the desk is full"
    );
    assert_eq!(response.headers()["retry-after"], "7");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "unavailable");
    let url = gw.url.clone();
    let code = tokio::task::spawn_blocking(move || mailgate(&url))
        .await
        .unwrap();
    assert_eq!(
        code.0, 75,
        "mailgate keeps the mail while the desk is full: {}",
        code.1
    );
    assert_eq!(
        gw.entries("desk").await.len(),
        stored_before,
        "nothing refused was written"
    );

    // The desk consumer catches up (here: the stream is emptied).
    let mut conn = support::test_connection(&redis_url()).await;
    let _: () = redis::cmd("DEL")
        .arg(format!("{}:desk", gw.prefix))
        .query_async(&mut conn)
        .await
        .unwrap();
    post_until(&gw, 202).await;
    let url = gw.url.clone();
    let code = tokio::task::spawn_blocking(move || mailgate(&url))
        .await
        .unwrap();
    assert_eq!(
        code.0, 0,
        "mailgate delivers again once the desk drained: {}",
        code.1
    );
}

#[test]
fn bad_backpressure_values_are_refused_by_name() {
    let config = intake::config::Config::from_toml(
        "[redis]\nurl = \"redis://x\"\n[backpressure]\ndesk_high_water = 0\nredis_memory_ratio = 1.5\n",
    )
    .unwrap();
    let problems = config.validate().unwrap_err().join("\n");
    assert!(
        problems.contains("backpressure.desk_high_water"),
        "{problems}"
    );
    assert!(
        problems.contains("backpressure.redis_memory_ratio"),
        "{problems}"
    );
}
