//! OpenSMTPD 6.8 delivering into the gateway's `[lmtp]` listener with the
//! shipped example deploy/opensmtpd/smtpd.conf, in a private instance
//! (tests/support/opensmtpd.rs): its `lmtp` action (mail.lmtp, one
//! transaction per recipient) and its relay to `lmtp://` (one transaction,
//! then a reply per recipient, read one at a time: OpenSMTPD fails the
//! rest as "Remote host sent too much data" when two come in one read).
//! 100 mails, one of them to 20 addresses: 100 desk items, the
//! twenty-address one with its 20 recipients (the lmtp action's 20
//! transactions fold into one item); gateway down: deferred, then delivered once; a 552
//! from the gateway is retried, not bounced.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::opensmtpd::{Action, PrivateOpenSmtpd, DOMAIN};
use support::{free_port, redis_url, Gateway};

/// How long a test waits for the desk: a safety net, not a speed assertion.
const PATIENCE: Duration = Duration::from_secs(90);

fn mail(id: &str) -> Vec<u8> {
    format!(
        "From: Ann Customer <ann@example.com>\r\nTo: support@{DOMAIN}\r\n\
         Subject: {id}\r\nMessage-ID: <{id}@example.com>\r\n\r\n\
         My order has not arrived.\r\n.\r\nA line with only a dot above.\r\n"
    )
    .into_bytes()
}

fn twenty() -> Vec<String> {
    (0..20).map(|n| format!("desk{n}@{DOMAIN}")).collect()
}

async fn gateway(test: &str, port: u16, lmtp: &str) -> Gateway {
    Gateway::start_with(
        test,
        &redis_url(),
        &format!("[lmtp]\nlisten = \"127.0.0.1:{port}\"\ndomains = [\"{DOMAIN}\"]\n{lmtp}"),
    )
    .await
}

/// The desk's envelopes as a consumer sees them: each item's
/// `source.recipients` with the recipients its `recipients` updates in
/// `events` added (the copies of a mail OpenSMTPD delivered one
/// transaction per recipient).
async fn desk_as_seen(gw: &Gateway) -> Vec<Value> {
    let mut extra: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for update in gw.entries("events").await {
        if update.field("kind") == "recipients" {
            let body: Value = serde_json::from_str(update.field("envelope")).unwrap();
            extra
                .entry(body["id"].as_str().unwrap().to_string())
                .or_default()
                .extend(body["recipients"].as_array().unwrap().iter().cloned());
        }
    }
    gw.entries("desk")
        .await
        .iter()
        .map(|e| {
            let mut env = e.envelope();
            let id = env["id"].as_str().unwrap().to_string();
            if let Some(more) = extra.remove(&id) {
                env["source"]["recipients"]
                    .as_array_mut()
                    .unwrap()
                    .extend(more);
            }
            env
        })
        .collect()
}

/// The desk's items grouped by Message-ID, once `recipients` recipient
/// deliveries (or, folded, `mails` items) are on it.
async fn desk_by_id(
    gw: &Gateway,
    smtpd: &PrivateOpenSmtpd,
    mails: usize,
    recipients: usize,
) -> BTreeMap<String, Vec<Value>> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let desk = desk_as_seen(gw).await;
        let delivered: usize = desk
            .iter()
            .map(|e| e["source"]["recipients"].as_array().map_or(0, Vec::len))
            .sum();
        if delivered >= recipients && smtpd.queued() == 0 {
            // Anything late would show up now.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let desk = desk_as_seen(gw).await;
            let mut by_id: BTreeMap<String, Vec<Value>> = BTreeMap::new();
            for env in desk {
                assert_eq!(env["source"]["type"], "lmtp", "{env}");
                assert_eq!(env["source"]["sender"], "ann@example.com", "{env}");
                let id = env["message_id"]
                    .as_str()
                    .expect("a Message-ID")
                    .to_string();
                by_id.entry(id).or_default().push(env);
            }
            assert_eq!(by_id.len(), mails, "every mail on the desk, none lost");
            return by_id;
        }
        assert!(
            Instant::now() < deadline,
            "{delivered} of {recipients} recipient deliveries on the desk, {} queued.\nlog:\n{}",
            smtpd.queued(),
            smtpd.log()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Each recipient of the mail `id` on exactly one of its items, all of
/// `expected` there.
fn assert_recipients_once(by_id: &BTreeMap<String, Vec<Value>>, id: &str, expected: &[String]) {
    let items = &by_id[id];
    let mut seen = Vec::new();
    for env in items {
        for rcpt in env["source"]["recipients"].as_array().unwrap() {
            seen.push(rcpt.as_str().unwrap().to_string());
        }
    }
    seen.sort();
    let mut expected = expected.to_vec();
    expected.sort();
    assert_eq!(
        seen,
        expected,
        "{id}: every recipient once across its {} items (none stored again by a retry)",
        items.len()
    );
}

fn send_hundred(smtpd: &PrivateOpenSmtpd, tag: &str) {
    let support = format!("support@{DOMAIN}");
    for n in 0..99 {
        smtpd.sendmail("ann@example.com", &[&support], &mail(&format!("{tag}-{n}")));
    }
    let all = twenty();
    let rcpts: Vec<&str> = all.iter().map(String::as_str).collect();
    smtpd.sendmail("ann@example.com", &rcpts, &mail(&format!("{tag}-twenty")));
}

async fn hundred(test: &str, relay: bool) -> (BTreeMap<String, Vec<Value>>, String) {
    let port = free_port();
    let gw = gateway(test, port, "").await;
    let smtpd = PrivateOpenSmtpd::start(if relay {
        Action::Relay { port }
    } else {
        Action::Lmtp { port }
    });
    let tag = test.to_string();
    let smtpd = tokio::task::spawn_blocking(move || {
        send_hundred(&smtpd, &tag);
        smtpd
    })
    .await
    .unwrap();
    let by_id = desk_by_id(&gw, &smtpd, 100, 119).await;
    assert_recipients_once(&by_id, &format!("{test}-twenty@example.com"), &twenty());
    for n in 0..99 {
        assert_eq!(
            by_id[&format!("{test}-{n}@example.com")].len(),
            1,
            "mail {n} once"
        );
    }
    let log = smtpd.log();
    gw.stop().await;
    (by_id, log)
}

#[tokio::test]
async fn opensmtpd_lmtp_action_stores_a_hundred_mails_each_recipient_once() {
    let (by_id, log) = hundred("smtpd_lmtp", false).await;
    // mail.lmtp delivers each recipient in a transaction of its own: the
    // copies fold into the first item, which gets every recipient.
    let items = by_id["smtpd_lmtp-twenty@example.com"].len();
    assert_eq!(items, 1, "one mail, one item for twenty transactions");
    assert!(!log.contains("too much data"), "{log}");
}

#[tokio::test]
async fn opensmtpd_relay_reads_each_reply_and_stores_the_twenty_address_mail_once() {
    let (by_id, log) = hundred("smtpd_relay", true).await;
    assert!(
        !log.contains("too much data"),
        "OpenSMTPD read every per-recipient reply on its own:\n{log}"
    );
    assert_eq!(
        by_id["smtpd_relay-twenty@example.com"].len(),
        1,
        "one transaction, one item for twenty recipients"
    );
}

#[tokio::test]
async fn opensmtpd_with_the_gateway_down_defers_then_delivers_once() {
    deferred_then_delivered_once("smtpd_deferred", false).await;
}

#[tokio::test]
async fn opensmtpd_relay_with_the_gateway_down_defers_then_delivers_once() {
    deferred_then_delivered_once("smtpd_relay_deferred", true).await;
}

/// The gateway down: every envelope stays queued (the `lmtp` action's
/// mail.lmtp and the relay alike report a temporary failure); up again and
/// the queue run: each recipient delivered once.
async fn deferred_then_delivered_once(test: &str, relay: bool) {
    let port = free_port();
    let smtpd = PrivateOpenSmtpd::start(if relay {
        Action::Relay { port }
    } else {
        Action::Lmtp { port }
    });
    let all = twenty();
    let smtpd = tokio::task::spawn_blocking(move || {
        let rcpts: Vec<&str> = all.iter().map(String::as_str).collect();
        smtpd.sendmail("ann@example.com", &rcpts, &mail("smtpd-deferred-twenty"));
        smtpd.sendmail(
            "ann@example.com",
            &[&format!("support@{DOMAIN}")],
            &mail("smtpd-deferred-one"),
        );
        // One temporary failure per envelope (the relay logs the result
        // quoted, `result="TempFail"`, and disables the route for 15 s).
        smtpd.wait_log("21 deferrals", |log| log.matches("TempFail").count() >= 21);
        smtpd
    })
    .await
    .unwrap();
    assert_eq!(smtpd.queued(), 21, "every envelope kept:\n{}", smtpd.log());
    assert!(!smtpd.log().contains("PermFail"), "{}", smtpd.log());

    let gw = gateway(test, port, "").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The relay disabled its route for 15 s after the refused connection;
    // a queue run before it is enabled again only defers the mail anew.
    let smtpd = if relay {
        tokio::task::spawn_blocking(move || {
            smtpd.wait_log("the route enabled again", |log| {
                log.contains("Enabling route")
            });
            smtpd
        })
        .await
        .unwrap()
    } else {
        smtpd
    };
    smtpd.schedule_all();
    let by_id = desk_by_id(&gw, &smtpd, 2, 21).await;
    assert_recipients_once(&by_id, "smtpd-deferred-twenty@example.com", &twenty());
    assert_eq!(by_id["smtpd-deferred-one@example.com"].len(), 1);
    // Another run finds nothing to deliver.
    smtpd.schedule_all();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let total: usize = desk_as_seen(&gw)
        .await
        .iter()
        .map(|e| e["source"]["recipients"].as_array().unwrap().len())
        .sum();
    assert_eq!(total, 21, "each recipient delivered once");
    gw.stop().await;
}

#[tokio::test]
async fn opensmtpd_lmtp_action_retries_a_552_and_never_bounces() {
    let port = free_port();
    let gw = gateway("smtpd_552", port, "max_size = \"1KB\"\n").await;
    let smtpd = PrivateOpenSmtpd::start(Action::Lmtp { port });
    let big = format!(
        "From: ann@example.com\r\nSubject: big\r\nMessage-ID: <big@example.com>\r\n\r\n{}\r\n",
        "x".repeat(4000)
    );
    let smtpd = tokio::task::spawn_blocking(move || {
        smtpd.sendmail(
            "ann@example.com",
            &[&format!("support@{DOMAIN}")],
            big.as_bytes(),
        );
        smtpd.wait_log("the 552", |log| log.contains("552"));
        smtpd.schedule_all();
        smtpd.wait_log("a second try", |log| log.matches("552").count() >= 2);
        smtpd
    })
    .await
    .unwrap();
    let log = smtpd.log();
    assert!(
        log.contains("result=TempFail"),
        "mail.lmtp's 552 is temporary:\n{log}"
    );
    assert!(!log.contains("PermFail"), "never bounced:\n{log}");
    assert_eq!(smtpd.queued(), 1, "still queued:\n{log}");
    assert!(gw.entries("desk").await.is_empty());
    gw.stop().await;
}
