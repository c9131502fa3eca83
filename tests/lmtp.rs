//! The LMTP listener (RFC 2033) against real Redis and clamd: Python's
//! smtplib.LMTP as a real client, raw TCP for what a client library would
//! never send (pipelined batches, dot-stuffing by hand, junk, silence).
//! Every reply is checked against the one rule: 250 only for a stored item.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use serde_json::Value;
use support::clamd::{dev_clamd, eicar, EICAR_SIGNATURE};
use support::envelope::assert_matches_schema;
use support::{free_port, redis_url, Gateway, PrivateRedis};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// How long a test waits for any one reply before it calls the listener
/// stuck (a safety net against hangs, not a speed assertion).
const REPLY_WAIT: Duration = Duration::from_secs(30);

/// A gateway with an LMTP listener on a free port; `lmtp` is appended to
/// the `[lmtp]` table, `extra` after it (a `[scan]` table, say).
async fn gateway(test: &str, redis: &str, lmtp: &str, extra: &str) -> (Gateway, u16) {
    let port = free_port();
    let config = format!("[lmtp]\nlisten = \"127.0.0.1:{port}\"\n{lmtp}\n{extra}");
    let gw = Gateway::start_with(test, redis, &config).await;
    (gw, port)
}

/// One reply: its code and its lines' text (after `250-` / `250 `).
#[derive(Debug)]
struct Reply {
    code: u16,
    lines: Vec<String>,
}

impl Reply {
    fn text(&self) -> String {
        self.lines.join("\n")
    }

    /// Asserts the code and that the text starts with `status`.
    fn expect(&self, code: u16, status: &str, what: &str) {
        assert_eq!(self.code, code, "{what}: {self:?}");
        assert!(
            self.lines[0].starts_with(status),
            "{what}: expected status {status}: {self:?}"
        );
    }
}

/// A raw LMTP client on a TCP connection.
struct Raw {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Raw {
    /// Connects (waiting for the listener to be up) and reads the greeting.
    async fn connect(port: u16) -> Raw {
        let mut raw = Raw::open(port).await;
        let greeting = raw.reply().await;
        assert_eq!(greeting.code, 220, "greeting: {greeting:?}");
        raw
    }

    async fn open(port: u16) -> Raw {
        let mut tries = 0;
        let stream = loop {
            match TcpStream::connect(("127.0.0.1", port)).await {
                Ok(stream) => break stream,
                Err(e) => {
                    tries += 1;
                    assert!(tries < 200, "the LMTP listener did not come up: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        let (read, write) = stream.into_split();
        Raw {
            reader: BufReader::new(read),
            writer: write,
        }
    }

    async fn send(&mut self, text: &[u8]) {
        self.writer.write_all(text).await.expect("send");
    }

    /// Sends one command and reads its reply.
    async fn command(&mut self, line: &str) -> Reply {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.reply().await
    }

    async fn reply(&mut self) -> Reply {
        tokio::time::timeout(REPLY_WAIT, self.read_reply())
            .await
            .expect("a reply within the safety net")
    }

    async fn read_reply(&mut self) -> Reply {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let n = self.reader.read_line(&mut line).await.expect("read reply");
            assert!(n > 0, "connection closed while waiting for a reply");
            assert!(line.ends_with("\r\n"), "reply line ends in CRLF: {line:?}");
            let code: u16 = line[..3].parse().expect("reply code");
            let last = line.as_bytes()[3] == b' ';
            lines.push(line[4..].trim_end().to_string());
            if last {
                return Reply { code, lines };
            }
        }
    }

    /// True once the server closed the connection (nothing more to read).
    async fn closed(&mut self) -> bool {
        let mut rest = Vec::new();
        let read = tokio::time::timeout(REPLY_WAIT, self.reader.read_to_end(&mut rest)).await;
        matches!(read, Ok(Ok(0)))
    }

    /// LHLO, MAIL, each RCPT (all must be accepted), DATA and the message
    /// (dot-stuffed here); returns the per-recipient replies.
    async fn deliver(&mut self, sender: &str, recipients: &[&str], message: &[u8]) -> Vec<Reply> {
        self.command("LHLO client.test")
            .await
            .expect(250, "", "LHLO");
        self.command(&format!("MAIL FROM:<{sender}>"))
            .await
            .expect(250, "2.1.0", "MAIL");
        for rcpt in recipients {
            self.command(&format!("RCPT TO:<{rcpt}>"))
                .await
                .expect(250, "2.1.5", "RCPT");
        }
        self.command("DATA").await.expect(354, "", "DATA");
        self.send(&dot_stuff(message)).await;
        self.send(b".\r\n").await;
        let mut replies = Vec::new();
        for _ in recipients {
            replies.push(self.reply().await);
        }
        replies
    }
}

/// RFC 5321 4.5.2: a line starting with `.` gets one more.
fn dot_stuff(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for line in message.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b".") {
            out.push(b'.');
        }
        out.extend_from_slice(line);
    }
    if !out.ends_with(b"\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn mail(subject: &str, body: &str) -> Vec<u8> {
    format!(
        "From: Ann Customer <ann@example.com>\r\nTo: support@shop.test\r\n\
         Subject: {subject}\r\nMessage-ID: <{subject}@example.com>\r\n\r\n{body}\r\n"
    )
    .into_bytes()
}

/// Runs Python's smtplib.LMTP: one sendmail, then the replies smtplib
/// itself does not read (it reads one reply after DATA, LMTP sends one per
/// recipient). Prints JSON `{"refused": ..., "extra": [codes]}`.
fn python_lmtp(port: u16, sender: &str, recipients: &[&str], message: &[u8]) -> Value {
    use std::io::Write as _;
    let script = r#"
import json, smtplib, sys
port, sender, rcpts = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
msg = sys.stdin.buffer.read()
out = {}
with smtplib.LMTP("127.0.0.1", port) as client:
    client.ehlo("client.test")  # LMTP sends it as LHLO
    out["size"] = client.esmtp_features.get("size")
    out["pipelining"] = client.has_extn("pipelining")
    try:
        out["refused"] = {k: [c, m.decode()] for k, (c, m) in client.sendmail(sender, rcpts, msg).items()}
        out["extra"] = [client.getreply()[0] for _ in range(len(rcpts) - 1 - len(out["refused"]))]
    except smtplib.SMTPSenderRefused as e:
        out["sender_refused"] = [e.smtp_code, e.smtp_error.decode()]
    except smtplib.SMTPDataError as e:
        out["data_error"] = [e.smtp_code, e.smtp_error.decode()]
print(json.dumps(out))
"#;
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(port.to_string())
        .arg(sender)
        .args(recipients)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 is installed");
    child.stdin.take().unwrap().write_all(message).unwrap();
    let out = child.wait_with_output().expect("python3 runs");
    assert!(
        out.status.success(),
        "smtplib failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the script prints JSON")
}

/// Waits (off the async runtime) until the LMTP listener accepts.
async fn wait_listening(port: u16) {
    drop(Raw::connect(port).await);
}

#[tokio::test]
async fn smtplib_delivers_one_item_for_two_recipients() {
    let (gw, port) = gateway("lmtp_smtplib", &redis_url(), "", "").await;
    wait_listening(port).await;
    let message = mail("lmtp-smtplib", "Where is my order?\r\n.hidden dot line");
    let recipients = ["support+order-1234@shop.test", "sales@shop.test"];
    let out = tokio::task::spawn_blocking(move || {
        python_lmtp(port, "ann@example.com", &recipients, &message)
    })
    .await
    .unwrap();
    assert_eq!(
        out["size"], "50000000",
        "SIZE announces lmtp.max_size: {out}"
    );
    assert_eq!(out["pipelining"], true, "{out}");
    assert_eq!(
        out["refused"],
        serde_json::json!({}),
        "no recipient refused: {out}"
    );
    assert_eq!(
        out["extra"],
        serde_json::json!([250]),
        "second recipient's reply: {out}"
    );

    let desk = gw.entries("desk").await;
    assert_eq!(desk.len(), 1, "one item per message, not per recipient");
    let env = desk[0].envelope();
    assert_matches_schema("lmtp mail", &env);
    assert_eq!(env["source"]["type"], "lmtp");
    assert_eq!(env["source"]["sender"], "ann@example.com");
    assert_eq!(
        env["source"]["recipients"],
        serde_json::json!(["support+order-1234@shop.test", "sales@shop.test"])
    );
    assert_eq!(env["source"]["ip"], "127.0.0.1");
    assert_eq!(env["customer"]["mailbox_hash"], "order-1234");
    assert_eq!(env["subject"], "lmtp-smtplib");
    assert_eq!(env["from"]["email"], "ann@example.com");
    assert!(
        env["text"].as_str().unwrap().contains("\n.hidden dot line"),
        "smtplib's dot-stuffing is undone: {}",
        env["text"]
    );
    gw.stop().await;
}

#[tokio::test]
async fn smtplib_with_a_message_over_size_is_refused_at_mail() {
    let (gw, port) = gateway("lmtp_smtplib_size", &redis_url(), "max_size = \"2KB\"", "").await;
    wait_listening(port).await;
    let message = mail("too-big", &"x".repeat(5000));
    let out = tokio::task::spawn_blocking(move || {
        python_lmtp(port, "ann@example.com", &["support@shop.test"], &message)
    })
    .await
    .unwrap();
    assert_eq!(out["size"], "2000", "{out}");
    assert_eq!(
        out["sender_refused"][0], 552,
        "smtplib sent SIZE= and was refused: {out}"
    );
    assert!(
        out["sender_refused"][1]
            .as_str()
            .unwrap()
            .starts_with("5.3.4"),
        "{out}"
    );
    assert!(gw.entries("desk").await.is_empty(), "nothing stored");
    gw.stop().await;
}

#[tokio::test]
async fn pipelined_batch_gets_every_reply_in_order() {
    let (gw, port) = gateway(
        "lmtp_pipelined",
        &redis_url(),
        "domains = [\"shop.test\"]",
        "",
    )
    .await;
    let mut raw = Raw::connect(port).await;
    // The whole transaction in one write: a command ending in a bare LF
    // (refused whole, not a recipient), a bare LF in the message (content,
    // kept as sent), a dot-stuffed line and a recipient of a domain not
    // taken here.
    raw.send(
        b"LHLO client.test\r\n\
          MAIL FROM:<bob@example.com> SIZE=200 BODY=8BITMIME\r\n\
          RCPT TO:<support@shop.test>\r\n\
          RCPT TO:<someone@elsewhere.example>\r\n\
          RCPT TO:<sales@shop.test>\n\
          RCPT TO:<billing+inv-9@SHOP.test>\r\n\
          DATA\r\n\
          From: bob@example.com\r\n\
          Subject: pipelined\n\
          \r\n\
          ..starts with a dot\r\n\
          ...two dots\r\n\
          last line\r\n\
          .\r\n\
          NOOP\r\n\
          QUIT\r\n",
    )
    .await;
    let lhlo = raw.reply().await;
    assert_eq!(lhlo.code, 250);
    for ext in [
        "PIPELINING",
        "ENHANCEDSTATUSCODES",
        "8BITMIME",
        "SIZE 50000000",
    ] {
        assert!(
            lhlo.lines.iter().any(|l| l == ext),
            "LHLO offers {ext}: {lhlo:?}"
        );
    }
    raw.reply().await.expect(250, "2.1.0", "MAIL");
    raw.reply().await.expect(250, "2.1.5", "first RCPT");
    raw.reply().await.expect(550, "5.1.1", "foreign domain");
    let bare = raw.reply().await;
    bare.expect(500, "5.5.2", "a command ending in a bare LF");
    assert!(
        bare.text().contains("bare LF"),
        "names the problem: {bare:?}"
    );
    raw.reply().await.expect(250, "2.1.5", "fourth RCPT");
    raw.reply().await.expect(354, "", "DATA");
    let first = raw.reply().await;
    first.expect(250, "2.0.0", "first recipient");
    assert!(first.text().contains("<support@shop.test>"), "{first:?}");
    let second = raw.reply().await;
    second.expect(250, "2.0.0", "second accepted recipient");
    assert!(
        second.text().contains("<billing+inv-9@SHOP.test>"),
        "{second:?}"
    );
    raw.reply().await.expect(250, "2.0.0", "NOOP");
    raw.reply().await.expect(221, "2.0.0", "QUIT");
    assert!(raw.closed().await, "QUIT closes");

    let desk = gw.entries("desk").await;
    assert_eq!(desk.len(), 1);
    let env = desk[0].envelope();
    assert_eq!(
        env["source"]["recipients"],
        serde_json::json!(["support@shop.test", "billing+inv-9@SHOP.test"]),
        "only accepted recipients"
    );
    assert_eq!(env["customer"]["mailbox_hash"], "inv-9");
    assert_eq!(
        env["subject"], "pipelined",
        "the parser reads a bare LF as the header line's end"
    );
    let text = env["text"].as_str().unwrap();
    assert!(
        text.contains(".starts with a dot") && !text.contains("..starts"),
        "dot-unstuffed: {text:?}"
    );
    assert!(
        text.contains("\n..two dots"),
        "one dot of three removed: {text:?}"
    );
    let raw_mail = base64::engine::general_purpose::STANDARD
        .decode(env["raw"].as_str().unwrap())
        .unwrap();
    assert!(
        raw_mail
            .windows(22)
            .any(|w| w == b"\r\n.starts with a dot\r\n"),
        "stored unstuffed: {:?}",
        String::from_utf8_lossy(&raw_mail)
    );
    assert!(
        raw_mail.starts_with(b"From: bob@example.com\r\nSubject: pipelined\n\r\n"),
        "the bare LF is kept as sent: {:?}",
        String::from_utf8_lossy(&raw_mail)
    );
    gw.stop().await;
}

#[tokio::test]
async fn each_reply_after_data_comes_alone_for_a_client_reading_one_at_a_time() {
    // OpenSMTPD 6.8's LMTP client handles one reply per read and fails the
    // recipients not yet answered when a second reply is in its buffer
    // ("Remote host sent too much data"). This client reads as it does:
    // one read, which must hold exactly one whole reply, per recipient.
    let (gw, port) = gateway("lmtp_one_reply_per_read", &redis_url(), "", "").await;
    let mut raw = Raw::connect(port).await;
    raw.command("LHLO client.test")
        .await
        .expect(250, "", "LHLO");
    raw.command("MAIL FROM:<ann@example.com>")
        .await
        .expect(250, "2.1.0", "MAIL");
    let recipients: Vec<String> = (0..20).map(|n| format!("desk{n}@shop.test")).collect();
    for rcpt in &recipients {
        raw.command(&format!("RCPT TO:<{rcpt}>"))
            .await
            .expect(250, "2.1.5", "RCPT");
    }
    raw.command("DATA").await.expect(354, "", "DATA");
    raw.send(&dot_stuff(&mail("one-reply-per-read", "twenty desks")))
        .await;
    raw.send(b".\r\n").await;
    assert!(raw.reader.buffer().is_empty(), "nothing read ahead");
    let stream = raw.reader.get_mut();
    for (n, rcpt) in recipients.iter().enumerate() {
        let mut buf = vec![0u8; 4096];
        let len = tokio::time::timeout(REPLY_WAIT, stream.read(&mut buf))
            .await
            .expect("a reply within the safety net")
            .expect("read");
        let got = String::from_utf8_lossy(&buf[..len]);
        assert!(
            got.starts_with("250 2.0.0") && got.contains(&format!("<{rcpt}>")),
            "reply {n} is {rcpt}'s 250: {got:?}"
        );
        assert_eq!(
            got.matches("\r\n").count(),
            1,
            "read {n} holds one whole reply, not a part nor the next too: {got:?}"
        );
    }
    raw.command("QUIT").await.expect(221, "2.0.0", "QUIT");
    assert_eq!(
        gw.entries("desk").await.len(),
        1,
        "one item for 20 recipients"
    );
    gw.stop().await;
}

#[tokio::test]
async fn two_messages_on_one_connection_and_rset_between() {
    let (gw, port) = gateway("lmtp_two", &redis_url(), "", "").await;
    let mut raw = Raw::connect(port).await;
    let replies = raw
        .deliver(
            "a@example.com",
            &["support@shop.test"],
            &mail("first", "one"),
        )
        .await;
    replies[0].expect(250, "2.0.0", "first message");
    raw.command("MAIL FROM:<b@example.com>").await.expect(
        250,
        "2.1.0",
        "second MAIL without LHLO again",
    );
    raw.command("RSET").await.expect(250, "2.0.0", "RSET");
    raw.command("RCPT TO:<x@shop.test>")
        .await
        .expect(503, "5.5.1", "RSET forgot MAIL");
    raw.command("MAIL FROM:<>")
        .await
        .expect(250, "2.1.0", "bounce sender");
    raw.command("RCPT TO:<support@shop.test>")
        .await
        .expect(250, "2.1.5", "RCPT");
    raw.command("DATA").await.expect(354, "", "DATA");
    raw.send(&mail("second", "two")).await;
    raw.send(b".\r\n").await;
    raw.reply().await.expect(250, "2.0.0", "second message");
    raw.command("QUIT").await.expect(221, "2.0.0", "QUIT");

    let desk = gw.entries("desk").await;
    let subjects: Vec<_> = desk
        .iter()
        .map(|e| e.envelope()["subject"].clone())
        .collect();
    assert_eq!(subjects, vec!["first", "second"]);
    let bounce = desk[1].envelope();
    assert_eq!(bounce["source"]["sender"], "", "<> kept as empty sender");
    assert_eq!(
        bounce["abuse"]["auto_submitted"], true,
        "a bounce is automatic"
    );
    gw.stop().await;
}

#[tokio::test]
async fn oversize_data_is_refused_per_recipient_and_the_session_goes_on() {
    let (gw, port) = gateway("lmtp_oversize", &redis_url(), "max_size = \"1KB\"", "").await;
    let mut raw = Raw::connect(port).await;
    raw.command("LHLO c").await.expect(250, "", "LHLO");
    raw.command("MAIL FROM:<a@example.com> SIZE=1001")
        .await
        .expect(552, "5.3.4", "declared SIZE over the limit");
    raw.command("MAIL FROM:<a@example.com> SIZE=900")
        .await
        .expect(250, "2.1.0", "declared SIZE within, but it lies");
    raw.command("RCPT TO:<a@shop.test>")
        .await
        .expect(250, "2.1.5", "RCPT");
    raw.command("RCPT TO:<b@shop.test>")
        .await
        .expect(250, "2.1.5", "RCPT");
    raw.command("DATA").await.expect(354, "", "DATA");
    let big = mail("big", &"y".repeat(3000));
    raw.send(&big).await;
    // One line longer than the whole limit, too.
    raw.send(&[b'z'; 4000]).await;
    raw.send(b"\r\n.\r\n").await;
    raw.reply().await.expect(552, "5.3.4", "first recipient");
    raw.reply().await.expect(552, "5.3.4", "second recipient");
    raw.command("NOOP")
        .await
        .expect(250, "2.0.0", "still talking");
    let replies = raw
        .deliver("a@example.com", &["a@shop.test"], &mail("small", "fits"))
        .await;
    replies[0].expect(250, "2.0.0", "a small one after it");
    let desk = gw.entries("desk").await;
    assert_eq!(desk.len(), 1, "only the small one is stored");
    assert_eq!(desk[0].envelope()["subject"], "small");
    gw.stop().await;
}

#[tokio::test]
async fn junk_and_out_of_order_commands_get_clear_errors() {
    let (gw, port) = gateway("lmtp_junk", &redis_url(), "max_recipients = 2", "").await;
    let mut raw = Raw::connect(port).await;
    raw.command("EHLO smtp.client")
        .await
        .expect(500, "5.5.1", "EHLO is SMTP");
    raw.command("MAIL FROM:<a@example.com>")
        .await
        .expect(503, "5.5.1", "MAIL before LHLO");
    raw.command("LHLO c").await.expect(250, "", "LHLO");
    raw.command("RCPT TO:<a@shop.test>")
        .await
        .expect(503, "5.5.1", "RCPT before MAIL");
    raw.command("DATA")
        .await
        .expect(503, "5.5.1", "DATA before MAIL");
    raw.command("VRFY someone")
        .await
        .expect(252, "2.5.0", "VRFY");
    raw.command("STARTTLS")
        .await
        .expect(502, "5.5.1", "not offered");
    raw.command("FROB").await.expect(500, "5.5.2", "unknown");
    let long = format!("NOOP {}", "n".repeat(5000));
    raw.command(&long)
        .await
        .expect(500, "5.5.2", "line too long");
    raw.command("NOOP")
        .await
        .expect(250, "2.0.0", "in step after the long line");
    raw.command("MAIL FROM:<a@example.com> FOO=1")
        .await
        .expect(555, "5.5.4", "unknown parameter");
    raw.command("MAIL FROM:<a@example.com>")
        .await
        .expect(250, "2.1.0", "MAIL");
    raw.command("RCPT TO:<nobody>")
        .await
        .expect(501, "5.1.3", "not an address");
    raw.command("DATA")
        .await
        .expect(503, "5.5.1", "no valid recipients");
    raw.command("RCPT TO:<a@shop.test>")
        .await
        .expect(250, "2.1.5", "1");
    raw.command("RCPT TO:<b@shop.test>")
        .await
        .expect(250, "2.1.5", "2");
    raw.command("RCPT TO:<c@shop.test>")
        .await
        .expect(452, "4.5.3", "over max_recipients");
    // Enough junk ends the session.
    let mut last = raw.command("JUNK").await;
    while last.code == 500 {
        last = raw.command("JUNK").await;
    }
    last.expect(421, "4.7.0", "too many errors");
    assert!(raw.closed().await, "closed after 421");
    assert!(gw.entries("desk").await.is_empty());
    gw.stop().await;
}

#[tokio::test]
async fn a_silent_client_is_told_421_and_disconnected() {
    let (gw, port) = gateway(
        "lmtp_slow",
        &redis_url(),
        "command_timeout = \"300ms\"\ndata_timeout = \"300ms\"",
        "",
    )
    .await;
    let mut idle = Raw::connect(port).await;
    idle.reply()
        .await
        .expect(421, "4.4.2", "idle after the greeting");
    assert!(idle.closed().await);

    let mut slow = Raw::connect(port).await;
    slow.command("LHLO c").await.expect(250, "", "LHLO");
    slow.command("MAIL FROM:<a@example.com>")
        .await
        .expect(250, "2.1.0", "MAIL");
    slow.command("RCPT TO:<a@shop.test>")
        .await
        .expect(250, "2.1.5", "RCPT");
    slow.command("DATA").await.expect(354, "", "DATA");
    slow.send(b"Subject: never finished\r\n\r\nhal").await;
    slow.reply().await.expect(421, "4.4.2", "stalled in DATA");
    assert!(slow.closed().await);
    assert!(
        gw.entries("desk").await.is_empty(),
        "nothing half-received is stored"
    );
    gw.stop().await;
}

#[tokio::test]
async fn redis_down_gets_451_for_every_recipient_and_nothing_is_lost() {
    let mut redis = PrivateRedis::start();
    let (gw, port) = gateway("lmtp_redis_down", &redis.url(), "", "").await;
    wait_listening(port).await;
    redis.stop();
    let mut raw = Raw::connect(port).await;
    let replies = raw
        .deliver(
            "ann@example.com",
            &["support@shop.test", "sales@shop.test"],
            &mail("while-down", "hello"),
        )
        .await;
    for reply in &replies {
        reply.expect(451, "4.3.0", "not stored: retry");
        assert!(
            !reply.text().to_lowercase().contains("redis"),
            "no internals: {reply:?}"
        );
    }
    raw.command("QUIT").await.expect(221, "2.0.0", "QUIT");

    // The mail server retries once Redis is back; the gateway reconnects
    // by itself.
    redis.restart();
    let mut stored = false;
    for _ in 0..100 {
        let mut raw = Raw::connect(port).await;
        let reply = raw
            .deliver(
                "ann@example.com",
                &["support@shop.test"],
                &mail("while-down", "hello"),
            )
            .await
            .remove(0);
        if reply.code == 250 {
            stored = true;
            break;
        }
        reply.expect(451, "4.3.0", "only 451 while recovering");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(stored, "stored once Redis is back");
    let desk = gw.entries("desk").await;
    assert_eq!(desk.len(), 1, "exactly the retried one");
    gw.stop().await;
}

#[tokio::test]
async fn a_virus_is_refused_554_and_quarantined() {
    let scan = format!(
        "[scan]\nclamd = \"tcp://{}\"\ntimeout = \"20s\"",
        dev_clamd()
    );
    let (gw, port) = gateway("lmtp_virus", &redis_url(), "", &scan).await;
    let attachment = base64::engine::general_purpose::STANDARD.encode(eicar());
    let message = format!(
        "From: ann@example.com\r\nSubject: invoice\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=b1\r\n\r\n\
         --b1\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n\
         --b1\r\nContent-Type: application/octet-stream\r\n\
         Content-Disposition: attachment; filename=invoice.com\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n{attachment}\r\n--b1--\r\n"
    );
    let mut raw = Raw::connect(port).await;
    let replies = raw
        .deliver(
            "ann@example.com",
            &["support@shop.test", "sales@shop.test"],
            message.as_bytes(),
        )
        .await;
    for reply in &replies {
        reply.expect(554, "5.7.1", "infected");
        assert!(reply.text().contains(EICAR_SIGNATURE), "{reply:?}");
    }
    assert!(gw.entries("desk").await.is_empty(), "nothing on the desk");
    let quarantine = gw.entries("quarantine").await;
    assert_eq!(quarantine.len(), 1, "kept once for the operator");
    assert_eq!(quarantine[0].field("kind"), "infected");
    gw.stop().await;
}

#[tokio::test]
async fn connections_past_the_cap_are_told_421() {
    // A long shed grace: the idle first session is not closed to make room.
    let (gw, port) = gateway(
        "lmtp_cap",
        &redis_url(),
        "max_connections = 1\nshed_grace = \"1h\"",
        "",
    )
    .await;
    let mut first = Raw::connect(port).await;
    let mut second = Raw::open(port).await;
    second
        .reply()
        .await
        .expect(421, "4.3.2", "past max_connections");
    assert!(second.closed().await);
    first
        .command("NOOP")
        .await
        .expect(250, "2.0.0", "the first is served");
    first.command("QUIT").await.expect(221, "2.0.0", "QUIT");
    gw.stop().await;
}

#[tokio::test]
async fn an_idle_session_past_the_grace_is_shed_for_a_newcomer() {
    let (gw, port) = gateway(
        "lmtp_shed",
        &redis_url(),
        "max_connections = 1\nshed_grace = \"200ms\"",
        "",
    )
    .await;
    let mut idle = Raw::connect(port).await;
    idle.command("LHLO c").await.expect(250, "", "LHLO");
    // Past the grace (not a timing assertion: the newcomer below must get
    // in whenever it comes after it).
    tokio::time::sleep(Duration::from_millis(400)).await;
    let mut newcomer = Raw::connect(port).await;
    idle.reply()
        .await
        .expect(421, "4.3.2", "the idle session makes room");
    assert!(idle.closed().await, "and is closed");
    let replies = newcomer
        .deliver(
            "ann@example.com",
            &["support@shop.test"],
            &mail("shed", "hi"),
        )
        .await;
    replies[0].expect(250, "2.0.0", "the newcomer delivers");
    assert_eq!(gw.entries("desk").await.len(), 1);
    gw.stop().await;
}

#[tokio::test]
async fn one_address_past_its_connection_cap_is_told_421_4_7_0() {
    let (gw, port) = gateway(
        "lmtp_per_ip",
        &redis_url(),
        "max_connections_per_ip = 1",
        "",
    )
    .await;
    let mut first = Raw::connect(port).await;
    let mut second = Raw::open(port).await;
    second
        .reply()
        .await
        .expect(421, "4.7.0", "past max_connections_per_ip");
    assert!(second.closed().await);
    first
        .command("NOOP")
        .await
        .expect(250, "2.0.0", "the first is served");
    gw.stop().await;
}

#[tokio::test]
async fn shutdown_tells_idle_sessions_421() {
    let (gw, port) = gateway("lmtp_shutdown", &redis_url(), "", "").await;
    let mut raw = Raw::connect(port).await;
    raw.command("LHLO c").await.expect(250, "", "LHLO");
    let stopping = tokio::spawn(gw.stop());
    raw.reply().await.expect(421, "4.3.2", "shutting down");
    assert!(raw.closed().await);
    stopping.await.expect("the gateway stops cleanly");
    assert!(
        TcpStream::connect(("127.0.0.1", port)).await.is_err(),
        "no longer listening"
    );
}

#[tokio::test]
async fn a_full_desk_gets_451_until_it_drains() {
    let (gw, port) = gateway(
        "lmtp_backpressure",
        &redis_url(),
        "",
        "[backpressure]\ndesk_high_water = 2\ncheck_interval = \"50ms\"\n",
    )
    .await;
    let mut raw = Raw::connect(port).await;
    raw.command("LHLO c").await.expect(250, "", "LHLO");
    // Deliver until the watch sees the desk past its mark (a safety net
    // of 200 messages).
    let mut stored = 0;
    let refused = loop {
        assert!(stored < 200, "no 451 after {stored} stored messages");
        raw.command("MAIL FROM:<ann@example.com>")
            .await
            .expect(250, "2.1.0", "MAIL");
        raw.command("RCPT TO:<support@shop.test>")
            .await
            .expect(250, "2.1.5", "RCPT");
        raw.command("DATA").await.expect(354, "", "DATA");
        raw.send(&mail(&format!("busy-{stored}"), "hello")).await;
        raw.send(b".\r\n").await;
        let reply = raw.reply().await;
        if reply.code == 250 {
            stored += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        break reply;
    };
    refused.expect(451, "4.3.0", "backpressure: retry later");
    assert!(stored >= 3, "the mark (2) was passed first: {stored}");
    assert_eq!(
        gw.entries("desk").await.len(),
        stored,
        "every 250 is on the desk"
    );

    // The desk consumer catches up; the same session is served again.
    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("DEL")
        .arg(format!("{}:desk", gw.prefix))
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut served = false;
    for _ in 0..100 {
        let reply = raw
            .deliver(
                "ann@example.com",
                &["support@shop.test"],
                &mail("after", "x"),
            )
            .await
            .remove(0);
        if reply.code == 250 {
            served = true;
            break;
        }
        reply.expect(451, "4.3.0", "only 451 until the watch samples again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(served, "served again once the desk drained");
    gw.stop().await;
}

#[tokio::test]
async fn a_rate_rule_keeps_mail_in_suppressed_and_answers_250() {
    // Mail is never refused by a rule (src/route.rs): a refusal would make
    // the mail server retry or bounce to a possibly forged sender.
    let rules = tempfile::tempdir().unwrap();
    std::fs::write(
        rules.path().join("20-email.toml"),
        "[[rule]]\nname = \"one-mail\"\nmatch = { channel = \"email\" }\nkey = [\"sender\"]\n\
         rate = \"1/h\"\nburst = 1\naction = \"reject\"\nscope = \"local\"\n",
    )
    .unwrap();
    let config = format!("[rules]\ndir = \"{}\"\n", rules.path().display());
    let (gw, port) = gateway("lmtp_rate", &redis_url(), "", &config).await;
    let mut raw = Raw::connect(port).await;
    raw.deliver(
        "ann@example.com",
        &["support@shop.test"],
        &mail("first", "a"),
    )
    .await[0]
        .expect(250, "2.0.0", "within the burst");
    let replies = raw
        .deliver(
            "ann@example.com",
            &["support@shop.test", "sales@shop.test"],
            &mail("second", "b"),
        )
        .await;
    for reply in &replies {
        reply.expect(250, "2.0.0", "stored, though not for the desk");
    }
    assert_eq!(gw.entries("desk").await.len(), 1);
    let suppressed = gw.entries("suppressed").await;
    assert_eq!(suppressed.len(), 1, "the second is kept for audit");
    assert_eq!(suppressed[0].field("kind"), "rejected");
    assert_eq!(suppressed[0].envelope()["source"]["type"], "lmtp");
    gw.stop().await;
}

/// The LHLO answer's XFORWARD line, if it has one.
fn xforward_offer(lhlo: &Reply) -> Option<&str> {
    lhlo.lines
        .iter()
        .map(String::as_str)
        .find(|l| l.starts_with("XFORWARD"))
}

/// MAIL, one RCPT, DATA and the message on a greeted session; the reply.
async fn transaction(raw: &mut Raw, subject: &str) -> Reply {
    raw.command("MAIL FROM:<ann@example.com>")
        .await
        .expect(250, "2.1.0", "MAIL");
    raw.command("RCPT TO:<support@shop.test>")
        .await
        .expect(250, "2.1.5", "RCPT");
    raw.command("DATA").await.expect(354, "", "DATA");
    raw.send(&dot_stuff(&mail(subject, subject))).await;
    raw.send(b".\r\n").await;
    raw.reply().await
}

#[tokio::test]
async fn xforward_puts_the_smtp_client_in_the_envelope_for_one_transaction() {
    let (gw, port) = gateway("lmtp_xforward", &redis_url(), "", "").await;
    let mut raw = Raw::connect(port).await;
    let lhlo = raw.command("LHLO mx.shop.test").await;
    assert_eq!(
        xforward_offer(&lhlo),
        Some("XFORWARD NAME ADDR PROTO HELO SOURCE PORT IDENT"),
        "offered to a loopback client (the default xforward_from): {lhlo:?}"
    );
    // As Postfix sends it: two commands, xtext values, the unknown NAME.
    raw.command("XFORWARD NAME=[UNAVAILABLE] ADDR=IPv6:2001:db8::7 PORT=40122")
        .await
        .expect(250, "2.0.0", "first XFORWARD");
    raw.command("XFORWARD PROTO=ESMTP HELO=mx+2Bcustomer.test IDENT=4dGhJ2 SOURCE=REMOTE")
        .await
        .expect(250, "2.0.0", "second XFORWARD");
    raw.command("XFORWARD COLOR=blue").await.expect(
        501,
        "5.5.4",
        "an attribute Postfix does not send",
    );
    raw.command(&format!("XFORWARD HELO={}", "a".repeat(256)))
        .await
        .expect(501, "5.5.4", "a value over 255 bytes");
    transaction(&mut raw, "xforward-first")
        .await
        .expect(250, "2.0.0", "first message");

    // The next transaction starts without a client...
    transaction(&mut raw, "xforward-second")
        .await
        .expect(250, "2.0.0", "second message");
    // ...and RSET forgets what XFORWARD said, as the end of one does.
    raw.command("XFORWARD ADDR=192.0.2.1 HELO=forgotten.test")
        .await
        .expect(250, "2.0.0", "XFORWARD");
    raw.command("RSET").await.expect(250, "2.0.0", "RSET");
    raw.command("MAIL FROM:<bob@example.com>")
        .await
        .expect(250, "2.1.0", "MAIL");
    raw.command("XFORWARD ADDR=192.0.2.2")
        .await
        .expect(503, "5.5.1", "XFORWARD after MAIL");
    raw.command("RSET").await.expect(250, "2.0.0", "RSET");
    transaction(&mut raw, "xforward-third")
        .await
        .expect(250, "2.0.0", "third message");
    raw.command("QUIT").await.expect(221, "2.0.0", "QUIT");

    let desk = gw.entries("desk").await;
    let envelopes: Vec<Value> = desk.iter().map(|e| e.envelope()).collect();
    let subjects: Vec<_> = envelopes.iter().map(|e| e["subject"].clone()).collect();
    assert_eq!(
        subjects,
        vec!["xforward-first", "xforward-second", "xforward-third"]
    );
    assert_matches_schema("lmtp xforward", &envelopes[0]);
    assert_eq!(
        envelopes[0]["source"]["client"],
        serde_json::json!({ "address": "2001:db8::7", "helo": "mx+customer.test" }),
        "ADDR without its IPv6: prefix, HELO xtext-decoded: {}",
        envelopes[0]["source"]
    );
    assert_eq!(
        envelopes[0]["source"]["ip"], "127.0.0.1",
        "ip stays the mail server that delivered it"
    );
    for env in &envelopes[1..] {
        assert!(
            env["source"].get("client").is_none(),
            "{}: no client after the transaction or RSET: {}",
            env["subject"],
            env["source"]
        );
    }
    gw.stop().await;
}

#[tokio::test]
async fn xforward_from_a_peer_outside_xforward_from_is_refused() {
    // 127.0.0.1 is not in 192.0.2.0/24: to this listener the test is an
    // unknown client, which must not be able to name another.
    let (gw, port) = gateway(
        "lmtp_xforward_untrusted",
        &redis_url(),
        "xforward_from = [\"192.0.2.0/24\"]",
        "",
    )
    .await;
    let mut raw = Raw::connect(port).await;
    let lhlo = raw.command("LHLO elsewhere.test").await;
    lhlo.expect(250, "", "LHLO");
    assert_eq!(xforward_offer(&lhlo), None, "not offered: {lhlo:?}");
    let refused = raw
        .command("XFORWARD ADDR=203.0.113.7 HELO=mx.bank.test")
        .await;
    refused.expect(550, "5.7.0", "XFORWARD from an untrusted peer");
    assert!(
        refused
            .text()
            .contains("XFORWARD not allowed from 127.0.0.1"),
        "{refused:?}"
    );
    raw.command("XFORWARD junk")
        .await
        .expect(550, "5.7.0", "refused before its syntax is read");
    transaction(&mut raw, "xforward-untrusted").await.expect(
        250,
        "2.0.0",
        "the mail itself is taken",
    );
    raw.command("QUIT").await.expect(221, "2.0.0", "QUIT");
    let env = gw.entries("desk").await[0].envelope();
    assert!(
        env["source"].get("client").is_none(),
        "nothing the refused XFORWARD said was kept: {}",
        env["source"]
    );
    gw.stop().await;
}

#[tokio::test]
async fn an_empty_xforward_from_turns_xforward_off() {
    let (gw, port) = gateway("lmtp_xforward_off", &redis_url(), "xforward_from = []", "").await;
    let mut raw = Raw::connect(port).await;
    let lhlo = raw.command("LHLO mx.shop.test").await;
    assert_eq!(xforward_offer(&lhlo), None, "not offered: {lhlo:?}");
    raw.command("XFORWARD ADDR=203.0.113.7")
        .await
        .expect(550, "5.7.0", "not even from loopback");
    raw.command("QUIT").await.expect(221, "2.0.0", "QUIT");
    gw.stop().await;
}
