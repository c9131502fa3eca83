//! The rule-decision benchmark of `deploy/bench/run`: the guard with 10
//! `local` rules (in-process, no Redis) deciding for N distinct senders
//! (one mail each), and its ceiling: governor's raw keyed limiters
//! (`DefaultKeyedRateLimiter`, the same 10 quotas) checking the same keys.
//!
//!     cargo run --release --example rule_decisions -- guard|governor [SENDERS]
//!
//! Run each mode in a process of its own: memory per tracked key is the
//! growth of this process's resident set (VmRSS) over the run divided by
//! the keys the limiters track (10 rules: 7 keyed per sender, 2 per sender
//! domain, 1 global; no key overflows, `max_keys` is above SENDERS).
//! For the guard that growth also holds what its collapse rules remember
//! per customer (the latest desk item), as it would in the gateway.
//! Only the decisions are timed, not building the inputs.
//! Prints `MODE decisions=N seconds=S keys=K rss_bytes=B`.

use std::hint::black_box;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use intake::envelope::Source;
use intake::guard::limiter::LimiterClock;
use intake::guard::rules::{Rate, RuleSet};
use intake::guard::Guard;
use intake::parse::{parse, ParseOptions};
use intake::submission::{Payload, Submission};

// The gateway's allocator (src/main.rs), so the guard is measured as it
// runs there; the governor ceiling runs under it too.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Domains the senders are spread over.
const DOMAINS: usize = 1000;

/// (name, key, rate, burst, action and extra keys) of the 10 rules.
const RULES: [(&str, &str, &str, u32, &str); 10] = [
    ("mail-burst", "sender", "6/h", 5, "action = \"collapse\""),
    (
        "mail-hourly",
        "sender",
        "20/h",
        10,
        "action = \"quarantine\"",
    ),
    (
        "mail-daily",
        "sender",
        "100/d",
        50,
        "action = \"quarantine\"",
    ),
    ("mail-busy-tag", "sender", "3/h", 3, "action = \"tag\""),
    (
        "mail-shadow",
        "sender",
        "2/h",
        2,
        "action = \"reject\"\nshadow = true",
    ),
    (
        "mail-weekly-tag",
        "sender",
        "500/d",
        100,
        "action = \"tag\"",
    ),
    (
        "per-mailbox",
        "sender\", \"mailbox",
        "10/h",
        5,
        "action = \"collapse\"",
    ),
    (
        "domain-flood",
        "sender_domain",
        "300/h",
        100,
        "action = \"quarantine\"\nshadow = true",
    ),
    (
        "domain-tag",
        "sender_domain",
        "1000/h",
        500,
        "action = \"tag\"",
    ),
    (
        "everything",
        "global",
        "100000/h",
        10000,
        "action = \"tag\"",
    ),
];

fn sender(i: usize) -> String {
    format!("c{i}@d{}.example", i % DOMAINS)
}

/// The bucket keys the guard builds for sender `i` (`Rule::keys_of`).
fn keys(i: usize) -> [String; 10] {
    let s = sender(i);
    let d = format!("d{}.example", i % DOMAINS);
    [
        format!("sender={s}"),
        format!("sender={s}"),
        format!("sender={s}"),
        format!("sender={s}"),
        format!("sender={s}"),
        format!("sender={s}"),
        format!("sender={s}|mailbox=support@shop.test"),
        format!("sender_domain={d}"),
        format!("sender_domain={d}"),
        "global=".to_string(),
    ]
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_default();
    let senders: usize = args.next().map_or(Ok(1_000_000), |n| n.parse())?;
    let tracked = 7 * senders + 2 * DOMAINS.min(senders) + 1;
    let (elapsed, grown) = match mode.as_str() {
        "guard" => run_guard(senders)?,
        "governor" => run_governor(senders)?,
        _ => return Err("usage: rule_decisions guard|governor [SENDERS]".into()),
    };
    println!(
        "{mode} decisions={senders} seconds={:.4} keys={tracked} rss_bytes={grown}",
        elapsed.as_secs_f64()
    );
    Ok(())
}

fn rule_text() -> String {
    let mut text = String::new();
    for (name, key, rate, burst, rest) in RULES {
        text.push_str(&format!(
            "[[rule]]\nname = \"{name}\"\nmatch = {{ channel = \"email\" }}\nkey = [\"{key}\"]\n\
             rate = \"{rate}\"\nburst = {burst}\nscope = \"local\"\nmax_keys = 100000000\n{rest}\n\n"
        ));
    }
    text
}

fn run_guard(senders: usize) -> Result<(Duration, u64), Box<dyn std::error::Error>> {
    let set = RuleSet::from_texts(&[(PathBuf::from("bench.toml"), rule_text())])
        .map_err(|e| e.to_string())?;
    let guard = Guard::new(set, None, None, LimiterClock::Live);
    // One small parsed mail; each decision gets a copy with its own sender.
    let template = parse(
        Submission::new(
            Source::Mailgate {
                sender: None,
                recipients: vec!["support@shop.test".into()],
                ip: "192.0.2.1".into(),
                client: None,
            },
            Payload::Mail(
                "From: c@d.example\r\nTo: support@shop.test\r\nSubject: Order\r\n\r\nWhere is my order?\r\n"
                    .into(),
            ),
        ),
        ParseOptions {
            form: None,
            keep_raw: false,
        },
    )?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let before = rss_bytes();
    let elapsed = runtime.block_on(async {
        let mut elapsed = Duration::ZERO;
        for i in 0..senders {
            let mut message = template.clone();
            let s = sender(i);
            if let Some(from) = message.envelope.from.as_mut() {
                from.email = s.clone();
            }
            // Every From: address is an identity: the header too, or each
            // decision would also count the template's address.
            for header in message.envelope.headers.iter_mut() {
                if header.name.eq_ignore_ascii_case("from") {
                    header.value = s.clone();
                }
            }
            message.envelope.customer.email = Some(s);
            let started = Instant::now();
            let checked = guard.check(&mut message).await;
            elapsed += started.elapsed();
            black_box(checked.map_err(|e| e.to_string()))?;
        }
        Ok::<_, String>(elapsed)
    })?;
    Ok((elapsed, rss_bytes().saturating_sub(before)))
}

fn run_governor(senders: usize) -> Result<(Duration, u64), Box<dyn std::error::Error>> {
    let limiters: Vec<DefaultKeyedRateLimiter<String>> = RULES
        .iter()
        .map(|(_, _, rate, burst, _)| {
            let interval = Rate::parse(rate)?.interval();
            let quota = Quota::with_period(interval)
                .ok_or("zero interval")?
                .allow_burst(NonZeroU32::new(*burst).ok_or("zero burst")?);
            Ok(RateLimiter::keyed(quota))
        })
        .collect::<Result<_, Box<dyn std::error::Error>>>()?;
    let before = rss_bytes();
    let mut elapsed = Duration::ZERO;
    for i in 0..senders {
        let keys = keys(i);
        let started = Instant::now();
        for (limiter, key) in limiters.iter().zip(&keys) {
            black_box(limiter.check_key(key).is_ok());
        }
        elapsed += started.elapsed();
    }
    let grown = rss_bytes().saturating_sub(before);
    let tracked: usize = limiters.iter().map(|l| l.len()).sum();
    assert_eq!(tracked, 7 * senders + 2 * DOMAINS.min(senders) + 1);
    Ok((elapsed, grown))
}
