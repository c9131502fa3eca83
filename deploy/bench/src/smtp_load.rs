//! The load client of `deploy/bench/haraka`: the same mails over SMTP (to
//! Haraka) or LMTP (to intake), CONCURRENCY sessions at once.
//!
//!     smtp_load smtp|lmtp HOST:PORT N CONCURRENCY
//!
//! Sends N mails of about 10 KB of text with a 50 KB attachment (random
//! bytes, base64; the shape of `mail_scan.rs`, deterministic), each from a
//! distinct customer `c{i}@customers.example` with a distinct Message-ID, to
//! `support@shop.test`. Session k of CONCURRENCY sends mails k, k + C, ...
//! one after another on one connection: EHLO (smtp) or LHLO (lmtp) once,
//! then per mail MAIL FROM, RCPT TO, DATA, the dot-stuffed message and the
//! final dot; QUIT at the end. Nothing is pipelined.
//!
//! A mail's latency runs from writing its MAIL FROM to reading its final
//! reply (over LMTP the one reply for its one recipient). Every mail must
//! get 250 there; any other reply, at any step, counts the mail as refused
//! and is printed to stderr (then RSET, and the session goes on). Prints one
//! line, `MODE mails=N refused=K seconds=S p50_ms=X p99_ms=Y`, and exits 1
//! when anything was refused.

use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

#[path = "sample_mail.rs"]
mod sample_mail;

const USAGE: &str = "usage: smtp_load smtp|lmtp HOST:PORT N CONCURRENCY";
/// The longest wait for one reply: a server past this is stuck, not slow.
const REPLY_TIMEOUT: Duration = Duration::from_secs(120);
/// Refusals printed one by one; past this only the count.
const PRINTED_REFUSALS: usize = 20;

/// Mail `i`: the shape of `mail_scan.rs`'s, from customer `i`.
fn mail(i: usize, seed: u64) -> Vec<u8> {
    let text = sample_mail::text();
    let mut out = format!(
        "From: Customer {i} <{sender}>\r\nTo: support@shop.test\r\n\
         Subject: Damaged parcel {i}\r\nMessage-ID: <load-{i}@customers.example>\r\n\
         Date: Mon, 30 Nov 2026 10:00:00 +0000\r\n\
         MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n\
         --b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{text}\r\n\
         --b\r\nContent-Type: image/jpeg; name=\"photo.jpg\"\r\n\
         Content-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=\"photo.jpg\"\r\n\r\n",
        sender = sender(i)
    );
    out.push_str(&sample_mail::attachment_lines(i, seed));
    out.push_str("--b--\r\n");
    out.into_bytes()
}

fn sender(i: usize) -> String {
    format!("c{i}@customers.example")
}

/// The message as DATA sends it: a line starting with "." gets another one
/// (RFC 5321 4.5.2), the last line is ended, and the final dot follows.
fn dot_stuffed(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 16);
    let mut line_start = true;
    for &byte in message {
        if line_start && byte == b'.' {
            out.push(b'.');
        }
        out.push(byte);
        line_start = byte == b'\n';
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// One session's connection: replies read line by line, commands buffered
/// and flushed before each reply is awaited.
struct Session {
    address: String,
    reader: BufReader<OwnedReadHalf>,
    writer: BufWriter<OwnedWriteHalf>,
}

/// A reply: its code and its lines as the server wrote them.
struct Reply {
    code: u16,
    text: String,
}

impl Session {
    async fn connect(address: &str) -> Result<Self, String> {
        let stream = TcpStream::connect(address).await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::ConnectionRefused {
                format!("nothing listens on {address}: start the server first ({e})")
            } else {
                format!("cannot connect to {address}: {e}")
            }
        })?;
        stream
            .set_nodelay(true)
            .map_err(|e| format!("{address}: {e}"))?;
        let (read, write) = stream.into_split();
        Ok(Session {
            address: address.to_string(),
            reader: BufReader::with_capacity(16 * 1024, read),
            writer: BufWriter::with_capacity(128 * 1024, write),
        })
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.writer
            .write_all(bytes)
            .await
            .map_err(|e| format!("writing to {}: {e}", self.address))
    }

    /// Flushes what was written, then reads one (possibly multi-line) reply.
    async fn reply(&mut self, after: &str) -> Result<Reply, String> {
        self.writer
            .flush()
            .await
            .map_err(|e| format!("writing {after} to {}: {e}", self.address))?;
        let mut text = String::new();
        loop {
            let mut line = String::new();
            let read = tokio::time::timeout(REPLY_TIMEOUT, self.reader.read_line(&mut line))
                .await
                .map_err(|_| {
                    format!(
                        "no reply to {after} from {} within {}s: is the server stuck?",
                        self.address,
                        REPLY_TIMEOUT.as_secs()
                    )
                })?
                .map_err(|e| format!("reading the reply to {after} from {}: {e}", self.address))?;
            if read == 0 {
                return Err(format!(
                    "{} closed the connection after {after}{}",
                    self.address,
                    if text.is_empty() {
                        String::new()
                    } else {
                        format!(" (it said: {})", text.trim_end())
                    }
                ));
            }
            text.push_str(&line);
            let bytes = line.as_bytes();
            let code = line
                .get(..3)
                .and_then(|c| c.parse::<u16>().ok())
                .ok_or_else(|| {
                    format!(
                        "{} answered {after} with a line that is no reply: {:?}",
                        self.address,
                        line.trim_end()
                    )
                })?;
            // "250-..." continues a reply, "250 ..." (or a bare "250") ends it.
            if bytes.get(3) != Some(&b'-') {
                return Ok(Reply {
                    code,
                    text: text.trim_end().replace("\r\n", " | "),
                });
            }
        }
    }
}

/// What one session did: latencies of the mails that got 250, and the
/// refusals (mail number, what was said).
#[derive(Default)]
struct Outcome {
    latencies: Vec<Duration>,
    refused: Vec<(usize, String)>,
}

async fn run_session(
    lmtp: bool,
    address: String,
    mails: Vec<(usize, Vec<u8>)>,
) -> Result<Outcome, String> {
    let mut outcome = Outcome::default();
    let mut session = Session::connect(&address).await?;
    let greeting = session.reply("connecting").await?;
    if greeting.code != 220 {
        return Err(format!("{address} greeted with {}", greeting.text));
    }
    let hello = if lmtp { "LHLO" } else { "EHLO" };
    session
        .send(format!("{hello} load.customers.example\r\n").as_bytes())
        .await?;
    let answer = session.reply(hello).await?;
    if answer.code != 250 {
        return Err(format!(
            "{address} answered {hello} with {} (is it the {} server?)",
            answer.text,
            if lmtp { "LMTP" } else { "SMTP" }
        ));
    }
    let mut remaining = mails.into_iter();
    while let Some((i, data)) = remaining.next() {
        let started = Instant::now();
        let steps = async {
            session
                .send(format!("MAIL FROM:<{}>\r\n", sender(i)).as_bytes())
                .await?;
            let reply = session.reply("MAIL FROM").await?;
            if reply.code != 250 {
                return Ok::<_, String>(Some(format!("MAIL FROM: {}", reply.text)));
            }
            session.send(b"RCPT TO:<support@shop.test>\r\n").await?;
            let reply = session.reply("RCPT TO").await?;
            if reply.code != 250 {
                return Ok(Some(format!("RCPT TO: {}", reply.text)));
            }
            session.send(b"DATA\r\n").await?;
            let reply = session.reply("DATA").await?;
            if reply.code != 354 {
                return Ok(Some(format!("DATA: {}", reply.text)));
            }
            session.send(&data).await?;
            // Over LMTP one reply per accepted recipient: there is one.
            let reply = session.reply("the message's final dot").await?;
            if reply.code != 250 {
                return Ok(Some(format!("after the data: {}", reply.text)));
            }
            Ok(None)
        };
        match steps.await {
            Ok(None) => outcome.latencies.push(started.elapsed()),
            Ok(Some(refusal)) => {
                outcome.refused.push((i, refusal));
                // Unless the transaction already ended, start over cleanly.
                session.send(b"RSET\r\n").await.ok();
                if session.reply("RSET").await.is_err() {
                    let why = "the connection ended after a refusal".to_string();
                    outcome
                        .refused
                        .extend(remaining.map(|(j, _)| (j, why.clone())));
                    return Ok(outcome);
                }
            }
            Err(error) => {
                // The connection is gone: this mail and the session's rest.
                outcome.refused.push((i, error.clone()));
                let why = format!("not sent: {error}");
                outcome
                    .refused
                    .extend(remaining.map(|(j, _)| (j, why.clone())));
                return Ok(outcome);
            }
        }
    }
    session.send(b"QUIT\r\n").await?;
    // The answer to QUIT does not count; a server may just close.
    let _ = session.reply("QUIT").await;
    Ok(outcome)
}

/// The nearest-rank percentile of sorted latencies, in milliseconds.
fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1].as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() {
    if let Err(error) = run().await {
        eprintln!("smtp_load: {error}");
        std::process::exit(2);
    }
}

async fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [mode, address, n, concurrency] = args.as_slice() else {
        return Err(USAGE.into());
    };
    let lmtp = match mode.as_str() {
        "smtp" => false,
        "lmtp" => true,
        other => return Err(format!("unknown mode {other:?}: {USAGE}")),
    };
    let n: usize = n
        .parse()
        .map_err(|_| format!("N must be a number, not {n:?}: {USAGE}"))?;
    let concurrency: usize = match concurrency.parse() {
        Ok(c) if c > 0 => c,
        _ => return Err(format!("CONCURRENCY must be 1 or more: {USAGE}")),
    };
    // Fail early and clearly when nothing listens there.
    drop(Session::connect(address).await?);

    // Every mail made (and stuffed) before the clock starts.
    let mut shares: Vec<Vec<(usize, Vec<u8>)>> = (0..concurrency).map(|_| Vec::new()).collect();
    let seed = sample_mail::seed();
    for i in 0..n {
        shares[i % concurrency].push((i, dot_stuffed(&mail(i, seed))));
    }
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for share in shares.into_iter().filter(|s| !s.is_empty()) {
        tasks.spawn(run_session(lmtp, address.clone(), share));
    }
    let mut latencies = Vec::with_capacity(n);
    let mut refused = Vec::new();
    while let Some(done) = tasks.join_next().await {
        let outcome = done.map_err(|e| format!("a session failed: {e}"))??;
        latencies.extend(outcome.latencies);
        refused.extend(outcome.refused);
    }
    let seconds = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    refused.sort_by_key(|(i, _)| *i);
    for (i, why) in refused.iter().take(PRINTED_REFUSALS) {
        eprintln!("smtp_load: mail {i} ({}) refused: {why}", sender(*i));
    }
    if refused.len() > PRINTED_REFUSALS {
        eprintln!(
            "smtp_load: ... and {} more refused",
            refused.len() - PRINTED_REFUSALS
        );
    }
    println!(
        "{mode} mails={n} refused={} seconds={seconds:.4} p50_ms={:.2} p99_ms={:.2}",
        refused.len(),
        percentile_ms(&latencies, 50.0),
        percentile_ms(&latencies, 99.0)
    );
    if !refused.is_empty() {
        std::process::exit(1);
    }
    Ok(())
}
