//! The gateway against a three-node Redis Cluster started by the test:
//! every script (XADD-once, GCRA buckets, dedupe reservations, IMAP leases
//! and checkpoints) keeps its keys in one slot, so forms, raw mail, shared
//! rate limits, duplicate collapse, backpressure and an IMAP mailbox all
//! work as on one Redis, with the keys spread over the nodes.

mod support;

use redis::AsyncCommands;
use serde_json::Value;
use std::collections::HashMap;
use support::cluster::PrivateCluster;
use support::imap::{self as imap_support, Boxes};
use support::{client, Gateway, TOKEN};

const RULES: &str = r#"
[[rule]]
name = "form-per-address"
match = { channel = "form" }
key = ["ip"]
rate = "1/h"
burst = 4
action = "reject"
scope = "cluster"

[dedupe]
window = "1h"
exact = true
near_duplicates = false
"#;

async fn start(
    test: &str,
    cluster: &PrivateCluster,
    rules: &std::path::Path,
    extra: &str,
) -> Gateway {
    let seed = cluster.urls()[0].clone();
    let more = cluster.urls()[1..]
        .iter()
        .map(|u| format!("\"{u}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let extra = format!("[rules]\ndir = \"{}\"\n{extra}", rules.display());
    Gateway::start_edited(test, &seed, &extra, |text| {
        text.replace(
            "timeout = \"1s\"",
            &format!("timeout = \"2s\"\ncluster = true\ncluster_nodes = [{more}]"),
        )
    })
    .await
}

/// Every entry of a stream on the cluster: (receipt, fields).
async fn entries(cluster: &PrivateCluster, key: &str) -> Vec<HashMap<String, String>> {
    let mut conn = cluster.connection().await;
    let reply: redis::streams::StreamRangeReply = conn.xrange_all(key).await.expect("XRANGE");
    reply
        .ids
        .into_iter()
        .map(|id| {
            id.map
                .into_iter()
                .map(|(k, v)| (k, redis::from_redis_value::<String>(v).unwrap()))
                .collect()
        })
        .collect()
}

fn rules_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rules.toml"), RULES).unwrap();
    dir
}

async fn post(gw: &Gateway, email: &str, message: &str) -> reqwest::Response {
    client()
        .post(gw.form_url("contact"))
        .form(&[("email", email), ("message", message)])
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn forms_mail_limits_and_dedupe_work_on_a_cluster() {
    let cluster = PrivateCluster::start();
    let rules = rules_dir();
    let gw = start("cluster_forms", &cluster, rules.path(), "").await;

    // Three different customers, then one of them again with the same text.
    let mut receipts = Vec::new();
    for (email, text) in [
        ("ann@example.com", "Where is order 1?"),
        ("bob@example.com", "Refund for order 2"),
        ("cat@example.com", "Order 3 arrived broken"),
    ] {
        let response = post(&gw, email, text).await;
        assert_eq!(response.status(), 202);
        let body: Value = response.json().await.unwrap();
        receipts.push(body["id"].as_str().unwrap().to_string());
    }
    // Written again, not resent: the same post from the same network within
    // the form's retry window would be taken for a browser's resend and get
    // the first receipt, so this one carries a name as a new post would.
    let again = client()
        .post(gw.form_url("contact"))
        .form(&[
            ("email", "ann@example.com"),
            ("message", "Where is order 1?"),
            ("name", "Ann"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 202, "a duplicate is accepted, then folded");

    // The shared bucket (burst 4) takes one more new item from this
    // address (the duplicate was folded before the rate rules), then
    // refuses.
    let fourth = post(&gw, "dan@example.com", "Anyone there?").await;
    assert_eq!(fourth.status(), 202);
    let refused = post(&gw, "fay@example.com", "Hello?").await;
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after"));

    // Raw mail too.
    let mail = b"From: eve@example.com\r\nTo: support@shop.test\r\nSubject: Invoice\r\nMessage-ID: <cluster-1@example.com>\r\n\r\nPlease send the invoice.\r\n";
    let response = client()
        .post(format!("{}/v1/messages", gw.url))
        .bearer_auth(TOKEN)
        .header("content-type", "message/rfc822")
        .body(mail.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);

    let desk = entries(&cluster, &format!("{}:desk", gw.prefix)).await;
    let desk_ids: Vec<&str> = desk.iter().map(|e| e["id"].as_str()).collect();
    assert_eq!(desk.len(), 5, "four forms and the mail: {desk_ids:?}");
    for receipt in &receipts {
        assert!(desk_ids.contains(&receipt.as_str()));
    }
    let suppressed = entries(&cluster, &format!("{}:suppressed", gw.prefix)).await;
    let kinds: Vec<&str> = suppressed.iter().map(|e| e["kind"].as_str()).collect();
    assert_eq!(
        kinds,
        ["collapsed", "rejected"],
        "the duplicate and the refused post"
    );
    assert_eq!(suppressed[0]["duplicate_of"], receipts[0]);
    let events = entries(&cluster, &format!("{}:events", gw.prefix)).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["id"], receipts[0]);

    // The same mail again is stored once (the idempotency key is in the
    // desk stream's slot).
    let response = client()
        .post(format!("{}/v1/messages", gw.url))
        .bearer_auth(TOKEN)
        .header("content-type", "message/rfc822")
        .body(mail.to_vec())
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
    assert_eq!(
        entries(&cluster, &format!("{}:desk", gw.prefix))
            .await
            .len(),
        5
    );

    // The keys really are spread over the cluster.
    let spread = cluster.keys_per_node();
    assert!(
        spread.iter().filter(|&&n| n > 0).count() >= 2,
        "keys on one node only: {spread:?}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn backpressure_reads_the_desk_node_of_a_cluster() {
    let cluster = PrivateCluster::start();
    let rules = tempfile::tempdir().unwrap();
    let gw = start(
        "cluster_backpressure",
        &cluster,
        rules.path(),
        "[backpressure]\ndesk_high_water = 2\ncheck_interval = \"100ms\"\n",
    )
    .await;
    for i in 0..3 {
        let response = post(&gw, &format!("c{i}@example.com"), &format!("question {i}")).await;
        assert_eq!(response.status(), 202);
    }
    // Past the mark: refused with 503 once the watcher has sampled the
    // desk's node; until then posts are still taken.
    let mut accepted = 3;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let refused = loop {
        let response = post(&gw, "late@example.com", &format!("late {accepted}")).await;
        match response.status().as_u16() {
            202 => accepted += 1,
            503 => break response,
            other => panic!("unexpected status {other}"),
        }
        assert!(
            std::time::Instant::now() < deadline,
            "backpressure never engaged"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(refused.headers().contains_key("retry-after"));
    assert_eq!(
        entries(&cluster, &format!("{}:desk", gw.prefix))
            .await
            .len(),
        accepted,
        "every 202 stored, nothing refused stored"
    );
    gw.stop().await;
}

#[tokio::test]
async fn an_imap_mailbox_is_drained_through_a_cluster() {
    let cluster = PrivateCluster::start();
    let rules = tempfile::tempdir().unwrap();
    let boxes = Boxes::new("cluster_imap");
    let mut session = imap_support::dev_login().await;
    for mailbox in [&boxes.inbox, &boxes.done, &boxes.quarantine] {
        imap_support::create(&mut session, mailbox).await;
    }
    let mails: Vec<Vec<u8>> = (0..5)
        .map(|n| imap_support::small_mail(n, "cluster"))
        .collect();
    imap_support::append_all(&mut session, &boxes.inbox, &mails, None).await;

    let secrets = tempfile::tempdir().unwrap();
    let password = imap_support::secret_file(
        secrets.path(),
        "imap-password",
        &imap_support::dev_password(),
    );
    let imap = imap_support::imap_toml(imap_support::dev_port(), &boxes, &password, "");
    let gw = start("cluster_imap", &cluster, rules.path(), &imap).await;

    let desk_key = format!("{}:desk", gw.prefix);
    imap_support::eventually(30, "5 mails on the desk", || async {
        (entries(&cluster, &desk_key).await.len() == 5).then_some(())
    })
    .await;
    imap_support::eventually(30, "inbox emptied", || async {
        let mut s = imap_support::dev_login().await;
        (imap_support::count(&mut s, &boxes.inbox).await == 0).then_some(())
    })
    .await;
    let prefix = gw.prefix.clone();
    gw.stop().await;
    // The mailbox's checkpoint was written to the cluster.
    let checkpoints = cluster.keys_matching(&format!("{prefix}:imap:*:checkpoint"));
    assert_eq!(checkpoints.len(), 1, "{checkpoints:?}");
    imap_support::cleanup(&boxes).await;
}
