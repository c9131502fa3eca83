//! `intake parse` as a sysadmin runs it, with no service running: a mail in
//! a file or on stdin comes out as the envelope JSON the desk would get
//! (valid against `src/envelope-v1.schema.json`, the subject decoded); a
//! missing file, an empty mail and a bad config each exit with their code
//! and say why.

mod support;

use std::io::Write as _;
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use support::envelope::{assert_matches_schema, crlf};

/// A mail with an encoded subject, a card number and an attachment.
fn mail() -> Vec<u8> {
    crlf(&[b"From: =?utf-8?q?Ann_M=C3=BCller?= <ann@example.com>\n\
        To: support@shop.test\n\
        Subject: =?UTF-8?B?0J/RgNC40LLQtdGC?= =?UTF-8?Q?_Gr=C3=BC=C3=9Fe?=\n\
        MIME-Version: 1.0\n\
        Content-Type: multipart/mixed; boundary=\"b\"\n\
        \n\
        --b\n\
        Content-Type: text/plain; charset=utf-8\n\
        \n\
        My card is 4111 1111 1111 1111, order 1234.\n\
        --b\n\
        Content-Type: application/pdf; name=\"invoice.pdf\"\n\
        Content-Disposition: attachment; filename=\"invoice.pdf\"\n\
        Content-Transfer-Encoding: base64\n\
        \n\
        aGVsbG8=\n\
        --b--\n"])
}

fn intake(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_intake"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("intake runs");
    child
        .stdin
        .take()
        .expect("stdin piped")
        .write_all(stdin)
        .expect("stdin written");
    child.wait_with_output().expect("intake ends")
}

/// The envelope printed on stdout, checked against the schema.
fn envelope(what: &str, out: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{what}: exit 0; stderr: {stderr}"
    );
    let envelope: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("{what}: stdout is not JSON ({e}): {stdout}"));
    assert_matches_schema(what, &envelope);
    assert!(
        stderr.contains("not scanned"),
        "{what}: stderr says nothing was scanned: {stderr}"
    );
    envelope
}

#[test]
fn a_mail_file_comes_out_as_a_valid_envelope_with_its_subject_decoded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mail.eml");
    std::fs::write(&path, mail()).unwrap();
    let out = intake(&["parse", &path.display().to_string()], b"");
    let env = envelope("from a file", &out);
    assert_eq!(env["subject"], "Привет Grüße", "the subject decoded");
    assert_eq!(env["customer"]["name"], "Ann Müller");
    assert_eq!(env["scan"]["status"], "unscanned", "nothing scanned");
    assert_eq!(env["attachments"][0]["filename"], "invoice.pdf");
    let text = env["text"].as_str().expect("a text body");
    assert!(
        text.contains("**** **** **** 1111") && !text.contains("4111 1111"),
        "the default [privacy] masks the card number: {text}"
    );
    assert!(env.get("raw").is_none(), "no raw without --raw: {env}");
}

#[test]
fn a_mail_on_stdin_is_read_when_no_file_is_given() {
    let out = intake(
        &["parse", "--recipient", "support+order-77@shop.test"],
        &mail(),
    );
    let env = envelope("from stdin", &out);
    assert_eq!(env["subject"], "Привет Grüße");
    assert_eq!(env["customer"]["mailbox_hash"], "order-77");
}

#[test]
fn raw_is_included_with_raw_and_the_config_s_privacy_applies() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("intake.toml");
    std::fs::write(
        &config,
        "[redis]\nurl = \"redis://127.0.0.1:1\"\n[privacy]\nredact_cards = false\n\
         [mime]\nmax_parts = 2\n",
    )
    .unwrap();
    let out = intake(
        &["parse", "--raw", "--config", &config.display().to_string()],
        &mail(),
    );
    let env = envelope("with --raw and --config", &out);
    assert!(
        env["text"]
            .as_str()
            .unwrap()
            .contains("4111 1111 1111 1111"),
        "redact_cards = false leaves the number: {env}"
    );
    assert!(env["raw"].is_string(), "--raw keeps the raw message: {env}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("mime.max_parts") && stderr.contains("quarantine"),
        "a mail beyond a [mime] limit is said: {stderr}"
    );
}

#[test]
fn a_missing_file_exits_66_and_names_it() {
    let out = intake(&["parse", "/nonexistent/intake-test/mail.eml"], b"");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(66),
        "a file that cannot be read is EX_NOINPUT: {stderr}"
    );
    assert!(
        stderr.contains("/nonexistent/intake-test/mail.eml") && stderr.contains("No such file"),
        "the message names the file and why: {stderr}"
    );
    assert!(out.stdout.is_empty(), "nothing on stdout");
}

#[test]
fn an_empty_mail_says_so_and_exits_65() {
    let out = intake(&["parse"], b"\r\n  \r\n");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(65), "{stderr}");
    assert!(stderr.contains("empty"), "{stderr}");
}

#[test]
fn a_config_that_does_not_load_exits_78() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("intake.toml");
    std::fs::write(&config, "[privacy]\nredact_cardz = true\n").unwrap();
    let out = intake(
        &["parse", "--config", &config.display().to_string()],
        &mail(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains("redact_cardz"),
        "names the bad key: {stderr}"
    );
}
