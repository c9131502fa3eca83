//! Delivery workers with the webhook target, against real Redis and a
//! receiver of the test's own (tests/support/receiver.rs): the signature
//! and the receivers' verification recipes in deploy/README.md, the
//! failure policy (retries, Retry-After, the dead stream and its
//! re-drive), replicas sharing a stream, a worker killed between the POST
//! and the acknowledgement, Redis going away, and a receiver that never
//! answers.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use support::receiver::{Receiver, Reply, Seen};
use support::{redis_url, test_connection, unique_prefix, PrivateRedis};
use tokio_util::sync::CancellationToken;

const SECRET: &str = "whsec-test-0123456789abcdef";
const OLD_SECRET: &str = "whsec-old-fedcba9876543210";

/// Secrets on disk, as the config reads them.
struct Secrets {
    _dir: tempfile::TempDir,
    current: std::path::PathBuf,
    previous: std::path::PathBuf,
}

fn secrets() -> Secrets {
    let dir = tempfile::tempdir().unwrap();
    let current = dir.path().join("secret");
    let previous = dir.path().join("previous");
    std::fs::write(&current, format!("{SECRET}\n")).unwrap();
    std::fs::write(&previous, format!("{OLD_SECRET}\n")).unwrap();
    Secrets {
        _dir: dir,
        current,
        previous,
    }
}

/// A whole config: Redis under `prefix` and one `[[delivery]]` to `url`
/// with fast test timings; `extra` goes into `[delivery.webhook]`.
fn config_text(redis_url: &str, prefix: &str, url: &str, secrets: &Secrets, extra: &str) -> String {
    format!(
        r#"
[redis]
url = "{redis_url}"
prefix = "{prefix}"
timeout = "1s"

[[delivery]]
name = "hook"
target = "webhook"
concurrency = 4
claim_after = "2s"
backoff_initial = "100ms"
backoff_max = "1s"
max_age = "1m"
remember = "1h"

[delivery.webhook]
url = "{url}"
secret = {{ file = "{secret}" }}
timeout = "1s"
{extra}
"#,
        secret = secrets.current.display(),
    )
}

/// Delivery workers running in this process, stopped when dropped.
struct Workers {
    stop: CancellationToken,
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn start_workers(text: &str, consumers: &[&str]) -> Workers {
    let config = intake::config::Config::from_toml(text).expect("test config parses");
    config.validate().expect("test config is valid");
    let stop = CancellationToken::new();
    for consumer in consumers {
        let redis = intake::redis_connection::RedisConnection::new(&config.redis, None).unwrap();
        intake::delivery::spawn_all(
            &config.deliveries,
            redis,
            &config.redis.prefix,
            consumer,
            intake::delivery::Registry::default(),
            stop.clone(),
        )
        .expect("workers start");
    }
    Workers { stop }
}

/// Adds a desk item with receipt `id`; returns its entry id.
async fn add_desk(redis_url: &str, prefix: &str, id: &str, envelope: serde_json::Value) -> String {
    let mut conn = test_connection(redis_url).await;
    conn.xadd(
        format!("{prefix}:desk"),
        "*",
        &[
            ("id", id),
            ("kind", "message"),
            ("envelope", &envelope.to_string()),
        ],
    )
    .await
    .unwrap()
}

fn envelope(id: &str) -> serde_json::Value {
    serde_json::json!({"version": 1, "id": id, "channel": "form", "subject": "Where is my order?",
        "text": "Hello", "raw": "cmF3", "attachments": []})
}

async fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Entries of `<prefix>:<stream>` the group has not acknowledged or not
/// read yet; `usize::MAX` while the group does not exist.
async fn pending(redis_url: &str, prefix: &str, stream: &str) -> usize {
    let mut conn = test_connection(redis_url).await;
    let groups: Result<Vec<HashMap<String, redis::Value>>, _> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(format!("{prefix}:{stream}"))
        .query_async(&mut conn)
        .await;
    let number = |v: Option<&redis::Value>| match v {
        Some(redis::Value::Int(n)) => *n as usize,
        _ => usize::MAX / 2,
    };
    groups
        .unwrap_or_default()
        .iter()
        .find(
            |g| matches!(g.get("name"), Some(redis::Value::BulkString(n)) if n == b"delivery:hook"),
        )
        .map_or(usize::MAX, |g| {
            number(g.get("pending")) + number(g.get("lag"))
        })
}

async fn wait_acked(redis_url: &str, prefix: &str, stream: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while pending(redis_url, prefix, stream).await > 0 {
        assert!(
            Instant::now() < deadline,
            "entries of {stream} still not delivered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn hmac_hex(secret: &str, message: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    ring::hmac::sign(&key, message)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn verifies(seen: &Seen, secret: &str) -> bool {
    let parts: Vec<(&str, &str)> = seen
        .signature
        .split(',')
        .filter_map(|p| p.split_once('='))
        .collect();
    let t = parts.iter().find(|(k, _)| *k == "t").expect("t=").1;
    let mut message = format!("{t}.").into_bytes();
    message.extend_from_slice(&seen.body);
    let expected = hmac_hex(secret, &message);
    parts.iter().any(|(k, v)| *k == "v1" && *v == expected)
}

/// The code block of `lang` in deploy/README.md's receiver recipe.
fn recipe(lang: &str) -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/README.md")).unwrap();
    let section = readme
        .split("### Checking the signature")
        .nth(1)
        .expect("deploy/README.md has the recipe section");
    let start = section
        .find(&format!("```{lang}\n"))
        .unwrap_or_else(|| panic!("a {lang} block in the recipe"))
        + lang.len()
        + 4;
    let end = section[start..].find("```").unwrap() + start;
    section[start..end].to_string()
}

/// Runs the README's recipe in `lang` on `signature` and `body`.
fn run_recipe(lang: &str, secret: &str, signature: &str, body: &[u8]) -> bool {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("body.json"), body).unwrap();
    let script = dir.path().join("verify");
    std::fs::write(&script, recipe(lang)).unwrap();
    let program = if lang == "python" { "python3" } else { "sh" };
    let status = std::process::Command::new(program)
        .arg(&script)
        .current_dir(dir.path())
        .env("INTAKE_SECRET", secret)
        .env("SIGNATURE", signature)
        .stdin(std::fs::File::open(dir.path().join("body.json")).unwrap())
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    status.success()
}

#[tokio::test]
async fn webhook_signature_verifies_with_the_documented_recipes_and_fails_when_wrong_or_stale() {
    let receiver = Receiver::start(Box::new(|_, _| Reply::Status(204))).await;
    let prefix = unique_prefix("webhook_signature");
    let secrets = secrets();
    let rotation = format!(
        "previous_secret = {{ file = \"{}\" }}",
        secrets.previous.display()
    );
    let _workers = start_workers(
        &config_text(&redis_url(), &prefix, &receiver.url, &secrets, &rotation),
        &["w1"],
    );
    add_desk(&redis_url(), &prefix, "01SIGNED", envelope("01SIGNED")).await;
    wait_for("the POST", Duration::from_secs(10), || {
        !receiver.seen().is_empty()
    })
    .await;
    let seen = &receiver.seen()[0];
    assert_eq!(seen.key, "01SIGNED", "Idempotency-Key is the receipt id");
    assert_eq!(seen.attempt, 1);
    assert_eq!(seen.kind, "message");
    assert!(seen.json().get("raw").is_none(), "raw left out by default");
    assert_eq!(
        seen.signature.matches("v1=").count(),
        2,
        "two secrets during a rotation: {}",
        seen.signature
    );
    assert!(verifies(seen, SECRET), "current secret verifies");
    assert!(
        verifies(seen, OLD_SECRET),
        "previous secret verifies during the rotation"
    );
    assert!(
        !verifies(seen, "some-other-secret-value"),
        "a wrong secret does not"
    );
    for lang in ["python", "sh"] {
        assert!(
            run_recipe(lang, SECRET, &seen.signature, &seen.body),
            "{lang} recipe accepts the real request"
        );
        assert!(
            run_recipe(lang, OLD_SECRET, &seen.signature, &seen.body),
            "{lang} recipe accepts the previous secret"
        );
        assert!(
            !run_recipe(lang, "some-other-secret-value", &seen.signature, &seen.body),
            "{lang} recipe refuses a wrong secret"
        );
        let mut tampered = seen.body.clone();
        tampered.push(b' ');
        assert!(
            !run_recipe(lang, SECRET, &seen.signature, &tampered),
            "{lang} recipe refuses a changed body"
        );
        // Correctly signed, but an hour old: a replay.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            - 3600;
        let mut message = format!("{t}.").into_bytes();
        message.extend_from_slice(&seen.body);
        let stale = format!("t={t},v1={}", hmac_hex(SECRET, &message));
        assert!(
            !run_recipe(lang, SECRET, &stale, &seen.body),
            "{lang} recipe refuses a stale timestamp"
        );
    }
    wait_acked(&redis_url(), &prefix, "desk").await;
}

#[tokio::test]
async fn webhook_500_500_200_is_delivered_once_after_two_retries() {
    let receiver = Receiver::start(Box::new(|_, before| match before {
        0 | 1 => Reply::Status(500),
        _ => Reply::Status(200),
    }))
    .await;
    let prefix = unique_prefix("webhook_retries");
    let secrets = secrets();
    let _workers = start_workers(
        &config_text(&redis_url(), &prefix, &receiver.url, &secrets, ""),
        &["w1"],
    );
    add_desk(&redis_url(), &prefix, "01RETRIED", envelope("01RETRIED")).await;
    wait_acked(&redis_url(), &prefix, "desk").await;
    let seen = receiver.with_key("01RETRIED");
    assert_eq!(
        seen.iter().map(|s| s.attempt).collect::<Vec<_>>(),
        [1, 2, 3],
        "three attempts, numbered"
    );
    assert!(
        seen[1].at - seen[0].at >= Duration::from_millis(50),
        "backoff between attempts"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.seen().len(), 3, "nothing after the 200");
    let dead = support::read_stream(&redis_url(), &format!("{prefix}:dead")).await;
    assert!(dead.is_empty(), "nothing dead: {dead:?}");
}

/// The `[[delivery]]` table alone, as a gateway's config takes it.
fn delivery_table(text: &str) -> &str {
    &text[text.find("[[delivery]]").expect("a delivery table")..]
}

#[tokio::test]
async fn webhook_410_goes_dead_and_an_admin_redrive_delivers_it_once_with_the_same_key() {
    let receiver = Receiver::start(Box::new(|_, before| match before {
        0 => Reply::Status(410),
        _ => Reply::Status(200),
    }))
    .await;
    let secrets = secrets();
    let admin_token = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(admin_token.path(), "admin-secret-1\n").unwrap();
    let admin_port = support::free_port();
    // The gateway runs the delivery itself (`intake serve`).
    let gw = support::Gateway::start_custom("webhook_dead", &redis_url(), |prefix, token| {
        let delivery = config_text(&redis_url(), prefix, &receiver.url, &secrets, "");
        support::default_toml(
            &redis_url(),
            prefix,
            token,
            &format!(
                "[admin]\nlisten = \"127.0.0.1:{admin_port}\"\ntoken = {{ file = \"{}\" }}\n{}",
                admin_token.path().display(),
                delivery_table(&delivery)
            ),
        )
    })
    .await;
    let prefix = gw.prefix.clone();
    let admin = format!("http://127.0.0.1:{admin_port}");
    let response = support::client()
        .post(gw.form_url("contact"))
        .header("origin", "https://shop.test")
        .form(&[
            ("email", "ann@example.com"),
            ("message", "Where is my order?"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let receipt = response.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    wait_acked(&redis_url(), &prefix, "desk").await;
    let desk = gw.entries("desk").await;
    let dead = gw.entries("dead").await;
    assert_eq!(dead.len(), 1, "one dead entry: {dead:?}");
    let d = &dead[0];
    assert_eq!(d.field("status"), "410");
    assert_eq!(d.field("id"), receipt);
    assert_eq!(d.field("delivery"), "hook");
    assert_eq!(d.field("target"), "webhook");
    assert_eq!(d.field("origin_stream"), "desk");
    assert_eq!(d.field("origin_entry"), desk[0].entry_id);
    assert_eq!(d.field("attempts"), "1");
    assert_eq!(d.field("reason"), "refused");
    assert_eq!(
        d.field("response"),
        "{\"answer\":410}",
        "the answer's first bytes"
    );
    assert_eq!(
        d.envelope()["id"],
        receipt.as_str(),
        "the envelope is kept whole"
    );
    assert_eq!(receiver.seen().len(), 1, "a 410 is not retried");
    assert_eq!(
        receiver.seen()[0].key,
        receipt,
        "Idempotency-Key is the receipt id"
    );

    let readyz: serde_json::Value = support::client()
        .get(format!("{}/readyz", gw.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        readyz["status"], "ready",
        "a refusing target does not make the gateway unready"
    );
    assert!(
        readyz["deliveries"]["hook"].is_string(),
        "/readyz names the delivery: {readyz}"
    );

    let listing: serde_json::Value = support::client()
        .get(format!("{admin}/v1/dead"))
        .bearer_auth("admin-secret-1")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        listing["entries"][0]["entry_id"],
        d.entry_id.as_str(),
        "{listing}"
    );
    assert_eq!(listing["entries"][0]["status"], "410");
    assert!(
        listing["entries"][0].get("envelope").is_none(),
        "no bodies in the listing"
    );
    let redrive = |entry: String| {
        support::client()
            .post(format!("{admin}/v1/dead/{entry}/redrive"))
            .bearer_auth("admin-secret-1")
            .send()
    };
    let response = redrive(d.entry_id.clone()).await.unwrap();
    assert_eq!(response.status(), 200);
    wait_for("the re-driven POST", Duration::from_secs(10), || {
        receiver.seen().len() == 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = receiver.with_key(&receipt);
    assert_eq!(
        seen.len(),
        2,
        "delivered once more, under the same key: {seen:?}"
    );
    assert!(gw.entries("dead").await.is_empty(), "no longer dead");
    let response = redrive(d.entry_id.clone()).await.unwrap();
    assert_eq!(response.status(), 404, "a dead entry is re-driven once");
    assert_eq!(receiver.seen().len(), 2);
    let metrics = support::client()
        .get(format!("{admin}/metrics"))
        .bearer_auth("admin-secret-1")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "intake_delivery_delivered_total{",
        "intake_delivery_dead_total{",
        "intake_delivery_lag_seconds{",
    ] {
        assert!(
            metrics.lines().any(|l| l.starts_with(name)
                && l.contains("delivery=\"hook\"")
                && l.contains("target=\"webhook\"")),
            "{name} by delivery and target on /metrics:\n{metrics}"
        );
    }
    gw.stop().await;
}

#[tokio::test]
async fn webhook_retry_after_is_honoured() {
    let receiver = Receiver::start(Box::new(|_, before| match before {
        0 => Reply::RetryAfter(503, "2".into()),
        _ => Reply::Status(200),
    }))
    .await;
    let prefix = unique_prefix("webhook_retry_after");
    let secrets = secrets();
    let _workers = start_workers(
        &config_text(&redis_url(), &prefix, &receiver.url, &secrets, ""),
        &["w1"],
    );
    add_desk(&redis_url(), &prefix, "01LATER", envelope("01LATER")).await;
    wait_for("two attempts", Duration::from_secs(10), || {
        receiver.seen().len() == 2
    })
    .await;
    let seen = receiver.seen();
    let gap = seen[1].at - seen[0].at;
    assert!(
        gap >= Duration::from_secs(2),
        "waited Retry-After's 2 s, not the 100 ms backoff: {gap:?}"
    );
    assert!(gap < Duration::from_secs(4), "not much longer: {gap:?}");
}

#[tokio::test]
async fn webhook_three_workers_on_one_stream_deliver_each_entry_once() {
    let receiver = Receiver::start(Box::new(|_, _| Reply::Status(200))).await;
    let prefix = unique_prefix("webhook_replicas");
    let secrets = secrets();
    let _workers = start_workers(
        &config_text(&redis_url(), &prefix, &receiver.url, &secrets, ""),
        &["w1", "w2", "w3"],
    );
    let ids: Vec<String> = (0..90).map(|i| format!("01REPLICA{i:03}")).collect();
    for id in &ids {
        add_desk(&redis_url(), &prefix, id, envelope(id)).await;
    }
    wait_for("every item", Duration::from_secs(20), || {
        receiver.seen().len() >= ids.len()
    })
    .await;
    wait_acked(&redis_url(), &prefix, "desk").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut by_key: HashMap<String, usize> = HashMap::new();
    for seen in receiver.seen() {
        *by_key.entry(seen.key).or_default() += 1;
    }
    assert_eq!(by_key.len(), ids.len(), "every item arrived");
    assert!(by_key.values().all(|&n| n == 1), "each once: {by_key:?}");
    assert_eq!(receiver.seen().len(), ids.len(), "in total once each");
}

#[tokio::test]
async fn webhook_update_waits_for_its_item() {
    // The item fails twice; its update, written right after it, must
    // reach the receiver only after the item did.
    let receiver = Receiver::start(Box::new(|seen, before| {
        if seen.kind == "message" && before < 2 {
            Reply::Status(503)
        } else {
            Reply::Status(200)
        }
    }))
    .await;
    let prefix = unique_prefix("webhook_order");
    let secrets = secrets();
    add_desk(&redis_url(), &prefix, "01ITEM", envelope("01ITEM")).await;
    let mut conn = test_connection(&redis_url()).await;
    let update = serde_json::json!({"id": "01ITEM", "kind": "duplicates", "count": 3, "latest": "01LATEST", "rule": "dedupe-exact"});
    let update_entry: String = conn
        .xadd(
            format!("{prefix}:events"),
            "*",
            &[
                ("id", "01ITEM"),
                ("kind", "duplicates"),
                ("count", "3"),
                ("envelope", &update.to_string()),
            ],
        )
        .await
        .unwrap();
    let _workers = start_workers(
        &config_text(&redis_url(), &prefix, &receiver.url, &secrets, ""),
        &["w1"],
    );
    wait_acked(&redis_url(), &prefix, "desk").await;
    wait_acked(&redis_url(), &prefix, "events").await;
    let seen = receiver.seen();
    let delivered_item = seen
        .iter()
        .position(|s| s.kind == "message" && s.attempt == 3)
        .expect("the item's third attempt");
    let updates: Vec<usize> = seen
        .iter()
        .enumerate()
        .filter(|(_, s)| s.kind == "duplicates")
        .map(|(i, _)| i)
        .collect();
    assert_eq!(updates.len(), 1, "the update once: {seen:?}");
    assert!(
        updates[0] > delivered_item,
        "the update came after its item"
    );
    assert_eq!(seen[updates[0]].key, format!("events-{update_entry}"));
    assert_eq!(seen[updates[0]].json()["count"], 3);
}

#[tokio::test]
async fn webhook_receiver_that_never_answers_holds_an_attempt_no_longer_than_the_timeout() {
    // A slowloris receiver: it takes the request and never answers.
    let receiver = Receiver::start(Box::new(|_, before| match before {
        0 => Reply::Hang,
        _ => Reply::Status(200),
    }))
    .await;
    let prefix = unique_prefix("webhook_slowloris");
    let secrets = secrets();
    let _workers = start_workers(
        &config_text(&redis_url(), &prefix, &receiver.url, &secrets, ""),
        &["w1"],
    );
    add_desk(&redis_url(), &prefix, "01SLOW", envelope("01SLOW")).await;
    wait_for("a second attempt", Duration::from_secs(10), || {
        receiver.seen().len() == 2
    })
    .await;
    let seen = receiver.seen();
    let gap = seen[1].at - seen[0].at;
    assert!(
        gap >= Duration::from_millis(900),
        "the timeout (1 s) ran out first: {gap:?}"
    );
    assert!(
        gap < Duration::from_millis(2500),
        "the attempt was cut at the timeout: {gap:?}"
    );
    wait_acked(&redis_url(), &prefix, "desk").await;
}

#[tokio::test]
async fn webhook_worker_killed_between_post_and_ack_delivers_again_with_the_same_key() {
    let (arrived_tx, mut arrived) = tokio::sync::mpsc::unbounded_channel();
    let receiver = Receiver::start(Box::new(move |_, before| {
        let _ = arrived_tx.send(());
        match before {
            0 => Reply::Hang,
            _ => Reply::Status(200),
        }
    }))
    .await;
    let prefix = unique_prefix("webhook_sigkill");
    let secrets = secrets();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("intake.toml");
    let text = config_text(&redis_url(), &prefix, &receiver.url, &secrets, "");
    std::fs::write(&config, text).unwrap();
    let spawn = |consumer: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_intake"))
            .args(["deliver", "--config"])
            .arg(&config)
            .args(["--consumer", consumer])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut first = spawn("killed");
    add_desk(&redis_url(), &prefix, "01KILLED", envelope("01KILLED")).await;
    tokio::time::timeout(Duration::from_secs(15), arrived.recv())
        .await
        .expect("the first POST")
        .unwrap();
    // The POST arrived and is unanswered: no XACK can have happened.
    first.kill().unwrap();
    first.wait().unwrap();
    assert_eq!(
        pending(&redis_url(), &prefix, "desk").await,
        1,
        "the entry stays pending"
    );
    let mut second = spawn("survivor");
    wait_acked(&redis_url(), &prefix, "desk").await;
    second.kill().unwrap();
    second.wait().unwrap();
    let seen = receiver.with_key("01KILLED");
    assert_eq!(
        seen.len(),
        2,
        "delivered again after the kill, never lost: {seen:?}"
    );
    assert_eq!(
        seen[1].attempt, 1,
        "the killed attempt never got to count itself"
    );
}

#[tokio::test]
async fn webhook_redis_briefly_down_loses_nothing() {
    let mut redis = PrivateRedis::start_persistent();
    let receiver = Receiver::start(Box::new(|_, _| Reply::Status(200))).await;
    let prefix = unique_prefix("webhook_redis_down");
    let secrets = secrets();
    let _workers = start_workers(
        &config_text(&redis.url(), &prefix, &receiver.url, &secrets, ""),
        &["w1"],
    );
    for i in 0..10 {
        let id = format!("01BEFORE{i}");
        add_desk(&redis.url(), &prefix, &id, envelope(&id)).await;
    }
    wait_for("the first items", Duration::from_secs(10), || {
        receiver.seen().len() >= 10
    })
    .await;
    redis.stop();
    tokio::time::sleep(Duration::from_secs(2)).await;
    redis.restart();
    for i in 0..10 {
        let id = format!("01AFTER{i}");
        add_desk(&redis.url(), &prefix, &id, envelope(&id)).await;
    }
    wait_for("every item", Duration::from_secs(20), || {
        let keys: std::collections::HashSet<String> =
            receiver.seen().into_iter().map(|s| s.key).collect();
        keys.len() == 20
    })
    .await;
    wait_acked(&redis.url(), &prefix, "desk").await;
}
