//! Items 6 and 9 of the hardening issue on the LMTP listener, against a
//! real gateway and the dev Redis: sessions that hold their slot (DATA
//! that never ends, silence after the greeting) and messages that try to
//! smuggle a second transaction past the end of DATA. Attackers send from
//! their own loopback addresses, each attack bounded in count and time,
//! while a normal mail server (its own address, a fresh session per mail)
//! delivers: every delivery must get 250, its latency quiet and under
//! attack is printed (never asserted), and every 250's receipt is stored
//! exactly once.

mod support;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use support::audit::{assert_receipts_stored_once, Receipts};
use support::bystander::{bystander_address, connect_from, loopback, measure, report, Latencies};
use support::{free_port, redis_url, Gateway};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Deliveries the normal mail server makes quiet, and again under attack.
const DELIVERIES: usize = 100;
/// A safety net on every attack and every reply.
const ATTACK_LIMIT: Duration = Duration::from_secs(120);
const REPLY_WAIT: Duration = Duration::from_secs(30);
const RECONNECT_PAUSE: Duration = Duration::from_secs(1);
/// Time for the attack to take every slot and pass the shed grace.
const WARM_UP: Duration = Duration::from_secs(3);

/// A gateway with an LMTP listener; `lmtp` goes into its `[lmtp]` table.
async fn gateway(test: &str, lmtp: &str) -> (Gateway, u16) {
    let port = free_port();
    let config = format!("[lmtp]\nlisten = \"127.0.0.1:{port}\"\n{lmtp}\n");
    let gw = Gateway::start_with(test, &redis_url(), &config).await;
    // The listener binds while the gateway starts: wait until it greets.
    for _ in 0..200 {
        if let Ok((_, greeting)) = Lmtp::connect(bystander_address(), port).await {
            if greeting.code == 220 {
                return (gw, port);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the LMTP listener did not come up");
}

/// One reply: its code and its lines' text.
#[derive(Debug)]
struct Reply {
    code: u16,
    lines: Vec<String>,
}

impl Reply {
    /// `421 4.4.2` and the like, for the attack's tally.
    fn status(&self) -> String {
        let status = self.lines[0].split(' ').next().unwrap_or_default();
        format!("{} {status}", self.code)
    }
}

/// A raw LMTP client.
struct Lmtp {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Lmtp {
    /// Connects from `source` and reads the greeting.
    async fn connect(source: IpAddr, port: u16) -> Result<(Lmtp, Reply), String> {
        let target = ([127, 0, 0, 1], port).into();
        let stream = connect_from(source, target)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (read, write) = stream.into_split();
        let mut lmtp = Lmtp {
            reader: BufReader::new(read),
            writer: write,
        };
        let greeting = lmtp.reply().await?;
        Ok((lmtp, greeting))
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.writer
            .write_all(bytes)
            .await
            .map_err(|e| format!("send: {e}"))
    }

    async fn command(&mut self, line: &str) -> Result<Reply, String> {
        self.send(format!("{line}\r\n").as_bytes()).await?;
        self.reply().await
    }

    /// The next reply; an error when the gateway closed the connection.
    async fn reply(&mut self) -> Result<Reply, String> {
        tokio::time::timeout(REPLY_WAIT, async {
            let mut lines = Vec::new();
            loop {
                let mut line = String::new();
                let n = self
                    .reader
                    .read_line(&mut line)
                    .await
                    .map_err(|e| format!("read: {e}"))?;
                if n == 0 {
                    return Err("closed".to_string());
                }
                if line.len() < 4 || !line.ends_with("\r\n") {
                    return Err(format!("not a reply line: {line:?}"));
                }
                let code: u16 = line[..3]
                    .parse()
                    .map_err(|_| format!("no code: {line:?}"))?;
                let last = line.as_bytes()[3] == b' ';
                lines.push(line[4..].trim_end().to_string());
                if last {
                    return Ok(Reply { code, lines });
                }
            }
        })
        .await
        .map_err(|_| "no reply within the safety net".to_string())?
    }

    /// Sends `line` and expects `code`; the error names the command and
    /// the reply it got.
    async fn expect(&mut self, line: &str, code: u16) -> Result<Reply, String> {
        let reply = self.command(line).await?;
        if reply.code != code {
            let verb = line.split(' ').next().unwrap_or_default();
            return Err(format!("{verb} got {}", reply.status()));
        }
        Ok(reply)
    }

    /// LHLO, MAIL, RCPT and DATA up to the 354.
    async fn begin_data(&mut self, sender: &str, recipient: &str) -> Result<(), String> {
        self.expect("LHLO client.test", 250).await?;
        self.expect(&format!("MAIL FROM:<{sender}>"), 250).await?;
        self.expect(&format!("RCPT TO:<{recipient}>"), 250).await?;
        self.expect("DATA", 354).await?;
        Ok(())
    }
}

/// The receipt in `250 2.0.0 <rcpt> stored as ID` (src/sources/lmtp/reply.rs).
fn receipt(reply: &Reply) -> Result<String, String> {
    match (reply.code, reply.lines[0].split_once("stored as ")) {
        (250, Some((_, id))) => Ok(id.trim().to_string()),
        _ => Err(format!("not stored: {reply:?}")),
    }
}

/// One mail, as a mail server delivers it: a fresh session from the
/// bystander's address, CRLF lines, dot-stuffed, QUIT at the end.
async fn deliver(port: u16, subject: &str) -> Result<String, String> {
    let (mut lmtp, greeting) = Lmtp::connect(bystander_address(), port).await?;
    if greeting.code != 220 {
        return Err(format!("greeting: {greeting:?}"));
    }
    lmtp.begin_data("ann@example.com", "support@shop.test")
        .await?;
    let message = format!(
        "From: Ann Customer <ann@example.com>\r\nTo: support@shop.test\r\n\
         Subject: {subject}\r\nMessage-ID: <{subject}@example.com>\r\n\r\n\
         Where is my order?\r\n..a stuffed line\r\n.\r\n"
    );
    lmtp.send(message.as_bytes()).await?;
    let id = receipt(&lmtp.reply().await?)?;
    let _ = lmtp.command("QUIT").await;
    Ok(id)
}

/// `DELIVERIES` mails one after another, receipts kept for the audit.
async fn bystander_deliveries(port: u16, receipts: &Receipts, phase: &str) -> Latencies {
    measure(phase, DELIVERIES, |i| {
        let receipts = receipts.clone();
        let subject = format!("bystander-{phase}-{i}-{}", ulid::Ulid::new());
        async move {
            receipts.add(deliver(port, &subject).await?);
            Ok(())
        }
    })
    .await
}

/// What the attackers saw, by outcome.
#[derive(Default)]
struct Tally(Mutex<BTreeMap<String, u64>>);

impl Tally {
    fn count(&self, what: impl Into<String>) {
        *self.0.lock().unwrap().entry(what.into()).or_default() += 1;
    }

    fn matching(&self, prefix: &str) -> u64 {
        let tally = self.0.lock().unwrap();
        tally
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(_, n)| n)
            .sum()
    }
}

/// A running attack: its tasks stop when it is stopped (or at the limit).
/// They run on a runtime of their own, as if from another process, so
/// the gateway's tasks do not queue behind the attacker's.
struct Attack {
    runtime: tokio::runtime::Runtime,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    tally: Arc<Tally>,
}

impl Attack {
    fn new() -> Attack {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("the attacker's runtime");
        let stop = CancellationToken::new();
        runtime.spawn({
            let stop = stop.clone();
            async move {
                tokio::time::sleep(ATTACK_LIMIT).await;
                stop.cancel();
            }
        });
        Attack {
            runtime,
            stop,
            tasks: Vec::new(),
            tally: Arc::default(),
        }
    }

    /// One attacker from `source`: `one` runs a session and names its
    /// outcome; then a pause and again.
    fn spawn<F, Fut>(&mut self, source: IpAddr, port: u16, one: F)
    where
        F: Fn(Lmtp, Reply) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = String> + Send + 'static,
    {
        let stop = self.stop.clone();
        let tally = self.tally.clone();
        self.tasks.push(self.runtime.spawn(async move {
            while !stop.is_cancelled() {
                let session = async {
                    match Lmtp::connect(source, port).await {
                        Ok((lmtp, greeting)) if greeting.code == 220 => one(lmtp, greeting).await,
                        Ok((_, refused)) => format!("refused at connect: {}", refused.status()),
                        Err(e) => format!("connect: {e}"),
                    }
                };
                let outcome = tokio::select! {
                    outcome = session => outcome,
                    () = stop.cancelled() => return,
                };
                tally.count(outcome);
                tokio::select! {
                    () = tokio::time::sleep(RECONNECT_PAUSE) => {}
                    () = stop.cancelled() => return,
                }
            }
        }));
    }

    async fn stop(self) -> Arc<Tally> {
        self.stop.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
        self.runtime.shutdown_background();
        self.tally
    }
}

/// How a session the attacker stopped talking in ended.
fn ended(what: &str, reply: Result<Reply, String>) -> String {
    match reply {
        Ok(reply) => format!("{what}: {}", reply.status()),
        Err(e) => format!("{what}: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_that_never_ends_and_idle_sessions_do_not_lock_out_a_mail_server() {
    // 50 slots. Before, each DATA that never ended held its slot for
    // data_timeout (10 min by default) and a newcomer was told 421 4.3.2
    // all that time; 100 such sessions and 20 idle ones took every slot.
    // Now DATA below 500 bytes/s after 500 ms is told 421 4.4.2, and when
    // the slots are full the slowest session is shed for a newcomer. (The
    // rate's grace is below the shed grace, 1 s, so that attackers
    // shedding each other leave some to be told 421 4.4.2.)
    let (gw, port) = gateway(
        "lmtp_abuse_slots",
        "max_connections = 50\nmin_data_rate = 500\ndata_rate_grace = \"500ms\"",
    )
    .await;
    let receipts = Receipts::default();
    let quiet = bystander_deliveries(port, &receipts, "quiet").await;

    let mut attack = Attack::new();
    for i in 0..100 {
        attack.spawn(
            loopback(0, 10 + (i % 10) as u8),
            port,
            |mut lmtp, _| async move {
                if let Err(e) = lmtp
                    .begin_data("mallory@example.com", "support@shop.test")
                    .await
                {
                    return format!("data: before 354: {e}");
                }
                if lmtp.send(b"Subject: never ends\r\n\r\n").await.is_err() {
                    return "data: closed".into();
                }
                ended("data", lmtp.reply().await)
            },
        );
    }
    for i in 0..20 {
        attack.spawn(
            loopback(0, 30 + (i % 4) as u8),
            port,
            |mut lmtp, _| async move { ended("idle", lmtp.reply().await) },
        );
    }
    tokio::time::sleep(WARM_UP).await;
    let attacked = bystander_deliveries(port, &receipts, "attacked").await;
    let tally = attack.stop().await;

    report("lmtp-slots", &quiet, &attacked);
    println!("attack lmtp-slots: {:?}", tally.0.lock().unwrap());
    assert!(
        tally.matching("data: 421 4.4.2") > 0,
        "DATA below lmtp.min_data_rate must be told 421 4.4.2"
    );
    assert!(
        tally.matching("data: 421 4.3.2") + tally.matching("idle: 421 4.3.2") > 0,
        "sessions must be shed (421 4.3.2) to make room"
    );
    let stored = assert_receipts_stored_once(&gw.redis_url, &gw.prefix, &receipts.all()).await;
    assert_eq!(
        stored.count("desk"),
        2 * DELIVERIES,
        "the bystander's mails, and nothing of the attack"
    );
    gw.stop().await;
}

/// A message hiding a second transaction after `end`, a sequence some
/// servers took for the end of DATA, then ending properly.
fn smuggling(end: &str, n: usize) -> String {
    format!(
        "From: Mallory <mallory@example.com>\r\nTo: support@shop.test\r\n\
         Subject: carrier {n}\r\nMessage-ID: <carrier-{n}@example.com>\r\n\r\n\
         Hello{end}MAIL FROM:<ceo@shop.test>\r\nRCPT TO:<support@shop.test>\r\nDATA\r\n\
         From: CEO <ceo@shop.test>\r\nSubject: smuggled {n}\r\n\r\nWire the money.\r\n\
         .\r\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_smuggled_after_a_bare_lf_dot_stays_inside_its_message() {
    let (gw, port) = gateway("lmtp_abuse_smuggling", "").await;
    let receipts = Receipts::default();
    let quiet = bystander_deliveries(port, &receipts, "quiet").await;

    // Every end sequence of the 2023 SMTP-smuggling reports, 4 times each,
    // from 7 addresses, while the bystander delivers.
    let ends: [&'static str; 7] = [
        "\n.\n", "\n.\r\n", "\r.\r", "\r\n.\n", "\r\n.\r", "\r.\r\n", "\n.\r",
    ];
    let attackers = Receipts::default();
    let mut attack = Attack::new();
    for (i, end) in ends.into_iter().enumerate() {
        for round in 0..4 {
            let n = i * 4 + round;
            let attackers = attackers.clone();
            attack.spawn(loopback(0, 50 + i as u8), port, move |mut lmtp, _| {
                let attackers = attackers.clone();
                let message = smuggling(end, n);
                async move {
                    if let Err(e) = lmtp
                        .begin_data("mallory@example.com", "support@shop.test")
                        .await
                    {
                        return format!("before 354: {e}");
                    }
                    if lmtp.send(message.as_bytes()).await.is_err() {
                        return "closed".into();
                    }
                    let Ok(reply) = lmtp.reply().await else {
                        return "no reply".into();
                    };
                    let Ok(id) = receipt(&reply) else {
                        return format!("not stored: {}", reply.status());
                    };
                    attackers.add(id);
                    // Had the hidden MAIL been taken as a command, its
                    // 250 2.1.0 (or the second message's 250) would come
                    // next; a NOOP must be answered as the next reply.
                    match lmtp.command("NOOP").await {
                        Ok(reply)
                            if reply.code == 250 && reply.lines[0].starts_with("2.0.0 ok") =>
                        {
                            "one message, in step".into()
                        }
                        other => format!("out of step: {other:?}"),
                    }
                }
            });
        }
    }
    // A command ending in a bare LF is refused whole, not taken.
    let (mut lmtp, _) = Lmtp::connect(loopback(0, 60), port).await.expect("connect");
    lmtp.expect("LHLO client.test", 250).await.unwrap();
    lmtp.send(b"MAIL FROM:<ceo@shop.test>\n").await.unwrap();
    let refused = lmtp.reply().await.unwrap();
    assert_eq!(
        (refused.code, refused.status().as_str()),
        (500, "500 5.5.2"),
        "a bare LF command line must be refused: {refused:?}"
    );
    assert!(refused.lines[0].contains("bare LF"), "{refused:?}");
    lmtp.expect("RCPT TO:<support@shop.test>", 503)
        .await
        .expect("the refused MAIL was not taken: RCPT has no sender");

    let attacked = bystander_deliveries(port, &receipts, "attacked").await;
    // Each attacker delivers at least one carrier before it is stopped.
    for _ in 0..600 {
        if attackers.len() >= ends.len() * 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let tally = attack.stop().await;
    report("lmtp-smuggling", &quiet, &attacked);
    println!("attack lmtp-smuggling: {:?}", tally.0.lock().unwrap());
    assert_eq!(
        tally.matching("one message, in step") as usize,
        attackers.len(),
        "every carrier got one reply and the session stayed in step: {:?}",
        tally.0.lock().unwrap()
    );
    assert!(
        attackers.len() >= ends.len() * 4,
        "too few carriers delivered"
    );

    let all: Vec<String> = receipts.all().into_iter().chain(attackers.all()).collect();
    let stored = assert_receipts_stored_once(&gw.redis_url, &gw.prefix, &all).await;
    assert_eq!(
        stored.count("desk"),
        all.len(),
        "one item per message: nothing smuggled in as a second one"
    );
    for entry in gw.entries("desk").await {
        let env = entry.envelope();
        let subject = env["subject"].as_str().unwrap_or_default().to_string();
        assert!(
            !subject.starts_with("smuggled"),
            "a smuggled transaction was stored as its own mail: {subject}"
        );
        assert_ne!(env["source"]["sender"], "ceo@shop.test");
        if subject.starts_with("carrier") {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(env["raw"].as_str().expect("raw kept"))
                .unwrap();
            let raw = String::from_utf8_lossy(&raw);
            assert!(
                raw.contains("MAIL FROM:<ceo@shop.test>") && raw.contains("Wire the money."),
                "the carrier holds it all: {raw:?}"
            );
        }
    }
    gw.stop().await;
}
