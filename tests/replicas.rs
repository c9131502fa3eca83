//! Three gateway processes (`intake serve`) against one Redis: one IMAP
//! mailbox with a backlog, form posts and raw mail spread over all three,
//! and a rate limit shared through Redis. The replica holding the IMAP
//! lease is SIGKILLed under load; clients retry on another replica, a
//! survivor takes the mailbox over, and afterwards every receipt is in the
//! streams once, every mail is on the desk once, and the shared limit held.

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header;
use serde_json::Value;
use support::imap::{
    append_all, cleanup, count, create, dev_login, dev_password, dev_port, eventually, imap_toml,
    secret_file, small_mail, Boxes, GatewayProcess,
};
use support::{client, free_port, read_stream, redis_url, unique_prefix, Entry, TOKEN};

/// Mails waiting in the mailbox before the replicas start.
const MAILS: usize = 400;
/// HTTP items (form posts and raw mail), every fifth one to the limited
/// form and every fifth one raw mail.
const ITEMS: usize = 300;
/// Clients posting at once.
const CLIENTS: usize = 9;
/// The shared limit on the `promo` form: this many at once ...
const BURST: u64 = 20;
/// ... then one per this many seconds (`rate = "1/10s"`).
const REFILL_SECS: u64 = 10;

const RULES: &str = r#"
[[rule]]
name = "promo-shared"
description = "The promo form, across all replicas: 20 at once, then one per 10 s."
match = { forms = ["promo"] }
key = ["form"]
rate = "1/10s"
burst = 20
action = "reject"
scope = "cluster"
"#;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Contact,
    Promo,
    Raw,
}

fn kind(n: usize) -> Kind {
    match n % 5 {
        0 => Kind::Promo,
        1 => Kind::Raw,
        _ => Kind::Contact,
    }
}

/// What the client saw for one item.
#[derive(Debug, Default, Clone)]
struct Outcome {
    /// The receipt of the 202 that ended the item, if any.
    receipt: Option<String>,
    rejected: bool,
    /// Attempts that failed without an answer (replica gone) or with 503:
    /// the item may or may not have been stored by them.
    failed_attempts: usize,
}

/// One replica's config file: its own HTTP port, everything else shared.
fn replica_config(
    dir: &Path,
    name: &str,
    port: u16,
    prefix: &str,
    rules: &Path,
    token: &Path,
    imap: &str,
) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    let text = format!(
        r#"
[http]
listen = "127.0.0.1:{port}"

[redis]
url = "{redis}"
prefix = "{prefix}"
timeout = "2s"

[messages]
token = {{ file = "{token}" }}

[rules]
dir = "{rules}"

[[form]]
id = "contact"
required = ["email"]

[[form]]
id = "promo"
required = ["email"]
{imap}
"#,
        redis = redis_url(),
        token = token.display(),
        rules = rules.display(),
    );
    std::fs::write(&path, text).expect("write config");
    path
}

fn raw_mail(n: usize) -> Vec<u8> {
    format!(
        "From: Raw {n} <r{n}@example.org>\r\n\
         To: support@shop.test\r\n\
         Subject: raw mail {n}\r\n\
         Message-ID: <raw-{n}@example.org>\r\n\
         \r\n\
         Raw mail number {n}.\r\n"
    )
    .into_bytes()
}

/// Sends item `n`, starting at replica `n % 3` and moving on to the next
/// replica whenever one does not answer or answers 503.
async fn send(http: &reqwest::Client, ports: &[u16], n: usize, retries: &AtomicUsize) -> Outcome {
    let mut outcome = Outcome::default();
    for attempt in 0..12 {
        let port = ports[(n + attempt) % ports.len()];
        let base = format!("http://127.0.0.1:{port}");
        let request = match kind(n) {
            Kind::Raw => http
                .post(format!("{base}/v1/messages"))
                .bearer_auth(TOKEN)
                .header(header::CONTENT_TYPE, "message/rfc822")
                .body(raw_mail(n)),
            form => http
                .post(format!(
                    "{base}/v1/forms/{}",
                    if form == Kind::Promo {
                        "promo"
                    } else {
                        "contact"
                    }
                ))
                // The same key on every attempt: a retry after a lost
                // answer gets the first receipt instead of a second item.
                .header("Idempotency-Key", format!("replicas-item-{n}"))
                .json(&serde_json::json!({
                    "email": format!("f{n}@example.net"),
                    "message": format!("Form post number {n}"),
                    "ref": format!("item-{n}"),
                })),
        };
        match request.send().await {
            Ok(response) if response.status() == 202 => {
                let body: Value = response.json().await.expect("a 202 carries JSON");
                let id = body["id"].as_str().expect("a 202 carries a receipt id");
                outcome.receipt = Some(id.to_string());
                return outcome;
            }
            Ok(response) if response.status() == 429 => {
                assert!(
                    response.headers().contains_key(header::RETRY_AFTER),
                    "a 429 says when to retry"
                );
                outcome.rejected = true;
                return outcome;
            }
            Ok(response) if response.status() == 503 => {}
            Ok(response) => {
                let status = response.status();
                let body = response.text().await.unwrap_or_default();
                panic!("item {n}: unexpected {status} from port {port}: {body}");
            }
            // Connection refused or reset: that replica is gone.
            Err(_) => {}
        }
        outcome.failed_attempts += 1;
        retries.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("item {n}: no replica took it in 12 attempts");
}

/// The marker that names an HTTP item in its envelope.
fn item_of(envelope: &Value) -> Option<usize> {
    if let Some(r) = envelope["fields"]["ref"].as_str() {
        return r.strip_prefix("item-")?.parse().ok();
    }
    let id = envelope["message_id"].as_str()?;
    let id = id.trim_matches(|c| c == '<' || c == '>');
    id.strip_prefix("raw-")?
        .strip_suffix("@example.org")?
        .parse()
        .ok()
}

fn mail_of(envelope: &Value) -> Option<usize> {
    let id = envelope["message_id"].as_str()?;
    let id = id.trim_matches(|c| c == '<' || c == '>');
    id.strip_prefix("replicas-")?
        .strip_suffix("@example.com")?
        .parse()
        .ok()
}

/// The replica (other than `dead`) that holds the mailbox lease: the
/// lease key's value is the owner id its log names when it takes it.
async fn lease_holder(replicas: &[GatewayProcess], lease: &str, dead: Option<usize>) -> usize {
    let redis = redis::Client::open(redis_url()).expect("redis url");
    eventually(60, "a live replica holds the IMAP lease", || {
        let redis = redis.clone();
        let logs: Vec<String> = replicas.iter().map(|r| r.log_text()).collect();
        async move {
            let mut conn = redis.get_multiplexed_async_connection().await.ok()?;
            let owner: Option<String> = redis::cmd("GET")
                .arg(lease)
                .query_async(&mut conn)
                .await
                .ok()?;
            let owner = owner?;
            (0..logs.len()).find(|i| Some(*i) != dead && logs[*i].contains(&owner))
        }
    })
    .await
}

async fn all_streams(prefix: &str) -> Vec<(String, Entry)> {
    let mut all = Vec::new();
    for stream in ["desk", "quarantine", "suppressed", "held"] {
        for entry in read_stream(&redis_url(), &format!("{prefix}:{stream}")).await {
            all.push((stream.to_string(), entry));
        }
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_share_a_mailbox_forms_and_a_limit_and_survive_a_kill() {
    let boxes = Boxes::new("replicas3");
    let mut imap = dev_login().await;
    create(&mut imap, &boxes.inbox).await;
    let mails: Vec<Vec<u8>> = (1..=MAILS).map(|n| small_mail(n, "replicas")).collect();
    append_all(&mut imap, &boxes.inbox, &mails, None).await;

    let dir = tempfile::tempdir().unwrap();
    let pw = secret_file(dir.path(), "pw", &dev_password());
    let token = secret_file(dir.path(), "token", TOKEN);
    let rules = dir.path().join("rules");
    std::fs::create_dir(&rules).unwrap();
    std::fs::write(rules.join("10-promo.toml"), RULES).unwrap();
    let prefix = unique_prefix("replicas");
    // Small batches and one mail at a time keep the backlog in flight
    // long enough for the kill to land mid-way.
    let table = imap_toml(dev_port(), &boxes, &pw, "batch_size = 10\nconcurrency = 1");

    let names = ["a", "b", "c"];
    let ports: Vec<u16> = names.iter().map(|_| free_port()).collect();
    let mut replicas: Vec<GatewayProcess> = names
        .iter()
        .zip(&ports)
        .map(|(name, port)| {
            let config = replica_config(dir.path(), name, *port, &prefix, &rules, &token, &table);
            GatewayProcess::start(&config, &dir.path().join(format!("{name}.log")))
        })
        .collect();
    let http = client();
    for port in &ports {
        eventually(30, &format!("replica on port {port} ready"), || {
            let http = http.clone();
            async move {
                let r = http
                    .get(format!("http://127.0.0.1:{port}/readyz"))
                    .send()
                    .await
                    .ok()?;
                r.status().is_success().then_some(())
            }
        })
        .await;
    }

    // Clients: the first half of the items at once, then wait for the
    // go (IMAP under way), then the second half, during which the kill
    // lands.
    let go = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let retries = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let (http, ports, go, done, retries) = (
            http.clone(),
            ports.clone(),
            go.clone(),
            done.clone(),
            retries.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            let mine: Vec<usize> = (0..ITEMS).filter(|n| n % CLIENTS == c).collect();
            for (i, n) in mine.iter().enumerate() {
                if i == mine.len() / 2 {
                    while !go.load(Ordering::SeqCst) {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                outcomes.push((*n, send(&http, &ports, *n, &retries).await));
                done.fetch_add(1, Ordering::SeqCst);
            }
            outcomes
        }));
    }

    eventually(60, "IMAP backlog under way", || async {
        let mut s = dev_login().await;
        (count(&mut s, &boxes.done).await >= 40).then_some(())
    })
    .await;
    let lease = format!("{prefix}:imap:{{test/{}}}:lease", boxes.inbox);
    let holder = lease_holder(&replicas, &lease, None).await;
    go.store(true, Ordering::SeqCst);
    eventually(60, "second half of the posts under way", || {
        let done = done.clone();
        async move { (done.load(Ordering::SeqCst) >= ITEMS / 2 + 15).then_some(()) }
    })
    .await;
    replicas[holder].kill();
    let in_mailbox_at_kill = count(&mut imap, &boxes.inbox).await;
    assert!(
        in_mailbox_at_kill > 0,
        "the kill must come mid-backlog (mailbox already empty)"
    );

    let mut outcomes: HashMap<usize, Outcome> = HashMap::new();
    for task in tasks {
        for (n, outcome) in task.await.expect("client task") {
            outcomes.insert(n, outcome);
        }
    }
    let elapsed = started.elapsed();
    assert_eq!(outcomes.len(), ITEMS);
    assert!(
        retries.load(Ordering::SeqCst) > 0,
        "posts addressed to the killed replica were retried elsewhere"
    );

    // A survivor takes the mailbox over and empties it.
    let survivors: Vec<usize> = (0..3).filter(|i| *i != holder).collect();
    // Once the dead replica's lease expires, a survivor takes it.
    let successor = lease_holder(&replicas, &lease, Some(holder)).await;
    let log = replicas[successor].log_text();
    assert!(log.contains("lease taken"), "{}", names[successor]);
    eventually(120, "the mailbox emptied", || async {
        let mut s = dev_login().await;
        let left = count(&mut s, &boxes.inbox).await;
        let moved = count(&mut s, &boxes.done).await;
        (left == 0 && moved as usize == MAILS).then_some(())
    })
    .await;

    let streams = all_streams(&prefix).await;

    // IMAP: every mail on the desk exactly once, by Message-ID.
    let mut mails_seen: HashMap<usize, usize> = HashMap::new();
    for (stream, entry) in &streams {
        if let Some(m) = mail_of(&entry.envelope()) {
            assert_eq!(
                stream,
                "desk",
                "mail {m} went to {stream}: {:?}\nall of it: {:?}",
                entry.fields,
                streams
                    .iter()
                    .filter(|(_, e)| mail_of(&e.envelope()) == Some(m))
                    .map(|(s, e)| (s, e.field("id"), e.fields.get("reason")))
                    .collect::<Vec<_>>()
            );
            *mails_seen.entry(m).or_default() += 1;
        }
    }
    let twice: Vec<_> = mails_seen.iter().filter(|(_, c)| **c > 1).collect();
    assert!(twice.is_empty(), "mails stored twice: {twice:?}");
    let missing: Vec<usize> = (1..=MAILS)
        .filter(|m| !mails_seen.contains_key(m))
        .collect();
    assert!(missing.is_empty(), "mails never stored: {missing:?}");

    // HTTP: every 202 receipt in the streams exactly once, as its item.
    let mut by_receipt: HashMap<String, Vec<usize>> = HashMap::new();
    let mut by_item: HashMap<usize, Vec<String>> = HashMap::new();
    let mut promo_on_desk = 0u64;
    for (stream, entry) in &streams {
        if let Some(n) = item_of(&entry.envelope()) {
            let id = entry.field("id").to_string();
            by_receipt.entry(id.clone()).or_default().push(n);
            by_item.entry(n).or_default().push(format!("{stream}:{id}"));
            if kind(n) == Kind::Promo && stream == "desk" {
                promo_on_desk += 1;
            }
        }
    }
    let mut accepted_promo = 0u64;
    let mut rejected_promo = 0u64;
    let mut retried_items = 0;
    for (n, outcome) in &outcomes {
        let stored = by_item.get(n).cloned().unwrap_or_default();
        if let Some(receipt) = &outcome.receipt {
            assert_eq!(
                by_receipt.get(receipt).map(Vec::as_slice),
                Some(&[*n][..]),
                "item {n}: receipt {receipt} is in the streams once, as this item"
            );
            if kind(*n) == Kind::Promo {
                accepted_promo += 1;
            }
        } else {
            assert!(outcome.rejected);
            assert_eq!(kind(*n), Kind::Promo, "only the limited form says 429");
            rejected_promo += 1;
        }
        // Every item is stored exactly once: on the desk under its
        // receipt, or (429) in `suppressed` for an audit, even when an
        // earlier attempt died with its replica after the write (forms
        // carry an Idempotency-Key, raw mail is keyed by its bytes). A
        // post refused and then accepted on a retry (the limit refilled
        // meanwhile) keeps its one audit entry beside the desk item.
        let (on_desk, audited): (Vec<_>, Vec<_>) =
            stored.iter().partition(|s| s.starts_with("desk:"));
        let expected_desk: Vec<String> = outcome
            .receipt
            .iter()
            .map(|receipt| format!("desk:{receipt}"))
            .collect();
        assert!(
            on_desk.iter().copied().eq(expected_desk.iter())
                && audited.iter().all(|s| s.starts_with("suppressed:"))
                && audited.len() <= 1
                && (outcome.receipt.is_some() || audited.len() == 1),
            "item {n} is stored once (after {} failed attempts): {stored:?}, receipt {:?}",
            outcome.failed_attempts,
            outcome.receipt
        );
        if outcome.failed_attempts > 0 {
            retried_items += 1;
        }
    }
    let unknown: Vec<_> = by_receipt
        .iter()
        .filter(|(_, items)| items.len() > 1)
        .collect();
    assert!(
        unknown.is_empty(),
        "one receipt on two entries: {unknown:?}"
    );

    // The shared limit: the burst, plus what the rate refilled while the
    // test ran, across all three replicas together.
    let bound = BURST + elapsed.as_secs() / REFILL_SECS + 1;
    assert!(
        accepted_promo <= bound && promo_on_desk <= bound,
        "{accepted_promo} promo posts answered 202, {promo_on_desk} on the desk; \
         the shared limit allows {bound} in {elapsed:?}"
    );
    assert!(rejected_promo > 0, "the limit refused the excess");

    eprintln!(
        "replicas: killed replica {} with {in_mailbox_at_kill} mails left; {} retries; \
         promo {accepted_promo} accepted / {rejected_promo} refused (bound {bound}); \
         {retried_items} items retried, each stored once; {elapsed:?}",
        names[holder],
        retries.load(Ordering::SeqCst)
    );
    for i in survivors {
        replicas[i].terminate();
    }
    cleanup(&boxes).await;
}
