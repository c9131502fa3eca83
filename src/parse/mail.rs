//! Raw RFC 5322 mail to envelope, with mail-parser. Charsets are decoded by
//! mail-parser (`full_encoding`), corrected where it is known to be wrong
//! (`words.rs` for headers, `charset.rs` for the mislabels); what it cannot
//! read is kept in `raw`.

use std::borrow::Cow;

use bytes::Bytes;
use mail_parser::{HeaderValue, MessageParser, MimeHeaders, PartType};

use super::limits::MimeStats;
use super::{reply, sha256_hex, ScanTarget};
use crate::envelope::{Address, Attachment, Base64, Disposition, Envelope, Header, Source};

/// Fills `envelope` from a raw message and returns what must be scanned.
/// `stats` gets the message's MIME measurements (see [`super::limits`]).
pub(super) fn fill(
    envelope: &mut Envelope,
    raw: &Bytes,
    keep_raw: bool,
    stats: &mut MimeStats,
) -> Vec<ScanTarget> {
    let mut targets = vec![ScanTarget {
        name: "message".into(),
        data: raw.clone(),
        whole_message: true,
    }];
    let parsed = MessageParser::default().parse(raw.as_ref());
    let Some(mut message) = parsed else {
        // mail-parser found no message at all (it is very lenient, so this is
        // garbage). Keep it whole for an operator rather than refuse it.
        envelope.abuse.tags.push("unparsed".into());
        envelope.raw = Some(Base64(raw.clone()));
        envelope.text = Some(String::from_utf8_lossy(raw).into_owned());
        return targets;
    };
    // mail-parser decodes encoded-words one by one and trusts a latin-1
    // label on UTF-8; the headers intake reads and the text parts are read
    // again where that went wrong.
    super::words::repair_headers(&mut message);
    super::charset::repair_texts(&mut message);
    // Bodies and attachments decided over the whole part tree (related and
    // nested alternatives), not part by part as mail-parser does.
    let classes = super::bodies::reclassify(&mut message);
    *stats = super::limits::measure(&message);

    for header in message.headers() {
        let start = header.offset_start() as usize;
        let end = header.offset_end() as usize;
        let as_written = || {
            unfold(&String::from_utf8_lossy(
                raw.get(start..end).unwrap_or_default(),
            ))
        };
        let value = match header.value() {
            // Identifiers stay as written, angle brackets included.
            HeaderValue::Text(_) if is_id_header(header.name()) => as_written(),
            HeaderValue::Text(text) => text.to_string(),
            HeaderValue::Address(address) => render_addresses(address).unwrap_or_else(as_written),
            _ => as_written(),
        };
        envelope.headers.push(Header {
            name: header.name().to_string(),
            value,
        });
    }

    envelope.from = message.from().and_then(|a| addresses(a).into_iter().next());
    envelope.to = message.to().map(addresses).unwrap_or_default();
    envelope.cc = message.cc().map(addresses).unwrap_or_default();
    envelope.reply_to = message.reply_to().map(addresses).unwrap_or_default();
    // mail-parser misses a last header that has no line break after it;
    // the header list above still has it.
    envelope.subject = message.subject().map(str::to_string).or_else(|| {
        envelope
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("subject"))
            .map(|h| h.value.clone())
    });
    envelope.date = message.date().and_then(rfc3339);
    envelope.message_id = message.message_id().map(str::to_string);
    envelope.in_reply_to = id_list(message.in_reply_to());
    envelope.references = id_list(message.references());

    // HTML-only mail: `text` is the HTML read as text, and the reply is
    // found by its markup (mail-parser's own conversion, which drops the
    // breaks between blocks, is not run at all).
    let has_text_part = message
        .text_bodies()
        .any(|p| matches!(p.body, PartType::Text(_)));
    let texts: Vec<Cow<'_, str>> = if has_text_part {
        (0..message.text_body_count())
            .filter_map(|i| message.body_text(i))
            .collect()
    } else {
        Vec::new()
    };
    if !texts.is_empty() {
        envelope.text = Some(texts.join("\n"));
    }
    // Only a real HTML part is kept; mail-parser would otherwise render the
    // text part as HTML, which the desk does not need twice.
    if message
        .html_bodies()
        .any(|p| matches!(p.body, PartType::Html(_)))
    {
        envelope.html = message.body_html(0).map(Cow::into_owned);
    }
    let reply = match (&envelope.text, &envelope.html) {
        (Some(text), _) if has_text_part => Some(reply::from_text(text)),
        (_, Some(html)) => {
            let (readable, found) = reply::from_html(html);
            envelope.text = Some(readable);
            Some(found)
        }
        (Some(text), None) => Some(reply::from_text(text)),
        (None, None) => None,
    };
    if let Some(reply) = reply {
        envelope.stripped_text = Some(reply.text);
        envelope.stripped_signature = reply.signature;
    }

    // Indices, not `message.attachments()`: each part's decoded buffer is
    // moved out of the parsed message below instead of copied. mail-parser
    // lists each part at most once (the id is the part's own index, pushed
    // as the part is added), so no buffer is wanted twice.
    for id in std::mem::take(&mut message.attachments) {
        let Some(part) = message.parts.get(id as usize) else {
            continue;
        };
        let content_type = part
            .content_type()
            .map(|ct| match ct.subtype() {
                Some(sub) => format!("{}/{}", ct.ctype(), sub),
                None => ct.ctype().to_string(),
            })
            .unwrap_or_else(|| match part.body {
                PartType::Message(_) => "message/rfc822".into(),
                _ => "application/octet-stream".into(),
            })
            .to_ascii_lowercase();
        // A related part (an inline image of an HTML body) is inline
        // unless its sender said otherwise.
        let disposition = part.content_disposition().map(|d| d.ctype());
        let inline = match disposition {
            Some(d) => d.eq_ignore_ascii_case("inline"),
            None => classes.is_related_resource(id),
        };
        // The desk and the scanner's report see the safe name; the name as
        // sent (decoded) is kept beside it when it differs.
        let names = super::filename::FileName::from_sent(part.attachment_name());
        let content_id = part
            .content_id()
            .map(|id| id.trim_matches(['<', '>']).to_string());
        // One buffer for the envelope and the scanner.
        let data = contents_buffer(raw, &mut message.parts[id as usize]);
        let scan_name = names.filename.clone();
        envelope.attachments.push(Attachment {
            filename: names.filename,
            original_filename: names.original,
            content_type,
            size: data.len() as u64,
            sha256: sha256_hex(&data),
            content_id,
            disposition: if inline {
                Disposition::Inline
            } else {
                Disposition::Attachment
            },
            content_base64: Base64(data.clone()),
        });
        targets.push(ScanTarget {
            name: scan_name.unwrap_or_else(|| format!("part {}", targets.len())),
            data,
            whole_message: false,
        });
    }

    let envelope_sender = match &envelope.source {
        Source::Mailgate { sender, .. } => sender.as_deref(),
        Source::Lmtp { sender, .. } => Some(sender.as_str()),
        _ => None,
    };
    envelope.abuse.auto_submitted = is_auto_submitted(&message, envelope_sender);

    let customer = envelope
        .reply_to
        .first()
        .or(envelope.from.as_ref())
        .cloned()
        .or_else(|| {
            envelope_sender
                .filter(|s| s.contains('@'))
                .map(|s| Address {
                    email: s.to_string(),
                    name: None,
                })
        });
    if let Some(customer) = customer {
        envelope.customer.email = Some(customer.email);
        envelope.customer.name = customer.name;
    }
    envelope.customer.mailbox_hash = mailbox_hash(envelope);

    if keep_raw {
        envelope.raw = Some(Base64(raw.clone()));
    }
    super::limits::dismantle(message);
    targets
}

/// A part's decoded bytes as one buffer: a part decoded into its own
/// buffer (base64, quoted-printable, a charset) gives that buffer up, taken
/// out of the parsed message. Bytes that are a slice of the raw message
/// (8bit and binary parts) share its buffer.
fn contents_buffer(raw: &Bytes, part: &mut mail_parser::MessagePart<'_>) -> Bytes {
    match &mut part.body {
        PartType::Binary(Cow::Owned(bytes)) | PartType::InlineBinary(Cow::Owned(bytes)) => {
            Bytes::from(std::mem::take(bytes))
        }
        PartType::Text(Cow::Owned(text)) | PartType::Html(Cow::Owned(text)) => {
            Bytes::from(std::mem::take(text).into_bytes())
        }
        _ => share_or_copy(raw, part.contents()),
    }
}

/// Decoded bytes that are a slice of the raw message (8bit and binary
/// parts) share its buffer; others are copied.
fn share_or_copy(raw: &Bytes, part: &[u8]) -> Bytes {
    let raw_range = raw.as_ptr() as usize..raw.as_ptr() as usize + raw.len();
    let start = part.as_ptr() as usize;
    if !part.is_empty() && raw_range.contains(&start) && start + part.len() <= raw_range.end {
        raw.slice_ref(part)
    } else {
        Bytes::copy_from_slice(part)
    }
}

fn addresses(address: &mail_parser::Address<'_>) -> Vec<Address> {
    address
        .iter()
        .filter_map(|a| {
            let email = a.address()?.trim();
            if email.is_empty() {
                return None;
            }
            Some(Address {
                email: email.to_string(),
                name: a
                    .name()
                    .map(str::trim)
                    .filter(|n| !n.is_empty())
                    .map(str::to_string),
            })
        })
        .collect()
}

/// A `Date:` as RFC 3339, only when it names a real moment: mail-parser
/// passes impossible dates (30 February, 25:61) through.
fn rfc3339(date: &mail_parser::DateTime) -> Option<String> {
    let month = time::Month::try_from(date.month).ok()?;
    time::Date::from_calendar_date(i32::from(date.year), month, date.day).ok()?;
    // 60 is a leap second, which RFC 3339 allows.
    if date.hour > 23
        || date.minute > 59
        || date.second > 60
        || date.tz_hour > 23
        || date.tz_minute > 59
    {
        return None;
    }
    Some(date.to_rfc3339())
}

fn is_id_header(name: &str) -> bool {
    [
        "message-id",
        "in-reply-to",
        "references",
        "resent-message-id",
        "content-id",
    ]
    .iter()
    .any(|id| name.eq_ignore_ascii_case(id))
}

/// An address header decoded (RFC 2047 names) and re-written as
/// `Name <address>, ...`; `None` when nothing could be read from it.
fn render_addresses(address: &mail_parser::Address<'_>) -> Option<String> {
    let rendered: Vec<String> = address
        .iter()
        .filter_map(|a| {
            let email = a.address().map(str::trim).filter(|e| !e.is_empty());
            let name = a.name().map(str::trim).filter(|n| !n.is_empty());
            match (name, email) {
                (Some(name), Some(email)) => Some(format!("{name} <{email}>")),
                (None, Some(email)) => Some(email.to_string()),
                (Some(name), None) => Some(name.to_string()),
                (None, None) => None,
            }
        })
        .collect();
    (!rendered.is_empty()).then(|| rendered.join(", "))
}

fn id_list(value: &HeaderValue<'_>) -> Vec<String> {
    match value {
        HeaderValue::Text(id) => vec![id.to_string()],
        HeaderValue::TextList(ids) => ids.iter().map(|id| id.to_string()).collect(),
        _ => Vec::new(),
    }
}

fn unfold(value: &str) -> String {
    let value = value.trim();
    let mut out = String::with_capacity(value.len());
    for (i, line) in value.split('\n').enumerate() {
        let line = line.trim_end_matches('\r');
        if i > 0 {
            out.push(' ');
            out.push_str(line.trim_start());
        } else {
            out.push_str(line);
        }
    }
    // Trimmed first, one allocation: a blank continuation line can still
    // leave a space at the end.
    out.truncate(out.trim_end().len());
    out
}

/// The plus-address token of the recipient: `support+order-1234@shop.example`
/// gives `order-1234`. The envelope recipients are the recipient when the
/// mail server said; otherwise the delivery headers the server added, and
/// only then `To:`. Never `Cc:`, where a customer's own plus address may be.
fn mailbox_hash(envelope: &Envelope) -> Option<String> {
    let envelope_recipients: &[String] = match &envelope.source {
        Source::Mailgate { recipients, .. } | Source::Lmtp { recipients, .. } => recipients,
        _ => &[],
    };
    let candidates: Vec<&str> = if !envelope_recipients.is_empty() {
        envelope_recipients.iter().map(String::as_str).collect()
    } else {
        let delivered: Vec<&str> = envelope
            .headers
            .iter()
            .filter(|h| {
                h.name.eq_ignore_ascii_case("delivered-to")
                    || h.name.eq_ignore_ascii_case("x-original-to")
            })
            .map(|h| h.value.trim().trim_matches(['<', '>']))
            .collect();
        if delivered.is_empty() {
            envelope.to.iter().map(|a| a.email.as_str()).collect()
        } else {
            delivered
        }
    };
    candidates.into_iter().find_map(|address| {
        let local = address.split('@').next()?;
        let (_, token) = local.split_once('+')?;
        (!token.is_empty()).then(|| token.to_string())
    })
}

/// Whether one header, by itself, marks a message as sent by a machine
/// (`Auto-Submitted`, `Precedence`, and the auto-reply and list headers below).
pub fn is_auto_submitted_header(name: &str, value: &str) -> bool {
    // Asked of every header of every mail: nothing is allocated.
    let is = |expected: &str| name.eq_ignore_ascii_case(expected);
    let value = value.trim();
    if is("auto-submitted") {
        !value.is_empty() && !value.eq_ignore_ascii_case("no")
    } else if is("precedence") {
        ["bulk", "list", "junk", "auto_reply"]
            .iter()
            .any(|v| value.eq_ignore_ascii_case(v))
    } else {
        [
            "x-auto-response-suppress",
            "x-autoreply",
            "x-autorespond",
            "x-loop",
            "x-ms-exchange-inbox-rules-loop",
            "list-id",
            "list-unsubscribe",
        ]
        .iter()
        .any(|h| is(h))
    }
}

fn is_auto_submitted(message: &mail_parser::Message<'_>, envelope_sender: Option<&str>) -> bool {
    let bounce = envelope_sender.is_some_and(|s| s.trim().trim_matches(['<', '>']).is_empty());
    let report = message.content_type().is_some_and(|ct| {
        ct.ctype().eq_ignore_ascii_case("multipart")
            && ct
                .subtype()
                .is_some_and(|s| s.eq_ignore_ascii_case("report"))
    });
    bounce
        || report
        || message
            .headers_raw()
            .any(|(name, value)| is_auto_submitted_header(name, value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Channel;
    use crate::parse::{parse, ParseOptions};
    use crate::submission::{Payload, Submission};

    fn parse_mail(raw: &[u8]) -> Envelope {
        let source = Source::Mailgate {
            sender: Some("customer@example.com".into()),
            recipients: vec!["support+order-1234@shop.test".into()],
            ip: "127.0.0.1".into(),
            client: None,
        };
        let sub = Submission::new(source, Payload::Mail(Bytes::copy_from_slice(raw)));
        parse(
            sub,
            ParseOptions {
                form: None,
                keep_raw: true,
            },
        )
        .expect("mail parses")
        .envelope
    }

    #[test]
    fn headers_addresses_and_threading_are_read() {
        let env = parse_mail(
            b"From: \"Ann Example\" <ann@example.com>\r\n\
              To: Support <support@shop.test>\r\n\
              Subject: =?utf-8?q?Bestellung_=C3=BCberf=C3=A4llig?=\r\n\
              Message-ID: <abc@example.com>\r\n\
              In-Reply-To: <prev@shop.test>\r\n\
              References: <first@shop.test> <prev@shop.test>\r\n\
              Date: Mon, 23 Nov 2026 10:00:00 +0100\r\n\
              \r\n\
              Where is my parcel?\r\n",
        );
        assert_eq!(env.channel, Channel::Email);
        assert_eq!(env.customer.email.as_deref(), Some("ann@example.com"));
        assert_eq!(env.customer.name.as_deref(), Some("Ann Example"));
        assert_eq!(env.customer.mailbox_hash.as_deref(), Some("order-1234"));
        assert_eq!(env.subject.as_deref(), Some("Bestellung überfällig"));
        assert_eq!(env.message_id.as_deref(), Some("abc@example.com"));
        assert_eq!(env.in_reply_to, vec!["prev@shop.test"]);
        assert_eq!(env.references, vec!["first@shop.test", "prev@shop.test"]);
        assert_eq!(env.date.as_deref(), Some("2026-11-23T10:00:00+01:00"));
        assert_eq!(
            env.text.as_deref().map(str::trim),
            Some("Where is my parcel?")
        );
        assert_eq!(env.headers.len(), 7, "every header kept: {:?}", env.headers);
        assert!(env.raw.is_some(), "raw kept when asked");
        assert!(!env.abuse.auto_submitted);
    }

    #[test]
    fn latin1_body_is_decoded() {
        let mut raw = b"From: a@example.com\r\nSubject: x\r\n\
            Content-Type: text/plain; charset=iso-8859-1\r\n\
            Content-Transfer-Encoding: 8bit\r\n\r\nGr"
            .to_vec();
        raw.extend_from_slice(&[0xFC, 0xDF, 0x65]); // "üße" in Latin-1
        let env = parse_mail(&raw);
        assert_eq!(env.text.as_deref().map(str::trim), Some("Grüße"));
    }

    #[test]
    fn attachment_gets_size_and_sha256() {
        let env = parse_mail(
            b"From: a@example.com\r\nSubject: file\r\nMIME-Version: 1.0\r\n\
              Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n\
              --b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n\
              --b\r\nContent-Type: application/pdf; name=\"invoice.pdf\"\r\n\
              Content-Disposition: attachment; filename=\"invoice.pdf\"\r\n\
              Content-Transfer-Encoding: base64\r\n\r\naGVsbG8=\r\n--b--\r\n",
        );
        assert_eq!(env.attachments.len(), 1);
        let a = &env.attachments[0];
        assert_eq!(a.filename.as_deref(), Some("invoice.pdf"));
        assert_eq!(a.content_type, "application/pdf");
        assert_eq!(a.size, 5);
        assert_eq!(
            a.sha256,
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(&a.content_base64.bytes()[..], b"hello");
        assert_eq!(
            serde_json::to_value(a).unwrap()["content_base64"],
            "aGVsbG8=",
            "written as base64 in the JSON"
        );
        assert_eq!(a.disposition, Disposition::Attachment);
    }

    #[test]
    fn attachment_names_are_made_safe_and_the_sent_name_is_kept() {
        let raw = "From: a@example.com\r\nSubject: files\r\nMIME-Version: 1.0\r\n\
              Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n\
              --b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n\
              --b\r\nContent-Type: application/octet-stream\r\n\
              Content-Disposition: attachment; filename*=UTF-8''invoice%E2%80%AEfdp.exe\r\n\r\nMZ\r\n\
              --b\r\nContent-Type: text/plain\r\n\
              Content-Disposition: attachment; filename=\"../../etc/passwd\"\r\n\r\nroot\r\n\
              --b\r\nContent-Type: application/pdf\r\n\
              Content-Disposition: attachment; filename=\"report.pdf\"\r\n\r\n%PDF\r\n\
              --b--\r\n";
        let source = Source::Mailgate {
            sender: None,
            recipients: vec![],
            ip: "127.0.0.1".into(),
            client: None,
        };
        let submission = Submission::new(source, Payload::Mail(Bytes::from(raw)));
        let options = ParseOptions {
            form: None,
            keep_raw: false,
        };
        let message = parse(submission, options).expect("mail parses");
        let names: Vec<(Option<&str>, Option<&str>)> = message
            .envelope
            .attachments
            .iter()
            .map(|a| (a.filename.as_deref(), a.original_filename.as_deref()))
            .collect();
        assert_eq!(
            names,
            [
                (Some("invoicefdp.exe"), Some("invoice\u{202E}fdp.exe")),
                (Some("passwd"), Some("../../etc/passwd")),
                (Some("report.pdf"), None),
            ],
            "safe names, and the sent name only where it differs"
        );
        let scanned: Vec<&str> = message.scan_targets[1..]
            .iter()
            .map(|t| t.name.as_str())
            .collect();
        assert_eq!(
            scanned,
            ["invoicefdp.exe", "passwd", "report.pdf"],
            "the scanner reports the safe names"
        );
    }

    #[test]
    fn auto_replies_are_recognised() {
        let env = parse_mail(b"From: a@example.com\r\nAuto-Submitted: auto-replied\r\n\r\nOOO\r\n");
        assert!(env.abuse.auto_submitted, "Auto-Submitted header");
        let env = parse_mail(b"From: a@example.com\r\nAuto-Submitted: no\r\n\r\nhi\r\n");
        assert!(!env.abuse.auto_submitted, "Auto-Submitted: no is a person");
        let env = parse_mail(b"From: a@example.com\r\nPrecedence: bulk\r\n\r\nnews\r\n");
        assert!(env.abuse.auto_submitted, "Precedence: bulk");
        let env = parse_mail(b"From: a@example.com\r\nPRECEDENCE:  Junk \r\n\r\nx\r\n");
        assert!(env.abuse.auto_submitted, "names and values in any case");
        let env = parse_mail(b"From: a@example.com\r\nPrecedence: first-class\r\n\r\nx\r\n");
        assert!(!env.abuse.auto_submitted, "another precedence is a person");
        let env = parse_mail(b"From: a@example.com\r\nlist-id: <news.shop.example>\r\n\r\nx\r\n");
        assert!(env.abuse.auto_submitted, "a mailing list");
    }

    #[test]
    fn decoded_attachments_keep_their_bytes_beside_the_text_body() {
        let env = parse_mail(
            b"From: a@example.com\r\nSubject: files\r\nMIME-Version: 1.0\r\n\
              Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n\
              --b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n\
              --b\r\nContent-Type: text/plain; name=\"notes.txt\"\r\n\
              Content-Disposition: attachment; filename=\"notes.txt\"\r\n\
              Content-Transfer-Encoding: quoted-printable\r\n\r\nsize=3D42\r\n\
              --b\r\nContent-Type: application/octet-stream; name=\"raw.bin\"\r\n\
              Content-Disposition: attachment; filename=\"raw.bin\"\r\n\r\nplain bytes\r\n\
              --b--\r\n",
        );
        assert_eq!(env.text.as_deref().map(str::trim), Some("see attached"));
        let files: Vec<_> = env
            .attachments
            .iter()
            .map(|a| {
                (
                    a.filename.as_deref().unwrap(),
                    a.content_base64.bytes().to_vec(),
                )
            })
            .collect();
        assert_eq!(
            files,
            [
                ("notes.txt", b"size=42".to_vec()),
                ("raw.bin", b"plain bytes".to_vec())
            ]
        );
        assert_eq!(env.attachments[0].size, 7);
    }

    #[test]
    fn a_report_part_mail_parser_cannot_place_still_gives_an_envelope() {
        // Found by the fuzzer; mail-parser's debug assertion fired on it
        // (see Cargo.toml's profile for mail-parser).
        let raw = include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fuzz/corpus/mail/report-part-without-boundary.eml"
        ));
        let env = parse_mail(raw);
        assert!(env.abuse.auto_submitted, "a multipart/report is a bounce");
        assert_eq!(env.subject.as_deref(), Some("Returned"));
    }

    #[test]
    fn unfolding_joins_continuation_lines() {
        assert_eq!(unfold("a\r\n  b\r\n\tc"), "a b c");
        assert_eq!(
            unfold("  a  \r\n b \r\n"),
            "a   b",
            "inner spaces kept, ends trimmed"
        );
        assert_eq!(unfold(" \r\n b"), "b", "a blank first line");
        assert_eq!(unfold("\r\n"), "");
    }
}
