//! Raw mail bytes to envelope, along the pipeline's own path: parse (with
//! its MIME measurements), card redaction, the `[mime]` limits, JSON.

#![no_main]

use bytes::Bytes;
use intake::envelope::Source;
use intake::parse::limits::{MimeConfig, MimeStats};
use intake::parse::redact::{redact_envelope, PrivacyConfig, TAG_REDACTED};
use intake::parse::{parse, ParseError, ParseOptions};
use intake::submission::{Payload, Submission};
use intake::units::ByteSize;
use intake_fuzz::{check_envelope, check_masked, on_worker_stack};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let raw = Bytes::copy_from_slice(data);
    on_worker_stack(move || check_mail(raw));
});

fn check_mail(raw: Bytes) {
    let source = Source::Mailgate {
        sender: Some("customer@example.com".into()),
        recipients: vec!["support+fuzz@shop.test".into()],
        ip: "127.0.0.1".into(),
        client: None,
    };
    let submission = Submission::new(source, Payload::Mail(raw.clone()));
    let options = ParseOptions {
        form: None,
        keep_raw: true,
    };
    let blank = raw.iter().all(u8::is_ascii_whitespace);
    let message = match parse(submission, options) {
        Ok(message) => message,
        Err(ParseError::Empty) if blank => return,
        Err(e) => panic!("only a blank mail may be refused; got {e}"),
    };
    assert!(!blank, "a blank mail is refused as empty");

    // The scanner sees the whole message first, then every attachment.
    let targets = &message.scan_targets;
    assert!(targets[0].whole_message && targets[0].data == raw);
    assert_eq!(targets.len(), 1 + message.envelope.attachments.len());
    assert!(targets[1..].iter().all(|t| !t.whole_message));

    check_limits(&message.mime);

    let before = message.envelope.clone();
    let mut envelope = message.envelope;
    let masked = redact_envelope(&mut envelope, &PrivacyConfig::default());
    let pairs = [
        (&before.subject, &envelope.subject, "subject"),
        (&before.text, &envelope.text, "text"),
        (&before.html, &envelope.html, "html"),
        (
            &before.stripped_text,
            &envelope.stripped_text,
            "stripped_text",
        ),
        (
            &before.customer.name,
            &envelope.customer.name,
            "customer.name",
        ),
    ];
    for (b, a, what) in pairs {
        assert_eq!(b.is_some(), a.is_some(), "{what}: redaction keeps it");
        if let (Some(b), Some(a)) = (b, a) {
            check_masked(b, a, what);
        }
    }
    if masked == 0 {
        assert_eq!(envelope, before, "nothing masked: nothing changed");
    } else {
        assert!(envelope.raw.is_none(), "raw held a card number: dropped");
        assert!(envelope.abuse.tags.iter().any(|t| t == TAG_REDACTED));
    }
    check_envelope(&envelope);
}

/// A limit is reported exactly when a measurement is past it.
fn check_limits(stats: &MimeStats) {
    let tight = MimeConfig {
        max_depth: 1,
        max_parts: 3,
        max_header_line: 998,
        max_decoded_size: ByteSize(64),
    };
    for config in [MimeConfig::default(), tight] {
        let past = stats.depth > config.max_depth
            || stats.parts > config.max_parts
            || stats.longest_header_line > config.max_header_line
            || stats.decoded_size > config.max_decoded_size.0;
        let reason = config.exceeded(stats);
        assert_eq!(reason.is_some(), past, "{stats:?} against {config:?}");
    }
    assert!(stats.parts >= 1 || *stats == MimeStats::default());
}
