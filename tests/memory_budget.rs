//! The memory budget for bodies in flight (`[memory]`), against the dev
//! Redis: big mails at once wait their turn for room instead of taking the
//! machine's memory, one big mail costs the gateway at most three times its
//! size, the memory goes back to the system after a peak, a body the budget
//! cannot take is refused with "retry later", and every receipt a client
//! was given is stored once.
//!
//! The RSS figures are the gateway binary's own (`support::imap::
//! GatewayProcess`, /proc/PID/status); they do not depend on the machine's
//! speed and are asserted. Latencies are printed, never asserted.

mod support;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use serde_json::Value;
use support::audit::{assert_receipts_stored_once, Receipts};
use support::bystander::{self, bystander_address, client_from, loopback, Latencies};
use support::imap::{eventually, GatewayProcess};
use support::{default_toml, free_port, redis_url, unique_prefix, TOKEN};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// The hardening issue's mail: about 49 MB, most of it a 36 MB attachment
/// in base64 (76-character lines). The body is shared; each mail gets its
/// own head (and envelope sender), so none is a retry of another.
struct BigMail {
    body: Bytes,
}

impl BigMail {
    fn new() -> BigMail {
        // Bytes that do not repeat (xorshift): nothing about them is easy.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut data = Vec::with_capacity(36_000_000);
        while data.len() < 36_000_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            data.extend_from_slice(&state.to_le_bytes());
        }
        let encoded = base64::engine::general_purpose::STANDARD.encode(&data);
        let mut body = Vec::with_capacity(encoded.len() / 76 * 78 + 1024);
        body.extend_from_slice(
            b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n\
              --b\r\nContent-Type: text/plain\r\n\r\nThe invoice is attached.\r\n\
              --b\r\nContent-Type: application/octet-stream; name=\"invoice.bin\"\r\n\
              Content-Disposition: attachment; filename=\"invoice.bin\"\r\n\
              Content-Transfer-Encoding: base64\r\n\r\n",
        );
        for line in encoded.as_bytes().chunks(76) {
            body.extend_from_slice(line);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(b"--b--\r\n");
        BigMail { body: body.into() }
    }

    fn mail(&self, tag: &str) -> Vec<u8> {
        let head = format!(
            "From: Customer <{tag}@example.com>\r\nTo: support@shop.test\r\n\
             Subject: invoice {tag}\r\nMessage-ID: <{tag}@example.com>\r\n"
        );
        [head.as_bytes(), &self.body].concat()
    }
}

/// A gateway binary of the test's own with `[memory]` set, its admin
/// listener on for the budget's metrics.
struct Running {
    process: GatewayProcess,
    url: String,
    admin: String,
    prefix: String,
    _dir: tempfile::TempDir,
}

impl Running {
    async fn start(test: &str, memory: &str) -> Running {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
        let admin_token = secret(dir.path(), "admin-token", "memory-admin-token");
        let prefix = unique_prefix(test);
        let (port, admin_port) = (free_port(), free_port());
        let extra = format!(
            "[admin]\nlisten = \"127.0.0.1:{admin_port}\"\ntoken = {{ file = \"{}\" }}\n\n[memory]\n{memory}\n",
            admin_token.display()
        );
        let text = default_toml(&redis_url(), &prefix, &token, &extra)
            .replace(
                "listen = \"127.0.0.1:0\"",
                &format!("listen = \"127.0.0.1:{port}\""),
            )
            // The mails are up to 50 MB; a shared machine gets time.
            .replace("max_size = \"1MB\"", "max_size = \"50MB\"")
            .replace("request_timeout = \"10s\"", "request_timeout = \"120s\"")
            .replace("timeout = \"1s\"", "timeout = \"10s\"");
        let config = dir.path().join("intake.toml");
        std::fs::write(&config, text).unwrap();
        let process = GatewayProcess::start(&config, &dir.path().join("gateway.log"));
        let url = format!("http://127.0.0.1:{port}");
        let http = support::client();
        eventually(60, "the gateway answers /healthz", || {
            let request = http.get(format!("{url}/healthz")).send();
            async move { request.await.ok().filter(|r| r.status() == 200).map(drop) }
        })
        .await;
        Running {
            process,
            url,
            admin: format!("http://127.0.0.1:{admin_port}"),
            prefix,
            _dir: dir,
        }
    }

    fn pid(&self) -> u32 {
        self.process.pid().expect("the gateway runs")
    }

    /// A counter or gauge from the admin listener's /metrics (summed over
    /// its labels), 0 when it was never set.
    async fn metric(&self, name: &str) -> f64 {
        let text = support::client()
            .get(format!("{}/metrics", self.admin))
            .bearer_auth("memory-admin-token")
            .send()
            .await
            .expect("admin listener answers")
            .text()
            .await
            .unwrap();
        text.lines()
            .filter(|l| l.starts_with(name) && !l.starts_with('#'))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Deletes every key of the test's prefix: the big mails' entries are
    /// gigabytes the shared dev Redis should not keep. UNLINK frees them
    /// off Redis' main thread (a DEL of them held it for up to 0.75 s).
    async fn clean_up(&self) {
        let mut conn = support::test_connection(&redis_url()).await;
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("*{}*", self.prefix))
            .query_async(&mut conn)
            .await
            .unwrap();
        for key in keys {
            let _: () = redis::cmd("UNLINK")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .unwrap();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.process.log_text();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("gateway log, last lines:");
            for line in tail.iter().rev() {
                eprintln!("  {line}");
            }
        }
    }
}

fn secret(dir: &Path, name: &str, value: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("{value}\n")).unwrap();
    path
}

/// A line of /proc/PID/status in bytes (`VmRSS`, `VmHWM`).
fn status_bytes(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the gateway runs");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{key} in /proc/{pid}/status"));
    kb * 1024
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

/// Samples the gateway's VmRSS until stopped; `peak` is the highest seen.
struct Sampler {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    fn start(pid: u32) -> Sampler {
        let peak = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let (peak, stop) = (peak.clone(), stop.clone());
            move || {
                while !stop.load(Ordering::SeqCst) {
                    peak.fetch_max(status_bytes(pid, "VmRSS"), Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        });
        Sampler {
            peak,
            stop,
            thread: Some(thread),
        }
    }

    fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
        self.peak.load(Ordering::SeqCst)
    }
}

/// The mail server's client, from its own loopback address. A mail that
/// waits for room is not read meanwhile: its upload stalls on a full TCP
/// window, which reqwest's default TCP_USER_TIMEOUT (30 s) would cut;
/// `intake mailgate` has no such limit, only its --timeout.
fn mail_server(source: IpAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .local_address(source)
        .tcp_user_timeout(None::<Duration>)
        .build()
        .expect("client")
}

/// Posts one mail to /v1/messages as `intake mailgate` does (token,
/// declared length); returns the status and the receipt of a 202.
async fn post_mail(
    http: &reqwest::Client,
    url: &str,
    sender: &str,
    mail: Vec<u8>,
) -> (u16, Option<String>) {
    let response = http
        .post(format!("{url}/v1/messages"))
        .bearer_auth(TOKEN)
        .header("content-type", "message/rfc822")
        .header("x-intake-envelope-sender", sender)
        .header("x-intake-envelope-recipient", "support@shop.test")
        .body(mail)
        .timeout(Duration::from_secs(1800))
        .send()
        .await
        .expect("the gateway answers the mail");
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    (status, body["id"].as_str().map(str::to_string))
}

/// One small form post from the bystander; its receipt is kept.
async fn post_form(
    http: &reqwest::Client,
    url: &str,
    n: usize,
    receipts: &Receipts,
) -> Result<(), String> {
    let response = http
        .post(format!("{url}/v1/forms/contact"))
        .form(&[
            ("email", format!("bystander{n}@example.com")),
            ("message", format!("Where is my order {n}?")),
        ])
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if response.status() != 202 {
        return Err(format!("status {}", response.status()));
    }
    let body: Value = response.json().await.map_err(|e| e.to_string())?;
    receipts.add(body["id"].as_str().ok_or("202 without an id")?);
    Ok(())
}

/// The bystander's posts while `running` holds, one every 200 ms.
async fn bystander_during(
    http: reqwest::Client,
    url: String,
    running: Arc<AtomicBool>,
    receipts: Receipts,
) -> Latencies {
    let mut latencies = Vec::new();
    let mut n = 1000;
    while running.load(Ordering::SeqCst) {
        let started = Instant::now();
        if let Err(e) = post_form(&http, &url, n, &receipts).await {
            panic!("during the attack: the normal client's post {n} was not served: {e}");
        }
        latencies.push(started.elapsed());
        n += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Latencies(latencies)
}

/// A round of `count` big mails posted at once from the mail server's
/// address; every one must be stored (202) however long it waited.
async fn round(
    gateway: &Running,
    big: &BigMail,
    name: &str,
    count: usize,
    receipts: &Receipts,
) -> Duration {
    let mail_server = mail_server(loopback(0, 10));
    let started = Instant::now();
    let posts = (0..count).map(|i| {
        let tag = format!("{name}-{i}-{}", ulid::Ulid::new());
        let mail = big.mail(&tag);
        let (http, url) = (mail_server.clone(), gateway.url.clone());
        tokio::spawn(async move {
            let posted = Instant::now();
            let (status, receipt) =
                post_mail(&http, &url, &format!("{tag}@example.com"), mail).await;
            (status, receipt, posted.elapsed())
        })
    });
    let answers = futures_util::future::join_all(posts).await;
    let mut times = Vec::new();
    for answer in answers {
        let (status, receipt, took) = answer.unwrap();
        assert_eq!(
            status, 202,
            "{name}: every big mail is stored after waiting its turn, none refused"
        );
        receipts.add(receipt.expect("a 202 carries the receipt"));
        times.push(format!("{:.1}s", took.as_secs_f64()));
    }
    println!("{name}: {count} mails of 49 MB answered 202 after {times:?}");
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_big_mails_at_once_wait_their_turn_and_a_small_client_is_still_served() {
    // Room for three 49 MB mails at once: of eight, five have to wait.
    let budget: u64 = 150_000_000;
    let gateway = Running::start(
        "memory_rounds",
        &format!("body_budget = {budget}\nbody_wait = \"15m\""),
    )
    .await;
    let pid = gateway.pid();
    let big = BigMail::new();
    let receipts = Receipts::default();
    let bystander = client_from(bystander_address());

    // The normal client alone first; its posts also warm the gateway up.
    let quiet = bystander::measure("quiet", 30, |n| {
        post_form(&bystander, &gateway.url, n, &receipts)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = status_bytes(pid, "VmRSS");

    let mut peaks = Vec::new();
    let mut after = Vec::new();
    let mut attacked = Latencies::default();
    for name in ["first round", "second round"] {
        let sampler = Sampler::start(pid);
        let running = Arc::new(AtomicBool::new(true));
        let watching = tokio::spawn(bystander_during(
            bystander.clone(),
            gateway.url.clone(),
            running.clone(),
            receipts.clone(),
        ));
        let took = round(&gateway, &big, name, 8, &receipts).await;
        running.store(false, Ordering::SeqCst);
        attacked.0.extend(watching.await.unwrap().0);
        peaks.push(sampler.stop());
        tokio::time::sleep(Duration::from_secs(2)).await;
        after.push(status_bytes(pid, "VmRSS"));
        println!(
            "{name}: {:.0} s; gateway RSS peak {:.0} MB, {:.0} MB two seconds after (idle {:.0} MB)",
            took.as_secs_f64(),
            mb(peaks[peaks.len() - 1]),
            mb(after[after.len() - 1]),
            mb(idle)
        );
    }
    let waits = gateway.metric("intake_body_budget_waits_total").await;
    let refusals = gateway.metric("intake_body_budget_refusals_total").await;
    let hwm = status_bytes(pid, "VmHWM");
    println!(
        "budget {:.0} MB: {} bodies waited for room, {} refused; VmHWM {:.0} MB, idle {:.0} MB",
        mb(budget),
        waits as u64,
        refusals as u64,
        mb(hwm),
        mb(idle)
    );
    bystander::report("memory_rounds", &quiet, &attacked);

    assert!(
        waits >= 1.0,
        "eight 49 MB mails in a budget for three: some must have waited"
    );
    assert!(
        hwm.saturating_sub(idle) <= 3 * budget,
        "the gateway's peak ({:.0} MB above idle) stays within three times the body budget ({:.0} MB)",
        mb(hwm.saturating_sub(idle)),
        mb(budget)
    );
    for (n, rss) in after.iter().enumerate() {
        assert!(
            rss.saturating_sub(idle) < 49_000_000,
            "round {}: memory goes back to the system after the peak: {:.0} MB two seconds after, idle {:.0} MB",
            n + 1,
            mb(*rss),
            mb(idle)
        );
    }
    let stored = assert_receipts_stored_once(&redis_url(), &gateway.prefix, &receipts.all()).await;
    println!(
        "audit: {} receipts, desk holds {}",
        receipts.len(),
        stored.count("desk")
    );
    gateway.clean_up().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_big_mail_costs_the_gateway_at_most_three_times_its_size() {
    let gateway = Running::start("memory_one_mail", "").await;
    let pid = gateway.pid();
    let big = BigMail::new();
    let receipts = Receipts::default();
    let http = mail_server(loopback(0, 11));
    // Warm up with a small post so the baseline has its buffers.
    post_form(&http, &gateway.url, 0, &receipts).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = status_bytes(pid, "VmRSS");
    let mail = big.mail(&format!("alone-{}", ulid::Ulid::new()));
    let size = mail.len() as u64;
    let started = Instant::now();
    let (status, receipt) = post_mail(&http, &gateway.url, "alone@example.com", mail).await;
    let took = started.elapsed();
    assert_eq!(status, 202, "the mail is stored");
    let receipt = receipt.unwrap();
    receipts.add(receipt.clone());
    let peak = status_bytes(pid, "VmHWM").saturating_sub(idle);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = status_bytes(pid, "VmRSS");
    println!(
        "one mail of {:.1} MB in {:.1} s: peak {:.0} MB above idle ({:.2} times its size); idle {:.0} MB, {:.0} MB two seconds after",
        mb(size),
        took.as_secs_f64(),
        mb(peak),
        peak as f64 / size as f64,
        mb(idle),
        mb(after)
    );
    assert!(
        peak <= 3 * size,
        "one item's peak is at most three times its size: {:.0} MB above idle for {:.1} MB",
        mb(peak),
        mb(size)
    );
    assert_receipts_stored_once(&redis_url(), &gateway.prefix, &receipts.all()).await;
    let desk = support::read_stream(&redis_url(), &format!("{}:desk", gateway.prefix)).await;
    let envelope = desk
        .iter()
        .find(|e| e.field("id") == receipt)
        .expect("the mail is on the desk")
        .envelope();
    assert_eq!(
        envelope["attachments"][0]["size"], 36_000_000,
        "the attachment is stored whole"
    );
    let raw = base64::engine::general_purpose::STANDARD
        .decode(envelope["raw"].as_str().unwrap())
        .unwrap();
    assert_eq!(raw.len() as u64, size, "the raw message is stored whole");
    gateway.clean_up().await;
}

// The in-process gateway from here on: a small budget, small bodies.

/// Budget 1.5 MB; `/v1/messages` takes up to 1 MB (the default test
/// config), LMTP up to 1 MB; a body waits at most one second.
async fn small_budget(test: &str) -> (support::Gateway, u16) {
    let lmtp = free_port();
    let extra = format!(
        "[memory]\nbody_budget = \"1.5MB\"\nbody_wait = \"1s\"\n\n\
         [lmtp]\nlisten = \"127.0.0.1:{lmtp}\"\nmax_size = \"1MB\"\n"
    );
    let gw = support::Gateway::start_edited(test, &redis_url(), &extra, |text| {
        // The holders stall their uploads; they must outlast the test.
        text.replace("request_timeout = \"10s\"", "request_timeout = \"120s\"")
    })
    .await;
    (gw, lmtp)
}

/// A mail upload that declares `length` bytes and then stalls, holding its
/// room in the budget: it asks `Expect: 100-continue` and returns once the
/// gateway says to go on, which it does only after the room was taken.
async fn hold(gw: &support::Gateway, source: IpAddr, length: usize) -> TcpStream {
    let mut stream = bystander::connect_from(source, gw.addr).await.unwrap();
    let head = format!(
        "POST /v1/messages HTTP/1.1\r\nHost: shop.test\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: message/rfc822\r\nContent-Length: {length}\r\nExpect: 100-continue\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut answer))
        .await
        .expect("the gateway says go on")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(
        answer.starts_with("HTTP/1.1 100"),
        "the holder got its room: {answer}"
    );
    stream
        .write_all(b"From: holder@example.com\r\n")
        .await
        .unwrap();
    stream
}

fn small_mail(tag: &str, size: usize) -> Vec<u8> {
    let mut mail = format!(
        "From: {tag}@example.com\r\nSubject: {tag}\r\nMessage-ID: <{tag}-{}@example.com>\r\n\r\n",
        ulid::Ulid::new()
    )
    .into_bytes();
    while mail.len() < size {
        mail.extend_from_slice(b"A line of a mail that is long enough to matter here.\r\n");
    }
    mail
}

#[tokio::test]
async fn a_body_over_the_limit_is_refused_at_once_even_while_the_budget_is_full() {
    let (gw, _) = small_budget("memory_over").await;
    let _holder = hold(&gw, loopback(0, 20), 1_000_000).await;
    let http = support::client();
    for (what, url, content_type) in [
        ("mail", format!("{}/v1/messages", gw.url), "message/rfc822"),
        (
            "form",
            gw.form_url("contact"),
            "application/x-www-form-urlencoded",
        ),
    ] {
        let started = Instant::now();
        let response = http
            .post(url)
            .bearer_auth(TOKEN)
            .header("content-type", content_type)
            .body(vec![b'a'; 2_000_000])
            .send()
            .await
            .unwrap();
        println!(
            "{what} of 2 MB (over its limit and the whole budget) answered {} in {:?}",
            response.status(),
            started.elapsed()
        );
        assert_eq!(
            response.status(),
            413,
            "a {what} over its limit is refused for its size, not kept waiting for room"
        );
    }
}

/// A chunked upload (no Content-Length) of `size` bytes sent in 64 KiB
/// pieces from `source`; the answer's status and body.
async fn chunked_mail(gw: &support::Gateway, source: IpAddr, mail: Vec<u8>) -> (u16, Value) {
    let pieces: Vec<Result<Bytes, std::io::Error>> = mail
        .chunks(64 * 1024)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(pieces));
    let response = client_from(source)
        .post(format!("{}/v1/messages", gw.url))
        .bearer_auth(TOKEN)
        .header("content-type", "message/rfc822")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_chunked_body_without_a_length_is_bounded_by_the_budget_and_its_limit() {
    let (gw, _) = small_budget("memory_chunked").await;
    let receipts = Receipts::default();
    let holder = hold(&gw, loopback(0, 21), 1_000_000).await;

    // 1 MB of 1.5 MB held: a 700 KB body that declared nothing runs out of
    // room as it arrives, waits its second, and is told to retry.
    let started = Instant::now();
    let (status, body) = chunked_mail(&gw, loopback(0, 22), small_mail("chunked", 700_000)).await;
    println!(
        "chunked 700 KB beside 1 MB held: {status} after {:?}",
        started.elapsed()
    );
    assert_eq!(status, 503, "no room within memory.body_wait: retry later");
    assert_eq!(body["error"], "unavailable", "{body}");

    // The holder leaves; the same body now fits and is stored.
    drop(holder);
    let mail = small_mail("chunked-again", 700_000);
    let (status, body) = eventually(10, "the holder's room comes back", || {
        let mail = mail.clone();
        let gw = &gw;
        async move {
            let answer = chunked_mail(gw, loopback(0, 22), mail).await;
            (answer.0 != 503).then_some(answer)
        }
    })
    .await;
    assert_eq!(status, 202, "with room the chunked body is stored: {body}");
    receipts.add(body["id"].as_str().unwrap());

    // However much room there is, a chunked body stops at its limit.
    let (status, _) =
        chunked_mail(&gw, loopback(0, 22), small_mail("chunked-big", 1_200_000)).await;
    assert_eq!(status, 413, "a chunked body over messages.max_size");
    assert_receipts_stored_once(&gw.redis_url, &gw.prefix, &receipts.all()).await;
}

/// One LMTP reply: its code and its whole text.
async fn lmtp_reply(reader: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> (u16, String) {
    let mut text = String::new();
    loop {
        let mut line = String::new();
        tokio::time::timeout(Duration::from_secs(30), reader.read_line(&mut line))
            .await
            .expect("the LMTP listener replies")
            .unwrap();
        assert!(!line.is_empty(), "the LMTP listener closed; so far: {text}");
        text.push_str(&line);
        if line.as_bytes().get(3) == Some(&b' ') {
            return (line[..3].parse().unwrap(), text);
        }
    }
}

#[tokio::test]
async fn lmtp_data_waits_for_room_then_is_deferred_451_and_passes_once_there_is_room() {
    let (gw, port) = small_budget("memory_lmtp").await;
    let receipts = Receipts::default();
    let holder = hold(&gw, loopback(0, 23), 1_000_000).await;

    let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    assert_eq!(lmtp_reply(&mut reader).await.0, 220);
    let mail = small_mail("lmtp", 600_000);
    write
        .write_all(
            format!(
                "LHLO client.test\r\nMAIL FROM:<lmtp@example.com> SIZE={}\r\nRCPT TO:<support@shop.test>\r\n",
                mail.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    for expected in [250, 250, 250] {
        assert_eq!(lmtp_reply(&mut reader).await.0, expected);
    }

    // 600 KB declared beside 1 MB held of 1.5 MB: DATA waits, then 451.
    let started = Instant::now();
    write.write_all(b"DATA\r\n").await.unwrap();
    let (code, text) = lmtp_reply(&mut reader).await;
    println!(
        "LMTP DATA of 600 KB beside 1 MB held: {} after {:?}",
        text.trim_end(),
        started.elapsed()
    );
    assert_eq!(code, 451, "no room: the mail server keeps the mail: {text}");
    assert!(text.contains("4.3.1"), "{text}");

    // With the room back, the same transaction's DATA goes through.
    drop(holder);
    let deadline = Instant::now() + Duration::from_secs(10);
    let (code, text) = loop {
        write.write_all(b"DATA\r\n").await.unwrap();
        let reply = lmtp_reply(&mut reader).await;
        if reply.0 != 451 || Instant::now() > deadline {
            break reply;
        }
    };
    assert_eq!(code, 354, "the room came back: {text}");
    write.write_all(&mail).await.unwrap();
    write.write_all(b".\r\n").await.unwrap();
    let (code, text) = lmtp_reply(&mut reader).await;
    assert_eq!(code, 250, "stored once there was room: {text}");
    let receipt = text.trim_end().rsplit(' ').next().unwrap().to_string();
    receipts.add(receipt);
    assert_receipts_stored_once(&gw.redis_url, &gw.prefix, &receipts.all()).await;
}
