//! Decoding checked against Python's `email` package (policy.default), the
//! mainstream decoder the desk's operators compare with: each case builds
//! a mail, runs intake's parse stage on it and `python3` on the same bytes.
//! Where Python decodes without U+FFFD, intake gives the same text; where
//! intake deliberately differs, the case says what Python gives and why.
//! No service is needed; python3 is part of the dev stack and its absence
//! fails the test.

mod support;

use std::io::Write as _;
use std::process::{Command, Stdio};

use base64::Engine as _;
use bytes::Bytes;
use intake::envelope::{Envelope, Source};
use intake::parse::{parse, ParseOptions};
use intake::submission::{Payload, Submission};
use serde_json::Value;
use support::envelope::crlf;

/// What Python gives for each mail: subject, first From display name
/// (policy.default, and RFC 2047 section 6.2 decoding by email.header),
/// the plain and HTML bodies and the attachments' file names. Lone
/// surrogates (Python's undecodable bytes) are written as `\udcXX`.
const PYTHON: &str = r#"
import base64, email, email.header, email.policy, email.utils, json, sys
def s(v):
    return None if v is None else str(v).encode("utf-8", "backslashreplace").decode("utf-8")
out = []
for b64 in json.load(sys.stdin):
    raw = base64.b64decode(b64)
    m = email.message_from_bytes(raw, policy=email.policy.default)
    r = {"subject": s(m["subject"])}
    if m["from"] is not None and m["from"].addresses:
        r["from_name"] = s(m["from"].addresses[0].display_name)
        legacy = email.message_from_bytes(raw)
        name, _ = email.utils.parseaddr(legacy["from"])
        r["from_name_rfc2047"] = s(email.header.make_header(email.header.decode_header(name)))
    for key, kind in (("text", "plain"), ("html", "html")):
        part = m.get_body((kind,))
        r[key] = None if part is None else s(part.get_content())
    r["filenames"] = [s(p.get_filename()) for p in m.iter_attachments()]
    out.append(r)
json.dump(out, sys.stdout)
"#;

/// Runs [`PYTHON`] on the mails; one answer per mail.
fn python(mails: &[Vec<u8>]) -> Vec<Value> {
    let input: Vec<String> = mails
        .iter()
        .map(|m| base64::engine::general_purpose::STANDARD.encode(m))
        .collect();
    python_script(PYTHON, &serde_json::to_vec(&input).unwrap())
        .as_array()
        .expect("a list")
        .clone()
}

fn python_script(script: &str, stdin: &[u8]) -> Value {
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "python3 cannot be run ({e}): these tests compare intake's decoding with \
                 Python's email package; install python3 (deploy/dev/test checks for it)"
            )
        });
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "python3 failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("python3 printed JSON")
}

fn intake_parse(raw: &[u8]) -> Envelope {
    let source = Source::Mailgate {
        sender: None,
        recipients: vec![],
        ip: "127.0.0.1".into(),
        client: None,
    };
    let submission = Submission::new(source, Payload::Mail(Bytes::copy_from_slice(raw)));
    parse(
        submission,
        ParseOptions {
            form: None,
            keep_raw: false,
        },
    )
    .expect("the mail parses")
    .envelope
}

/// The decoded text a case is about.
#[derive(Clone, Copy, Debug)]
enum Field {
    Subject,
    FromName,
    Text,
    Html,
    FileName,
}

/// What Python gives, next to what intake must give.
enum Python {
    /// Python (policy.default) gives the same text.
    Agrees,
    /// Python gives this instead; intake's text is `intake`, for the reason.
    Differs {
        python: &'static str,
        intake: &'static str,
        why: &'static str,
    },
}

struct Case {
    name: &'static str,
    mail: Vec<u8>,
    field: Field,
    python: Python,
}

/// Text as compared: Python ends bodies with a line break intake may not.
/// ASCII white space only: U+0085 is text here.
fn tidy(text: &str) -> String {
    text.trim_end_matches(|c: char| c.is_ascii_whitespace())
        .to_string()
}

fn intake_field(env: &Envelope, field: Field) -> Option<String> {
    match field {
        Field::Subject => env.subject.clone(),
        Field::FromName => env.from.as_ref().and_then(|a| a.name.clone()),
        Field::Text => env.text.clone(),
        Field::Html => env.html.clone(),
        Field::FileName => env
            .attachments
            .iter()
            .find_map(|a| a.original_filename.clone().or(a.filename.clone())),
    }
    .map(|t| tidy(&t))
}

fn python_field(answer: &Value, field: Field) -> Option<String> {
    let value = match field {
        Field::Subject => &answer["subject"],
        // policy.default keeps the space between encoded-words in a phrase
        // and decodes each word alone; email.header follows RFC 2047 6.2.
        Field::FromName => &answer["from_name"],
        Field::Text => &answer["text"],
        Field::Html => &answer["html"],
        Field::FileName => &answer["filenames"][0],
    };
    value.as_str().map(tidy)
}

fn check(cases: Vec<Case>) {
    let answers = python(&cases.iter().map(|c| c.mail.clone()).collect::<Vec<_>>());
    let mut failures = Vec::new();
    for (case, answer) in cases.iter().zip(&answers) {
        let env = intake_parse(&case.mail);
        let ours = intake_field(&env, case.field);
        let theirs = python_field(answer, case.field);
        match &case.python {
            Python::Agrees => {
                if ours != theirs {
                    failures.push(format!(
                        "{}: intake gives {ours:?}, Python {theirs:?}",
                        case.name
                    ));
                }
                if ours.as_deref().is_some_and(|t| t.contains('\u{FFFD}')) {
                    failures.push(format!("{}: U+FFFD in {ours:?}", case.name));
                }
            }
            Python::Differs {
                python,
                intake,
                why,
            } => {
                if theirs.as_deref() != Some(*python) {
                    failures.push(format!(
                        "{}: Python now gives {theirs:?}, not {python:?} as this case says",
                        case.name
                    ));
                }
                if ours.as_deref() != Some(*intake) {
                    failures.push(format!(
                        "{}: intake gives {ours:?}, not {intake:?} ({why})",
                        case.name
                    ));
                }
            }
        }
        if let Field::FromName = case.field {
            let rfc2047 = answer["from_name_rfc2047"].as_str().map(tidy);
            if ours != rfc2047 {
                failures.push(format!(
                    "{}: intake gives {ours:?}, Python's email.header {rfc2047:?}",
                    case.name
                ));
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

fn header_mail(header: &[u8]) -> Vec<u8> {
    crlf(&[
        b"From: a@example.com\nTo: support@shop.test\nMIME-Version: 1.0\n",
        header,
        b"\n\nhi\n",
    ])
}

fn body_mail(content_type: &[u8], transfer: &[u8], body: &[u8]) -> Vec<u8> {
    let mut mail = crlf(&[
        b"From: a@example.com\nTo: support@shop.test\nSubject: body\nMIME-Version: 1.0\n",
        content_type,
        b"Content-Transfer-Encoding: ",
        transfer,
        b"\n\n",
    ]);
    mail.extend_from_slice(body);
    mail.extend_from_slice(b"\r\n");
    mail
}

fn attachment_mail(headers: &[u8]) -> Vec<u8> {
    crlf(&[
        b"From: a@example.com\nSubject: files\nMIME-Version: 1.0\n\
          Content-Type: multipart/mixed; boundary=\"b\"\n\n\
          --b\nContent-Type: text/plain\n\nsee attached\n--b\n",
        headers,
        b"Content-Transfer-Encoding: base64\n\naGVsbG8=\n--b--\n",
    ])
}

#[test]
fn split_encoded_words_decode_whole_like_python() {
    check(vec![
        Case {
            name: "subject, a 2-byte character split across two B words",
            mail: header_mail(b"Subject: =?UTF-8?B?0J/R?= =?UTF-8?B?gNC40LLQtdGC?="),
            field: Field::Subject,
            python: Python::Agrees,
        },
        Case {
            name: "subject, a 2-byte character split across two folded Q words",
            mail: header_mail(b"Subject: =?utf-8?Q?Solidarno=C5?=\n =?utf-8?Q?=9B=C4=87?="),
            field: Field::Subject,
            python: Python::Agrees,
        },
        Case {
            name: "display name, a character split across two B words",
            mail: crlf(&[
                b"From: =?UTF-8?B?xYF1a2FzeiDF?= =?UTF-8?B?u8OzxYJ3?= <l@example.com>\n\
                  Subject: x\n\nhi\n",
            ]),
            field: Field::FromName,
            python: Python::Differs {
                python: "Łukasz \\udcc5 \\udcbbółw",
                intake: "Łukasz Żółw",
                why: "policy.default decodes each word of a phrase alone and keeps the \
                      space between them; RFC 2047 6.2 (and Python's email.header) join them",
            },
        },
        Case {
            name: "display name, a character split across two Q words",
            mail: crlf(&[
                b"From: =?UTF-8?Q?=C5=81ukasz_=C5?=\n =?UTF-8?Q?=BB=C3=B3=C5=82w?= <l@example.com>\n\
                  Subject: x\n\nhi\n",
            ]),
            field: Field::FromName,
            python: Python::Differs {
                python: "Łukasz \\udcc5 \\udcbbółw",
                intake: "Łukasz Żółw",
                why: "as for B words",
            },
        },
    ]);
}

#[test]
fn file_names_decode_like_python() {
    let name = |name: &'static str, headers: &[u8]| Case {
        name,
        mail: attachment_mail(headers),
        field: Field::FileName,
        python: Python::Agrees,
    };
    check(vec![
        name(
            "RFC 2231 continuation with a charset",
            b"Content-Type: application/pdf\nContent-Disposition: attachment;\n \
              filename*0*=utf-8''Solidarno%C5%9B;\n filename*1*=%C4%87.pdf\n",
        ),
        name(
            "RFC 2231 continuation without a charset",
            b"Content-Type: application/pdf\nContent-Disposition: attachment;\n \
              filename*0=\"Solidar\";\n filename*1=\"nosc.pdf\"\n",
        ),
        name(
            "RFC 2231, a character split across continuations",
            b"Content-Type: application/pdf\nContent-Disposition: attachment;\n \
              filename*0*=utf-8''Solidarno%C5;\n filename*1*=%9B%C4%87.pdf\n",
        ),
        name(
            "RFC 2231, later segments in the first segment's latin-1",
            b"Content-Type: application/pdf\nContent-Disposition: attachment;\n \
              filename*0*=iso-8859-1''Gr%FC;\n filename*1*=%DFe.pdf\n",
        ),
        name(
            "RFC 2231 name= on Content-Type",
            b"Content-Type: application/pdf;\n name*0*=utf-8''Solidarno%C5%9B;\n \
              name*1*=%C4%87.pdf\nContent-Disposition: attachment\n",
        ),
        name(
            "folded RFC 2047 name",
            b"Content-Type: application/pdf;\n name=\"=?UTF-8?Q?Solidarno=C5=9B?=\n  \
              =?UTF-8?Q?=C4=87.pdf?=\"\nContent-Disposition: attachment\n",
        ),
        name(
            "RFC 2047 name folded in the middle of a word",
            b"Content-Type: application/pdf;\n name=\"=?UTF-8?B?U29saWRh?=\n \
              =?UTF-8?B?cm5vxZvEhy5wZGY=?=\"\nContent-Disposition: attachment\n",
        ),
        name(
            "RFC 2047 name folded inside a character",
            b"Content-Type: application/pdf;\n name=\"=?UTF-8?Q?Solidarno=C5?=\n \
              =?UTF-8?Q?=9B=C4=87.pdf?=\"\nContent-Disposition: attachment\n",
        ),
        name(
            "RFC 2047 words with a run of spaces between",
            b"Content-Type: application/pdf;\n name=\"=?UTF-8?Q?Solidarno=C5=9B?=       \
              =?UTF-8?Q?=C4=87.pdf?=\"\nContent-Disposition: attachment\n",
        ),
    ]);
}

const IMAGE: &[u8] = b"Content-Type: image/png; name=\"logo.png\"\nContent-ID: <logo@x>\n\
    Content-Transfer-Encoding: base64\n\niVBORw0KGgo=\n";

fn outlook() -> Vec<u8> {
    crlf(&[
        b"From: a@example.com\nSubject: shapes\nMIME-Version: 1.0\n\
          Content-Type: multipart/related; boundary=\"r\"; type=\"multipart/alternative\"\n\n\
          --r\nContent-Type: multipart/alternative; boundary=\"a\"\n\n\
          --a\nContent-Type: text/plain; charset=utf-8\n\nplain text\n\
          --a\nContent-Type: text/html; charset=utf-8\n\n<p>html <img src=\"cid:logo@x\"></p>\n\
          --a--\n--r\n",
        IMAGE,
        b"--r--\n",
    ])
}

fn apple_mail() -> Vec<u8> {
    crlf(
        &[b"From: a@example.com\nSubject: shapes\nMIME-Version: 1.0\n\
          Content-Type: multipart/alternative; boundary=\"a\"\n\n\
          --a\nContent-Type: text/plain; charset=utf-8\n\nplain text\n\
          --a\nContent-Type: multipart/related; boundary=\"r\"; type=\"text/html\"\n\n\
          --r\nContent-Type: text/html; charset=utf-8\n\n<p>html <img src=\"cid:logo@x\"></p>\n\
          --r\nContent-Type: image/png\nContent-ID: <logo@x>\n\
          Content-Transfer-Encoding: base64\n\niVBORw0KGgo=\n--r--\n--a--\n"],
    )
}

fn nested_alternatives() -> Vec<u8> {
    crlf(
        &[b"From: a@example.com\nSubject: shapes\nMIME-Version: 1.0\n\
          Content-Type: multipart/alternative; boundary=\"a\"\n\n\
          --a\nContent-Type: text/plain\n\nplain text\n\
          --a\nContent-Type: multipart/alternative; boundary=\"b\"\n\n\
          --b\nContent-Type: text/plain\n\ninner plain\n\
          --b\nContent-Type: text/html\n\n<p>inner html</p>\n--b--\n--a--\n"],
    )
}

#[test]
fn related_and_alternative_bodies_are_found_like_python() {
    let case = |name, mail: Vec<u8>, field| Case {
        name,
        mail,
        field,
        python: Python::Agrees,
    };
    check(vec![
        case(
            "Outlook related around alternative: text",
            outlook(),
            Field::Text,
        ),
        case(
            "Outlook related around alternative: html",
            outlook(),
            Field::Html,
        ),
        case(
            "Apple Mail alternative around related: text",
            apple_mail(),
            Field::Text,
        ),
        case(
            "Apple Mail alternative around related: html",
            apple_mail(),
            Field::Html,
        ),
        case(
            "nested alternatives: html",
            nested_alternatives(),
            Field::Html,
        ),
        Case {
            name: "nested alternatives: text",
            mail: nested_alternatives(),
            field: Field::Text,
            python: Python::Differs {
                python: "plain text",
                intake: "inner plain",
                why: "RFC 2046: the last alternative is the best; get_body takes the \
                      first text/plain it walks into",
            },
        },
    ]);
    for (shape, mail) in [("Outlook", outlook()), ("Apple Mail", apple_mail())] {
        let env = intake_parse(&mail);
        let parts: Vec<_> = env
            .attachments
            .iter()
            .map(|a| {
                (
                    a.content_type.as_str(),
                    a.content_id.as_deref(),
                    a.disposition,
                )
            })
            .collect();
        assert_eq!(
            parts,
            [(
                "image/png",
                Some("logo@x"),
                intake::envelope::Disposition::Inline
            )],
            "{shape}: the image is the one attachment, inline with its content id; \
             no text/html among the attachments"
        );
    }
}

/// "Grüße “quoted” €" in UTF-8.
const UTF8: &[u8] = "Grüße “quoted” €".as_bytes();
/// "Grüße “quoted” € … ‚x‘" in windows-1252.
const CP1252: &[u8] = b"Gr\xfc\xdfe \x93quoted\x94 \x80 \x85 \x82x\x91";

#[test]
fn mislabelled_bodies_decode_without_replacement_characters() {
    let text = |name, mail, python| Case {
        name,
        mail,
        field: Field::Text,
        python,
    };
    let plain = |charset: &str| format!("Content-Type: text/plain; charset={charset}\n");
    check(vec![
        text(
            "windows-1252 labelled windows-1252 (the control)",
            body_mail(plain("windows-1252").as_bytes(), b"8bit", CP1252),
            Python::Agrees,
        ),
        text(
            "UTF-8 labelled us-ascii",
            body_mail(plain("us-ascii").as_bytes(), b"8bit", UTF8),
            Python::Differs {
                python: "Gr\u{FFFD}\u{FFFD}\u{FFFD}\u{FFFD}e \u{FFFD}\u{FFFD}\u{FFFD}quoted\
                         \u{FFFD}\u{FFFD}\u{FFFD} \u{FFFD}\u{FFFD}\u{FFFD}",
                intake: "Grüße “quoted” €",
                why: "valid UTF-8 under a us-ascii label is UTF-8",
            },
        ),
        text(
            "UTF-8 labelled iso-8859-1",
            body_mail(plain("iso-8859-1").as_bytes(), b"8bit", UTF8),
            Python::Differs {
                python: "GrÃ¼Ã\u{9f}e â\u{80}\u{9c}quotedâ\u{80}\u{9d} â\u{82}¬",
                intake: "Grüße “quoted” €",
                why: "valid UTF-8 under a latin-1 label is UTF-8, not mojibake",
            },
        ),
        text(
            "UTF-8 labelled latin1, base64",
            body_mail(
                plain("latin1").as_bytes(),
                b"base64",
                base64::engine::general_purpose::STANDARD
                    .encode(UTF8)
                    .as_bytes(),
            ),
            Python::Differs {
                python: "GrÃ¼Ã\u{9f}e â\u{80}\u{9c}quotedâ\u{80}\u{9d} â\u{82}¬",
                intake: "Grüße “quoted” €",
                why: "as for 8bit",
            },
        ),
        text(
            "windows-1252 labelled iso-8859-1",
            body_mail(plain("iso-8859-1").as_bytes(), b"8bit", CP1252),
            Python::Differs {
                python: "Grüße \u{93}quoted\u{94} \u{80} \u{85} \u{82}x\u{91}",
                intake: "Grüße “quoted” € … ‚x‘",
                why: "latin-1 labels are read as windows-1252 (WHATWG, browsers): \
                      C1 controls are never meant in mail",
            },
        ),
        text(
            "windows-1252 labelled iso-8859-1, quoted-printable",
            body_mail(
                plain("iso-8859-1").as_bytes(),
                b"quoted-printable",
                b"Gr=FC=DFe =93quoted=94 =80 =85 =82x=91",
            ),
            Python::Differs {
                python: "Grüße \u{93}quoted\u{94} \u{80} \u{85} \u{82}x\u{91}",
                intake: "Grüße “quoted” € … ‚x‘",
                why: "as for 8bit",
            },
        ),
        text(
            "unlabelled 8-bit UTF-8",
            body_mail(b"", b"8bit", UTF8),
            Python::Differs {
                python: "Gr\u{FFFD}\u{FFFD}\u{FFFD}\u{FFFD}e \u{FFFD}\u{FFFD}\u{FFFD}quoted\
                         \u{FFFD}\u{FFFD}\u{FFFD} \u{FFFD}\u{FFFD}\u{FFFD}",
                intake: "Grüße “quoted” €",
                why: "unlabelled (us-ascii by RFC 2045) valid UTF-8 is UTF-8",
            },
        ),
        text(
            "unlabelled 8-bit windows-1252",
            body_mail(b"", b"8bit", CP1252),
            Python::Differs {
                python: "Gr\u{FFFD}\u{FFFD}e \u{FFFD}quoted\u{FFFD} \u{FFFD} \u{FFFD} \
                         \u{FFFD}x\u{FFFD}",
                intake: "Grüße “quoted” € … ‚x‘",
                why: "bytes with no UTF-8 in them at all are windows-1252",
            },
        ),
    ]);
}

#[test]
fn mislabelled_headers_decode_without_replacement_characters() {
    let subject = |name, header: &[u8], python| Case {
        name,
        mail: header_mail(header),
        field: Field::Subject,
        python,
    };
    let mut raw_cp1252 = b"Subject: ".to_vec();
    raw_cp1252.extend_from_slice(CP1252);
    let mut raw_utf8 = b"Subject: ".to_vec();
    raw_utf8.extend_from_slice(UTF8);
    check(vec![
        subject("unlabelled 8-bit UTF-8", &raw_utf8, Python::Agrees),
        subject(
            "UTF-8 in a us-ascii word",
            b"Subject: =?us-ascii?Q?Gr=C3=BC=C3=9Fe?=",
            Python::Agrees,
        ),
        subject(
            "an unknown charset holding UTF-8",
            b"Subject: =?x-unknown?Q?Gr=C3=BC=C3=9Fe?=",
            Python::Agrees,
        ),
        subject(
            "latin-1 word, latin-1 bytes",
            b"Subject: =?iso-8859-1?Q?Gr=FC=DFe?=",
            Python::Agrees,
        ),
        subject(
            "UTF-8 in an iso-8859-1 word",
            b"Subject: =?iso-8859-1?Q?Gr=C3=BC=C3=9Fe?=",
            Python::Differs {
                python: "GrÃ¼Ã\u{9f}e",
                intake: "Grüße",
                why: "valid UTF-8 under a latin-1 label is UTF-8",
            },
        ),
        subject(
            "windows-1252 in an iso-8859-1 word",
            b"Subject: =?iso-8859-1?Q?=93quoted=94_=80_=85?=",
            Python::Differs {
                python: "\u{93}quoted\u{94} \u{80} \u{85}",
                intake: "“quoted” € …",
                why: "latin-1 labels are read as windows-1252",
            },
        ),
        subject(
            "windows-1252 in a us-ascii word",
            b"Subject: =?us-ascii?Q?=93quoted=94_=80?=",
            Python::Differs {
                python: "\u{FFFD}quoted\u{FFFD} \u{FFFD}",
                intake: "“quoted” €",
                why: "us-ascii is read as windows-1252 where the bytes are not UTF-8",
            },
        ),
        subject(
            "unlabelled 8-bit windows-1252",
            &raw_cp1252,
            Python::Differs {
                python: "Gr\u{FFFD}\u{FFFD}e \u{FFFD}quoted\u{FFFD} \u{FFFD} \u{FFFD} \
                         \u{FFFD}x\u{FFFD}",
                intake: "Grüße “quoted” € … ‚x‘",
                why: "bytes with no UTF-8 in them at all are windows-1252",
            },
        ),
    ]);
}

/// For every charset label Python knows, a sample text that survives the
/// round trip through it (None where none of the samples does).
const SAMPLES: &str = r#"
import codecs, encodings.aliases, json
samples = ["Grüße, Straße", "Привет, мир", "Γειά σου", "שלום", "مرحبا", "你好，世界",
           "こんにちは", "안녕하세요", "ąčęėįšųūž", "ğüşıöç", "Xin chào", "สวัสดี"]
out = []
for label in sorted(set(encodings.aliases.aliases) | set(encodings.aliases.aliases.values())):
    try:
        codecs.lookup(label)
    except LookupError:
        continue
    for text in samples:
        try:
            data = text.encode(label)
        except Exception:
            continue
        if data.decode(label) == text and not data.isascii():
            out.append([label.replace("_", "-"), data.hex()])
            break
json.dump(out, __import__("sys").stdout)
"#;

#[test]
fn every_charset_mail_parser_knows_decodes_like_python() {
    let samples = python_script(SAMPLES, b"");
    let mut cases = Vec::new();
    for sample in samples.as_array().expect("a list") {
        let label = sample[0].as_str().unwrap();
        // mail-parser knows every WHATWG label too; the others (EBCDIC,
        // DOS code pages, Python's own aliases) are out of scope.
        let known =
            mail_parser::decoders::charsets::map::charset_decoder(label.as_bytes()).is_some();
        if !known {
            continue;
        }
        let hex = sample[1].as_str().unwrap();
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        let encoded = base64::engine::general_purpose::STANDARD.encode(&bytes);
        let name = Box::leak(format!("{label}: subject").into_boxed_str());
        cases.push(Case {
            name,
            mail: header_mail(format!("Subject: =?{label}?B?{encoded}?=").as_bytes()),
            field: Field::Subject,
            python: Python::Agrees,
        });
        let name = Box::leak(format!("{label}: body").into_boxed_str());
        cases.push(Case {
            name,
            mail: body_mail(
                format!("Content-Type: text/plain; charset=\"{label}\"\n").as_bytes(),
                b"base64",
                encoded.as_bytes(),
            ),
            field: Field::Text,
            python: Python::Agrees,
        });
    }
    assert!(
        cases.len() > 100,
        "only {} cases: Python's labels not read?",
        cases.len()
    );
    check(cases);
}
