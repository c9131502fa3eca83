//! The sender-authentication benchmark of `deploy/bench/run`: what
//! checking a mail's DKIM, SPF, DMARC and ARC adds to its parse, with the
//! DNS cache warm (every lookup answered from intake's resolver cache, as
//! for a desk's regular customers). One thread; each iteration parses
//! every mail, and times parse alone and parse plus `Authenticator::check`
//! interleaved, so both see the same machine load; the best counts.
//!
//!     cargo run --release --example auth_verify -- DIR ITERATIONS DNS
//!
//! DIR holds `*.eml` mails signed by deploy/dev/sign-mail as
//! customer.test; DNS is the dev DNS (`127.0.0.1:15353`). Prints
//! `parse mails=N seconds=S` and `parse+auth mails=N seconds=S passed=P`
//! (P: mails whose From: aligned, which must be all of them: a benchmark
//! of failing lookups would time timeouts).

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use intake::auth::{AuthConfig, Authenticator};
use intake::envelope::{SmtpClient, Source};
use intake::parse::{parse, Message, ParseOptions};
use intake::submission::{Payload, Submission};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn parse_one(raw: &Bytes) -> Message {
    let source = Source::Lmtp {
        sender: "ann@customer.test".into(),
        recipients: vec!["support@shop.test".into()],
        ip: "127.0.0.1".into(),
        client: Some(SmtpClient {
            address: Some("127.0.0.1".into()),
            helo: Some("mx.customer.test".into()),
        }),
    };
    let options = ParseOptions {
        form: None,
        keep_raw: false,
    };
    parse(Submission::new(source, Payload::Mail(raw.clone())), options).expect("parses")
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: auth_verify DIR ITERATIONS DNS";
    let dir = args.next().ok_or(usage)?;
    let iterations: usize = args.next().ok_or(usage)?.parse()?;
    let dns = args.next().ok_or(usage)?;
    let mut paths: Vec<_> = std::fs::read_dir(&dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<Vec<_>, _>>()?;
    paths.retain(|p| p.extension().is_some_and(|e| e == "eml"));
    paths.sort();
    let mails: Vec<Bytes> = paths
        .iter()
        .map(|p| std::fs::read(p).map(Bytes::from))
        .collect::<Result<_, _>>()?;
    if mails.is_empty() {
        return Err(format!("{dir} holds no mail").into());
    }
    let config: AuthConfig = toml::from_str(&format!(
        "nameservers = [\"{dns}\"]\ntimeout = \"2s\"\ncache_entries = 10000"
    ))?;
    let auth = Authenticator::new(config)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        // Warm the cache; every mail must pass, or the figure is not one
        // of verification.
        let mut passed = 0;
        for raw in &mails {
            let message = parse_one(raw);
            if auth.check(&message.envelope, raw).await.aligned_from {
                passed += 1;
            }
        }
        let mut best_parse = Duration::MAX;
        let mut best_auth = Duration::MAX;
        for _ in 0..iterations {
            let start = Instant::now();
            for raw in &mails {
                black_box(parse_one(raw));
            }
            best_parse = best_parse.min(start.elapsed());
            let start = Instant::now();
            for raw in &mails {
                let message = parse_one(raw);
                black_box(auth.check(&message.envelope, raw).await);
            }
            best_auth = best_auth.min(start.elapsed());
        }
        println!(
            "parse mails={} seconds={:.4}",
            mails.len(),
            best_parse.as_secs_f64()
        );
        println!(
            "parse+auth mails={} seconds={:.4} passed={passed}",
            mails.len(),
            best_auth.as_secs_f64()
        );
    });
    Ok(())
}
