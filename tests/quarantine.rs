//! The quarantine on the admin listener, against real Redis and clamd:
//! list it, release a clean item to the desk (once, under its receipt),
//! and keep infected, unscannable and headers-only items where they are.

mod support;

use base64::Engine as _;
use reqwest::StatusCode;
use serde_json::Value;
use support::clamd::{dev_clamd, eicar};
use support::{client, free_port, Gateway, TOKEN};

const ADMIN_TOKEN: &str = "quarantine-admin-7c2";

/// Every mail from `*@quarantine.example` after the first is quarantined.
const RULES: &str = r#"
[[rule]]
name = "quarantine-after-one"
match = { channel = "email", senders = ["*@quarantine.example"] }
key = ["sender"]
rate = "1/d"
action = "quarantine"
"#;

struct Setup {
    gw: Gateway,
    admin: String,
    _rules: tempfile::TempDir,
    _token: tempfile::NamedTempFile,
}

/// A gateway with an admin listener, the rule above, `[mime] max_parts =
/// 4`, and scanning against `clamd`.
async fn start(test: &str, clamd: &str) -> Setup {
    let rules = tempfile::tempdir().unwrap();
    std::fs::write(rules.path().join("20-mail.toml"), RULES).unwrap();
    let token = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(token.path(), format!("{ADMIN_TOKEN}\n")).unwrap();
    let port = free_port();
    let extra = format!(
        "[admin]\nlisten = \"127.0.0.1:{port}\"\ntoken = {{ file = \"{}\" }}\n\n\
         [rules]\ndir = \"{}\"\n\n[mime]\nmax_parts = 4\n\n\
         [scan]\nclamd = \"{clamd}\"\ntimeout = \"10s\"\nredrive_interval = \"100ms\"\n",
        token.path().display(),
        rules.path().display(),
    );
    let gw = Gateway::start_with(test, &support::redis_url(), &extra).await;
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    Setup {
        gw,
        admin: format!("http://127.0.0.1:{port}"),
        _rules: rules,
        _token: token,
    }
}

async fn dev_setup(test: &str) -> Setup {
    start(test, &format!("tcp://{}", dev_clamd())).await
}

async fn post_mail(gw: &Gateway, raw: Vec<u8>) -> reqwest::Response {
    client()
        .post(format!("{}/v1/messages", gw.url))
        .bearer_auth(TOKEN)
        .header("content-type", "message/rfc822")
        .body(raw)
        .send()
        .await
        .expect("gateway answers")
}

fn mail(from: &str, subject: &str, body: &str) -> Vec<u8> {
    format!("From: {from}\r\nTo: support@shop.test\r\nSubject: {subject}\r\n\r\n{body}\r\n")
        .into_bytes()
}

fn mail_with_attachment(from: &str, subject: &str, name: &str, data: &[u8]) -> Vec<u8> {
    format!(
        "From: {from}\r\nTo: support@shop.test\r\nSubject: {subject}\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n\
         --b1\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n\
         --b1\r\nContent-Type: application/octet-stream; name=\"{name}\"\r\n\
         Content-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=\"{name}\"\r\n\r\n\
         {}\r\n--b1--\r\n",
        base64::engine::general_purpose::STANDARD.encode(data)
    )
    .into_bytes()
}

/// Sends one mail that the rule lets through, then `n` that it
/// quarantines; returns their receipts.
async fn quarantine_mails(gw: &Gateway, sender: &str, n: usize) -> Vec<String> {
    let first = post_mail(gw, mail(sender, "first", "the one that passes")).await;
    assert_eq!(first.status(), 202, "first mail accepted");
    let mut receipts = Vec::new();
    for i in 0..n {
        let response = post_mail(
            gw,
            mail(
                sender,
                &format!("held back {i}"),
                &format!("secret body text number {i} about order {}", 4400 + i),
            ),
        )
        .await;
        assert_eq!(response.status(), 202, "a quarantined mail is accepted");
        let body: Value = response.json().await.unwrap();
        receipts.push(body["id"].as_str().unwrap().to_string());
    }
    let quarantine = gw.entries("quarantine").await;
    assert_eq!(quarantine.len(), n, "the rule quarantined {n} mails");
    receipts
}

impl Setup {
    async fn list(&self, query: &str) -> reqwest::Response {
        client()
            .get(format!("{}/v1/quarantine{query}", self.admin))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
    }

    async fn release(&self, entry_id: &str) -> reqwest::Response {
        client()
            .post(format!("{}/v1/quarantine/{entry_id}/release", self.admin))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
    }

    async fn only_entry_id(&self) -> String {
        let entries = self.gw.entries("quarantine").await;
        assert_eq!(entries.len(), 1, "one quarantine entry");
        entries[0].entry_id.clone()
    }

    async fn metrics(&self) -> String {
        client()
            .get(format!("{}/metrics", self.admin))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn a_clean_item_is_listed_and_released_to_the_desk_under_its_receipt() {
    let s = dev_setup("quarantine_release").await;
    let receipts = quarantine_mails(&s.gw, "ann@quarantine.example", 1).await;

    let response = s.list("").await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    assert!(
        !text.contains("secret body text"),
        "the listing never shows a body: {text}"
    );
    let page: Value = serde_json::from_str(&text).unwrap();
    let entry = &page["entries"][0];
    assert_eq!(entry["id"], receipts[0].as_str(), "receipt id listed");
    assert_eq!(entry["kind"], "quarantined");
    assert!(
        entry["reason"]
            .as_str()
            .unwrap()
            .contains("quarantine-after-one"),
        "reason names the rule: {entry}"
    );
    assert_eq!(entry["channel"], "email");
    assert_eq!(entry["customer_email"], "ann@quarantine.example");
    assert_eq!(entry["subject"], "held back 0");
    assert!(entry["size"].as_u64().unwrap() > 0, "size: {entry}");
    assert!(entry["received_at"].is_string());
    assert_eq!(page["next"], Value::Null, "one page only");

    let entry_id = entry["entry_id"].as_str().unwrap().to_string();
    let response = s.release(&entry_id).await;
    assert_eq!(response.status(), 200, "clean item released");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "released");
    assert_eq!(body["id"], receipts[0].as_str());

    assert!(
        s.gw.entries("quarantine").await.is_empty(),
        "quarantine entry removed after the desk write"
    );
    let desk = s.gw.entries("desk").await;
    let released: Vec<_> = desk
        .iter()
        .filter(|e| e.field("id") == receipts[0])
        .collect();
    assert_eq!(
        released.len(),
        1,
        "one desk item with the customer's receipt"
    );
    let envelope = released[0].envelope();
    assert_eq!(
        envelope["id"],
        receipts[0].as_str(),
        "envelope keeps the receipt"
    );
    assert_eq!(
        envelope["scan"]["status"], "clean",
        "scanned before release"
    );
    assert!(
        envelope["abuse"]["tags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t == "released"),
        "tagged released: {envelope}"
    );
    assert!(
        s.metrics()
            .await
            .lines()
            .any(|l| l.starts_with("intake_quarantine_releases_total{")
                && l.contains("result=\"released\"")),
        "release counted"
    );
}

#[tokio::test]
async fn releasing_twice_makes_one_desk_item() {
    let s = dev_setup("quarantine_twice").await;
    let receipts = quarantine_mails(&s.gw, "bob@quarantine.example", 1).await;
    let entry_id = s.only_entry_id().await;
    // Two operators click at once, then one clicks again.
    let (a, b) = tokio::join!(s.release(&entry_id), s.release(&entry_id));
    let statuses = [a.status(), b.status()];
    assert!(
        statuses.contains(&StatusCode::OK),
        "one release succeeds: {statuses:?}"
    );
    for status in statuses {
        assert!(
            status == StatusCode::OK || status == StatusCode::NOT_FOUND,
            "the other one succeeds (already released) or finds it gone: {status}"
        );
    }
    let again = s.release(&entry_id).await;
    assert_eq!(again.status(), 404, "released entries are gone");
    let body: Value = again.json().await.unwrap();
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("already released"),
        "the 404 says it may have been released: {body}"
    );
    let desk = s.gw.entries("desk").await;
    assert_eq!(
        desk.iter().filter(|e| e.field("id") == receipts[0]).count(),
        1,
        "one desk item, not two"
    );
    assert!(s.gw.entries("quarantine").await.is_empty());
}

#[tokio::test]
async fn an_infected_item_stays_in_quarantine_with_409() {
    let s = dev_setup("quarantine_infected").await;
    let response = post_mail(
        &s.gw,
        mail_with_attachment("eve@example.com", "invoice", "invoice.com", &eicar()),
    )
    .await;
    assert!(
        !response.status().is_server_error(),
        "infected mail is stored, not failed: {}",
        response.status()
    );
    let entry_id = s.only_entry_id().await;
    let page: Value = s.list("").await.json().await.unwrap();
    let listed = &page["entries"][0];
    assert_eq!(listed["kind"], "infected");
    assert_eq!(listed["scan"]["status"], "infected");
    assert_eq!(listed["attachments"][0]["filename"], "invoice.com");
    assert_eq!(listed["attachments"][0]["size"], eicar().len());
    assert!(
        listed["attachments"][0].get("content_base64").is_none(),
        "no attachment content in the listing: {listed}"
    );

    let response = s.release(&entry_id).await;
    assert_eq!(response.status(), 409, "infected is refused");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "infected");
    assert!(
        body["message"].as_str().unwrap().contains("virus"),
        "the answer says why: {body}"
    );
    assert_eq!(s.only_entry_id().await, entry_id, "still in quarantine");
    assert!(s.gw.entries("desk").await.is_empty(), "nothing on the desk");
}

#[tokio::test]
async fn a_mime_limit_item_is_refused_with_422_and_a_reason() {
    let s = dev_setup("quarantine_mime_limit").await;
    let mut raw = String::from(
        "From: many@example.com\r\nTo: support@shop.test\r\nSubject: parts\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n",
    );
    for i in 0..10 {
        raw.push_str(&format!(
            "--b\r\nContent-Type: text/plain\r\n\r\npart {i}\r\n"
        ));
    }
    raw.push_str("--b--\r\n");
    assert_eq!(post_mail(&s.gw, raw.into_bytes()).await.status(), 202);
    let entry_id = s.only_entry_id().await;
    let response = s.release(&entry_id).await;
    assert_eq!(response.status(), 422);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "not_releasable");
    assert!(
        body["message"].as_str().unwrap().contains("[mime] limit"),
        "says why: {body}"
    );
    assert_eq!(s.only_entry_id().await, entry_id, "still in quarantine");
}

#[tokio::test]
async fn a_scanner_that_is_down_answers_503_and_keeps_the_item() {
    // Nothing listens there: clamd is "down".
    let s = start(
        "quarantine_clamd_down",
        &format!("tcp://127.0.0.1:{}", free_port()),
    )
    .await;
    quarantine_mails(&s.gw, "cy@quarantine.example", 1).await;
    let entry_id = s.only_entry_id().await;
    let response = s.release(&entry_id).await;
    assert_eq!(response.status(), 503);
    assert!(
        response.headers().get("retry-after").is_some(),
        "says when to retry"
    );
    assert_eq!(s.only_entry_id().await, entry_id, "still in quarantine");
    assert!(
        s.gw.entries("desk")
            .await
            .iter()
            .all(|e| e.envelope()["subject"] != "held back 0"),
        "nothing released unscanned"
    );
}

#[tokio::test]
async fn the_quarantine_needs_the_admin_token_and_knows_its_entries() {
    let s = dev_setup("quarantine_auth").await;
    let response = client()
        .get(format!("{}/v1/quarantine", s.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401, "no token, no listing");
    let response = client()
        .post(format!("{}/v1/quarantine/1-0/release", s.admin))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401, "wrong token, no release");
    assert_eq!(s.release("1-0").await.status(), 404, "unknown entry");
    assert_eq!(s.release("not-an-id").await.status(), 404, "not an id");
    assert_eq!(
        s.release("99999999999999999999-0").await.status(),
        404,
        "over a u64 is not an id (Redis would refuse it)"
    );
    let response = client()
        .get(format!("{}/v1/quarantine/1-0/release", s.admin))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405, "release is a POST");
}

#[tokio::test]
async fn the_listing_pages_with_count_and_after() {
    let s = dev_setup("quarantine_paging").await;
    let receipts = quarantine_mails(&s.gw, "dan@quarantine.example", 3).await;
    let first: Value = s.list("?count=2").await.json().await.unwrap();
    let ids: Vec<&str> = first["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [receipts[0].as_str(), receipts[1].as_str()],
        "oldest first"
    );
    let next = first["next"].as_str().expect("a next page");
    let second: Value = s
        .list(&format!("?count=2&after={next}"))
        .await
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = second["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [receipts[2].as_str()], "the rest");
    assert_eq!(second["next"], Value::Null, "last page");
    // Nothing follows the largest entry id (Redis refuses it as an
    // exclusive start: the gateway answers for it).
    let response = s
        .list("?after=18446744073709551615-18446744073709551615")
        .await;
    assert_eq!(response.status(), 200);
    let last: Value = response.json().await.unwrap();
    assert_eq!(last["entries"], serde_json::json!([]));
    assert_eq!(last["next"], Value::Null);
    for bad in [
        "?count=0",
        "?count=501",
        "?count=x",
        "?after=nope",
        "?page=2",
        "?after=18446744073709551616-0",
        "?after=-1-0",
    ] {
        let response = s.list(bad).await;
        assert_eq!(response.status(), 400, "{bad} is refused");
        let body: Value = response.json().await.unwrap();
        assert!(
            !body["message"].as_str().unwrap().is_empty(),
            "{bad}: says why"
        );
    }
}
