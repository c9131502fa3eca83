//! Refused posts do not fill Redis: an item that does not reach the desk
//! (refused, collapsed, trapped, quarantined by a rule) is kept whole only
//! while small and within its sender's allowance, else as metadata; a
//! refused post past `max_refused` is counted, not written; and mail
//! beyond a `[mime]` limit passes the rate limits before it is set aside.
//! Each attack is bounded, a bystander is measured beside it, and every
//! receipt handed out is checked to be stored exactly once.

mod support;

use std::path::Path;
use std::sync::Arc;

use serde_json::Value;
use support::audit::{assert_receipts_stored_once, Receipts};
use support::bystander::{self, client_from, customer_address, loopback, measure};
use support::{redis_url, Gateway, TOKEN};

fn shipped_rules() -> String {
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    format!("[rules]\ndir = \"{}\"\n", rules.display())
}

/// A form that takes large uploads.
const UPLOAD_FORM: &str =
    "[[form]]\nid = \"upload\"\nrequired = [\"email\"]\nmax_size = \"10MB\"\nmax_files = 2\n";

/// `MEMORY USAGE` of one stream of the gateway's, in bytes.
async fn memory_of(gw: &Gateway, stream: &str) -> u64 {
    let mut conn = support::test_connection(&gw.redis_url).await;
    let used: Option<u64> = redis::cmd("MEMORY")
        .arg("USAGE")
        .arg(format!("{}:{stream}", gw.prefix))
        .arg("SAMPLES")
        .arg(0)
        .query_async(&mut conn)
        .await
        .unwrap();
    used.unwrap_or(0)
}

/// Normal customers posting the contact form, each from its own network.
async fn bystander_posts(
    gw: &Gateway,
    what: &str,
    n: usize,
    receipts: &Receipts,
) -> bystander::Latencies {
    measure(what, n, |i| {
        let client = client_from(customer_address(i));
        let receipts = receipts.clone();
        let url = gw.form_url("contact");
        async move {
            let response = client
                .post(url)
                .form(&[
                    ("email", format!("bystander{i}@example.net")),
                    ("message", format!("{what}: where is order {i}?")),
                ])
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or_default();
            if status != 202 {
                return Err(format!("{status} {body}"));
            }
            receipts.add(body["id"].as_str().unwrap_or_default());
            Ok(())
        }
    })
    .await
}

fn multipart(email: &str, message: &str, file: &[u8]) -> (String, Vec<u8>) {
    let boundary = "AUDITBOUNDARY";
    let mut body = Vec::new();
    for (name, value) in [("email", email), ("message", message)] {
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n")
                .as_bytes(),
        );
    }
    body.extend_from_slice(
        format!("--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"scan.pdf\"\r\nContent-Type: application/pdf\r\n\r\n")
            .as_bytes(),
    );
    body.extend_from_slice(file);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refused_and_collapsed_big_posts_are_kept_as_metadata_and_redis_stays_small() {
    // A Redis timeout with room for 5 MB writes on a busy test machine: a
    // bystander's 503 here would be the machine's, not the attack's.
    let gw = Arc::new(
        Gateway::start_edited(
            "audit_big_posts",
            &redis_url(),
            &format!("{}{UPLOAD_FORM}", shipped_rules()),
            |text| text.replace("timeout = \"1s\"", "timeout = \"5s\""),
        )
        .await,
    );
    let receipts = Receipts::default();
    let quiet = bystander_posts(&gw, "quiet", 20, &receipts).await;

    const POSTS: usize = 40;
    const FILE: usize = 5_000_000;
    let file: Arc<Vec<u8>> = Arc::new((0..FILE).map(|i| (i * 7 % 251) as u8).collect());
    let attack = {
        let gw = gw.clone();
        let receipts = receipts.clone();
        async move {
            let attacker = client_from(loopback(0, 5));
            let limit = Arc::new(tokio::sync::Semaphore::new(4));
            let mut tasks = tokio::task::JoinSet::new();
            for n in 0..POSTS {
                let permit = limit.clone().acquire_owned().await.unwrap();
                let (attacker, gw, file, receipts) =
                    (attacker.clone(), gw.clone(), file.clone(), receipts.clone());
                tasks.spawn(async move {
                    let _permit = permit;
                    let (content_type, body) = multipart(
                        "mallory@example.org",
                        &format!("Attachment number {n}, look at it now."),
                        &file,
                    );
                    let response = attacker
                        .post(gw.form_url("upload"))
                        .header("content-type", content_type)
                        .body(body)
                        .send()
                        .await
                        .unwrap();
                    let status = response.status().as_u16();
                    let body: Value = response.json().await.unwrap_or_default();
                    if status == 202 {
                        receipts.add(body["id"].as_str().unwrap());
                    }
                    status
                });
            }
            let mut statuses = Vec::new();
            while let Some(status) = tasks.join_next().await {
                statuses.push(status.unwrap());
            }
            statuses
        }
    };
    let (statuses, attacked) =
        tokio::join!(attack, bystander_posts(&gw, "attacked", 20, &receipts));
    bystander::report("big refused posts", &quiet, &attacked);
    let accepted = statuses.iter().filter(|s| **s == 202).count();
    let refused = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(
        accepted + refused,
        POSTS,
        "every post is answered 202 or 429: {statuses:?}"
    );
    assert!(
        refused > 0,
        "the shipped rules refuse some of one network's posts"
    );

    let suppressed = gw.entries("suppressed").await;
    let metadata = suppressed
        .iter()
        .filter(|e| {
            e.envelope()["abuse"]["tags"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t == "metadata-only")
        })
        .count();
    let memory = memory_of(&gw, "suppressed").await;
    println!(
        "audit copies: {POSTS} posts of {FILE} bytes from one address: {accepted} answered 202, {refused} 429; \
         suppressed holds {} entries ({metadata} as metadata) in {:.2} MB (whole they would be about {:.0} MB)",
        suppressed.len(),
        memory as f64 / 1e6,
        (suppressed.len() * FILE) as f64 * 4.0 / 3.0 / 1e6
    );
    assert_eq!(
        metadata,
        suppressed.len(),
        "every big copy is kept as metadata"
    );
    for entry in &suppressed {
        let envelope = entry.envelope();
        let attachment = &envelope["attachments"][0];
        assert_eq!(attachment["size"], FILE, "the size is kept");
        assert_eq!(attachment["filename"], "scan.pdf", "the name is kept");
        assert_eq!(
            attachment["sha256"].as_str().unwrap().len(),
            64,
            "the digest is kept"
        );
        assert_eq!(attachment["content_base64"], "", "the content is not");
    }
    assert!(
        memory < 2_000_000,
        "the refused posts cost Redis {memory} bytes, not their size"
    );
    assert_receipts_stored_once(&gw.redis_url, &gw.prefix, &receipts.all()).await;
}

#[tokio::test]
async fn refused_posts_past_max_refused_are_counted_not_written() {
    let rules = tempfile::tempdir().unwrap();
    std::fs::write(
        rules.path().join("10-strict.toml"),
        "[[rule]]\nname = \"one-post\"\nmatch = { channel = \"form\" }\nkey = [\"sender\"]\nrate = \"1/h\"\nburst = 1\naction = \"reject\"\n",
    )
    .unwrap();
    let extra = format!(
        "[rules]\ndir = \"{}\"\n[audit]\nmax_refused = 5\n",
        rules.path().display()
    );
    let gw = Gateway::start_with("audit_max_refused", &redis_url(), &extra).await;
    let bot = client_from(loopback(0, 6));
    let mut statuses = Vec::new();
    let mut receipts = Vec::new();
    for n in 0..30 {
        let response = bot
            .post(gw.form_url("contact"))
            .form(&[
                ("email", "bot@example.org"),
                ("message", &format!("spam {n}")),
            ])
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or_default();
        if status == 202 {
            receipts.push(body["id"].as_str().unwrap().to_string());
        }
        statuses.push(status);
    }
    assert_eq!(statuses[0], 202, "the first post passes");
    assert!(
        statuses[1..].iter().all(|s| *s == 429),
        "the rest are refused: {statuses:?}"
    );
    let suppressed = gw.entries("suppressed").await;
    println!(
        "max_refused: 29 refused posts, {} written to suppressed",
        suppressed.len()
    );
    assert_eq!(
        suppressed.len(),
        5,
        "refusals up to max_refused are kept for audit, the rest only counted"
    );
    assert_receipts_stored_once(&gw.redis_url, &gw.prefix, &receipts).await;
}

#[tokio::test]
async fn mail_beyond_a_mime_limit_passes_the_rate_limits_first() {
    let gw = Gateway::start_with(
        "audit_mime_flood",
        &redis_url(),
        &format!("{}[mime]\nmax_parts = 3\n", shipped_rules()),
    )
    .await;
    let client = support::client();
    let mut receipts = Vec::new();
    for n in 0..20 {
        let mut raw = format!(
            "From: flooder@example.org\r\nTo: support@shop.test\r\nSubject: parts {n}\r\nMessage-ID: <parts-{n}@example.org>\r\n\
             MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n"
        );
        for part in 0..6 {
            raw.push_str(&format!(
                "--b\r\nContent-Type: text/plain\r\n\r\nPart {part} of mail {n}: a different text each time.\r\n"
            ));
        }
        raw.push_str("--b--\r\n");
        let response = client
            .post(format!("{}/v1/messages", gw.url))
            .bearer_auth(TOKEN)
            .header("content-type", "message/rfc822")
            .body(raw)
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            202,
            "mail is accepted, never refused by a rule"
        );
        let body: Value = response.json().await.unwrap();
        receipts.push(body["id"].as_str().unwrap().to_string());
    }
    let quarantine = gw.entries("quarantine").await;
    let mime_limited = quarantine
        .iter()
        .filter(|e| e.field("kind") == "mime-limit")
        .count();
    let suppressed = gw.entries("suppressed").await.len();
    println!(
        "mime flood: 20 mails over max_parts, {mime_limited} quarantined, {suppressed} suppressed"
    );
    assert!(
        mime_limited <= 5,
        "one sender's oversized mails pass its rate limit first: {mime_limited} quarantined, the burst is 5"
    );
    assert_eq!(
        mime_limited + suppressed,
        20,
        "every mail is kept somewhere"
    );
    assert_receipts_stored_once(&gw.redis_url, &gw.prefix, &receipts).await;
}
