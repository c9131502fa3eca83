//! `intake desk tail`, the reference desk consumer, against a real gateway
//! and the dev Redis: every item is handed on and acknowledged, a second
//! consumer in the group does not see it again, entries a dead consumer
//! left pending are reclaimed, and a consumer that crashed before its ack
//! gets its own entries back at restart.

mod support;

use std::collections::BTreeSet;
use std::process::{Command, Output};

use redis::AsyncCommands;
use serde_json::Value;
use support::{client, Gateway};

/// Posts `n` forms and returns their receipt ids.
async fn post_forms(gw: &Gateway, n: usize, tag: &str) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    for i in 0..n {
        let response = client()
            .post(gw.form_url("contact"))
            .form(&[
                ("email", format!("{tag}{i}@example.com").as_str()),
                (
                    "message",
                    format!("question {i} about order {tag}").as_str(),
                ),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
        let body: Value = response.json().await.unwrap();
        ids.insert(body["id"].as_str().unwrap().to_string());
    }
    ids
}

fn tail(gw: &Gateway, args: &[&str]) -> Output {
    let output = Command::new(env!("CARGO_BIN_EXE_intake"))
        .args(["desk", "tail", "--redis-url", &gw.redis_url, "--prefix"])
        .arg(&gw.prefix)
        .args(["--drain", "--block", "100ms"])
        .args(args)
        .output()
        .expect("run intake desk tail");
    assert!(
        output.status.success(),
        "desk tail failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// The receipt ids of the JSON lines a tail printed, checking each line.
fn printed_ids(output: &Output) -> BTreeSet<String> {
    let stdout = String::from_utf8(output.stdout.clone()).expect("UTF-8 output");
    stdout
        .lines()
        .map(|line| {
            let item: Value = serde_json::from_str(line).expect("each line is JSON");
            assert_eq!(item["kind"], "message");
            assert_eq!(item["envelope"]["channel"], "form");
            assert_eq!(item["envelope"]["id"], item["id"], "envelope matches entry");
            item["id"].as_str().unwrap().to_string()
        })
        .collect()
}

async fn pending(gw: &Gateway, group: &str) -> usize {
    let client = redis::Client::open(gw.redis_url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let reply: redis::streams::StreamPendingReply = conn
        .xpending(format!("{}:desk", gw.prefix), group)
        .await
        .unwrap();
    reply.count()
}

/// Reads `count` new entries as `consumer` and never acknowledges them:
/// a consumer that died after XREADGROUP.
async fn read_and_die(gw: &Gateway, group: &str, consumer: &str, count: usize) -> usize {
    let client = redis::Client::open(gw.redis_url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let key = format!("{}:desk", gw.prefix);
    let _: Result<(), redis::RedisError> = conn.xgroup_create_mkstream(&key, group, "0").await;
    let options = redis::streams::StreamReadOptions::default()
        .group(group, consumer)
        .count(count);
    let reply: redis::streams::StreamReadReply =
        conn.xread_options(&[&key], &[">"], &options).await.unwrap();
    reply.keys.iter().map(|k| k.ids.len()).sum()
}

#[tokio::test]
async fn tail_prints_every_item_once_and_acknowledges_it() {
    let gw = Gateway::start("desk_tail_prints").await;
    let posted = post_forms(&gw, 5, "ann").await;

    let first = tail(&gw, &["--consumer", "one"]);
    assert_eq!(printed_ids(&first), posted, "every receipt printed");
    assert_eq!(pending(&gw, "desk").await, 0, "everything acknowledged");

    // The group has moved on: another consumer gets only what is new.
    let more = post_forms(&gw, 2, "bob").await;
    let second = tail(&gw, &["--consumer", "two"]);
    assert_eq!(printed_ids(&second), more);
}

#[tokio::test]
async fn entries_left_by_a_dead_consumer_are_reclaimed() {
    let gw = Gateway::start("desk_tail_reclaim").await;
    let posted = post_forms(&gw, 4, "cat").await;
    assert_eq!(read_and_die(&gw, "desk", "dead", 10).await, 4);
    assert_eq!(pending(&gw, "desk").await, 4);

    // A live consumer, told to claim anything pending over 0 s.
    let output = tail(&gw, &["--consumer", "alive", "--claim-after", "0s"]);
    assert_eq!(printed_ids(&output), posted);
    assert_eq!(pending(&gw, "desk").await, 0);
}

#[tokio::test]
async fn entries_pending_briefly_are_left_to_their_consumer() {
    let gw = Gateway::start("desk_tail_patience").await;
    post_forms(&gw, 3, "dan").await;
    assert_eq!(read_and_die(&gw, "desk", "slow", 10).await, 3);

    // The owner may only be slow: an hour's patience claims nothing.
    let output = tail(&gw, &["--consumer", "other", "--claim-after", "1h"]);
    assert!(printed_ids(&output).is_empty());
    assert_eq!(pending(&gw, "desk").await, 3, "still the slow one's");
}

#[tokio::test]
async fn a_restarted_consumer_gets_its_own_unacknowledged_entries_back() {
    let gw = Gateway::start("desk_tail_restart").await;
    let posted = post_forms(&gw, 3, "eve").await;
    assert_eq!(read_and_die(&gw, "desk", "worker-1", 10).await, 3);

    let output = tail(&gw, &["--consumer", "worker-1", "--claim-after", "1h"]);
    assert_eq!(printed_ids(&output), posted);
    assert_eq!(pending(&gw, "desk").await, 0);
}

#[tokio::test]
async fn out_dir_gets_one_file_per_receipt() {
    let gw = Gateway::start("desk_tail_files").await;
    let posted = post_forms(&gw, 3, "fay").await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("items");
    let output = tail(&gw, &["--out", out.to_str().unwrap(), "--max", "2"]);
    assert!(output.stdout.is_empty(), "items go to files, not stdout");
    let files = |dir: &std::path::Path| -> BTreeSet<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect()
    };
    assert_eq!(files(&out).len(), 2, "--max 2 stops after two items");
    // The rest on the next run; every file is a whole item.
    tail(&gw, &["--out", out.to_str().unwrap()]);
    let expected: BTreeSet<String> = posted.iter().map(|id| format!("{id}.json")).collect();
    assert_eq!(files(&out), expected);
    for name in &expected {
        let item: Value =
            serde_json::from_str(&std::fs::read_to_string(out.join(name)).unwrap()).unwrap();
        assert_eq!(format!("{}.json", item["id"].as_str().unwrap()), *name);
        assert_eq!(item["envelope"]["source"]["form"], "contact");
    }
}

#[tokio::test]
async fn unreachable_redis_is_exit_69_with_a_clear_message() {
    let port = support::free_port();
    let output = Command::new(env!("CARGO_BIN_EXE_intake"))
        .args(["desk", "tail", "--drain", "--redis-url"])
        .arg(format!("redis://127.0.0.1:{port}"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(69));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("does not answer"), "{stderr}");
}

#[tokio::test]
async fn an_unknown_stream_is_a_usage_error() {
    let output = Command::new(env!("CARGO_BIN_EXE_intake"))
        .args(["desk", "tail", "--redis-url", "redis://127.0.0.1:1"])
        .args(["--stream", "everything"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&output.stderr).contains("must be one of"));
}

#[tokio::test]
async fn a_waiting_tail_gets_items_posted_while_it_blocks() {
    let gw = Gateway::start("desk_tail_blocking").await;
    // No --drain: the tail blocks (2 s per read, longer than the Redis
    // client's default response timeout) until two items have come.
    let child = Command::new(env!("CARGO_BIN_EXE_intake"))
        .args(["desk", "tail", "--redis-url", &gw.redis_url, "--prefix"])
        .arg(&gw.prefix)
        .args(["--block", "2s", "--max", "2", "--start", "new"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run intake desk tail");
    // Wait until the group exists, so `--start new` includes what follows.
    support::imap::eventually(10, "the tail's group", || async {
        let client = redis::Client::open(gw.redis_url.as_str()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let groups: redis::RedisResult<redis::streams::StreamInfoGroupsReply> =
            conn.xinfo_groups(format!("{}:desk", gw.prefix)).await;
        groups.ok().filter(|g| !g.groups.is_empty()).map(|_| ())
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let posted = post_forms(&gw, 2, "gus").await;
    let output = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(printed_ids(&output), posted);
}
