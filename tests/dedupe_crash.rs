//! A gateway killed between its dedupe reservation and its write leaves
//! nothing to fold into: the next mail with the same text reaches the desk
//! instead of being folded into a receipt no stream holds, the killed
//! mail's retry is stored, and no `events` update names a receipt stored
//! nowhere. The kill lands exactly there: a proxy in front of Redis holds
//! the write once the reservation went through, and the real gateway
//! binary is SIGKILLed while it waits.

mod support;

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use support::audit::{assert_receipts_stored_once, Receipts};
use support::clamd::dev_clamd;
use support::imap::{eventually, GatewayProcess};
use support::redis_proxy::{RedisProxy, Rule};
use support::{client, default_toml, free_port, redis_url, unique_prefix, TOKEN};

fn mail(message_id: &str, from: &str, text: &str) -> String {
    format!(
        "From: {from}\r\nTo: support@shop.test\r\nSubject: My refund\r\nMessage-ID: <{message_id}>\r\n\r\n{text}\r\n"
    )
}

async fn send(url: &str, raw: &str) -> reqwest::Result<reqwest::Response> {
    client()
        .post(format!("{url}/v1/messages"))
        .bearer_auth(TOKEN)
        .header("content-type", "message/rfc822")
        .header("x-intake-envelope-sender", "ann@example.com")
        .body(raw.to_string())
        .send()
        .await
}

/// Sends until the gateway answers 202 (a mail server retrying); the receipt.
async fn deliver(url: &str, raw: &str) -> String {
    eventually(60, "the mail is acknowledged", || async {
        let response = send(url, raw).await.ok()?;
        if response.status() != 202 {
            return None;
        }
        let body: Value = response.json().await.ok()?;
        body["id"].as_str().map(str::to_string)
    })
    .await
}

fn config(dir: &Path, redis: &str, prefix: &str, port: u16, clamd: &str) -> std::path::PathBuf {
    let rules = dir.join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::write(
        rules.join("50-dedupe.toml"),
        "[dedupe]\nwindow = \"1h\"\nexact = true\nnear_duplicates = false\n",
    )
    .unwrap();
    let token = dir.join("token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let extra = format!(
        "[rules]\ndir = \"{}\"\n\n[scan]\nclamd = \"tcp://{clamd}\"\ntimeout = \"2s\"\nredrive_interval = \"1s\"\nredrive_max_backoff = \"1s\"\n",
        rules.display()
    );
    let text = default_toml(redis, prefix, &token, &extra).replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:{port}\""),
    );
    let path = dir.join(format!("intake-{}.toml", clamd.replace(':', "-")));
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gateway_killed_between_reservation_and_write_leaves_nothing_to_fold_into() {
    let dir = tempfile::tempdir().unwrap();
    let real = redis_url();
    let proxy = RedisProxy::start(real.trim_start_matches("redis://")).await;
    let prefix = unique_prefix("dedupe_crash");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    // clamd is down, as in the finding: mail is held, reserved first.
    let dead_clamd = format!("127.0.0.1:{}", free_port());
    let down = config(dir.path(), &proxy.url(), &prefix, port, &dead_clamd);
    let mut gateway = GatewayProcess::start(&down, &dir.path().join("first.log"));
    let receipts = Receipts::default();

    // A bystander's mail first: stored (held), and every script loaded.
    let bystander = mail(
        "by-1@example.net",
        "bea@example.net",
        "Bea asks about her invoice 771.",
    );
    receipts.add(deliver(&url, &bystander).await);

    // Hold the write of the next mail once its reservation went through.
    proxy.set(Rule::HoldAfter {
        arm: vec![b"EVAL".to_vec(), b":dd:{".to_vec(), b":h:".to_vec()],
        hold: vec![
            b"EVAL".to_vec(),
            format!("\r\n{prefix}:held\r\n").into_bytes(),
        ],
    });
    let text = "I paid twice for order 4711 and want one refund, please.";
    let first = mail("a-1@example.com", "ann@example.com", text);
    let stuck = tokio::spawn({
        let url = url.clone();
        let first = first.clone();
        async move { send(&url, &first).await.map(|r| r.status().as_u16()) }
    });
    assert!(
        proxy.wait_held(Duration::from_secs(30)).await,
        "the write after the reservation reached the proxy; log:\n{}",
        gateway.log_text()
    );
    gateway.kill();
    let killed = stuck.await.unwrap();
    assert!(
        killed.is_err(),
        "the killed gateway acknowledged nothing: {killed:?}"
    );

    // Back, with clamd up again.
    proxy.set(Rule::Pass);
    let up = config(dir.path(), &proxy.url(), &prefix, port, &dev_clamd());
    let mut gateway = GatewayProcess::start(&up, &dir.path().join("second.log"));
    // Another mail with the same text: nothing stored to fold it into.
    let later = mail("a-2@example.com", "ann@example.com", text);
    let later_receipt = deliver(&url, &later).await;
    receipts.add(later_receipt.as_str());
    // The killed mail's own retry.
    let retried = deliver(&url, &first).await;
    receipts.add(retried.as_str());

    // The bystander's held mail is re-driven to the desk.
    eventually(60, "the held mail re-driven", || async {
        let held = support::read_stream(&real, &format!("{prefix}:held")).await;
        held.is_empty().then_some(())
    })
    .await;
    let desk = support::read_stream(&real, &format!("{prefix}:desk")).await;
    assert!(
        desk.iter().any(|e| e.field("id") == later_receipt),
        "the later mail is a desk item, not folded into the killed one's receipt; desk: {:?}",
        desk.iter().map(|e| e.field("id")).collect::<Vec<_>>()
    );
    let stored = assert_receipts_stored_once(&real, &prefix, &receipts.all()).await;
    println!(
        "dedupe crash: desk {}, suppressed {}, events {}",
        stored.count("desk"),
        stored.count("suppressed"),
        stored.count("events")
    );
    assert_eq!(
        stored.count("desk") + stored.count("suppressed"),
        3,
        "the bystander, the later mail and the retry, each once"
    );
    gateway.terminate();
}
