//! `intake mailgate` as a mail server sees it: the real binary, a message on
//! stdin, and a fake gateway on 127.0.0.1 that answers a canned status. Each
//! test checks the exit code (sysexits.h), the RFC 3463 status line on
//! stdout and, where it matters, what reached the gateway.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

const TOKEN: &str = "test-token-6f1c";

/// A message with CRLF line ends, 8-bit bytes and no final newline: the
/// body must arrive byte for byte.
const MESSAGE: &[u8] = b"From: Customer <customer@example.com>\r\n\
To: support@shop.test\r\n\
Subject: where is my order?\r\n\
Content-Type: text/plain; charset=latin1\r\n\
\r\n\
Gr\xfc\xdfe, order 1234 has not arrived.\r\n\
-- \r\nCustomer";

/// The longest a single run may take before the test calls it hung.
const RUN_DEADLINE: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// Stored.
// ---------------------------------------------------------------------------

#[test]
fn stored_message_exits_ok_with_receipt_id() {
    let gateway = FakeGateway::answering(
        202,
        &[],
        r#"{"id":"01JTESTRECEIPT0000000000","status":"accepted"}"#,
    );
    let token_file = temp_file(&format!("{TOKEN}\n"));
    let run = mailgate()
        .args(["--url", &gateway.url])
        .arg("--token-file")
        .arg(token_file.path())
        .args(["--sender=customer@example.com"])
        .args([
            "--recipient=support@shop.test",
            "--recipient=sales@shop.test",
        ])
        .run(MESSAGE);

    run.assert_exit(0);
    run.assert_status("2.0.0 stored as 01JTESTRECEIPT0000000000");
    let request = gateway
        .request()
        .expect("the gateway never got the message");
    assert_eq!(request.method, "POST", "wrong method");
    assert_eq!(
        request.target, "/v1/messages",
        "base URL did not get /v1/messages appended"
    );
    assert_eq!(
        request.header("authorization"),
        Some(format!("Bearer {TOKEN}").as_str()),
        "bearer token missing, or the token file's newline was not trimmed"
    );
    assert_eq!(
        request.header("content-type"),
        Some("message/rfc822"),
        "wrong content type"
    );
    assert_eq!(
        request.body, MESSAGE,
        "the body did not arrive byte for byte"
    );
    assert_eq!(
        request.header("x-intake-envelope-sender"),
        Some("customer@example.com"),
        "envelope sender not sent"
    );
    assert_eq!(
        request.headers_named("x-intake-envelope-recipient"),
        ["support@shop.test", "sales@shop.test"],
        "envelope recipients must be one header each, in order"
    );
}

#[test]
fn token_from_environment_bounce_sender_and_recipient_list_are_sent() {
    let gateway = FakeGateway::answering(202, &[], r#"{"id":"01JBOUNCE","status":"accepted"}"#);
    let endpoint = format!("{}/v1/messages", gateway.url);
    let run = mailgate()
        .env("INTAKE_MAILGATE_TOKEN", TOKEN)
        .args([
            "--url",
            &endpoint,
            "--sender=",
            "--recipient",
            "support@shop.test",
            "sales@shop.test",
        ])
        .run(MESSAGE);

    run.assert_exit(0);
    let request = gateway
        .request()
        .expect("the gateway never got the message");
    assert_eq!(
        request.target, "/v1/messages",
        "a URL ending in /v1/messages must be used as is"
    );
    assert_eq!(
        request.header("authorization"),
        Some(format!("Bearer {TOKEN}").as_str()),
        "token from INTAKE_MAILGATE_TOKEN not sent"
    );
    assert_eq!(
        request.header("x-intake-envelope-sender"),
        Some(""),
        "the null sender of a bounce must arrive as an empty header, not be dropped"
    );
    assert_eq!(
        request.headers_named("x-intake-envelope-recipient"),
        ["support@shop.test", "sales@shop.test"],
        "one --recipient followed by two addresses (Postfix's `--recipient ${{recipient}}`) must send both"
    );
}

#[test]
fn exim_pipe_arguments_and_mbox_from_line_arrive_as_the_mail_alone() {
    // What Exim's pipe transport runs without a shell: the sender in its
    // SENDER variable (on the command line it is tainted), `$pipe_addresses`
    // as trailing arguments after `--`, and (without `message_prefix =`)
    // its mbox `From ` line before the headers.
    let gateway = FakeGateway::answering(202, &[], r#"{"id":"01JEXIM","status":"accepted"}"#);
    let mut mbox = b"From customer@example.com Mon Jan 15 10:00:00 2024\n".to_vec();
    mbox.extend_from_slice(MESSAGE);
    let run = with_token(mailgate(), &gateway.url)
        .env("SENDER", "customer@example.com")
        .args([
            "--sender-env=SENDER",
            "--recipient=support@shop.test",
            "--",
            "sales@shop.test",
            "billing@shop.test",
        ])
        .run(&mbox);

    run.assert_exit(0);
    let request = gateway
        .request()
        .expect("the gateway never got the message");
    assert_eq!(
        request.body, MESSAGE,
        "the mbox From line must be dropped, the rest arrive byte for byte"
    );
    assert_eq!(
        request.headers_named("x-intake-envelope-recipient"),
        ["support@shop.test", "sales@shop.test", "billing@shop.test"],
        "trailing addresses are recipients, after the --recipient ones"
    );
    assert_eq!(
        request.header("x-intake-envelope-sender"),
        Some("customer@example.com"),
        "--sender-env=SENDER takes the sender from Exim's environment"
    );
}

#[test]
fn client_address_and_helo_are_sent_as_headers() {
    let gateway = FakeGateway::answering(202, &[], r#"{"id":"01JCLIENT","status":"accepted"}"#);
    let run = with_token(mailgate(), &gateway.url)
        .args([
            "--sender=customer@example.com",
            "--recipient=support@shop.test",
            "--client-address=IPv6:2001:DB8::7",
            "--helo=mx.customer.test",
        ])
        .run(MESSAGE);

    run.assert_exit(0);
    assert!(
        run.stderr.is_empty(),
        "nothing to warn about: {:?}",
        run.stderr
    );
    let request = gateway
        .request()
        .expect("the gateway never got the message");
    assert_eq!(
        request.header("x-intake-client-address"),
        Some("2001:db8::7"),
        "the address, without Postfix's IPv6: prefix"
    );
    assert_eq!(
        request.header("x-intake-client-helo"),
        Some("mx.customer.test")
    );
}

#[test]
fn empty_or_unknown_client_sends_no_client_headers() {
    // What Postfix's pipe passes for a locally submitted mail.
    for flags in [
        ["--client-address=", "--helo="],
        ["--client-address=unknown", "--helo=unknown"],
    ] {
        let gateway = FakeGateway::answering(202, &[], r#"{"id":"01JLOCAL","status":"accepted"}"#);
        let run = with_token(mailgate(), &gateway.url)
            .args(flags)
            .run(MESSAGE);

        run.assert_exit(0);
        assert!(
            run.stderr.is_empty(),
            "{flags:?}: no warning: {:?}",
            run.stderr
        );
        let request = gateway
            .request()
            .expect("the gateway never got the message");
        assert_eq!(request.header("x-intake-client-address"), None, "{flags:?}");
        assert_eq!(request.header("x-intake-client-helo"), None, "{flags:?}");
    }
}

#[test]
fn an_odd_client_address_is_left_out_with_a_warning_not_an_error() {
    let gateway = FakeGateway::answering(202, &[], r#"{"id":"01JODD","status":"accepted"}"#);
    let run = with_token(mailgate(), &gateway.url)
        .args([
            "--client-address=mx.customer.test",
            "--helo=mx.customer.test",
        ])
        .run(MESSAGE);

    run.assert_exit(0);
    run.assert_status("2.0.0 stored as 01JODD");
    assert!(
        run.stderr
            .contains("warning: --client-address mx.customer.test is not an IP address"),
        "says what was left out: {:?}",
        run.stderr
    );
    let request = gateway
        .request()
        .expect("the gateway never got the message");
    assert_eq!(request.header("x-intake-client-address"), None);
    assert_eq!(
        request.header("x-intake-client-helo"),
        Some("mx.customer.test"),
        "the HELO goes on without the odd address"
    );
}

#[test]
fn https_gateway_with_private_ca_stores_message() {
    let gateway = FakeGateway::answering_tls(202, r#"{"id":"01JTLS","status":"accepted"}"#);
    let ca_file = temp_file(TEST_CA_PEM);
    let url = gateway.url.replace("http://", "https://");
    let run = with_token(mailgate(), &url)
        .arg("--ca-file")
        .arg(ca_file.path())
        .run(MESSAGE);

    run.assert_exit(0);
    run.assert_status("2.0.0 stored as 01JTLS");
    let request = gateway
        .request()
        .expect("the gateway never got the message over TLS");
    assert_eq!(
        request.body, MESSAGE,
        "the body did not arrive byte for byte over TLS"
    );
}

// ---------------------------------------------------------------------------
// Transient: the mail server keeps the mail (75).
// ---------------------------------------------------------------------------

#[test]
fn server_unavailable_exits_tempfail() {
    let gateway = FakeGateway::answering(
        503,
        &[("Retry-After", "30")],
        r#"{"error":"storage_unavailable","message":"cannot store right now"}"#,
    );
    let run = with_token(mailgate(), &gateway.url).run(MESSAGE);

    run.assert_exit(75);
    run.assert_status("4.3.0 gateway unavailable");
    assert!(
        run.stderr.contains("storage_unavailable") && run.stderr.contains("cannot store right now"),
        "stderr should repeat the gateway's error and message, got {:?}",
        run.stderr
    );
}

#[test]
fn rate_limited_exits_tempfail_with_retry_hint() {
    let gateway = FakeGateway::answering(
        429,
        &[("Retry-After", "30")],
        r#"{"error":"rate_limited","message":"too many messages"}"#,
    );
    let run = with_token(mailgate(), &gateway.url).run(MESSAGE);

    run.assert_exit(75);
    run.assert_status("4.7.1 rate limited, retry after 30 s");
}

#[test]
fn server_error_exits_tempfail() {
    let gateway = FakeGateway::answering(500, &[], "internal error, not JSON");
    let run = with_token(mailgate(), &gateway.url).run(MESSAGE);

    run.assert_exit(75);
    run.assert_status("4.3.0");
}

#[test]
fn wrong_token_exits_tempfail_instead_of_bouncing() {
    let gateway = FakeGateway::answering(401, &[], r#"{"error":"unauthorized"}"#);
    let run = with_token(mailgate(), &gateway.url).run(MESSAGE);

    run.assert_exit(75);
    run.assert_status("4.");
    assert!(
        run.stderr.contains("token"),
        "stderr should say the token is the problem, got {:?}",
        run.stderr
    );
    assert!(
        !run.stdout.contains(TOKEN) && !run.stderr.contains(TOKEN),
        "the token was echoed: stdout {:?}, stderr {:?}",
        run.stdout,
        run.stderr
    );
}

#[test]
fn missing_endpoint_exits_tempfail_to_keep_mail() {
    let gateway = FakeGateway::answering(404, &[], "");
    let run = with_token(mailgate(), &gateway.url).run(MESSAGE);

    run.assert_exit(75);
    run.assert_status("4.3.5");
}

#[test]
fn connection_refused_exits_tempfail() {
    // Bind a port, then free it: nothing listens there any more.
    let addr = TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("cannot bind a local port");
    let run = with_token(mailgate(), &format!("http://{addr}")).run(MESSAGE);

    run.assert_exit(75);
    run.assert_status("4.4.1 gateway unavailable");
}

#[test]
fn silent_server_times_out_and_exits_tempfail() {
    let gateway = FakeGateway::start(Reply::Silent, None);
    let run = with_token(mailgate(), &gateway.url)
        .args(["--timeout", "1s"])
        .run(MESSAGE);

    run.assert_exit(75);
    run.assert_status("4.4.2 gateway unavailable: timed out");
    assert!(
        run.elapsed < Duration::from_secs(10),
        "--timeout 1s was not kept: the run took {:?}",
        run.elapsed
    );
    assert!(
        run.elapsed >= Duration::from_millis(900),
        "gave up before the timeout: {:?}",
        run.elapsed
    );
}

#[test]
fn garbled_answer_exits_tempfail() {
    let gateway = FakeGateway::start(Reply::Raw(b"SMTP? 220 hello there\r\n\r\n".to_vec()), None);
    let run = with_token(mailgate(), &gateway.url).run(MESSAGE);

    run.assert_exit(75);
    run.assert_status("4.");
}

#[test]
fn untrusted_certificate_exits_tempfail() {
    let gateway = FakeGateway::answering_tls(202, r#"{"id":"x","status":"accepted"}"#);
    let url = gateway.url.replace("http://", "https://");
    // No --ca-file: the system roots do not know the test CA.
    let run = with_token(mailgate(), &url).run(MESSAGE);

    run.assert_exit(75);
    run.assert_status("4.");
    assert!(
        gateway.request().is_none(),
        "the message was sent over an untrusted connection"
    );
}

#[test]
fn missing_token_exits_tempfail() {
    let gateway = FakeGateway::answering(202, &[], r#"{"id":"x","status":"accepted"}"#);
    let run = mailgate().args(["--url", &gateway.url]).run(MESSAGE);

    run.assert_exit(75);
    run.assert_status("4.3.5 mailgate misconfigured");
    assert!(
        run.stderr.contains("INTAKE_MAILGATE_TOKEN"),
        "stderr should say how to give a token, got {:?}",
        run.stderr
    );
    assert!(
        gateway.request().is_none(),
        "the message was sent without a token"
    );
}

#[test]
fn empty_token_file_exits_tempfail() {
    let gateway = FakeGateway::answering(202, &[], r#"{"id":"x","status":"accepted"}"#);
    let token_file = temp_file(" \n");
    let run = mailgate()
        .args(["--url", &gateway.url])
        .arg("--token-file")
        .arg(token_file.path())
        .run(MESSAGE);

    run.assert_exit(75);
    run.assert_status("4.3.5 mailgate misconfigured");
    assert!(
        gateway.request().is_none(),
        "the message was sent with an empty token"
    );
}

#[test]
fn unreadable_token_file_exits_tempfail() {
    let gateway = FakeGateway::answering(202, &[], r#"{"id":"x","status":"accepted"}"#);
    let dir = tempfile::tempdir().expect("cannot make a temporary directory");
    let run = mailgate()
        .args(["--url", &gateway.url])
        .arg("--token-file")
        .arg(dir.path().join("no-such-token"))
        .run(MESSAGE);

    run.assert_exit(75);
    run.assert_status("4.3.5 mailgate misconfigured");
}

// ---------------------------------------------------------------------------
// Rejected for good (65) or by policy (77).
// ---------------------------------------------------------------------------

#[test]
fn malformed_message_exits_dataerr() {
    let gateway = FakeGateway::answering(
        400,
        &[],
        r#"{"error":"bad_message","message":"no From header","fields":[]}"#,
    );
    let run = with_token(mailgate(), &gateway.url).run(MESSAGE);

    run.assert_exit(65);
    run.assert_status("5.6.0 rejected: no From header");
}

#[test]
fn too_large_for_gateway_exits_dataerr() {
    let gateway = FakeGateway::answering(413, &[], r#"{"error":"too_large"}"#);
    let run = with_token(mailgate(), &gateway.url).run(MESSAGE);

    run.assert_exit(65);
    run.assert_status("5.3.4 message too big");
}

#[test]
fn unsupported_media_exits_dataerr() {
    let gateway = FakeGateway::answering(415, &[], "");
    let run = with_token(mailgate(), &gateway.url).run(MESSAGE);

    run.assert_exit(65);
    run.assert_status("5.6.1");
}

#[test]
fn forbidden_sender_exits_noperm() {
    let gateway = FakeGateway::answering(
        403,
        &[],
        r#"{"error":"blocked","message":"sender is blocked"}"#,
    );
    let run = with_token(mailgate(), &gateway.url).run(MESSAGE);

    run.assert_exit(77);
    run.assert_status("5.7.1 refused by policy: sender is blocked");
}

#[test]
fn infected_message_exits_noperm() {
    let gateway = FakeGateway::answering(
        422,
        &[],
        r#"{"error":"infected","message":"Eicar-Test-Signature"}"#,
    );
    let run = with_token(mailgate(), &gateway.url).run(MESSAGE);

    run.assert_exit(77);
    run.assert_status("5.7.1 refused by policy");
}

#[test]
fn oversized_message_exits_dataerr_without_contacting_gateway() {
    let gateway = FakeGateway::answering(202, &[], r#"{"id":"x","status":"accepted"}"#);
    let big = vec![b'x'; 2_048];
    let run = with_token(mailgate(), &gateway.url)
        .args(["--max-size", "1KB"])
        .run(&big);

    run.assert_exit(65);
    run.assert_status("5.3.4 message too big");
    assert!(
        gateway.request().is_none(),
        "an oversized message was sent to the gateway"
    );
}

// ---------------------------------------------------------------------------
// Usage (64).
// ---------------------------------------------------------------------------

#[test]
fn missing_url_is_a_usage_error() {
    let run = mailgate().env("INTAKE_MAILGATE_TOKEN", TOKEN).run(MESSAGE);

    run.assert_exit(64);
}

#[test]
fn url_with_unsupported_scheme_is_a_usage_error() {
    let run = with_token(mailgate(), "ftp://127.0.0.1:21").run(MESSAGE);

    run.assert_exit(64);
}

// ---------------------------------------------------------------------------
// Running the binary.
// ---------------------------------------------------------------------------

/// `intake mailgate` with a clean environment for the token.
fn mailgate() -> Mailgate {
    let mut command = Command::new(env!("CARGO_BIN_EXE_intake"));
    command.arg("mailgate").env_remove("INTAKE_MAILGATE_TOKEN");
    Mailgate(command)
}

/// `mailgate()` pointed at `url` with the token in the environment.
fn with_token(mailgate: Mailgate, url: &str) -> Mailgate {
    mailgate
        .env("INTAKE_MAILGATE_TOKEN", TOKEN)
        .args(["--url", url])
}

/// A file holding `contents` (a token or a PEM), removed on drop.
fn temp_file(contents: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().expect("cannot create a temporary file");
    file.write_all(contents.as_bytes())
        .expect("cannot write a temporary file");
    file
}

/// A command line being put together.
struct Mailgate(Command);

impl Mailgate {
    fn arg(mut self, arg: impl AsRef<std::ffi::OsStr>) -> Self {
        self.0.arg(arg);
        self
    }

    fn args<'a>(mut self, args: impl IntoIterator<Item = &'a str>) -> Self {
        self.0.args(args);
        self
    }

    fn env(mut self, key: &str, value: &str) -> Self {
        self.0.env(key, value);
        self
    }

    /// Runs it with `stdin` as the message, as a pipe transport would.
    fn run(mut self, stdin: &[u8]) -> Run {
        let started = Instant::now();
        let mut child = self
            .0
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start the intake binary");
        let mut input = child.stdin.take().expect("no stdin pipe");
        let message = stdin.to_vec();
        // The writer may meet a closed pipe when the binary exits early
        // (a usage error): that is fine, only the exit code matters.
        let writer = thread::spawn(move || {
            let _ = input.write_all(&message);
        });
        let stdout = read_all(child.stdout.take().expect("no stdout pipe"));
        let stderr = read_all(child.stderr.take().expect("no stderr pipe"));
        let status = loop {
            if let Some(status) = child.try_wait().expect("cannot wait for intake") {
                break status;
            }
            if started.elapsed() > RUN_DEADLINE {
                let _ = child.kill();
                let _ = child.wait();
                panic!("intake mailgate hung for more than {RUN_DEADLINE:?}");
            }
            thread::sleep(Duration::from_millis(10));
        };
        let elapsed = started.elapsed();
        let _ = writer.join();
        Run {
            code: status.code().expect("intake was killed by a signal"),
            stdout: stdout.join().expect("stdout reader panicked"),
            stderr: stderr.join().expect("stderr reader panicked"),
            elapsed,
        }
    }
}

fn read_all(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// What one run showed a mail server.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

impl Run {
    fn assert_exit(&self, expected: i32) {
        assert_eq!(
            self.code, expected,
            "exit code {} instead of {expected}; stdout {:?}, stderr {:?}",
            self.code, self.stdout, self.stderr
        );
    }

    /// The first stdout line must start with `prefix`.
    fn assert_status(&self, prefix: &str) {
        let first = self.stdout.lines().next().unwrap_or("");
        assert!(
            first.starts_with(prefix),
            "status line {first:?} does not start with {prefix:?}; stderr {:?}",
            self.stderr
        );
    }
}

// ---------------------------------------------------------------------------
// The fake gateway.
// ---------------------------------------------------------------------------

/// What the fake gateway does with the one connection it takes.
enum Reply {
    /// Reads the request and answers this.
    Answer {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
    /// Reads the request and never answers, holding the connection open.
    Silent,
    /// Reads the request and writes these bytes, which are not HTTP.
    Raw(Vec<u8>),
}

/// A request as the fake gateway saw it.
struct Recorded {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Recorded {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    fn headers_named(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
            .collect()
    }
}

/// A one-connection HTTP server on 127.0.0.1, port 0, on its own thread.
struct FakeGateway {
    /// `http://127.0.0.1:PORT` (the test swaps in https when it serves TLS).
    url: String,
    requests: mpsc::Receiver<Recorded>,
    /// Dropping it releases a `Reply::Silent` connection.
    _release: mpsc::Sender<()>,
}

impl FakeGateway {
    fn answering(status: u16, headers: &[(&str, &str)], body: &str) -> Self {
        let headers = headers
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect();
        FakeGateway::start(
            Reply::Answer {
                status,
                headers,
                body: body.to_owned(),
            },
            None,
        )
    }

    fn answering_tls(status: u16, body: &str) -> Self {
        FakeGateway::start(
            Reply::Answer {
                status,
                headers: vec![],
                body: body.to_owned(),
            },
            Some(tls_server_config()),
        )
    }

    fn start(reply: Reply, tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("cannot bind the fake gateway");
        let addr: SocketAddr = listener.local_addr().expect("no local address");
        let (requests_tx, requests) = mpsc::channel();
        let (release, released) = mpsc::channel::<()>();
        thread::spawn(move || {
            // Bounded: a test whose binary never connects leaves no thread
            // blocked for ever.
            listener
                .set_nonblocking(true)
                .expect("cannot poll the listener");
            let deadline = Instant::now() + RUN_DEADLINE;
            let stream = loop {
                match listener.accept() {
                    Ok((stream, _)) => break stream,
                    Err(_) if Instant::now() < deadline => thread::sleep(Duration::from_millis(5)),
                    Err(_) => return,
                }
            };
            stream
                .set_nonblocking(false)
                .expect("cannot make the stream blocking");
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .expect("cannot set a read timeout");
            match tls {
                None => serve(stream, reply, requests_tx, released),
                Some(config) => {
                    let Ok(connection) = rustls::ServerConnection::new(config) else {
                        return;
                    };
                    serve(
                        rustls::StreamOwned::new(connection, stream),
                        reply,
                        requests_tx,
                        released,
                    )
                }
            }
        });
        FakeGateway {
            url: format!("http://{addr}"),
            requests,
            _release: release,
        }
    }

    /// The request the gateway received, if any reached it in full.
    fn request(&self) -> Option<Recorded> {
        self.requests.recv_timeout(Duration::from_millis(500)).ok()
    }
}

/// Reads one HTTP/1.1 request (Content-Length body) and replies.
fn serve<S: Read + Write>(
    stream: S,
    reply: Reply,
    requests: mpsc::Sender<Recorded>,
    released: mpsc::Receiver<()>,
) {
    let mut reader = BufReader::new(stream);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
        return; // closed without a request, e.g. a failed TLS handshake
    }
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let target = parts.next().unwrap_or_default().to_owned();
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_owned(), value.trim().to_owned()));
        }
    }
    let length = headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let _ = requests.send(Recorded {
        method,
        target,
        headers,
        body,
    });

    let mut stream = reader.into_inner();
    match reply {
        Reply::Answer {
            status,
            headers,
            body,
        } => {
            let reason = http::StatusCode::from_u16(status)
                .ok()
                .and_then(|status| status.canonical_reason())
                .unwrap_or("Whatever");
            let mut answer = format!(
                "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n\
                 content-length: {}\r\nconnection: close\r\n",
                body.len()
            );
            for (name, value) in headers {
                answer.push_str(&format!("{name}: {value}\r\n"));
            }
            answer.push_str("\r\n");
            answer.push_str(&body);
            let _ = stream.write_all(answer.as_bytes());
            let _ = stream.flush();
        }
        Reply::Raw(bytes) => {
            let _ = stream.write_all(&bytes);
            let _ = stream.flush();
        }
        Reply::Silent => {
            // Hold the connection until the test ends (its sender drops).
            let _ = released.recv_timeout(RUN_DEADLINE);
        }
    }
}

// ---------------------------------------------------------------------------
// TLS material for 127.0.0.1, made once with openssl for these tests only:
// an EC P-256 CA, and a server certificate for IP 127.0.0.1 and localhost it
// signed, both valid from 2020 to 2120.
// ---------------------------------------------------------------------------

const TEST_CA_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBdzCCAR2gAwIBAgIBATAKBggqhkjOPQQDAjAiMSAwHgYDVQQDDBdpbnRha2Ug
bWFpbGdhdGUgdGVzdCBDQTAgFw0yMDAxMDEwMDAwMDBaGA8yMTIwMDEwMTAwMDAw
MFowIjEgMB4GA1UEAwwXaW50YWtlIG1haWxnYXRlIHRlc3QgQ0EwWTATBgcqhkjO
PQIBBggqhkjOPQMBBwNCAAQ8rjFwivHxyTpGiiQ8dzFCr5WfX87moL1ONqg5MnGr
7EkelQ13hO+uJ3W/YAMW5C76dE11p1Uz/majgLN8LkVno0IwQDAPBgNVHRMBAf8E
BTADAQH/MA4GA1UdDwEB/wQEAwIBBjAdBgNVHQ4EFgQUw4dqAJVtqJoHp7OmXq1j
bTPCONUwCgYIKoZIzj0EAwIDSAAwRQIgJu/x9V8atGuuG18VQraCXglz8naxuT1d
ExrHmSYY8YkCIQD9GYALv4e/fI4SuqUe42AfzI0ONDLGyXM/eksKxO05hg==
-----END CERTIFICATE-----
";

const TEST_SERVER_CERT_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBujCCAWCgAwIBAgIBAjAKBggqhkjOPQQDAjAiMSAwHgYDVQQDDBdpbnRha2Ug
bWFpbGdhdGUgdGVzdCBDQTAgFw0yMDAxMDEwMDAwMDBaGA8yMTIwMDEwMTAwMDAw
MFowFDESMBAGA1UEAwwJbG9jYWxob3N0MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcD
QgAEFU35Er5RqUsNcaKEw/gRRJyq4z7kd+/niMKTcLd5jB1syX59Rl6a9TZRg2vZ
rko5NUsOJIHbUvszKm/4FVCXSqOBkjCBjzAMBgNVHRMBAf8EAjAAMA4GA1UdDwEB
/wQEAwIHgDATBgNVHSUEDDAKBggrBgEFBQcDATAaBgNVHREEEzARhwR/AAABggls
b2NhbGhvc3QwHQYDVR0OBBYEFFep9sgQrtUhSdLuyuDK2Ek85waHMB8GA1UdIwQY
MBaAFMOHagCVbaiaB6ezpl6tY20zwjjVMAoGCCqGSM49BAMCA0gAMEUCIQDR8ooy
XM27d2omvQldZqBBhT31+tX83krbLz0y2cVfxAIgNVDe1dKKKS3JhNPu0wXFdWQa
HmyFBEgHH7Xvpovwxq0=
-----END CERTIFICATE-----
";

/// The server certificate's key. A test-only key, published here on
/// purpose; it protects nothing.
const TEST_SERVER_KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgfuR26D4v6qoGF7WU
uorb0bKvePNtu0ujyCWmpbnzi5uhRANCAAQVTfkSvlGpSw1xooTD+BFEnKrjPuR3
7+eIwpNwt3mMHWzJfn1GXpr1NlGDa9muSjk1Sw4kgdtS+zMqb/gVUJdK
-----END PRIVATE KEY-----
";

fn tls_server_config() -> Arc<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let cert = CertificateDer::from_pem_slice(TEST_SERVER_CERT_PEM.as_bytes())
        .expect("test server certificate does not parse");
    let key = PrivateKeyDer::from_pem_slice(TEST_SERVER_KEY_PEM.as_bytes())
        .expect("test server key does not parse");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .expect("test certificate and key do not match");
    Arc::new(config)
}
