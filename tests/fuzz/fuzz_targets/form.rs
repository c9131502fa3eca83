//! Form bodies from the wire to envelope: urlencoded, multipart and JSON
//! decoding (src/sources/http/form_body.rs), the bot checks, then the parse
//! stage (src/parse/form.rs), card redaction and JSON.
//!
//! Input: a selector byte, then the body. Selector 0 is urlencoded, 1 JSON,
//! 2 multipart with the boundary on the first line, 3 a `Content-Type`
//! value on the first line (any format, read like the HTTP source does).

#![no_main]

use std::sync::OnceLock;

use bytes::Bytes;
use intake::config::Config;
use intake::envelope::{FieldValue, Source};
use intake::parse::redact::{redact_envelope, PrivacyConfig};
use intake::parse::{parse, ParseOptions};
use intake::sources::http::bots::{judge, unix_now, TokenKey};
use intake::sources::http::config::FormConfig;
use intake::sources::http::form_body::{decode, BodyKind};
use intake::sources::http::forms::check_fields;
use intake::submission::{Payload, Submission};
use intake_fuzz::{block_on, check_envelope, check_masked};
use libfuzzer_sys::fuzz_target;

const FORM: &str = r#"
[redis]
url = "redis://127.0.0.1:1"

[[form]]
id = "contact"
subject = "Contact form"
max_fields = 12
max_files = 2
max_links = 3
token = "optional"
"#;

fn form() -> &'static FormConfig {
    static FORM_CONFIG: OnceLock<FormConfig> = OnceLock::new();
    FORM_CONFIG.get_or_init(|| {
        Config::from_toml(FORM)
            .expect("the fuzz form config loads")
            .forms[0]
            .clone()
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let first_line = |rest: &[u8]| -> (String, Bytes) {
        let end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
        let line = String::from_utf8_lossy(&rest[..end]).into_owned();
        let body = rest.get(end + 1..).unwrap_or_default();
        (line, Bytes::copy_from_slice(body))
    };
    let (kind, body) = match selector % 4 {
        0 => (BodyKind::UrlEncoded, Bytes::copy_from_slice(rest)),
        1 => (BodyKind::Json, Bytes::copy_from_slice(rest)),
        2 => {
            let (boundary, body) = first_line(rest);
            (BodyKind::Multipart { boundary }, body)
        }
        _ => {
            let (content_type, body) = first_line(rest);
            match BodyKind::from_content_type(Some(&content_type)) {
                Ok(kind) => (kind, body),
                Err(e) => {
                    assert!(e.status().is_client_error(), "{e:?} is a 4xx");
                    return;
                }
            }
        }
    };
    check_form(kind, body);
});

fn check_form(kind: BodyKind, body: Bytes) {
    let form = form();
    let post = match block_on(decode(kind, body, form)) {
        Ok(post) => post,
        Err(e) => {
            // Bad input gets a clear 4xx, never a 5xx or a panic.
            assert!(e.status().is_client_error(), "{e:?} is a 4xx");
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    let fields: usize = post
        .fields
        .values()
        .map(|v| match v {
            FieldValue::One(_) => 1,
            FieldValue::Many(vs) => vs.len(),
        })
        .sum();
    assert!(fields <= form.max_fields, "{fields} fields past max_fields");
    assert!(post.files.len() <= form.max_files, "files past max_files");
    assert!(post.fields.keys().all(|name| !name.is_empty()));
    if let Err(e) = check_fields(form, &post) {
        assert!(e.status().is_client_error(), "{e:?} is a 4xx");
        return;
    }
    // The fields the gateway reads one value of passed only with one.
    for name in [
        form.email_field.as_str(),
        "_replyto",
        form.name_field.as_str(),
        "_subject",
        form.message_field.as_str(),
        "_next",
    ] {
        assert!(
            !matches!(post.fields.get(name), Some(FieldValue::Many(vs)) if vs.len() > 1),
            "`{name}` passed the checks with more than one value"
        );
    }

    let key = TokenKey::new(b"fuzz secret of the form tokens");
    let bot_check = judge(form, Some(&key), &post, unix_now()).err();

    let mut post = post;
    post.bot_check = bot_check;
    let upload_names: Vec<Option<String>> = post.files.iter().map(|u| u.filename.clone()).collect();
    let source = Source::Form {
        form: form.id.clone(),
        ip: "203.0.113.7".into(),
        user_agent: None,
        origin: None,
        referer: None,
        accept_language: None,
    };
    let submission = Submission::new(source, Payload::Form(post));
    let fields = form.fields();
    let options = ParseOptions {
        form: Some(&fields),
        keep_raw: false,
    };
    let message = parse(submission, options).expect("a decoded form post always parses");
    assert_eq!(message.scan_targets.len(), upload_names.len());

    let before = message.envelope.clone();
    let mut envelope = message.envelope;
    redact_envelope(&mut envelope, &PrivacyConfig::default());
    for (b, a, what) in [
        (&before.subject, &envelope.subject, "subject"),
        (&before.text, &envelope.text, "text"),
        (
            &before.customer.name,
            &envelope.customer.name,
            "customer.name",
        ),
    ] {
        if let (Some(b), Some(a)) = (b, a) {
            check_masked(b, a, what);
        }
    }

    // Name, subject and file names become mail headers downstream: one
    // line each, whatever was posted.
    let one_line = |s: &str| !s.chars().any(char::is_control);
    assert!(envelope.subject.as_deref().is_some_and(one_line));
    assert!(envelope.customer.name.as_deref().is_none_or(one_line));
    assert!(envelope
        .attachments
        .iter()
        .all(|a| a.filename.as_deref().is_none_or(one_line)));
    // The reply address passed the field checks: one address, no line
    // break or space a mail header could be injected with.
    assert!(envelope
        .customer
        .email
        .as_deref()
        .is_none_or(|e| !e.chars().any(|c| c.is_whitespace() || c.is_control())));
    // Reserved fields steer the gateway; they never reach the desk.
    assert!(envelope.fields.keys().all(|name| !name.starts_with('_')));
    check_envelope(&envelope);
}
