//! Faults under load: the gateway killed, Redis killed, clamd killed and
//! Dovecot killed while clients keep sending. Clients behave as real ones
//! do (a form script retries with its `Idempotency-Key`, a mail server
//! re-runs `intake mailgate` after exit 75), and at the end every item a
//! source acknowledged is in exactly one stream, once: the one rule of
//! README.md (its opening paragraph).

mod support;

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::clamd::PrivateClamd;
use support::imap::*;
use support::{client, default_toml, free_port, read_stream, Gateway, PrivateRedis, TOKEN};

/// How long one item may take to be acknowledged, retries included; far
/// beyond any fault in these tests, so only a stuck gateway reaches it.
const ITEM_DEADLINE: Duration = Duration::from_secs(120);

/// The streams an item may land in.
const ITEM_STREAMS: [&str; 4] = ["desk", "suppressed", "quarantine", "held"];

/// One item a client must get acknowledged: a form post or a mail, known
/// by its marker (form field `ref`, or the mail's Message-ID).
#[derive(Debug, Clone)]
enum Item {
    Form { marker: String, with_file: bool },
    Mail { marker: String },
}

impl Item {
    fn marker(&self) -> &str {
        match self {
            Item::Form { marker, .. } | Item::Mail { marker } => marker,
        }
    }
}

/// What the clients saw, shared by every client task.
#[derive(Default)]
struct Ledger {
    /// marker -> receipt id of the acknowledgement (202 / exit 0).
    acked: Mutex<HashMap<String, String>>,
    acked_count: AtomicUsize,
    /// 503 answers (each with Retry-After, checked) and mailgate exit 75.
    unavailable: AtomicUsize,
    tempfail: AtomicUsize,
    /// Requests that got no answer (connection refused or reset).
    no_answer: AtomicUsize,
    /// Anything the one rule forbids or the contract does not allow.
    violations: Mutex<Vec<String>>,
}

impl Ledger {
    fn violation(&self, text: String) {
        self.violations.lock().unwrap().push(text);
    }

    fn ack(&self, marker: &str, receipt: String) {
        let previous = self
            .acked
            .lock()
            .unwrap()
            .insert(marker.to_string(), receipt);
        if let Some(previous) = previous {
            self.violation(format!("{marker} acknowledged twice (first {previous})"));
        }
        self.acked_count.fetch_add(1, Ordering::SeqCst);
    }

    fn acked(&self) -> usize {
        self.acked_count.load(Ordering::SeqCst)
    }
}

/// The items of one run: `forms` posts (every `file_every`-th with an
/// upload, 0 for none) and `mails` mails.
fn items(test: &str, forms: usize, mails: usize, file_every: usize) -> Vec<Item> {
    let run = ulid::Ulid::new();
    let mut items = Vec::new();
    for n in 0..forms.max(mails) {
        if n < forms {
            items.push(Item::Form {
                marker: format!("{test}-form-{n}-{run}"),
                with_file: file_every > 0 && n % file_every == 0,
            });
        }
        if n < mails {
            items.push(Item::Mail {
                marker: format!("{test}-mail-{n}-{run}@example.com"),
            });
        }
    }
    items
}

/// Runs `form_clients` form clients and `mail_clients` mail-server
/// workers over the items until each is acknowledged; returns when all
/// are, or an item passes its deadline (a violation).
async fn deliver_all(
    url: String,
    token_file: PathBuf,
    items: Vec<Item>,
    form_clients: usize,
    mail_clients: usize,
    ledger: Arc<Ledger>,
) {
    let (forms, mails): (Vec<Item>, Vec<Item>) = items
        .into_iter()
        .partition(|i| matches!(i, Item::Form { .. }));
    let mut tasks = Vec::new();
    for (clients, list) in [(form_clients, forms), (mail_clients, mails)] {
        let queue = Arc::new(Mutex::new(list));
        for _ in 0..clients {
            let queue = queue.clone();
            let ledger = ledger.clone();
            let url = url.clone();
            let token_file = token_file.clone();
            tasks.push(tokio::spawn(async move {
                let http = client();
                loop {
                    let Some(item) = queue.lock().unwrap().pop() else {
                        break;
                    };
                    match &item {
                        Item::Form { .. } => post_form(&http, &url, &item, &ledger).await,
                        Item::Mail { .. } => send_mail(&url, &token_file, &item, &ledger).await,
                    }
                }
            }));
        }
    }
    for task in tasks {
        task.await.expect("client task");
    }
}

/// One form post, retried with the same `Idempotency-Key` until a 202.
async fn post_form(http: &reqwest::Client, url: &str, item: &Item, ledger: &Ledger) {
    let Item::Form { marker, with_file } = item else {
        unreachable!()
    };
    let started = Instant::now();
    loop {
        let mut form = reqwest::multipart::Form::new()
            .text("email", format!("{marker}@example.com"))
            .text("name", "Fault Test")
            .text("message", format!("Where is my order? ({marker})"))
            .text("ref", marker.clone());
        if *with_file {
            form = form.part(
                "file",
                reqwest::multipart::Part::bytes(format!("invoice of {marker}\n").into_bytes())
                    .file_name("invoice.txt")
                    .mime_str("text/plain")
                    .unwrap(),
            );
        }
        let answer = http
            .post(format!("{url}/v1/forms/contact"))
            .header("Idempotency-Key", marker.as_str())
            .multipart(form)
            .send()
            .await;
        match answer {
            Ok(response) if response.status() == 202 => {
                let body: serde_json::Value = match response.json().await {
                    Ok(body) => body,
                    // The answer was cut off: unanswered, so retried.
                    Err(_) => {
                        ledger.no_answer.fetch_add(1, Ordering::SeqCst);
                        continue;
                    }
                };
                let id = body["id"].as_str().unwrap_or_default().to_string();
                if id.is_empty() {
                    ledger.violation(format!("{marker}: 202 without a receipt: {body}"));
                }
                ledger.ack(marker, id);
                return;
            }
            Ok(response) if response.status() == 503 => {
                ledger.unavailable.fetch_add(1, Ordering::SeqCst);
                if response.headers().get("retry-after").is_none() {
                    ledger.violation(format!("{marker}: 503 without Retry-After"));
                }
            }
            Ok(response) => {
                let status = response.status();
                let body = response.text().await.unwrap_or_default();
                ledger.violation(format!("{marker}: unexpected {status}: {body}"));
                return;
            }
            Err(_) => {
                ledger.no_answer.fetch_add(1, Ordering::SeqCst);
            }
        }
        if started.elapsed() > ITEM_DEADLINE {
            ledger.violation(format!("{marker}: not acknowledged within the deadline"));
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One mail, handed to `intake mailgate` as a mail server's pipe would,
/// and handed again after every exit 75 (the mail server's retry).
async fn send_mail(url: &str, token_file: &Path, item: &Item, ledger: &Ledger) {
    let Item::Mail { marker } = item else {
        unreachable!()
    };
    let mail = format!(
        "From: Customer <{marker}>\r\nTo: support@shop.test\r\nSubject: Order question\r\n\
         Message-ID: <{marker}>\r\nDate: Mon, 30 Nov 2026 10:00:00 +0000\r\n\r\n\
         Hello, where is my order? ({marker})\r\n"
    );
    let started = Instant::now();
    loop {
        let (url, token_file, mail) = (url.to_string(), token_file.to_path_buf(), mail.clone());
        let (code, stdout) =
            tokio::task::spawn_blocking(move || mailgate(&url, &token_file, &mail))
                .await
                .expect("mailgate run");
        match code {
            0 => {
                let receipt = stdout
                    .split_whitespace()
                    .last()
                    .unwrap_or_default()
                    .to_string();
                ledger.ack(marker, receipt);
                return;
            }
            75 => {
                ledger.tempfail.fetch_add(1, Ordering::SeqCst);
            }
            other => {
                ledger.violation(format!("{marker}: mailgate exit {other}: {stdout}"));
                return;
            }
        }
        if started.elapsed() > ITEM_DEADLINE {
            ledger.violation(format!("{marker}: mail not stored within the deadline"));
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One run of the real `intake mailgate`: exit code and status line.
fn mailgate(url: &str, token_file: &Path, mail: &str) -> (i32, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_intake"))
        .args(["mailgate", "--url", url, "--timeout", "10s", "--token-file"])
        .arg(token_file)
        .args(["--sender", "customer@example.com"])
        .args(["--recipient", "support@shop.test"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run intake mailgate");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(mail.as_bytes())
        .unwrap();
    let output = child.wait_with_output().expect("mailgate output");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).trim().to_string(),
    )
}

/// The marker of a stream entry: the form's `ref` field or the mail's
/// Message-ID.
fn marker_of(entry: &support::Entry) -> String {
    let envelope = entry.envelope();
    let field = &envelope["fields"]["ref"];
    let field = field.as_str().or_else(|| field[0].as_str());
    match field {
        Some(marker) => marker.to_string(),
        None => envelope["message_id"]
            .as_str()
            .unwrap_or("(none)")
            .trim_matches(['<', '>'])
            .to_string(),
    }
}

/// The one rule, checked: no violations, every item acknowledged, each
/// in exactly one of the item streams exactly once, under its receipt.
async fn assert_each_acknowledged_item_stored_once(
    redis_url: &str,
    prefix: &str,
    items: &[Item],
    ledger: &Ledger,
) {
    let violations = ledger.violations.lock().unwrap().clone();
    assert!(
        violations.is_empty(),
        "{} violations, first: {:?}",
        violations.len(),
        &violations[..violations.len().min(5)]
    );
    let acked = ledger.acked.lock().unwrap().clone();
    assert_eq!(
        acked.len(),
        items.len(),
        "every item acknowledged in the end"
    );
    let mut found: HashMap<String, Vec<(String, String)>> = HashMap::new();
    for stream in ITEM_STREAMS {
        for entry in read_stream(redis_url, &format!("{prefix}:{stream}")).await {
            found
                .entry(marker_of(&entry))
                .or_default()
                .push((stream.to_string(), entry.field("id").to_string()));
        }
    }
    let mut doubled = Vec::new();
    let mut lost = Vec::new();
    let mut wrong_receipt = Vec::new();
    for item in items {
        let marker = item.marker();
        let receipt = &acked[marker];
        match found.get(marker).map(Vec::as_slice) {
            None | Some([]) => lost.push(format!("{marker} ({receipt})")),
            Some([(_, id)]) if id == receipt => {}
            Some([(stream, id)]) => {
                wrong_receipt.push(format!("{marker}: told {receipt}, stored {id} in {stream}"))
            }
            Some(many) => doubled.push(format!("{marker}: {many:?}")),
        }
    }
    assert!(
        lost.is_empty(),
        "{} acknowledged items are in no stream: {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    assert!(
        doubled.is_empty(),
        "{} items are stored more than once: {:?}",
        doubled.len(),
        &doubled[..doubled.len().min(5)]
    );
    assert!(
        wrong_receipt.is_empty(),
        "receipts that name no stored entry: {:?}",
        &wrong_receipt[..wrong_receipt.len().min(5)]
    );
    let total: usize = found.values().map(Vec::len).sum();
    assert_eq!(total, items.len(), "no entries beyond the items sent");
}

/// Waits until `ledger` has `n` acknowledgements (the fault then comes
/// mid-load), and says how many there were.
async fn wait_acked(ledger: &Ledger, n: usize) -> usize {
    eventually(120, &format!("{n} items acknowledged"), || async {
        let acked = ledger.acked();
        (acked >= n).then_some(acked)
    })
    .await
}

/// Waits until `url`/healthz answers.
async fn wait_healthy(url: &str) {
    let http = client();
    eventually(30, "the gateway answers /healthz", || {
        let request = http.get(format!("{url}/healthz")).send();
        async move { request.await.ok().filter(|r| r.status() == 200).map(drop) }
    })
    .await
}

fn token_file(dir: &Path) -> PathBuf {
    let path = dir.join("token");
    std::fs::write(&path, format!("{TOKEN}\n")).expect("write token");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gateway_killed_under_load_and_restarted_loses_and_doubles_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let token = token_file(dir.path());
    let redis_url = support::redis_url();
    let prefix = support::unique_prefix("faults_sigkill");
    let port = free_port();
    let config = dir.path().join("intake.toml");
    std::fs::write(
        &config,
        default_toml(&redis_url, &prefix, &token, "").replace(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"127.0.0.1:{port}\""),
        ),
    )
    .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let mut gateway = GatewayProcess::start(&config, &dir.path().join("first.log"));
    wait_healthy(&url).await;

    let items = items("sigkill", 240, 80, 0);
    let ledger = Arc::new(Ledger::default());
    let load = tokio::spawn(deliver_all(
        url.clone(),
        token.clone(),
        items.clone(),
        6,
        4,
        ledger.clone(),
    ));
    let at_kill = wait_acked(&ledger, 60).await;
    gateway.kill();
    // Clients meet a dead port for a moment, as in a real crash loop.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut gateway = GatewayProcess::start(&config, &dir.path().join("second.log"));
    load.await.unwrap();
    assert!(
        at_kill < items.len(),
        "the kill must come mid-load ({at_kill} of {} acknowledged)",
        items.len()
    );
    assert!(
        ledger.no_answer.load(Ordering::SeqCst) + ledger.tempfail.load(Ordering::SeqCst) > 0,
        "some clients must have met the dead gateway"
    );
    assert_each_acknowledged_item_stored_once(&redis_url, &prefix, &items, &ledger).await;
    gateway.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_killed_under_load_gives_503_and_every_receipt_survives() {
    let mut redis = PrivateRedis::start_persistent();
    let gw = Gateway::start_with("faults_redis", &redis.url(), "").await;
    let dir = tempfile::tempdir().unwrap();
    let token = token_file(dir.path());

    let items = items("redis", 200, 60, 0);
    let ledger = Arc::new(Ledger::default());
    let load = tokio::spawn(deliver_all(
        gw.url.clone(),
        token.clone(),
        items.clone(),
        6,
        4,
        ledger.clone(),
    ));
    let at_kill = wait_acked(&ledger, 50).await;
    redis.stop();
    // Stay down until both kinds of client have been told to come back.
    eventually(
        60,
        "a 503 and a mailgate exit 75 during the outage",
        || async {
            (ledger.unavailable.load(Ordering::SeqCst) > 0
                && ledger.tempfail.load(Ordering::SeqCst) > 0)
                .then_some(())
        },
    )
    .await;
    redis.restart();
    load.await.unwrap();
    assert!(at_kill < items.len(), "the outage must come mid-load");
    // A 202 given without a write would be missing now: Redis kept every
    // write it acknowledged (appendfsync always) through the kill.
    assert_each_acknowledged_item_stored_once(&redis.url(), &gw.prefix, &items, &ledger).await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clamd_killed_under_load_holds_items_and_delivers_each_once_when_back() {
    let mut clamd = PrivateClamd::start("");
    let scan = format!(
        "[scan]\nclamd = \"{}\"\ntimeout = \"3s\"\nredrive_interval = \"200ms\"\nredrive_max_backoff = \"1s\"\n",
        clamd.url()
    );
    let gw = Gateway::start_with("faults_clamd", &support::redis_url(), &scan).await;
    let dir = tempfile::tempdir().unwrap();
    let token = token_file(dir.path());

    // Every third post carries an upload, so forms are scanned too.
    let items = items("clamd", 150, 60, 3);
    let ledger = Arc::new(Ledger::default());
    let load = tokio::spawn(deliver_all(
        gw.url.clone(),
        token.clone(),
        items.clone(),
        6,
        4,
        ledger.clone(),
    ));
    let at_kill = wait_acked(&ledger, 40).await;
    clamd.stop();
    // Items keep being taken while clamd is away: they are held.
    let held = eventually(60, "items held while clamd is down", || async {
        let held = xlen(&gw.redis_url, &gw.prefix, "held").await;
        (held >= 3).then_some(held)
    })
    .await;
    clamd.restart();
    load.await.unwrap();
    assert!(at_kill < items.len(), "the kill must come mid-load");
    eventually(60, "held drained to the desk", || async {
        (xlen(&gw.redis_url, &gw.prefix, "held").await == 0).then_some(())
    })
    .await;
    assert_each_acknowledged_item_stored_once(&gw.redis_url, &gw.prefix, &items, &ledger).await;
    let desk = gw.entries("desk").await;
    assert_eq!(desk.len(), items.len(), "every held item reached the desk");
    let unscanned: Vec<String> = desk
        .iter()
        .map(|e| e.envelope())
        .filter(|env| env["scan"]["status"] != "clean")
        .map(|env| env["id"].to_string())
        .collect();
    assert!(
        unscanned.is_empty(),
        "items reached the desk without a clean scan: {unscanned:?} ({held} were held)"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dovecot_killed_mid_fetch_and_restarted_stores_each_mail_once() {
    const MAILS: usize = 300;
    let mut dovecot = PrivateDovecot::start();
    let boxes = Boxes::new("faults");
    let mut imap = login(dovecot.port, &dev_user(), &dev_password()).await;
    create(&mut imap, &boxes.inbox).await;
    let mails: Vec<Vec<u8>> = (1..=MAILS).map(|n| small_mail(n, "faults")).collect();
    append_all(&mut imap, &boxes.inbox, &mails, None).await;
    drop(imap);
    let dir = tempfile::tempdir().unwrap();
    let pw = secret_file(dir.path(), "pw", &dev_password());
    let extra = imap_toml(
        dovecot.port,
        &boxes,
        &pw,
        "batch_size = 20\nconcurrency = 4",
    );
    let gw = Gateway::start_with("faults_dovecot", &support::redis_url(), &extra).await;
    let before = eventually(60, "the first mails stored", || async {
        let len = xlen(&gw.redis_url, &gw.prefix, "desk").await;
        (len >= 30).then_some(len)
    })
    .await;
    dovecot.kill();
    let at_kill = xlen(&gw.redis_url, &gw.prefix, "desk").await;
    assert!(
        at_kill < MAILS,
        "the kill must come mid-backlog ({at_kill} stored)"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    dovecot.restart();
    // A Dovecot process killed while it held a maildir's uidlist lock leaves
    // the lock file behind, and the restarted server waits for it to go
    // stale (two minutes, MAILDIR_UIDLIST_LOCK_STALE_TIMEOUT) before it
    // answers a SELECT of that mailbox: the gateway retries meanwhile.
    eventually(240, "every mail on the desk", || async {
        (xlen(&gw.redis_url, &gw.prefix, "desk").await >= MAILS).then_some(())
    })
    .await;
    let mut session = login(dovecot.port, &dev_user(), &dev_password()).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let inbox = count(&mut session, &boxes.inbox).await;
        let done = count(&mut session, &boxes.done).await;
        if inbox == 0 && done as usize == MAILS {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the inbox holds {inbox} and the processed folder {done} mails, expected 0 and {MAILS}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let desk = gw.entries("desk").await;
    let mut ids: Vec<String> = desk.iter().map(marker_of).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), desk.len(), "a mail was stored twice");
    assert_eq!(desk.len(), MAILS, "every mail stored, none lost");
    for stream in ["suppressed", "quarantine", "held"] {
        assert_eq!(
            xlen(&gw.redis_url, &gw.prefix, stream).await,
            0,
            "nothing in {stream}"
        );
    }
    assert!(before >= 30);
    gw.stop().await;
}

/// What a retry after a lost answer looks like, without a fault: the same
/// request again. The first receipt comes back and nothing is written.
#[tokio::test]
async fn mail_handed_over_again_is_stored_once_under_its_first_receipt() {
    let gw = Gateway::start("faults_mail_retry").await;
    let dir = tempfile::tempdir().unwrap();
    let token = token_file(dir.path());
    let mail = "From: ann@example.com\r\nMessage-ID: <retry-1@example.com>\r\n\
                Subject: Retry\r\n\r\nWhere is my order?\r\n";
    let send = |mail: &'static str| {
        let (url, token) = (gw.url.clone(), token.clone());
        tokio::task::spawn_blocking(move || mailgate(&url, &token, mail))
    };
    let (first, first_line) = send(mail).await.unwrap();
    let (again, again_line) = send(mail).await.unwrap();
    assert_eq!((first, again), (0, 0), "{first_line} / {again_line}");
    assert_eq!(
        first_line, again_line,
        "the retry is told the first receipt"
    );
    assert_eq!(gw.entries("desk").await.len(), 1, "one desk item, not two");
    // Another mail (other bytes) is another item, even with the same
    // Message-ID: only the delivery itself is recognised.
    let edited = "From: ann@example.com\r\nMessage-ID: <retry-1@example.com>\r\n\
                  Subject: Retry\r\n\r\nWhere is my order? Any news?\r\n";
    assert_eq!(send(edited).await.unwrap().0, 0);
    assert_eq!(gw.entries("desk").await.len(), 2);
    gw.stop().await;
}

#[tokio::test]
async fn form_post_retried_with_its_idempotency_key_gets_the_first_receipt() {
    let gw = Gateway::start("faults_form_retry").await;
    let http = client();
    let post = |key: Option<&'static str>| {
        let mut request = http
            .post(gw.form_url("contact"))
            .form(&[("email", "ann@example.com"), ("message", "Where is it?")]);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        request.send()
    };
    let first = post(Some("order-77-attempt")).await.unwrap();
    assert_eq!(first.status(), 202);
    let first: serde_json::Value = first.json().await.unwrap();
    let again = post(Some("order-77-attempt")).await.unwrap();
    assert_eq!(again.status(), 202);
    let again: serde_json::Value = again.json().await.unwrap();
    assert_eq!(first["id"], again["id"], "the retry gets the first receipt");
    assert_eq!(gw.entries("desk").await.len(), 1, "one desk item, not two");
    let bad = http
        .post(gw.form_url("contact"))
        .header("Idempotency-Key", "")
        .form(&[("email", "ann@example.com")])
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400, "an empty key is refused, not ignored");
    gw.stop().await;
}

#[tokio::test]
async fn infected_upload_retried_with_its_key_is_refused_again_not_accepted() {
    let scan = format!(
        "[scan]\nclamd = \"tcp://{}\"\n",
        support::clamd::dev_clamd()
    );
    let gw = Gateway::start_with("faults_refused_retry", &support::redis_url(), &scan).await;
    let http = client();
    for attempt in ["first", "retry"] {
        let form = reqwest::multipart::Form::new()
            .text("email", "ann@example.com")
            .part(
                "file",
                reqwest::multipart::Part::bytes(support::clamd::eicar()).file_name("x.com"),
            );
        let response = http
            .post(gw.form_url("contact"))
            .header("Idempotency-Key", "infected-1")
            .multipart(form)
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            422,
            "the {attempt} post of an infected file is refused, never answered as accepted"
        );
    }
    assert!(gw.entries("desk").await.is_empty());
    // The refusal is kept for an audit once, not once per attempt: the
    // retry was judged again and its entry found under the refusal's key.
    let quarantined = gw.entries("quarantine").await;
    assert_eq!(
        quarantined.len(),
        1,
        "one quarantine entry for both attempts: {quarantined:?}"
    );
    gw.stop().await;
}
