//! The flood, scaled down (the full 10,000 + 5,000 + 200 run is
//! `deploy/bench/flood`): one customer sends 500 mails and 200 form posts
//! in a burst while 50 others send one mail each, through the shipped
//! rules. Every legitimate mail reaches the desk, the flooder costs the
//! desk at most its bursts plus one item per distinct message, and nothing
//! is lost: every request is answered and stored in some stream.

mod support;

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use reqwest::header;
use support::{client, Gateway, TOKEN};

const FLOOD_MAILS: usize = 500;
const FLOOD_FORMS: usize = 200;
const LEGIT: usize = 50;
/// The flooder repeats this many different texts.
const DISTINCT: usize = 5;

enum Item {
    Mail(String),
    /// Email, message, and a field that makes each post its own request
    /// (an identical post is a resend, answered with the first receipt).
    Form(String, String, usize),
}

#[tokio::test]
async fn one_flooder_never_buries_the_desk_or_loses_anything() {
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    let gw = Arc::new(
        Gateway::start_with(
            "flood",
            &support::redis_url(),
            &format!("[rules]\ndir = \"{}\"\n", rules.display()),
        )
        .await,
    );
    let mut items = Vec::new();
    for i in 0..FLOOD_MAILS.max(FLOOD_FORMS) {
        let text = format!(
            "WHERE IS MY REFUND for order {}? I will write until someone answers!",
            55_000 + i % DISTINCT
        );
        if i < FLOOD_MAILS {
            // Plus tags and case change nothing.
            let from = format!("Flooder+{}@Example.org", i % 37);
            items.push(Item::Mail(format!(
                "From: {from}\r\nTo: support@shop.test\r\nSubject: Refund!!!\r\nMessage-ID: <flood-{i}@example.org>\r\n\r\n{text}\r\n"
            )));
        }
        if i < FLOOD_FORMS {
            items.push(Item::Form("flooder@example.org".into(), text, i));
        }
        // The legitimate customers write in the middle of the flood.
        if i % (FLOOD_MAILS / LEGIT) == 0 && i / (FLOOD_MAILS / LEGIT) < LEGIT {
            let n = i / (FLOOD_MAILS / LEGIT);
            items.push(Item::Mail(format!(
                "From: customer{n}@example.net\r\nTo: support@shop.test\r\nSubject: Question {n}\r\nMessage-ID: <legit-{n}@example.net>\r\n\r\nHello, a question about my order {}.\r\n",
                10_000 + n
            )));
        }
    }
    let total = items.len();
    let limit = Arc::new(tokio::sync::Semaphore::new(16));
    let mut tasks = tokio::task::JoinSet::new();
    for item in items {
        let gw = gw.clone();
        let permit = limit.clone().acquire_owned().await.unwrap();
        tasks.spawn(async move {
            let _permit = permit;
            let request = match item {
                Item::Mail(raw) => client()
                    .post(format!("{}/v1/messages", gw.url))
                    .bearer_auth(TOKEN)
                    .header(header::CONTENT_TYPE, "message/rfc822")
                    .body(raw),
                Item::Form(email, message, n) => client()
                    .post(gw.form_url("contact"))
                    .header(header::ORIGIN, "https://shop.test")
                    .form(&[("email", email), ("message", message), ("n", n.to_string())]),
            };
            let response = request.send().await.expect("answered");
            let status = response.status().as_u16();
            let body: serde_json::Value = response.json().await.unwrap_or_default();
            (status, body["id"].as_str().map(str::to_string))
        });
    }
    let mut statuses = Vec::new();
    let mut receipts = Vec::new();
    while let Some(answer) = tasks.join_next().await {
        let (status, receipt) = answer.unwrap();
        statuses.push(status);
        if status == 202 {
            receipts.push(receipt.expect("a 202 carries its receipt"));
        }
    }
    assert!(
        statuses.iter().all(|s| *s == 202 || *s == 429),
        "every request is stored (202) or refused after storing (429): {:?}",
        statuses
            .iter()
            .filter(|s| **s != 202 && **s != 429)
            .collect::<Vec<_>>()
    );

    let desk = gw.entries("desk").await;
    let from = |e: &support::Entry| {
        let env = e.envelope();
        env["customer"]["email"]
            .as_str()
            .unwrap_or_default()
            .to_lowercase()
    };
    let legit: HashSet<String> = desk
        .iter()
        .map(from)
        .filter(|f| f.starts_with("customer"))
        .collect();
    assert_eq!(
        legit.len(),
        LEGIT,
        "every legitimate customer reaches the desk"
    );
    let flooder_on_desk = desk
        .iter()
        .filter(|e| from(e).starts_with("flooder"))
        .count();
    // Bursts of the shipped rules: 5 mails, 5 form posts.
    let bound = 5 + 5 + DISTINCT;
    assert!(
        flooder_on_desk <= bound,
        "the flooder costs the desk at most its bursts plus one item per distinct message: {flooder_on_desk} > {bound}"
    );
    let suppressed = gw.entries("suppressed").await;
    let quarantine = gw.entries("quarantine").await;
    assert_eq!(
        desk.len() + suppressed.len() + quarantine.len(),
        total,
        "nothing lost: every item is in some stream"
    );
    let events = gw.entries("events").await;
    assert!(!events.is_empty(), "the desk hears how many more came");
    // For every desk item, the latest count in events is the number of
    // items folded into it.
    let mut folded: std::collections::HashMap<String, usize> = Default::default();
    for e in suppressed.iter().filter(|e| e.field("kind") == "collapsed") {
        *folded
            .entry(e.field("duplicate_of").to_string())
            .or_default() += 1;
    }
    let mut latest: std::collections::HashMap<String, usize> = Default::default();
    for e in &events {
        let count: usize = e.field("count").parse().unwrap();
        let slot = latest.entry(e.field("id").to_string()).or_default();
        *slot = (*slot).max(count);
    }
    assert_eq!(
        latest, folded,
        "events carry the right count for every desk item"
    );
    support::audit::assert_receipts_stored_once(&gw.redis_url, &gw.prefix, &receipts).await;
}
