//! Malformed MIME never panics and loses nothing. Each broken message is
//! handed to the parser directly (it must return) and posted to
//! `/v1/messages` on a real gateway: it is either stored (202) with `raw`
//! equal to the bytes posted, an envelope that still matches
//! `src/envelope-v1.schema.json`, and whatever could be read filled in; or it is
//! refused with a 4xx whose JSON `message` says why. Never a 5xx, never a
//! dropped connection.

mod support;

use base64::Engine as _;
use bytes::Bytes;
use intake::envelope::Source;
use intake::parse::{parse, ParseError, ParseOptions};
use intake::submission::{Payload, Submission};
use reqwest::header;
use serde_json::Value;
use support::envelope::{crlf, validator};
use support::{client, Gateway, TOKEN};

/// Deterministic pseudo-random bytes (xorshift64*), the same on every run.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.max(1);
    (0..len)
        .map(|_| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

/// The parser, called directly: it must return, and say `Empty` only for
/// a message that is nothing but whitespace.
fn parse_directly(raw: &[u8]) -> Result<Value, ParseError> {
    let source = Source::Mailgate {
        sender: Some("customer@example.com".into()),
        recipients: vec!["support@shop.test".into()],
        ip: "127.0.0.1".into(),
        client: None,
    };
    let submission = Submission::new(source, Payload::Mail(Bytes::copy_from_slice(raw)));
    let options = ParseOptions {
        form: None,
        keep_raw: true,
    };
    parse(submission, options).map(|m| serde_json::to_value(&m.envelope).unwrap())
}

/// Posts `raw` to a fresh gateway; returns the status and the JSON body.
async fn post_raw(test: &str, raw: &[u8]) -> (Gateway, u16, Value) {
    let gw = Gateway::start(test).await;
    let response = client()
        .post(format!("{}/v1/messages", gw.url))
        .bearer_auth(TOKEN)
        .header(header::CONTENT_TYPE, "message/rfc822")
        .header("x-intake-envelope-sender", "customer@example.com")
        .header("x-intake-envelope-recipient", "support@shop.test")
        .body(raw.to_vec())
        .send()
        .await
        .unwrap_or_else(|e| panic!("{test}: the connection broke instead of an answer: {e}"));
    let status = response.status().as_u16();
    let text = response.text().await.expect("the answer body is readable");
    let body: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{test}: a {status} answer must be JSON ({e}): {text:?}"));
    assert!(
        status < 500,
        "{test}: malformed mail is never a server error: {status} {body}"
    );
    (gw, status, body)
}

/// The broken message must be stored: 202, one desk entry with the
/// receipt, `raw` equal to the input, and an envelope the schema accepts.
/// Returns that envelope, for the checks of what could be read.
async fn assert_stored(test: &str, raw: &[u8]) -> Value {
    assert_stored_in(test, raw, "desk", None).await
}

/// Like [`assert_stored`], for a mail that lands in `stream` (a mail beyond
/// a `[mime]` limit goes to `quarantine`), with the entry's `reason`.
async fn assert_stored_in(test: &str, raw: &[u8], stream: &str, reason: Option<&str>) -> Value {
    let direct = parse_directly(raw)
        .unwrap_or_else(|e| panic!("{test}: the parser refused a non-empty message: {e}"));
    assert_eq!(
        raw_of(&direct),
        raw,
        "{test}: the parser's envelope does not keep the exact input in `raw`"
    );

    let (gw, status, body) = post_raw(test, raw).await;
    assert_eq!(status, 202, "{test}: not stored: {body}");
    let id = body["id"].as_str().expect("the 202 carries a receipt id");
    let desk = gw.entries(stream).await;
    assert_eq!(desk.len(), 1, "{test}: one message, one {stream} entry");
    if let Some(reason) = reason {
        assert_eq!(desk[0].field("reason"), reason, "{test}: the limit named");
    }
    assert_eq!(
        desk[0].field("id"),
        id,
        "{test}: the desk entry is the receipt's"
    );
    let envelope = desk[0].envelope();
    assert!(
        raw_of(&envelope) == raw,
        "{test}: the stored `raw` lost or changed bytes"
    );
    let errors: Vec<String> = validator()
        .iter_errors(&envelope)
        .map(|e| format!("at `{}`: {e}", e.instance_path))
        .collect();
    assert!(
        errors.is_empty(),
        "{test}: the stored envelope breaks src/envelope-v1.schema.json:\n  {}",
        errors.join("\n  ")
    );
    envelope
}

/// The message must be refused with `status` and a JSON `message`, and
/// nothing may be stored.
async fn assert_refused(test: &str, raw: &[u8], status: u16) -> String {
    let (gw, got, body) = post_raw(test, raw).await;
    assert_eq!(got, status, "{test}: wrong answer: {body}");
    let message = body["message"]
        .as_str()
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| panic!("{test}: a refusal must say what is wrong: {body}"))
        .to_string();
    for stream in ["desk", "suppressed", "quarantine", "held"] {
        assert!(
            gw.entries(stream).await.is_empty(),
            "{test}: a refused message reached `{stream}`"
        );
    }
    message
}

fn raw_of(envelope: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(
            envelope["raw"]
                .as_str()
                .expect("a mail envelope keeps `raw`"),
        )
        .expect("`raw` is base64")
}

fn text(envelope: &Value) -> &str {
    envelope["text"].as_str().unwrap_or_default()
}

fn subject(envelope: &Value) -> &str {
    envelope["subject"].as_str().unwrap_or_default()
}

// ---------------------------------------------------------------------------
// Truncated.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn message_truncated_in_the_middle_of_headers_is_stored_with_the_complete_ones() {
    let raw = b"From: Ann <ann@example.com>\r\n\
        To: support@shop.test\r\n\
        Subject: Where is my order\r\n\
        X-Mailer: Thunderb";
    let env = assert_stored("truncated_headers", raw).await;
    assert_eq!(
        subject(&env),
        "Where is my order",
        "complete headers are read"
    );
    assert_eq!(env["customer"]["email"], "ann@example.com");
}

#[tokio::test]
async fn message_truncated_in_the_middle_of_a_base64_part_keeps_its_text() {
    let raw = crlf(&[b"From: ann@example.com\n\
        Subject: invoice\n\
        MIME-Version: 1.0\n\
        Content-Type: multipart/mixed; boundary=\"b\"\n\
        \n\
        --b\n\
        Content-Type: text/plain\n\
        \n\
        Invoice attached.\n\
        --b\n\
        Content-Type: application/pdf; name=\"invoice.pdf\"\n\
        Content-Transfer-Encoding: base64\n\
        \n\
        JVBERi0xLjQKJcOkw7zDtsOfCjIgMCBvYmoKPDwvTGVuZ3RoIDMgMCBSL0ZpbHRlci9GbGF0ZURl\n\
        Y29kZT4+CnN0cmVhbQp4nD2OSwvCMBCE7"]);
    let env = assert_stored("truncated_base64", &raw).await;
    assert!(
        text(&env).contains("Invoice attached."),
        "text before the cut: {env}"
    );
}

// ---------------------------------------------------------------------------
// Broken multipart structure.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn multipart_whose_boundary_never_appears_is_stored() {
    let raw = crlf(&[b"From: ann@example.com\n\
        Subject: lost boundary\n\
        MIME-Version: 1.0\n\
        Content-Type: multipart/mixed; boundary=\"never-used\"\n\
        \n\
        --other\n\
        Content-Type: text/plain\n\
        \n\
        My parcel is missing.\n\
        --other--\n"]);
    let env = assert_stored("boundary_never_appears", &raw).await;
    assert_eq!(subject(&env), "lost boundary");
}

#[tokio::test]
async fn multipart_without_closing_boundary_keeps_every_part() {
    let raw = crlf(&[b"From: ann@example.com\n\
        Subject: no end\n\
        MIME-Version: 1.0\n\
        Content-Type: multipart/mixed; boundary=\"b\"\n\
        \n\
        --b\n\
        Content-Type: text/plain\n\
        \n\
        first part\n\
        --b\n\
        Content-Type: text/plain\n\
        \n\
        second part\n"]);
    let env = assert_stored("no_closing_boundary", &raw).await;
    assert!(text(&env).contains("first part"), "first part read: {env}");
    // mail-parser demotes an unterminated last text part to an attachment;
    // it must still be there, readable, and not dropped.
    let in_attachments = env["attachments"].as_array().unwrap().iter().any(|a| {
        base64::engine::general_purpose::STANDARD
            .decode(a["content_base64"].as_str().unwrap())
            .is_ok_and(|d| String::from_utf8_lossy(&d).contains("second part"))
    });
    assert!(
        text(&env).contains("second part") || in_attachments,
        "the unterminated last part is lost from text and attachments: {env}"
    );
}

#[tokio::test]
async fn nested_multipart_with_wrong_boundaries_is_stored() {
    let raw = crlf(&[b"From: ann@example.com\n\
        Subject: nested mess\n\
        MIME-Version: 1.0\n\
        Content-Type: multipart/mixed; boundary=\"A\"\n\
        \n\
        --A\n\
        Content-Type: multipart/alternative; boundary=\"B\"\n\
        \n\
        --C\n\
        Content-Type: text/plain\n\
        \n\
        inner text\n\
        --C--\n\
        --A\n\
        Content-Type: text/plain\n\
        \n\
        outer text\n\
        --B--\n"]);
    let env = assert_stored("nested_wrong_boundaries", &raw).await;
    assert_eq!(subject(&env), "nested mess");
}

#[tokio::test]
async fn multipart_content_type_without_boundary_is_stored() {
    let raw = crlf(&[b"From: ann@example.com\n\
        Subject: no boundary\n\
        MIME-Version: 1.0\n\
        Content-Type: multipart/mixed\n\
        \n\
        Plain words where parts should be.\n"]);
    let env = assert_stored("multipart_without_boundary", &raw).await;
    assert_eq!(subject(&env), "no boundary");
}

#[tokio::test]
async fn fifty_deep_nested_multipart_is_stored_in_quarantine() {
    let depth = 50;
    let mut raw = b"From: ann@example.com\r\nSubject: deep\r\nMIME-Version: 1.0\r\n".to_vec();
    for level in 0..depth {
        raw.extend_from_slice(
            format!("Content-Type: multipart/mixed; boundary=\"level{level}\"\r\n\r\n--level{level}\r\n")
                .as_bytes(),
        );
    }
    raw.extend_from_slice(b"Content-Type: text/plain\r\n\r\ndeep inside\r\n");
    for level in (0..depth).rev() {
        raw.extend_from_slice(format!("--level{level}--\r\n").as_bytes());
    }
    // Beyond the default mime.max_depth (20): stored, but in quarantine.
    let env = assert_stored_in(
        "fifty_deep",
        &raw,
        "quarantine",
        Some("nesting depth 50 exceeds mime.max_depth 20"),
    )
    .await;
    assert_eq!(subject(&env), "deep");
}

#[tokio::test]
async fn garbage_message_rfc822_part_is_stored() {
    let mut raw = crlf(&[b"From: ann@example.com\n\
        Subject: forwarded garbage\n\
        MIME-Version: 1.0\n\
        Content-Type: multipart/mixed; boundary=\"b\"\n\
        \n\
        --b\n\
        Content-Type: text/plain\n\
        \n\
        See the forwarded mail.\n\
        --b\n\
        Content-Type: message/rfc822\n\
        \n"]);
    raw.extend(noise(2_000, 0x5eed_0001).into_iter().filter(|&b| b != b'-'));
    raw.extend_from_slice(b"\r\n--b--\r\n");
    let env = assert_stored("garbage_rfc822_part", &raw).await;
    assert!(
        text(&env).contains("See the forwarded mail."),
        "first part read: {env}"
    );
}

// ---------------------------------------------------------------------------
// Broken encodings.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn invalid_base64_characters_are_stored() {
    let raw = crlf(&[b"From: ann@example.com\n\
        Subject: bad base64\n\
        Content-Type: text/plain; charset=utf-8\n\
        Content-Transfer-Encoding: base64\n\
        \n\
        SGVsbG8sIG15IG9yZGVy!!!***\xff~~ IGlzIGxhdGUu====\n\
        ####\n"]);
    let env = assert_stored("bad_base64", &raw).await;
    assert_eq!(subject(&env), "bad base64");
}

#[tokio::test]
async fn invalid_quoted_printable_keeps_the_readable_text() {
    let raw = crlf(&[b"From: ann@example.com\n\
        Subject: bad qp\n\
        Content-Type: text/plain; charset=utf-8\n\
        Content-Transfer-Encoding: quoted-printable\n\
        \n\
        Price: 10=ZZ euro, soft break=\n\
        next line =G\n\
        last=\n\
        ="]);
    let env = assert_stored("bad_quoted_printable", &raw).await;
    assert!(text(&env).contains("Price: 10"), "text before `=ZZ`: {env}");
    assert!(text(&env).contains("euro"), "text after `=ZZ`: {env}");
}

#[tokio::test]
async fn unknown_charset_keeps_the_text() {
    let raw = crlf(&[b"From: worf@example.com\n\
        Subject: =?x-klingon?Q?nuqneH?=\n\
        Content-Type: text/plain; charset=x-klingon\n\
        Content-Transfer-Encoding: 8bit\n\
        \n\
        nuqneH, my order 1234 \xe4\xf6 is late.\n"]);
    let env = assert_stored("unknown_charset", &raw).await;
    assert!(
        text(&env).contains("my order 1234"),
        "ASCII text of an unknown charset: {env}"
    );
}

#[tokio::test]
async fn invalid_utf8_in_headers_and_body_is_stored() {
    let raw = crlf(&[
        b"From: Ann \xff\xfe <ann@example.com>\n\
        Subject: Bestellung \xc3\x28 kaputt \xff\n\
        X-\xfe\xff: garbage name\n\
        \n",
        b"Der Artikel \xc3\x28\xa0\xa1 ist kaputt.\n\xf0\x28\x8c\x28\n",
    ]);
    let env = assert_stored("invalid_utf8", &raw).await;
    assert!(
        subject(&env).contains("kaputt"),
        "subject around the garbage: {env}"
    );
    assert!(
        text(&env).contains("ist kaputt"),
        "body around the garbage: {env}"
    );
}

#[tokio::test]
async fn nul_bytes_in_headers_and_body_are_stored() {
    let raw = b"From: ann@example.com\r\nSubject: nul\x00here\r\nX-Null: \x00\x00\r\n\r\nbefore\x00\x00after\r\n";
    let env = assert_stored("nul_bytes", raw).await;
    assert!(text(&env).contains("after"), "text after the NULs: {env}");
}

#[tokio::test]
async fn broken_encoded_words_and_addresses_are_stored() {
    let raw = crlf(&[b"From: \"Ann <ann@example.com>\n\
        To: <<>>, @, support@\n\
        Subject: =?utf-8?B?!!!notbase64?= =?utf-8?Q?unterminated\n\
        Message-ID: <<<>>>\n\
        \n\
        body\n"]);
    let env = assert_stored("broken_encoded_words", &raw).await;
    assert_eq!(
        text(&env).trim(),
        "body",
        "the body after broken headers is read"
    );
}

/// `date` is RFC 3339 "when it had a readable one" (src/envelope.rs): a
/// Date that names no real moment must be left out, not passed on as an
/// impossible date-time that breaks every integrator's date parser.
#[tokio::test]
async fn impossible_date_header_never_becomes_an_invalid_date() {
    let raw = crlf(&[b"From: ann@example.com\n\
        Subject: time travel\n\
        Date: Mon, 30 Feb 2026 25:61:00 +0100\n\
        \n\
        body\n"]);
    let direct = parse_directly(&raw).expect("parses");
    assert!(
        direct.get("date").is_none(),
        "an impossible Date must be left out, got {}",
        direct["date"]
    );
    // Through the gateway, the schema's date-time check says the same.
    assert_stored("impossible_date", &raw).await;
}

// ---------------------------------------------------------------------------
// Missing pieces and odd shapes.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn body_without_any_headers_is_stored_as_text() {
    let raw = b"I never got my parcel, please help.\r\nAnn\r\n";
    let env = assert_stored("no_headers", raw).await;
    assert!(
        text(&env).contains("never got my parcel"),
        "the body is readable text: {env}"
    );
}

#[tokio::test]
async fn headers_without_a_body_are_stored() {
    let raw = b"From: ann@example.com\r\nSubject: only headers\r\n";
    let env = assert_stored("no_body", raw).await;
    assert_eq!(subject(&env), "only headers");
}

/// A message cut right after its last header value: that header is read
/// (it is even listed in `headers`), so `subject` must carry it too.
#[tokio::test]
async fn final_header_without_a_line_break_is_read() {
    let raw = b"From: ann@example.com\r\nSubject: only headers";
    let env = assert_stored("final_header_unterminated", raw).await;
    assert!(
        env["headers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["name"] == "Subject" && h["value"] == "only headers"),
        "the header list has it: {env}"
    );
    assert_eq!(
        subject(&env),
        "only headers",
        "subject is the listed Subject header"
    );
}

#[tokio::test]
async fn header_line_of_twenty_thousand_characters_is_kept_whole_in_quarantine() {
    let long = "x".repeat(20_000);
    let raw = format!("From: ann@example.com\r\nSubject: {long}\r\n\r\nshort body\r\n");
    // Beyond the default mime.max_header_line (10,000): stored whole, in
    // quarantine.
    let env = assert_stored_in(
        "long_header",
        raw.as_bytes(),
        "quarantine",
        Some("a header line of 20009 bytes exceeds mime.max_header_line 10000"),
    )
    .await;
    assert_eq!(subject(&env).len(), 20_000, "the long subject is not cut");
    assert!(
        text(&env).contains("short body"),
        "the body after it is read: {env}"
    );
}

#[tokio::test]
async fn mixed_crlf_and_lf_line_endings_are_read() {
    let raw = b"From: ann@example.com\r\nSubject: mixed\nTo: support@shop.test\r\n\nline one\r\nline two\nline three\r\n";
    let env = assert_stored("mixed_line_endings", raw).await;
    assert_eq!(subject(&env), "mixed");
    assert_eq!(env["to"][0]["email"], "support@shop.test");
    assert!(
        text(&env).contains("line three"),
        "every body line read: {env}"
    );
}

#[tokio::test]
async fn bare_cr_line_endings_are_stored() {
    let raw = b"From: ann@example.com\rSubject: old mac\r\rbody\r";
    assert_stored("bare_cr", raw).await;
}

#[tokio::test]
async fn ten_thousand_headers_are_all_kept() {
    let mut raw = b"From: ann@example.com\r\n".to_vec();
    for i in 0..10_000 {
        raw.extend_from_slice(format!("X-Trace-{i}: hop {i}\r\n").as_bytes());
    }
    raw.extend_from_slice(b"\r\nbody\r\n");
    let env = assert_stored("many_headers", &raw).await;
    assert_eq!(
        env["headers"].as_array().map(Vec::len),
        Some(10_001),
        "every header is listed"
    );
}

#[tokio::test]
async fn random_binary_bytes_are_stored_whole() {
    let raw = noise(8_192, 0x1a2b_3c4d);
    assert_stored("random_binary", &raw).await;
}

// ---------------------------------------------------------------------------
// Nothing there.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn whitespace_only_message_is_400() {
    let raw = b" \r\n\t\r\n   \n";
    assert!(
        matches!(parse_directly(raw), Err(ParseError::Empty)),
        "the parser calls whitespace empty"
    );
    let message = assert_refused("whitespace_only", raw, 400).await;
    assert!(
        message.contains("empty"),
        "says the message is empty: {message}"
    );
}

#[tokio::test]
async fn empty_message_is_400() {
    assert!(
        matches!(parse_directly(b""), Err(ParseError::Empty)),
        "the parser calls nothing empty"
    );
    let message = assert_refused("empty", b"", 400).await;
    assert!(
        message.contains("empty"),
        "says the message is empty: {message}"
    );
}

// ---------------------------------------------------------------------------
// Attachment names.
// ---------------------------------------------------------------------------

/// Attachments named to deceive (a right-to-left override, control
/// characters, a path, a drive, an invisible isolate, 2,000 characters)
/// are stored whole under a safe `filename`, with the decoded name as sent
/// in `original_filename`; a plain name keeps no second copy.
#[tokio::test]
async fn hostile_attachment_names_are_stored_safe_with_the_name_as_sent_beside() {
    use sha2::{Digest, Sha256};
    let long = format!("{}.pdf", "a".repeat(2_000));
    // (Content-Disposition parameter, the name decoded, the safe name)
    let named: Vec<(String, String, String)> = vec![
        (
            "filename*=UTF-8''invoice%E2%80%AEfdp.exe".into(),
            "invoice\u{202E}fdp.exe".into(),
            "invoicefdp.exe".into(),
        ),
        (
            "filename*=UTF-8''report%0D%0A%07copy.pdf".into(),
            "report\r\n\u{7}copy.pdf".into(),
            "report copy.pdf".into(),
        ),
        (
            "filename=\"../../etc/passwd\"".into(),
            "../../etc/passwd".into(),
            "passwd".into(),
        ),
        (
            "filename*=UTF-8''C%3A%5Cx%5Cy.pdf".into(),
            "C:\\x\\y.pdf".into(),
            "y.pdf".into(),
        ),
        (
            "filename=\"=?UTF-8?Q?a=E2=81=A6b.pdf?=\"".into(),
            "a\u{2066}b.pdf".into(),
            "ab.pdf".into(),
        ),
        (
            format!("filename=\"{long}\""),
            long.clone(),
            format!("{}.pdf", "a".repeat(251)),
        ),
        (
            "filename=\"invoice.pdf\"".into(),
            "invoice.pdf".into(),
            "invoice.pdf".into(),
        ),
    ];
    let contents: Vec<Vec<u8>> = (0..named.len())
        .map(|i| noise(200 + 50 * i, 0x5eed + i as u64))
        .collect();
    let mut raw = String::from(
        "From: ann@example.com\nTo: support@shop.test\nSubject: files\nMIME-Version: 1.0\n\
         Content-Type: multipart/mixed; boundary=\"b\"\n\n--b\nContent-Type: text/plain\n\n\
         see attached\n",
    );
    for ((param, _, _), data) in named.iter().zip(&contents) {
        raw.push_str(&format!(
            "--b\nContent-Type: application/octet-stream\nContent-Disposition: attachment; {param}\n\
             Content-Transfer-Encoding: base64\n\n{}\n",
            base64::engine::general_purpose::STANDARD.encode(data)
        ));
    }
    raw.push_str("--b--\n");
    let raw = crlf(&[raw.as_bytes()]);

    let envelope = assert_stored("hostile_attachment_names", &raw).await;
    let attachments = envelope["attachments"].as_array().expect("attachments");
    assert_eq!(attachments.len(), named.len(), "no attachment lost");
    for ((attachment, (param, sent, safe)), data) in attachments.iter().zip(&named).zip(&contents) {
        assert_eq!(attachment["filename"], safe.as_str(), "{param}");
        if sent == safe {
            assert!(
                attachment.get("original_filename").is_none(),
                "{param}: a safe name keeps no second copy: {attachment}"
            );
        } else {
            assert_eq!(
                attachment["original_filename"],
                sent.as_str(),
                "{param}: the name as sent is kept"
            );
        }
        assert_eq!(attachment["size"], data.len(), "{param}: size");
        let sha256: String = Sha256::digest(data)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(attachment["sha256"], sha256, "{param}: sha256");
        let stored = base64::engine::general_purpose::STANDARD
            .decode(attachment["content_base64"].as_str().unwrap())
            .unwrap();
        assert!(stored == *data, "{param}: the content is stored unchanged");
    }
}
