//! The parsing benchmark of `deploy/bench/run`: intake's parse path (the
//! function the pipeline calls, `intake::parse::parse`, which runs
//! src/parse/mail.rs) and mail-parser alone, over the same files held in
//! memory, one thread, several iterations each (interleaved, so both see the
//! same machine load); the best iteration counts.
//!
//!     cargo run --release --example parse_corpus -- DIR [ITERATIONS]
//!
//! Prints one line per contender: `NAME mails=N bytes=B seconds=S` (S is
//! the best iteration). A third line, `sha256`, times only the SHA-256 of
//! every decoded attachment (decoded beforehand): the envelope's `sha256`
//! fields, a share of intake's time that mail-parser alone never pays.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use intake::envelope::Source;
use intake::parse::{parse, ParseOptions};
use intake::submission::{Payload, Submission};
use mail_parser::{MessageParser, MimeHeaders};
use sha2::Digest;

/// The gateway's allocator (see src/main.rs), for both contenders: the
/// figure is the speed `intake serve` parses at, and mail-parser alone
/// gets the same allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().ok_or("usage: parse_corpus DIR [ITERATIONS]")?;
    let iterations: usize = args.next().map_or(Ok(5), |n| n.parse())?;
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
        return Err(format!("{dir} holds no mail: run deploy/bench/gen-corpus {dir}").into());
    }
    let bytes: usize = mails.iter().map(Bytes::len).sum();

    let attachments: Vec<Vec<u8>> = mails
        .iter()
        .filter_map(|raw| MessageParser::default().parse(raw.as_ref()))
        .flat_map(|message| {
            message
                .attachments()
                .map(|a| a.contents().to_vec())
                .collect::<Vec<_>>()
        })
        .collect();

    let mut best_intake = Duration::MAX;
    let mut best_parser = Duration::MAX;
    let mut best_sha256 = Duration::MAX;
    for _ in 0..iterations {
        best_intake = best_intake.min(timed(|| {
            for raw in &mails {
                let submission = Submission::new(
                    Source::Mailgate {
                        sender: None,
                        recipients: vec!["support@shop.test".into()],
                        ip: "127.0.0.1".into(),
                        client: None,
                    },
                    Payload::Mail(raw.clone()),
                );
                let options = ParseOptions {
                    form: None,
                    keep_raw: false,
                };
                black_box(parse(submission, options).ok());
            }
        }));
        best_parser = best_parser.min(timed(|| {
            for raw in &mails {
                // What the envelope needs from mail-parser: the parsed
                // message, its text and HTML bodies and every attachment.
                let Some(message) = MessageParser::default().parse(raw.as_ref()) else {
                    continue;
                };
                black_box(message.body_text(0));
                black_box(message.body_html(0));
                for attachment in message.attachments() {
                    black_box((attachment.attachment_name(), attachment.contents().len()));
                }
            }
        }));
        best_sha256 = best_sha256.min(timed(|| {
            for data in &attachments {
                black_box(sha2::Sha256::digest(data));
            }
        }));
    }
    for (name, best) in [
        ("intake", best_intake),
        ("mail-parser", best_parser),
        ("sha256", best_sha256),
    ] {
        println!(
            "{name} mails={} bytes={bytes} seconds={:.4}",
            mails.len(),
            best.as_secs_f64()
        );
    }
    Ok(())
}

fn timed(work: impl FnOnce()) -> Duration {
    let started = Instant::now();
    work();
    started.elapsed()
}
