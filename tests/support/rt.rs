//! The dev Request Tracker (deploy/dev/services `rt`) as the tests read
//! it: through its REST 2.0 API with the dev login, never through what
//! intake says it did.

use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::Value;

/// RT's address (`INTAKE_TEST_RT_URL`).
pub fn url() -> String {
    std::env::var("INTAKE_TEST_RT_URL").unwrap_or_else(|_| "http://127.0.0.1:18099".into())
}

/// The file holding the dev API token of RT's `intake` user.
pub fn token_file() -> String {
    std::env::var("INTAKE_TEST_RT_TOKEN_FILE").unwrap_or_else(|_| {
        let state = std::env::var("INTAKE_DEV_STATE")
            .unwrap_or_else(|_| format!("{}/target/dev-state", env!("CARGO_MANIFEST_DIR")));
        format!("{state}/rt/token")
    })
}

/// RT's `$rtname` in the dev stack.
pub fn rtname() -> String {
    std::env::var("INTAKE_TEST_RT_NAME").unwrap_or_else(|_| "intake-dev".into())
}

/// The `[[delivery]]` table of a gateway delivering to the dev RT;
/// `extra` goes into `[delivery.rt]`.
pub fn delivery_toml(name: &str, extra: &str) -> String {
    format!(
        r#"
[[delivery]]
name = "{name}"
target = "rt"
concurrency = 4
claim_after = "2m"
backoff_initial = "200ms"
backoff_max = "2s"
max_age = "10m"
remember = "1h"

[delivery.rt]
url = "{url}"
token = {{ file = "{token}" }}
queue = "General"
rtname = "{rtname}"
timeout = "10s"
fold_comment_every = "2s"
{extra}
"#,
        url = url(),
        token = token_file(),
        rtname = rtname(),
    )
}

/// GET `path` under `/REST/2.0` as root; the JSON answer.
pub async fn get(path: &str) -> Value {
    let response = reqwest::Client::new()
        .get(format!("{}/REST/2.0{path}", url()))
        .basic_auth("root", Some("password"))
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .unwrap_or_else(|e| panic!("RT GET {path}: {e}"));
    let status = response.status();
    let text = response.text().await.unwrap();
    assert!(status.is_success(), "RT GET {path}: {status} {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("RT GET {path}: {e}: {text}"))
}

/// The ids of the tickets matching TicketSQL `query`.
pub async fn search(query: &str) -> Vec<u64> {
    let path = format!(
        "/tickets?{}",
        form_urlencoded::Serializer::new(String::new())
            .append_pair("query", query)
            .append_pair("fields", "id")
            .append_pair("per_page", "100")
            .finish()
    );
    get(&path).await["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| id(&t["id"]))
        .collect()
}

/// Tickets holding receipt `receipt`.
pub async fn tickets_with_receipt(receipt: &str) -> Vec<u64> {
    search(&format!("CF.{{Intake Receipt}} = '{receipt}'")).await
}

/// Tickets requested by `email`.
pub async fn tickets_of(email: &str) -> Vec<u64> {
    search(&format!("Requestor.EmailAddress = '{email}'")).await
}

/// Polls until `receipt` is on exactly one ticket; its id.
pub async fn wait_ticket(receipt: &str, limit: Duration) -> u64 {
    let deadline = Instant::now() + limit;
    loop {
        let found = tickets_with_receipt(receipt).await;
        assert!(found.len() <= 1, "receipt {receipt} on {found:?}");
        if let Some(&ticket) = found.first() {
            return ticket;
        }
        assert!(
            Instant::now() < deadline,
            "no ticket holds receipt {receipt} after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// One transaction of a ticket's history, with its attachments' text.
#[derive(Debug)]
pub struct Transaction {
    pub kind: String,
    pub creator: String,
    /// Every attachment of it: (file name, content type, content).
    pub parts: Vec<(String, String, Vec<u8>)>,
}

impl Transaction {
    /// The text/plain body without a file name: what the agent reads.
    pub fn body(&self) -> String {
        self.parts
            .iter()
            .find(|(name, kind, _)| name.is_empty() && kind == "text/plain")
            .map(|(_, _, content)| String::from_utf8_lossy(content).into_owned())
            .unwrap_or_default()
    }

    pub fn file(&self, name: &str) -> Option<&[u8]> {
        self.parts
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, _, content)| content.as_slice())
    }
}

/// The ticket's Create, Correspond and Comment transactions, in order.
pub async fn messages(ticket: u64) -> Vec<Transaction> {
    let history = get(&format!(
        "/ticket/{ticket}/history?per_page=100&fields=Type,Creator"
    ))
    .await;
    let mut out = Vec::new();
    for item in history["items"].as_array().unwrap() {
        let kind = item["Type"].as_str().unwrap_or("").to_string();
        if !matches!(kind.as_str(), "Create" | "Correspond" | "Comment") {
            continue;
        }
        let txn = id(&item["id"]);
        let attachments = get(&format!(
            "/transaction/{txn}/attachments?per_page=100&fields=Filename,ContentType"
        ))
        .await;
        let mut parts = Vec::new();
        for a in attachments["items"].as_array().unwrap() {
            let kind = a["ContentType"].as_str().unwrap_or("").to_string();
            if kind.starts_with("multipart/") {
                continue;
            }
            // One attachment at a time: a collection's `Content` comes
            // re-encoded as text (RT 5.0.3), the record's is the bytes.
            let record = get(&format!("/attachment/{}", id(&a["id"]))).await;
            let content = record["Content"].as_str().unwrap_or("");
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(content.replace(['\n', '\r'], ""))
                .unwrap_or_else(|_| content.as_bytes().to_vec());
            parts.push((
                a["Filename"].as_str().unwrap_or("").to_string(),
                kind,
                bytes,
            ));
        }
        let creator = item["Creator"]["id"].as_str().unwrap_or("").to_string();
        out.push(Transaction {
            kind,
            creator,
            parts,
        });
    }
    out
}

/// The requestors' addresses and the subject of a ticket.
pub async fn ticket(ticket: u64) -> (Vec<String>, String) {
    let t = get(&format!("/ticket/{ticket}")).await;
    let requestors = t["Requestor"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap_or("").to_string())
        .collect();
    (requestors, t["Subject"].as_str().unwrap_or("").to_string())
}

fn id(value: &Value) -> u64 {
    value
        .as_u64()
        .or_else(|| value.as_str().and_then(|s| s.parse().ok()))
        .unwrap_or_else(|| panic!("not an RT id: {value}"))
}
