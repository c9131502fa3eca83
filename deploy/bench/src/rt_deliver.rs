//! The Request Tracker benchmark's helpers (deploy/bench/run, scenario `rt`):
//!
//! - `fill REDIS_URL STREAM N`: N desk entries, each a whole form envelope
//!   from its own customer (so each is a new ticket), receipt ids new to
//!   this run (RT's database outlives runs);
//! - `bare RT_URL TOKEN_FILE N CONCURRENCY`: the ceiling, RT itself:
//!   CONCURRENCY loops creating N tickets in all straight through REST 2.0
//!   (`POST /ticket`, the same JSON intake sends, kept-alive connections),
//!   no Redis, no search first. Prints `created=N seconds=S`.

use std::time::{Instant, SystemTime};

use intake::envelope::Envelope;
use redis::AsyncCommands;

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("fill") => fill(&args[1], &args[2], args[3].parse()?).await,
        Some("bare") => bare(&args[1], &args[2], args[3].parse()?, args[4].parse()?).await,
        _ => Err(
            "usage: rt_deliver fill REDIS STREAM N | bare RT_URL TOKEN_FILE N CONCURRENCY".into(),
        ),
    }
}

/// A receipt id (26 Crockford characters) no earlier run used.
fn receipt(run: u64, i: usize) -> String {
    format!("01{run:08X}{i:016}")
}

fn envelope(run: u64, i: usize) -> serde_json::Value {
    serde_json::json!({
        "version": 1, "id": receipt(run, i), "received_at": "2026-12-02T10:00:00Z",
        "channel": "form",
        "source": {"type": "form", "form": "contact", "ip": "192.0.2.1"},
        "customer": {"email": format!("bench-{run:x}-{i}@example.com")},
        "subject": format!("Order {i}"),
        "text": "Where is my order? ".repeat(20),
        "stripped_text": "Where is my order? ".repeat(20),
        "scan": {"status": "clean"}, "abuse": {"auto_submitted": false},
    })
}

fn run_number() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() & 0xffff_ffff)
        .unwrap_or(0)
}

async fn fill(url: &str, stream: &str, n: usize) -> Result<(), Error> {
    let client = redis::Client::open(url)?;
    let mut redis = client.get_multiplexed_async_connection().await?;
    let run = run_number();
    for i in 0..n {
        let envelope = envelope(run, i);
        let _: String = redis
            .xadd(
                stream,
                "*",
                &[
                    ("id", receipt(run, i).as_str()),
                    ("kind", "message"),
                    ("envelope", &envelope.to_string()),
                ],
            )
            .await?;
    }
    Ok(())
}

async fn bare(url: &str, token_file: &str, n: usize, concurrency: usize) -> Result<(), Error> {
    let token = std::fs::read_to_string(token_file)?.trim().to_string();
    let client = reqwest::Client::new();
    // A different run number than `fill`'s, so no id repeats.
    let run = run_number() ^ 0x8000_0000;
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, token, next) = (client.clone(), token.clone(), next.clone());
        let endpoint = format!("{}/REST/2.0/ticket", url.trim_end_matches('/'));
        tasks.push(tokio::spawn(async move {
            let mut created = 0usize;
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if i >= n {
                    return Ok::<usize, Error>(created);
                }
                let envelope: Envelope = serde_json::from_value(envelope(run, i))?;
                let body =
                    intake::delivery::rt::content::ticket(&envelope, "General", "Intake Receipt");
                let response = client
                    .post(&endpoint)
                    .header("authorization", format!("token {token}"))
                    .json(&body)
                    .send()
                    .await?;
                if response.status().as_u16() != 201 {
                    return Err(format!("RT answered {}", response.status()).into());
                }
                created += 1;
            }
        }));
    }
    let mut created = 0;
    for task in tasks {
        created += task.await??;
    }
    println!(
        "created={created} seconds={:.3}",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
