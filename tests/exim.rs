//! Exim 4.96 delivering into the gateway with the shipped examples of
//! deploy/exim/: a private Exim (tests/support/exim.rs) pipes mail to the
//! real `intake mailgate` binary, or delivers it over LMTP into the
//! daemon's `[lmtp]` listener. 100 mails, one of them to 20 addresses, are
//! 100 desk items, each stored once; while the gateway is down Exim keeps
//! the mail queued, and once it is back a queue run delivers it once.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::Value;
use support::exim::{Delivery, PrivateExim, DOMAIN};
use support::{free_port, redis_url, Gateway, TOKEN};

/// How long a test waits for the desk: a safety net, not a speed assertion.
const PATIENCE: Duration = Duration::from_secs(60);

fn mail(id: &str) -> Vec<u8> {
    format!(
        "From: Ann Customer <ann@example.com>\nTo: support@{DOMAIN}\n\
         Subject: {id}\nMessage-ID: <{id}@example.com>\n\n\
         My order has not arrived.\n.\nA line with only a dot above.\n"
    )
    .into_bytes()
}

/// The 20 addresses of the mail that goes to the whole shop.
fn twenty() -> Vec<String> {
    (0..20).map(|n| format!("desk{n}@{DOMAIN}")).collect()
}

/// Queues 99 mails to one address each and one to twenty, then runs the
/// queue.
fn send_hundred(exim: &PrivateExim, tag: &str) {
    for n in 0..99 {
        exim.sendmail(
            "ann@example.com",
            &[&format!("support@{DOMAIN}")],
            &mail(&format!("{tag}-{n}")),
        );
    }
    let all = twenty();
    let rcpts: Vec<&str> = all.iter().map(String::as_str).collect();
    exim.sendmail("ann@example.com", &rcpts, &mail(&format!("{tag}-twenty")));
    exim.run_queue();
}

/// Waits until the desk holds `n` entries; returns them as envelopes.
async fn wait_desk(gw: &Gateway, n: usize, exim: &PrivateExim) -> Vec<Value> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let desk = gw.entries("desk").await;
        if desk.len() >= n {
            return desk.iter().map(|e| e.envelope()).collect();
        }
        assert!(
            Instant::now() < deadline,
            "{} of {n} mails reached the desk.\nlog:\n{}",
            desk.len(),
            exim.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Checks the desk after [`send_hundred`]: every mail once (by Message-ID),
/// none per recipient, and the twenty addresses all on the desk.
async fn assert_hundred_stored_once(gw: &Gateway, exim: &PrivateExim, tag: &str, source: &str) {
    wait_desk(gw, 100, exim).await;
    // Anything late would show up now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let desk: Vec<Value> = gw
        .entries("desk")
        .await
        .iter()
        .map(|e| e.envelope())
        .collect();
    let mut by_id: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for env in &desk {
        assert_eq!(env["source"]["type"], source, "{env}");
        assert_eq!(
            env["source"]["sender"], "ann@example.com",
            "envelope sender: {env}"
        );
        let id = env["message_id"]
            .as_str()
            .expect("a Message-ID")
            .to_string();
        by_id.entry(id).or_default().push(env);
    }
    assert_eq!(by_id.len(), 100, "every mail on the desk, none lost");
    // Exim delivers each mail in one transaction here; a split one would
    // fold into its first item (tests/split_delivery.rs), so 100 holds.
    assert_eq!(desk.len(), 100, "no mail stored twice:\n{}", exim.log());
    let twenty_items = &by_id[&format!("{tag}-twenty@example.com")];
    let mut seen = BTreeSet::new();
    for env in twenty_items {
        for rcpt in env["source"]["recipients"].as_array().unwrap() {
            seen.insert(rcpt.as_str().unwrap().to_string());
        }
    }
    assert_eq!(
        seen,
        twenty().into_iter().collect::<BTreeSet<_>>(),
        "the twenty-address mail's items carry all twenty"
    );
    assert_eq!(exim.queued(), 0, "Exim's queue is empty:\n{}", exim.log());
}

#[tokio::test]
async fn exim_pipes_a_hundred_mails_to_mailgate_each_stored_once() {
    let gw = Gateway::start("exim_pipe").await;
    let exim = PrivateExim::start(Delivery::Pipe {
        url: &gw.url,
        token: TOKEN,
    });
    let exim = tokio::task::spawn_blocking(move || {
        send_hundred(&exim, "exim-pipe");
        exim
    })
    .await
    .unwrap();
    assert_hundred_stored_once(&gw, &exim, "exim-pipe", "mailgate").await;
    let desk = gw.entries("desk").await;
    let env = desk[0].envelope();
    support::envelope::assert_matches_schema("exim pipe", &env);
    let raw = base64::engine::general_purpose::STANDARD
        .decode(env["raw"].as_str().unwrap())
        .unwrap();
    assert!(
        raw.starts_with(b"Received: "),
        "the mail as Exim has it, no mbox From line first: {:?}",
        String::from_utf8_lossy(&raw)
    );
    assert!(
        env["text"]
            .as_str()
            .unwrap()
            .replace("\r\n", "\n")
            .contains("\n.\n"),
        "a lone dot in the body survives: {}",
        env["text"]
    );
    gw.stop().await;
}

#[tokio::test]
async fn exim_delivers_a_hundred_mails_over_lmtp_each_stored_once() {
    let port = free_port();
    let gw = Gateway::start_with(
        "exim_lmtp",
        &redis_url(),
        &format!("[lmtp]\nlisten = \"127.0.0.1:{port}\"\ndomains = [\"{DOMAIN}\"]\n"),
    )
    .await;
    let exim = PrivateExim::start(Delivery::Lmtp { port });
    let exim = tokio::task::spawn_blocking(move || {
        send_hundred(&exim, "exim-lmtp");
        exim
    })
    .await
    .unwrap();
    assert_hundred_stored_once(&gw, &exim, "exim-lmtp", "lmtp").await;
    gw.stop().await;
}

/// Gateway down: Exim defers (keeps the mail); back up, a queue run
/// delivers each mail once, and another run delivers nothing more.
async fn deferred_then_delivered_once(test: &str, lmtp: bool) {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let exim = if lmtp {
        PrivateExim::start(Delivery::Lmtp { port })
    } else {
        PrivateExim::start(Delivery::Pipe {
            url: &url,
            token: TOKEN,
        })
    };
    let all = twenty();
    let rcpts: Vec<&str> = all.iter().map(String::as_str).collect();
    exim.sendmail("ann@example.com", &rcpts, &mail(&format!("{test}-twenty")));
    exim.sendmail(
        "ann@example.com",
        &[&format!("support@{DOMAIN}")],
        &mail(&format!("{test}-one")),
    );
    exim.run_queue();
    let log = exim.log();
    assert_eq!(
        exim.queued(),
        2,
        "both kept while the gateway is down:\n{log}"
    );
    assert!(log.contains("== "), "Exim logged deferrals:\n{log}");
    assert!(!log.contains(" ** "), "nothing bounced:\n{log}");

    let gw = if lmtp {
        let lmtp_port = port;
        Gateway::start_with(
            test,
            &redis_url(),
            &format!("[lmtp]\nlisten = \"127.0.0.1:{lmtp_port}\"\ndomains = [\"{DOMAIN}\"]\n"),
        )
        .await
    } else {
        Gateway::start_custom_at(
            test,
            &redis_url(),
            &format!("127.0.0.1:{port}"),
            |prefix, token| support::default_toml(&redis_url(), prefix, token, ""),
        )
        .await
    };
    if lmtp {
        // The listener comes up with the gateway task.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let exim = tokio::task::spawn_blocking(move || {
        exim.run_queue();
        exim.run_queue();
        exim
    })
    .await
    .unwrap();
    let desk = wait_desk(&gw, 2, &exim).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        gw.entries("desk").await.len(),
        2,
        "each mail once:\n{}",
        exim.log()
    );
    let twenty_item = desk
        .iter()
        .find(|e| e["subject"] == format!("{test}-twenty"))
        .expect("the twenty-address mail");
    assert_eq!(
        twenty_item["source"]["recipients"]
            .as_array()
            .unwrap()
            .len(),
        20,
        "{twenty_item}"
    );
    assert_eq!(exim.queued(), 0, "queue drained:\n{}", exim.log());
    gw.stop().await;
}

#[tokio::test]
async fn exim_pipe_with_the_gateway_down_defers_then_delivers_once() {
    deferred_then_delivered_once("exim_pipe_deferred", false).await;
}

#[tokio::test]
async fn exim_lmtp_with_the_gateway_down_defers_then_delivers_once() {
    deferred_then_delivered_once("exim_lmtp_deferred", true).await;
}
