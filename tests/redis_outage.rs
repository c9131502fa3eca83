//! Redis going away, hanging and coming back, on a Redis of the test's own:
//! while it is gone every client hears 503 with Retry-After (mailgate: exit
//! 75) and nothing is acknowledged; when it is back the gateway recovers by
//! itself, without a restart.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{client, read_stream, Gateway, PrivateRedis, TOKEN};

async fn post(gw: &Gateway, message: &str) -> reqwest::Response {
    client()
        .post(gw.form_url("contact"))
        .form(&[("email", "ann@example.com"), ("message", message)])
        .send()
        .await
        .expect("the gateway answers even while Redis is down")
}

/// Posts until a 202 comes back (the reconnect takes a moment), at most 15 s.
async fn post_until_accepted(gw: &Gateway, message: &str) -> Duration {
    let start = Instant::now();
    loop {
        let response = post(gw, message).await;
        if response.status() == 202 {
            return start.elapsed();
        }
        assert_eq!(response.status(), 503, "only 503 while recovering");
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "the gateway did not recover within 15 s of Redis coming back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn mailgate(url: &str) -> (i32, String) {
    let token_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(token_file.path(), TOKEN).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_intake"))
        .args(["mailgate", "--url", url, "--timeout", "10s", "--token-file"])
        .arg(token_file.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"From: ann@example.com\r\nSubject: outage\r\n\r\nhello\r\n")
        .unwrap();
    let output = child.wait_with_output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

#[tokio::test]
async fn redis_stopped_mid_run_gives_503_and_recovers_by_itself() {
    let mut redis = PrivateRedis::start();
    let gw = Gateway::start_with("outage", &redis.url(), "").await;
    let key = format!("{}:desk", gw.prefix);

    assert_eq!(
        post(&gw, "before").await.status(),
        202,
        "stored while Redis is up"
    );

    redis.stop();
    let response = post(&gw, "during").await;
    assert_eq!(response.status(), 503, "no 202 without a stored item");
    assert_eq!(
        response.headers()["retry-after"],
        "7",
        "the client is told when to retry"
    );
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "unavailable");
    assert!(
        !body.to_string().to_lowercase().contains("connection"),
        "internal error text leaked: {body}"
    );
    let ready = client()
        .get(format!("{}/readyz", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503, "not ready without Redis");

    let url = gw.url.clone();
    let (code, stdout) = tokio::task::spawn_blocking(move || mailgate(&url))
        .await
        .unwrap();
    assert_eq!(
        code, 75,
        "mailgate keeps the mail while Redis is down: {stdout}"
    );
    assert!(stdout.starts_with("4."), "temporary status line: {stdout}");

    redis.restart();
    post_until_accepted(&gw, "after").await;
    let entries = read_stream(&redis.url(), &key).await;
    let texts: Vec<String> = entries
        .iter()
        .map(|e| {
            e.envelope()["text"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    // Redis restarted empty (no persistence), so only "after" is there; the
    // point is that "during" was never acknowledged and never written.
    assert!(
        texts.contains(&"after".to_string()),
        "stored after recovery: {texts:?}"
    );
    assert!(
        !texts.contains(&"during".to_string()),
        "a 503 item was written: {texts:?}"
    );

    let url = gw.url.clone();
    let (code, stdout) = tokio::task::spawn_blocking(move || mailgate(&url))
        .await
        .unwrap();
    assert_eq!(code, 0, "mailgate delivers once Redis is back: {stdout}");
}

#[tokio::test]
async fn gateway_started_without_redis_serves_503_then_recovers() {
    let mut redis = PrivateRedis::start();
    redis.stop();
    let gw = Gateway::start_with("outage_at_start", &redis.url(), "").await;
    assert_eq!(
        post(&gw, "early").await.status(),
        503,
        "starts and answers 503"
    );
    redis.restart();
    post_until_accepted(&gw, "late").await;
    let entries = read_stream(&redis.url(), &format!("{}:desk", gw.prefix)).await;
    assert_eq!(entries.len(), 1, "exactly the accepted item is stored");
}

#[tokio::test]
async fn redis_that_hangs_is_a_503_within_the_timeout() {
    let redis = PrivateRedis::start();
    let gw = Gateway::start_with("outage_hang", &redis.url(), "").await;
    assert_eq!(post(&gw, "warm").await.status(), 202);

    redis.freeze();
    let started = Instant::now();
    let response = post(&gw, "frozen").await;
    let waited = started.elapsed();
    redis.thaw();
    assert_eq!(
        response.status(),
        503,
        "a hung Redis is not an accepted item"
    );
    // The test config bounds Redis commands at 1 s; generous slack for a
    // loaded machine, but far from the 20 s client timeout.
    assert!(
        waited < Duration::from_secs(10),
        "the answer waited {waited:?}; the Redis timeout did not apply"
    );
    post_until_accepted(&gw, "thawed").await;
}
