//! Load driver for `deploy/bench/flood`: one flooder (N mails and M form
//! posts in a burst) and K legitimate customers (one mail each), against a
//! running gateway. Prints the legitimate items' latency percentiles, the
//! answers, how many legitimate items reached the desk, and the gateway's
//! peak memory (VmHWM).
//!
//!   cargo run --release --example flood -- --url URL --token T \
//!       --redis URL --prefix P --pid PID [--flood-mails 10000] \
//!       [--flood-forms 5000] [--legit 200] [--concurrency 32] [--no-flood]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Args {
    url: String,
    token: String,
    redis: String,
    prefix: String,
    pid: Option<u32>,
    flood_mails: usize,
    flood_forms: usize,
    legit: usize,
    concurrency: usize,
    flood: bool,
}

fn args() -> Args {
    let mut a = Args {
        url: String::new(),
        token: String::new(),
        redis: "redis://127.0.0.1:16379".into(),
        prefix: "intake".into(),
        pid: None,
        flood_mails: 10_000,
        flood_forms: 5_000,
        legit: 200,
        concurrency: 32,
        flood: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().expect("flag needs a value");
        match flag.as_str() {
            "--url" => a.url = value(),
            "--token" => a.token = value(),
            "--redis" => a.redis = value(),
            "--prefix" => a.prefix = value(),
            "--pid" => a.pid = value().parse().ok(),
            "--flood-mails" => a.flood_mails = value().parse().expect("number"),
            "--flood-forms" => a.flood_forms = value().parse().expect("number"),
            "--legit" => a.legit = value().parse().expect("number"),
            "--concurrency" => a.concurrency = value().parse().expect("number"),
            "--no-flood" => a.flood = false,
            other => panic!("unknown flag {other}"),
        }
    }
    assert!(!a.url.is_empty(), "--url is required");
    a
}

enum Item {
    Legit(usize),
    Mail(usize),
    Form(usize),
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[tokio::main]
async fn main() {
    let a = Arc::new(args());
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(a.concurrency)
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    // Legitimate customers interleaved evenly with the flood.
    let mut items = Vec::new();
    let flood_total = if a.flood {
        a.flood_mails + a.flood_forms
    } else {
        0
    };
    let every = (flood_total / a.legit.max(1)).max(1);
    let (mut m, mut f, mut l) = (0, 0, 0);
    for i in 0..flood_total.max(a.legit * every) {
        if i % every == 0 && l < a.legit {
            items.push(Item::Legit(l));
            l += 1;
        }
        if a.flood {
            if i % 3 != 2 && m < a.flood_mails {
                items.push(Item::Mail(m));
                m += 1;
            } else if f < a.flood_forms {
                items.push(Item::Form(f));
                f += 1;
            } else if m < a.flood_mails {
                items.push(Item::Mail(m));
                m += 1;
            }
        }
    }
    while l < a.legit {
        items.push(Item::Legit(l));
        l += 1;
    }
    let limit = Arc::new(tokio::sync::Semaphore::new(a.concurrency));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for item in items {
        let permit = limit.clone().acquire_owned().await.unwrap();
        let client = client.clone();
        let a = a.clone();
        tasks.spawn(async move {
            let _permit = permit;
            let messages = format!("{}/v1/messages", a.url);
            let (legit, request) = match item {
                Item::Legit(n) => (
                    true,
                    client.post(&messages).bearer_auth(&a.token).header("content-type", "message/rfc822").body(format!(
                        "From: legit{n}@customers.example\r\nSubject: Question {n}\r\nMessage-ID: <legit-{n}@customers.example>\r\n\r\nHello, where is my order {}?\r\n",
                        20_000 + n
                    )),
                ),
                Item::Mail(n) => (
                    false,
                    client.post(&messages).bearer_auth(&a.token).header("content-type", "message/rfc822").body(format!(
                        "From: Flooder+{}@Example.org\r\nSubject: REFUND\r\nMessage-ID: <flood-{n}@example.org>\r\n\r\nWhere is my refund for order {}? Answer now!\r\n",
                        n % 97,
                        70_000 + n % 5
                    )),
                ),
                Item::Form(n) => (
                    false,
                    client
                        .post(format!("{}/v1/forms/contact", a.url))
                        .form(&[("email", "flooder@example.org".to_string()), ("message", format!("Refund for order {} NOW", 70_000 + n % 5))]),
                ),
            };
            let t = Instant::now();
            let status = request.send().await.map(|r| r.status().as_u16()).unwrap_or(0);
            (legit, status, t.elapsed())
        });
    }
    let mut legit_latency = Vec::new();
    let mut statuses: BTreeMap<(bool, u16), usize> = BTreeMap::new();
    while let Some(done) = tasks.join_next().await {
        let (legit, status, elapsed) = done.unwrap();
        if legit {
            legit_latency.push(elapsed);
        }
        *statuses.entry((legit, status)).or_default() += 1;
    }
    let wall = started.elapsed();
    legit_latency.sort();
    let desk = desk_count(&a.redis, &format!("{}:desk", a.prefix)).await;
    println!(
        "phase: {}  requests: {}  wall: {:.2}s",
        if a.flood { "flood" } else { "baseline" },
        statuses.values().sum::<usize>(),
        wall.as_secs_f64()
    );
    for ((legit, status), n) in &statuses {
        println!(
            "  {} {status}: {n}",
            if *legit { "legit  " } else { "flooder" }
        );
    }
    println!(
        "  legit latency p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
        percentile(&legit_latency, 0.5).as_secs_f64() * 1e3,
        percentile(&legit_latency, 0.99).as_secs_f64() * 1e3,
        legit_latency
            .last()
            .copied()
            .unwrap_or_default()
            .as_secs_f64()
            * 1e3
    );
    println!("  desk entries: legit {} flooder {}", desk.0, desk.1);
    if let Some(pid) = a.pid {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let hwm = status
            .lines()
            .find(|l| l.starts_with("VmHWM"))
            .unwrap_or("VmHWM: ?");
        println!(
            "  gateway peak memory {}",
            hwm.trim_start_matches("VmHWM:").trim()
        );
    }
}

/// Desk entries of legitimate customers and of the flooder.
async fn desk_count(redis_url: &str, key: &str) -> (usize, usize) {
    let client = redis::Client::open(redis_url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    let (mut legit, mut flooder) = (0, 0);
    for (_, fields) in entries {
        let envelope = fields
            .iter()
            .find(|(k, _)| k == "envelope")
            .map(|(_, v)| v.as_str())
            .unwrap_or("");
        if envelope.contains("@customers.example") {
            legit += 1;
        } else if envelope.to_lowercase().contains("flooder") {
            flooder += 1;
        }
    }
    (legit, flooder)
}
