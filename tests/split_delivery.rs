//! One mail, one item, however the mail server splits it: the copies of a
//! mail (same Message-ID, envelope sender and body; each with the headers
//! its own delivery added) delivered one transaction per recipient, as
//! OpenSMTPD always does and Postfix does with a recipient limit of 1, are
//! answered with the first item's receipt and add their recipients to it
//! through `recipients` entries in `events`, written once per copy.
//! Against real Redis, Python's smtplib.LMTP as the client, and a real
//! Postfix splitting a 20-recipient mail.

mod support;

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::postfix::{Delivery, PrivatePostfix, DOMAIN};
use support::{client, free_port, redis_url, Gateway, TOKEN};

/// How long a test waits for the gateway or Postfix to get somewhere (a
/// safety net, not a speed assertion).
const PATIENCE: Duration = Duration::from_secs(60);

async fn lmtp_gateway(test: &str) -> (Gateway, u16) {
    let port = free_port();
    let config = format!("[lmtp]\nlisten = \"127.0.0.1:{port}\"\n");
    let gw = Gateway::start_with(test, &redis_url(), &config).await;
    (gw, port)
}

/// A mail as its client sent it; `id` is its Message-ID (none when empty).
fn mail(id: &str, subject: &str, body: &str) -> String {
    let id = if id.is_empty() {
        String::new()
    } else {
        format!("Message-ID: <{id}>\r\n")
    };
    format!(
        "From: Ana <ana@correo.example>\r\nTo: soporte@{DOMAIN}, ventas@{DOMAIN}\r\n\
         Subject: {subject}\r\n{id}Date: Tue, 1 Dec 2026 10:15:00 +0100\r\n\r\n{body}\r\n"
    )
}

/// The copy a mail server hands over for `recipient`: the mail with the
/// headers its delivery adds on top.
fn copy_for(mail: &str, recipient: &str, n: usize) -> String {
    format!(
        "Delivered-To: {recipient}\r\nReceived: from mx.correo.example by mx{n}.{DOMAIN}\r\n\
         \tfor <{recipient}>; Tue, 1 Dec 2026 10:15:0{} +0100\r\n{mail}",
        n % 10
    )
}

/// Delivers each `(recipient, message)` in its own LMTP transaction on one
/// connection through Python's smtplib.LMTP; returns each final reply.
fn lmtp_transactions(port: u16, sender: &str, copies: &[(String, String)]) -> Vec<(u16, String)> {
    use std::io::Write as _;
    let script = r#"
import json, smtplib, sys
port, sender = int(sys.argv[1]), sys.argv[2]
copies = json.load(sys.stdin)
out = []
with smtplib.LMTP("127.0.0.1", port) as client:
    client.ehlo("mx.correo.example")
    for rcpt, msg in copies:
        client.mail(sender)
        code, text = client.rcpt(rcpt)
        assert code == 250, (code, text)
        code, text = client.data(msg.encode())
        out.append([code, text.decode()])
print(json.dumps(out))
"#;
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(port.to_string())
        .arg(sender)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 is installed (deploy/dev/test checks for it)");
    let input = serde_json::to_vec(copies).unwrap();
    child.stdin.take().unwrap().write_all(&input).unwrap();
    let out = child.wait_with_output().expect("python3 runs");
    assert!(
        out.status.success(),
        "smtplib failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the script prints JSON")
}

/// The receipt a `250 2.0.0 stored as ID` names.
fn receipt(reply: &(u16, String)) -> String {
    assert_eq!(reply.0, 250, "stored: {reply:?}");
    reply
        .1
        .rsplit(' ')
        .next()
        .expect("the reply names the receipt")
        .to_string()
}

/// The recipients of desk item `id`: its own, and those of every
/// `recipients` update about it, as a set (as a consumer would add them).
async fn recipients_of(gw: &Gateway, id: &str) -> (BTreeSet<String>, usize) {
    let desk = gw.entries("desk").await;
    let item = desk
        .iter()
        .find(|e| e.field("id") == id)
        .unwrap_or_else(|| panic!("desk item {id} is stored"));
    let mut all: BTreeSet<String> = item.envelope()["source"]["recipients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect();
    let updates: Vec<Value> = gw
        .entries("events")
        .await
        .iter()
        .filter(|e| e.field("kind") == "recipients")
        .map(|e| serde_json::from_str(e.field("envelope")).expect("update body is JSON"))
        .collect();
    for update in &updates {
        assert_eq!(update["id"], id, "every update names the first item");
        assert_eq!(update["kind"], "recipients");
        for r in update["recipients"].as_array().unwrap() {
            all.insert(r.as_str().unwrap().to_string());
        }
    }
    (all, updates.len())
}

fn addresses(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("buzon{i:02}@{DOMAIN}")).collect()
}

#[tokio::test]
async fn twenty_lmtp_copies_of_one_mail_are_one_item_with_every_recipient() {
    let (gw, port) = lmtp_gateway("split_lmtp").await;
    let original = mail(
        "split-1@correo.example",
        "Pedido 4411 duplicado",
        "Me habéis cobrado dos veces el pedido 4411.",
    );
    let recipients = addresses(20);
    let copies: Vec<(String, String)> = recipients
        .iter()
        .enumerate()
        .map(|(n, r)| (r.clone(), copy_for(&original, r, n)))
        .collect();
    let replies = tokio::task::spawn_blocking({
        let copies = copies.clone();
        move || lmtp_transactions(port, "ana@correo.example", &copies)
    })
    .await
    .unwrap();
    let first = receipt(&replies[0]);
    for reply in &replies {
        assert_eq!(
            receipt(reply),
            first,
            "every copy is told the first receipt"
        );
    }

    let desk = gw.entries("desk").await;
    assert_eq!(desk.len(), 1, "one desk item for one mail");
    let (all, updates) = recipients_of(&gw, &first).await;
    assert_eq!(updates, 19, "one update per copy after the first");
    assert_eq!(
        all,
        recipients.iter().cloned().collect(),
        "all 20 recipients"
    );
    assert!(
        gw.entries("suppressed").await.is_empty(),
        "copies are no duplicates for the rules"
    );

    // A mail server that lost a reply delivers that copy again: the same
    // receipt, and its update is not written twice.
    let again = tokio::task::spawn_blocking({
        let copy = vec![copies[7].clone()];
        move || lmtp_transactions(port, "ana@correo.example", &copy)
    })
    .await
    .unwrap();
    assert_eq!(receipt(&again[0]), first);
    let (_, updates) = recipients_of(&gw, &first).await;
    assert_eq!(updates, 19, "a retried copy adds no second update");
    assert_eq!(gw.entries("desk").await.len(), 1);
    gw.stop().await;
}

#[tokio::test]
async fn what_is_not_the_same_mail_stays_an_item_of_its_own() {
    let (gw, port) = lmtp_gateway("split_distinct").await;
    let recipients = addresses(2);
    // Without a Message-ID nothing says two transactions are one mail;
    // the same Message-ID over another body is another mail.
    let no_id = mail("", "Sin identificador", "¿Tenéis la talla 42?");
    let same_id = mail("split-2@correo.example", "Talla", "¿Tenéis la talla 42?");
    let other_body = mail("split-2@correo.example", "Talla", "¿Y la 43?");
    let copies = vec![
        (recipients[0].clone(), copy_for(&no_id, &recipients[0], 0)),
        (recipients[1].clone(), copy_for(&no_id, &recipients[1], 1)),
        (recipients[0].clone(), copy_for(&same_id, &recipients[0], 2)),
        (
            recipients[1].clone(),
            copy_for(&other_body, &recipients[1], 3),
        ),
    ];
    let replies =
        tokio::task::spawn_blocking(move || lmtp_transactions(port, "ana@correo.example", &copies))
            .await
            .unwrap();
    let receipts: BTreeSet<String> = replies.iter().map(receipt).collect();
    assert_eq!(receipts.len(), 4, "four receipts: {replies:?}");
    assert_eq!(gw.entries("desk").await.len(), 4);
    assert!(
        !gw.entries("events")
            .await
            .iter()
            .any(|e| e.field("kind") == "recipients"),
        "nothing was folded"
    );
    gw.stop().await;
}

#[tokio::test]
async fn copies_posted_by_mailgate_fold_like_lmtp_ones() {
    let gw = Gateway::start("split_http").await;
    let original = mail("split-3@correo.example", "Factura", "Necesito la factura.");
    let recipients = addresses(3);
    let mut receipts = Vec::new();
    for (n, recipient) in recipients.iter().enumerate() {
        let response = client()
            .post(format!("{}/v1/messages", gw.url))
            .bearer_auth(TOKEN)
            .header("content-type", "message/rfc822")
            .header("x-intake-envelope-sender", "ana@correo.example")
            .header("x-intake-envelope-recipient", recipient.as_str())
            .body(copy_for(&original, recipient, n))
            .send()
            .await
            .expect("gateway answers");
        assert_eq!(response.status(), 202);
        let body: Value = response.json().await.unwrap();
        receipts.push(body["id"].as_str().unwrap().to_string());
    }
    assert!(receipts.iter().all(|r| *r == receipts[0]), "{receipts:?}");
    assert_eq!(gw.entries("desk").await.len(), 1);
    let (all, updates) = recipients_of(&gw, &receipts[0]).await;
    assert_eq!(updates, 2);
    assert_eq!(all, recipients.iter().cloned().collect());
    gw.stop().await;
}

#[tokio::test]
async fn postfix_splitting_a_mail_per_recipient_makes_one_item() {
    let (gw, port) = lmtp_gateway("split_postfix").await;
    let postfix = PrivatePostfix::start(Delivery::Lmtp { port });
    // One recipient per LMTP transaction: what OpenSMTPD always does.
    postfix.set("lmtp_destination_recipient_limit = 1");
    let recipients = addresses(20);
    let rcpts: Vec<&str> = recipients.iter().map(String::as_str).collect();
    // ASCII only: mail with UTF-8 headers needs SMTPUTF8, another matter.
    let original = mail(
        "split-4@correo.example",
        "Devolucion",
        "Quiero devolver las botas del pedido 9120.",
    );
    postfix.sendmail("ana@correo.example", &rcpts, original.as_bytes());

    // Postfix delivers the copies one by one; wait for all of them.
    let started = Instant::now();
    let first = loop {
        let desk = gw.entries("desk").await;
        if let [item] = desk.as_slice() {
            let id = item.field("id").to_string();
            if recipients_of(&gw, &id).await.0.len() == 20 {
                break id;
            }
        }
        assert!(desk.len() <= 1, "one mail, one desk item: {}", desk.len());
        assert!(
            started.elapsed() < PATIENCE,
            "Postfix did not deliver every copy; queue:\n{}\nlog:\n{}",
            postfix.queue(),
            postfix.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (all, updates) = recipients_of(&gw, &first).await;
    assert_eq!(all, recipients.iter().cloned().collect());
    assert_eq!(updates, 19, "19 copies after the first");
    let log = postfix.log();
    assert_eq!(
        log.matches("status=sent").count(),
        20,
        "Postfix delivered every recipient:\n{log}"
    );
    assert_eq!(gw.entries("desk").await.len(), 1);
    gw.stop().await;
}
