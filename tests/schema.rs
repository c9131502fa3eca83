//! `src/envelope-v1.schema.json` against what the gateway really writes: forms
//! and raw mail go through a gateway on the dev Redis, and every envelope
//! read back from `desk` must validate (formats included) and carry the
//! decoded values the desk relies on. Broken envelopes must fail, so the
//! check itself can fail.

mod support;

use base64::Engine as _;
use reqwest::header;
use serde_json::{json, Value};
use support::envelope::{assert_matches_schema, crlf as mail, schema_errors, SCHEMA};
use support::{client, Gateway, TOKEN};

/// Posts a raw message to `/v1/messages`, expects 202, and returns the
/// desk envelope carrying the receipt, after checking it against the schema.
async fn deliver(gw: &Gateway, raw: Vec<u8>, envelope_headers: &[(&str, &str)]) -> Value {
    let mut request = client()
        .post(format!("{}/v1/messages", gw.url))
        .bearer_auth(TOKEN)
        .header(header::CONTENT_TYPE, "message/rfc822");
    for (name, value) in envelope_headers {
        request = request.header(*name, *value);
    }
    let response = request
        .body(raw.clone())
        .send()
        .await
        .expect("gateway answers");
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    assert_eq!(status, 202, "mail was not accepted: {body}");
    let receipt: Value = serde_json::from_str(&body).expect("202 body is JSON");
    let id = receipt["id"].as_str().expect("202 carries a receipt id");
    let envelope = desk_envelope(gw, id).await;
    assert_matches_schema("mail", &envelope);
    let stored_raw = base64::engine::general_purpose::STANDARD
        .decode(envelope["raw"].as_str().expect("mail envelope keeps `raw`"))
        .expect("`raw` is base64");
    assert!(stored_raw == raw, "`raw` differs from the bytes posted");
    envelope
}

/// The desk envelope whose entry `id` is `id`.
async fn desk_envelope(gw: &Gateway, id: &str) -> Value {
    let desk = gw.entries("desk").await;
    let entry = desk
        .iter()
        .find(|e| e.field("id") == id)
        .unwrap_or_else(|| panic!("receipt {id} is not on the desk ({} entries)", desk.len()));
    let envelope = entry.envelope();
    assert_eq!(envelope["id"], id, "envelope id is not the receipt id");
    envelope
}

fn text_of(envelope: &Value, field: &str) -> String {
    envelope[field]
        .as_str()
        .unwrap_or_else(|| panic!("envelope has no `{field}`: {envelope}"))
        .to_string()
}

// ---------------------------------------------------------------------------
// The schema itself.
// ---------------------------------------------------------------------------

#[test]
fn schema_is_a_valid_draft_2020_12_schema() {
    let schema: Value = serde_json::from_str(SCHEMA).expect("schema is JSON");
    assert_eq!(
        schema["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    if let Err(e) = jsonschema::meta::validate(&schema) {
        panic!("src/envelope-v1.schema.json is not a valid JSON Schema: {e}");
    }
}

#[test]
fn every_field_of_the_schema_is_described_for_integrators() {
    let schema: Value = serde_json::from_str(SCHEMA).unwrap();
    let mut undocumented = Vec::new();
    for (name, property) in schema["properties"].as_object().unwrap() {
        if property.get("title").is_none() || property.get("description").is_none() {
            undocumented.push(name.clone());
        }
    }
    assert!(
        undocumented.is_empty(),
        "fields without title/description: {undocumented:?}"
    );
}

/// Every source variant and every optional field, serialized from the Rust
/// types themselves, so variants no HTTP test reaches (IMAP, LMTP) are held
/// to the schema too.
#[test]
fn every_source_variant_and_optional_field_matches_the_schema() {
    use intake::envelope::*;
    use intake::submission::ReceiptId;

    let full = |source: Source, channel: Channel| Envelope {
        version: ENVELOPE_VERSION,
        id: ReceiptId::new(),
        received_at: time::OffsetDateTime::now_utc(),
        channel,
        source,
        customer: Customer {
            email: Some("ann@example.com".into()),
            name: Some("Ann Example".into()),
            mailbox_hash: Some("order-1234".into()),
        },
        from: Some(Address {
            email: "ann@example.com".into(),
            name: Some("Ann Example".into()),
        }),
        to: vec![Address {
            email: "support@shop.test".into(),
            name: None,
        }],
        cc: vec![Address {
            email: "boss@example.com".into(),
            name: Some("Boss".into()),
        }],
        reply_to: vec![Address {
            email: "ann@example.com".into(),
            name: None,
        }],
        subject: Some("Where is my order?".into()),
        date: Some("2026-11-23T10:00:00+01:00".into()),
        message_id: Some("abc@example.com".into()),
        in_reply_to: vec!["prev@shop.test".into()],
        references: vec!["first@shop.test".into(), "prev@shop.test".into()],
        headers: vec![Header {
            name: "Subject".into(),
            value: "Where is my order?".into(),
        }],
        text: Some("Where is it?\n> quoted".into()),
        html: Some("<p>Where is it?</p>".into()),
        stripped_text: Some("Where is it?".into()),
        stripped_signature: Some("Ann\nShop Example".into()),
        fields: [
            ("order".to_string(), FieldValue::One("1234".into())),
            (
                "sizes".to_string(),
                FieldValue::Many(vec!["M".into(), "L".into()]),
            ),
        ]
        .into_iter()
        .collect(),
        attachments: vec![Attachment {
            filename: Some("logo.png".into()),
            original_filename: Some("../.logo.png".into()),
            content_type: "image/png".into(),
            size: 5,
            sha256: "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824".into(),
            content_id: Some("logo@shop.test".into()),
            disposition: Disposition::Inline,
            content_base64: intake::envelope::Base64(bytes::Bytes::from_static(b"hello")),
        }],
        scan: ScanReport {
            status: ScanStatus::Infected,
            engine: Some("ClamAV 1.4.2".into()),
            signatures: vec!["Some.Test.Signature".into()],
        },
        auth: Some(Auth {
            dkim: vec![
                DkimCheck {
                    result: AuthResult::Pass,
                    domain: Some("example.com".into()),
                    selector: Some("s1".into()),
                },
                DkimCheck {
                    result: AuthResult::Permerror,
                    domain: None,
                    selector: None,
                },
            ],
            spf: Some(SpfCheck {
                result: AuthResult::Softfail,
                domain: Some("example.com".into()),
                client_address: Some("203.0.113.7".into()),
                helo: Some("mx.example.com".into()),
            }),
            dmarc: Some(DmarcCheck {
                result: AuthResult::Pass,
                domain: Some("example.com".into()),
                policy: Some(DmarcPolicy::Reject),
            }),
            arc: Some(ArcCheck {
                result: AuthResult::Pass,
                sealer: Some("lists.example.org".into()),
                claims: [("dmarc".to_string(), AuthResult::Pass)]
                    .into_iter()
                    .collect(),
            }),
            from: AuthOrigin::TrustedHeader,
            authserv_id: Some("mx.shop.test".into()),
            aligned_from: true,
            authenticated_domain: Some("example.com".into()),
            own_domain: true,
            notes: vec!["spf: no SMTP client address".into()],
        }),
        abuse: AbuseReport {
            tags: vec!["flood".into()],
            matched_rules: vec!["one-customer-mail".into()],
            duplicates: 12,
            auto_submitted: true,
        },
        raw: Some(intake::envelope::Base64(bytes::Bytes::from_static(
            b"From: a@example.com\r\n\r\nhi\r\n",
        ))),
    };
    let sources = [
        (
            Channel::Email,
            Source::Imap {
                account: "support@shop.test".into(),
                mailbox: "INBOX".into(),
                uidvalidity: u32::MAX,
                uid: 42,
            },
        ),
        (
            Channel::Email,
            Source::Mailgate {
                sender: Some(String::new()),
                recipients: vec!["support+order-1234@shop.test".into()],
                ip: "::1".into(),
                client: Some(SmtpClient {
                    address: Some("2001:db8::7".into()),
                    helo: Some("mx.customer.test".into()),
                }),
            },
        ),
        (
            Channel::Email,
            Source::Mailgate {
                sender: None,
                recipients: vec![],
                ip: "127.0.0.1".into(),
                client: None,
            },
        ),
        (
            Channel::Email,
            Source::Lmtp {
                sender: "ann@example.com".into(),
                recipients: vec!["support@shop.test".into()],
                ip: "127.0.0.1".into(),
                client: Some(SmtpClient {
                    address: Some("203.0.113.7".into()),
                    helo: None,
                }),
            },
        ),
        (
            Channel::Email,
            Source::Lmtp {
                sender: String::new(),
                recipients: vec!["support@shop.test".into()],
                ip: "127.0.0.1".into(),
                client: None,
            },
        ),
        (
            Channel::Form,
            Source::Form {
                form: "contact".into(),
                ip: "203.0.113.7".into(),
                user_agent: Some("Mozilla/5.0".into()),
                origin: Some("https://shop.test".into()),
                referer: Some("https://shop.test/contact".into()),
                accept_language: None,
            },
        ),
    ];
    for (channel, source) in sources {
        let what = format!("{source:?}");
        let envelope = full(source, channel);
        assert_matches_schema(&what, &serde_json::to_value(&envelope).unwrap());

        // The same with every optional field left out.
        let minimal = Envelope {
            customer: Customer::default(),
            from: None,
            to: vec![],
            cc: vec![],
            reply_to: vec![],
            subject: None,
            date: None,
            message_id: None,
            in_reply_to: vec![],
            references: vec![],
            headers: vec![],
            text: None,
            html: None,
            stripped_text: None,
            stripped_signature: None,
            fields: Default::default(),
            attachments: vec![],
            scan: ScanReport::unscanned(),
            abuse: AbuseReport::default(),
            raw: None,
            ..envelope
        };
        assert_matches_schema(
            &format!("minimal {what}"),
            &serde_json::to_value(&minimal).unwrap(),
        );
    }
}

/// A check that never fails checks nothing: each of these envelopes
/// breaks the contract in one way, and the schema must say so.
#[tokio::test]
async fn broken_envelopes_fail_validation() {
    let gw = Gateway::start("schema_broken").await;
    let good = deliver(
        &gw,
        mail(&[b"From: Ann <ann@example.com>\n\
            To: support@shop.test\n\
            Subject: hello\n\
            MIME-Version: 1.0\n\
            Content-Type: multipart/mixed; boundary=\"b\"\n\
            \n\
            --b\n\
            Content-Type: text/plain\n\
            \n\
            hello\n\
            --b\n\
            Content-Type: application/pdf; name=\"a.pdf\"\n\
            Content-Transfer-Encoding: base64\n\
            \n\
            aGVsbG8=\n\
            --b--\n"]),
        &[],
    )
    .await;
    assert!(
        good["attachments"]
            .as_array()
            .is_some_and(|a| !a.is_empty()),
        "the base envelope needs an attachment to break: {good}"
    );

    type Breakage = (&'static str, fn(&mut Value));
    let breakages: [Breakage; 25] = [
        ("unknown top-level field", |e| {
            e["unplanned"] = json!("surprise");
        }),
        ("version 2", |e| e["version"] = json!(2)),
        ("version as a string", |e| e["version"] = json!("1")),
        ("id too short", |e| {
            e["id"] = json!("01ARZ3NDEKTSV4RRFFQ69G5FA")
        }),
        ("id in lower case", |e| {
            e["id"] = json!("01arz3ndektsv4rrffq69g5fav");
        }),
        ("received_at not a date-time", |e| {
            e["received_at"] = json!("yesterday");
        }),
        ("unknown channel", |e| e["channel"] = json!("sms")),
        ("unknown source type", |e| {
            e["source"]["type"] = json!("smtp")
        }),
        ("unknown field in source", |e| {
            e["source"]["port"] = json!(25)
        }),
        ("form channel with a mailgate source", |e| {
            e["channel"] = json!("form");
        }),
        ("missing abuse", |e| {
            e.as_object_mut().unwrap().remove("abuse");
        }),
        ("null subject instead of omitted", |e| {
            e["subject"] = Value::Null
        }),
        ("unknown scan status", |e| {
            e["scan"]["status"] = json!("maybe")
        }),
        ("sha256 not 64 hex chars", |e| {
            e["attachments"][0]["sha256"] = json!("abc123");
        }),
        ("sha256 in upper case", |e| {
            let upper = e["attachments"][0]["sha256"]
                .as_str()
                .unwrap()
                .to_uppercase();
            e["attachments"][0]["sha256"] = json!(upper);
        }),
        ("unknown disposition", |e| {
            e["attachments"][0]["disposition"] = json!("maybe");
        }),
        ("a file name with a path", |e| {
            e["attachments"][0]["filename"] = json!("../../etc/passwd");
        }),
        ("a file name with a right-to-left override", |e| {
            e["attachments"][0]["filename"] = json!("invoice\u{202E}fdp.exe");
        }),
        ("a file name with a line break", |e| {
            e["attachments"][0]["filename"] = json!("a\r\nb.pdf");
        }),
        ("a hidden file name", |e| {
            e["attachments"][0]["filename"] = json!(".htaccess");
        }),
        ("an original file name that is not a string", |e| {
            e["attachments"][0]["original_filename"] = json!(["a.pdf"]);
        }),
        ("unknown field in an attachment", |e| {
            e["attachments"][0]["virus"] = json!(false);
        }),
        ("a form field that is a number", |e| {
            e["fields"]["qty"] = json!(3)
        }),
        ("a reserved form field kept", |e| {
            e["fields"]["_gotcha"] = json!("x");
        }),
        ("raw not base64", |e| e["raw"] = json!("not base64!")),
    ];
    for (what, breaks) in breakages {
        let mut broken = good.clone();
        breaks(&mut broken);
        assert!(
            !schema_errors(&broken).is_empty(),
            "the schema accepted an envelope with {what}: {broken}"
        );
    }
    assert_matches_schema("the unbroken envelope", &good);
}

// ---------------------------------------------------------------------------
// Forms.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn urlencoded_form_post_matches_the_schema() {
    let gw = Gateway::start("schema_form_urlencoded").await;
    let response = client()
        .post(gw.form_url("contact"))
        .header(header::USER_AGENT, "Mozilla/5.0 (X11; Linux x86_64)")
        .header(header::ORIGIN, "https://shop.test")
        .header(header::REFERER, "https://shop.test/contact")
        .form(&[
            ("email", "ann@example.com"),
            ("name", "Ann Example"),
            ("message", "Where is order 1234?"),
            ("topic", "delivery"),
            ("topic", "billing"),
            ("_subject", "Order question"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202, "form post accepted");
    let receipt: Value = response.json().await.unwrap();
    let env = desk_envelope(&gw, receipt["id"].as_str().unwrap()).await;
    assert_matches_schema("urlencoded form", &env);
    assert_eq!(
        env["source"]["user_agent"],
        "Mozilla/5.0 (X11; Linux x86_64)"
    );
    assert_eq!(env["source"]["referer"], "https://shop.test/contact");
    assert_eq!(
        env["fields"]["topic"],
        json!(["delivery", "billing"]),
        "repeated field is a list"
    );
}

#[tokio::test]
async fn multipart_form_post_with_a_file_matches_the_schema() {
    let gw = Gateway::start("schema_form_multipart").await;
    let file = reqwest::multipart::Part::bytes(b"%PDF-1.4 invoice".to_vec())
        .file_name("invoice.pdf")
        .mime_str("application/pdf")
        .unwrap();
    let form = reqwest::multipart::Form::new()
        .text("email", "bob@example.com")
        .text("name", "Bob")
        .text("message", "Invoice attached, Grüße")
        .part("upload", file);
    let response = client()
        .post(gw.form_url("contact"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202, "multipart post accepted");
    let receipt: Value = response.json().await.unwrap();
    let env = desk_envelope(&gw, receipt["id"].as_str().unwrap()).await;
    assert_matches_schema("multipart form", &env);
    assert_eq!(env["text"], "Invoice attached, Grüße");
    assert_eq!(env["attachments"][0]["filename"], "invoice.pdf");
    assert_eq!(env["attachments"][0]["disposition"], "attachment");
}

/// A file named to deceive (a right-to-left override, a path, a line
/// break) is stored under a safe `filename`, with the name as sent in
/// `original_filename`: both in the schema, by form and by mail.
#[tokio::test]
async fn hostile_file_names_keep_their_original_and_match_the_schema() {
    let gw = Gateway::start("schema_original_filename").await;
    let upload = |name: &str| {
        reqwest::multipart::Part::bytes(b"%PDF-1.4 invoice".to_vec())
            .file_name(name.to_string())
            .mime_str("application/pdf")
            .unwrap()
    };
    let form = reqwest::multipart::Form::new()
        .text("email", "bob@example.com")
        .text("message", "Two files")
        .part("upload", upload("invoice\u{202E}fdp.exe"))
        .part("other", upload("../../etc/passwd"));
    let response = client()
        .post(gw.form_url("contact"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202, "multipart post accepted");
    let receipt: Value = response.json().await.unwrap();
    let env = desk_envelope(&gw, receipt["id"].as_str().unwrap()).await;
    assert_matches_schema("form with hostile file names", &env);
    let names: Vec<(Value, Value)> = env["attachments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["filename"].clone(), a["original_filename"].clone()))
        .collect();
    assert_eq!(
        names,
        [
            (json!("invoicefdp.exe"), json!("invoice\u{202E}fdp.exe")),
            (json!("passwd"), json!("../../etc/passwd")),
        ]
    );

    let env = deliver(
        &gw,
        mail(&[b"From: ann@example.com\n\
            Subject: files\n\
            MIME-Version: 1.0\n\
            Content-Type: multipart/mixed; boundary=\"b\"\n\
            \n\
            --b\n\
            Content-Type: text/plain\n\
            \n\
            see attached\n\
            --b\n\
            Content-Type: application/pdf\n\
            Content-Disposition: attachment; filename*=UTF-8''C%3A%5Cx%5C%0D%0Ay.pdf\n\
            \n\
            %PDF-1\n\
            --b--\n"]),
        &[],
    )
    .await;
    assert_eq!(env["attachments"][0]["filename"], "y.pdf");
    assert_eq!(
        env["attachments"][0]["original_filename"],
        "C:\\x\\\r\ny.pdf"
    );
}

#[tokio::test]
async fn json_form_post_matches_the_schema() {
    let gw = Gateway::start("schema_form_json").await;
    let response = client()
        .post(gw.form_url("contact"))
        .json(&json!({
            "email": "cem@example.com",
            "message": "Hello",
            "quantity": 3,
            "gift": true,
            "sizes": ["M", "L"],
            "nothing": null,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202, "JSON post accepted");
    let receipt: Value = response.json().await.unwrap();
    let env = desk_envelope(&gw, receipt["id"].as_str().unwrap()).await;
    assert_matches_schema("JSON form", &env);
    assert_eq!(env["fields"]["quantity"], "3", "numbers become strings");
    assert_eq!(env["fields"]["gift"], "true", "booleans become strings");
    assert_eq!(env["fields"]["sizes"], json!(["M", "L"]));
}

// ---------------------------------------------------------------------------
// Mail through /v1/messages.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn plain_mail_matches_the_schema_with_its_addresses() {
    let gw = Gateway::start("schema_plain").await;
    let env = deliver(
        &gw,
        mail(&[b"From: Ann Example <ann@example.com>\n\
            To: Support <support@shop.test>, sales@shop.test\n\
            Cc: boss@example.com\n\
            Reply-To: ann.private@example.com\n\
            Subject: Where is my order?\n\
            Date: Mon, 23 Nov 2026 10:00:00 +0100\n\
            Message-ID: <plain-1@example.com>\n\
            \n\
            Order 1234 has not arrived.\n"]),
        &[
            ("x-intake-envelope-sender", "ann@example.com"),
            ("x-intake-envelope-recipient", "support@shop.test"),
        ],
    )
    .await;
    assert_eq!(env["channel"], "email");
    assert_eq!(env["source"]["type"], "mailgate");
    assert_eq!(
        env["from"],
        json!({"email": "ann@example.com", "name": "Ann Example"})
    );
    assert_eq!(
        env["to"],
        json!([{"email": "support@shop.test", "name": "Support"}, {"email": "sales@shop.test"}])
    );
    assert_eq!(env["cc"], json!([{"email": "boss@example.com"}]));
    assert_eq!(
        env["customer"]["email"], "ann.private@example.com",
        "Reply-To is who the desk answers"
    );
    assert_eq!(env["date"], "2026-11-23T10:00:00+01:00");
    assert_eq!(env["message_id"], "plain-1@example.com");
    assert_eq!(text_of(&env, "text").trim(), "Order 1234 has not arrived.");
    assert_eq!(env["abuse"]["auto_submitted"], false, "a person wrote this");
    assert_eq!(
        env["headers"].as_array().unwrap().len(),
        7,
        "every header kept"
    );
}

#[tokio::test]
async fn multipart_mail_with_attachment_and_inline_image_matches_the_schema() {
    let gw = Gateway::start("schema_multipart_mail").await;
    let env = deliver(
        &gw,
        mail(&[b"From: Ann <ann@example.com>\n\
            To: support@shop.test\n\
            Subject: Broken item, photo attached\n\
            MIME-Version: 1.0\n\
            Content-Type: multipart/mixed; boundary=\"outer\"\n\
            \n\
            This is a multi-part message in MIME format.\n\
            --outer\n\
            Content-Type: multipart/related; boundary=\"rel\"\n\
            \n\
            --rel\n\
            Content-Type: multipart/alternative; boundary=\"alt\"\n\
            \n\
            --alt\n\
            Content-Type: text/plain; charset=utf-8\n\
            \n\
            The mug arrived broken, see the photo.\n\
            --alt\n\
            Content-Type: text/html; charset=utf-8\n\
            \n\
            <p>The mug arrived <b>broken</b>, see the photo.</p><img src=\"cid:photo-1@example.com\">\n\
            --alt--\n\
            --rel\n\
            Content-Type: image/png; name=\"photo.png\"\n\
            Content-Transfer-Encoding: base64\n\
            Content-ID: <photo-1@example.com>\n\
            Content-Disposition: inline; filename=\"photo.png\"\n\
            \n\
            iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==\n\
            --rel--\n\
            --outer\n\
            Content-Type: application/pdf; name=\"invoice.pdf\"\n\
            Content-Disposition: attachment; filename=\"invoice.pdf\"\n\
            Content-Transfer-Encoding: base64\n\
            \n\
            JVBERi0xLjQgaW52b2ljZQ==\n\
            --outer--\n"]),
        &[],
    )
    .await;
    let attachments = env["attachments"].as_array().expect("attachments list");
    assert_eq!(
        attachments.len(),
        2,
        "the photo and the invoice: {attachments:?}"
    );
    let photo = attachments
        .iter()
        .find(|a| a["content_type"] == "image/png")
        .expect("the inline photo is an attachment");
    assert_eq!(
        photo["content_id"], "photo-1@example.com",
        "Content-ID without angle brackets"
    );
    assert_eq!(photo["disposition"], "inline");
    assert_eq!(photo["filename"], "photo.png");
    assert_eq!(photo["size"], 70, "decoded PNG size");
    let invoice = attachments
        .iter()
        .find(|a| a["content_type"] == "application/pdf")
        .expect("the invoice is an attachment");
    assert_eq!(invoice["disposition"], "attachment");
    assert_eq!(invoice["content_base64"], "JVBERi0xLjQgaW52b2ljZQ==");
    assert!(
        invoice.get("content_id").is_none(),
        "no Content-ID, none invented"
    );
    assert_eq!(
        text_of(&env, "text").trim(),
        "The mug arrived broken, see the photo."
    );
    assert!(
        text_of(&env, "html").contains("<b>broken</b>"),
        "the HTML part is kept"
    );
}

#[tokio::test]
async fn html_only_mail_keeps_its_html_and_gets_text_from_it() {
    let gw = Gateway::start("schema_html_only").await;
    let env = deliver(
        &gw,
        mail(&[b"From: Ann <ann@example.com>\n\
            To: support@shop.test\n\
            Subject: HTML only\n\
            MIME-Version: 1.0\n\
            Content-Type: text/html; charset=utf-8\n\
            \n\
            <html><body><p>Hello,</p><p>my order <b>1234</b> is late.</p></body></html>\n"]),
        &[],
    )
    .await;
    assert!(
        text_of(&env, "html").contains("<b>1234</b>"),
        "html kept as sent: {env}"
    );
    let text = text_of(&env, "text");
    assert!(
        text.contains("Hello") && text.contains("my order 1234 is late"),
        "text derived from the HTML: {text:?}"
    );
    assert!(!text.contains('<'), "derived text has no tags: {text:?}");
}

#[tokio::test]
async fn latin1_mail_is_decoded_to_utf8() {
    let gw = Gateway::start("schema_latin1").await;
    let env = deliver(
        &gw,
        mail(&[
            b"From: ann@example.com\n\
            Subject: Latin-1\n\
            Content-Type: text/plain; charset=ISO-8859-1\n\
            Content-Transfer-Encoding: 8bit\n\
            \n",
            b"Gr\xfc\xdfe aus M\xfcnchen\n",
        ]),
        &[],
    )
    .await;
    assert_eq!(text_of(&env, "text").trim(), "Grüße aus München");
}

#[tokio::test]
async fn windows_1252_mail_is_decoded_with_euro_and_curly_quotes() {
    let gw = Gateway::start("schema_cp1252").await;
    let env = deliver(
        &gw,
        mail(&[
            b"From: ann@example.com\n\
            Subject: cp1252\n\
            Content-Type: text/plain; charset=windows-1252\n\
            Content-Transfer-Encoding: 8bit\n\
            \n",
            b"\x80 49,90 \x96 \x93Danke\x94\n",
        ]),
        &[],
    )
    .await;
    assert_eq!(
        text_of(&env, "text").trim(),
        "€ 49,90 – “Danke”",
        "0x80-0x9F are windows-1252 characters, not C1 controls"
    );
}

#[tokio::test]
async fn iso_2022_jp_mail_is_decoded() {
    let gw = Gateway::start("schema_iso2022jp").await;
    let env = deliver(
        &gw,
        mail(&[
            b"From: =?ISO-2022-JP?B?GyRCQ21KOCRLJEQkJCRGGyhC?= <taro@example.jp>\n\
            Subject: =?ISO-2022-JP?B?GyRCQ21KOCRLJEQkJCRGGyhC?=\n\
            MIME-Version: 1.0\n\
            Content-Type: text/plain; charset=ISO-2022-JP\n\
            Content-Transfer-Encoding: 7bit\n\
            \n",
            b"\x1b$B$3$s$K$A$O!\"CmJ8$N7o$G$9\x1b(B\n",
        ]),
        &[],
    )
    .await;
    assert_eq!(text_of(&env, "text").trim(), "こんにちは、注文の件です");
    assert_eq!(
        env["subject"], "注文について",
        "RFC 2047 B-encoded ISO-2022-JP subject"
    );
    assert_eq!(env["customer"]["name"], "注文について");
}

#[tokio::test]
async fn koi8_r_mail_is_decoded() {
    let gw = Gateway::start("schema_koi8r").await;
    let env = deliver(
        &gw,
        mail(&[
            b"From: ivan@example.ru\n\
            Subject: koi8\n\
            Content-Type: text/plain; charset=koi8-r\n\
            Content-Transfer-Encoding: 8bit\n\
            \n",
            b"\xf0\xd2\xc9\xd7\xc5\xd4, \xc7\xc4\xc5 \xcd\xcf\xca \xda\xc1\xcb\xc1\xda?\n",
        ]),
        &[],
    )
    .await;
    assert_eq!(text_of(&env, "text").trim(), "Привет, где мой заказ?");
}

#[tokio::test]
async fn rfc2047_subject_and_names_are_decoded() {
    let gw = Gateway::start("schema_rfc2047").await;
    let env = deliver(
        &gw,
        mail(&[
            b"From: =?ISO-8859-1?Q?J=F6rg_M=FCller?= <joerg@example.de>\n\
            To: =?UTF-8?Q?Kundenservice_M=C3=BCnchen?= <support@shop.test>\n\
            Subject: =?UTF-8?B?UsO8Y2tmcmFnZSB6dXIgQmVzdGVsbHVuZyAxMjM0IOKAkyBkcmluZ2VuZA==?=\n\
            \n\
            Bitte um Antwort.\n",
        ]),
        &[],
    )
    .await;
    assert_eq!(env["subject"], "Rückfrage zur Bestellung 1234 – dringend");
    assert_eq!(env["customer"]["name"], "Jörg Müller");
    assert_eq!(env["from"]["name"], "Jörg Müller");
    assert_eq!(env["to"][0]["name"], "Kundenservice München");
    let subject_header = env["headers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == "Subject")
        .expect("Subject header listed");
    assert_eq!(
        subject_header["value"], "Rückfrage zur Bestellung 1234 – dringend",
        "header values are decoded too"
    );
}

#[tokio::test]
async fn reply_keeps_threading_and_strips_the_quote() {
    let gw = Gateway::start("schema_reply").await;
    let env = deliver(
        &gw,
        mail(&[b"From: Ann <ann@example.com>\n\
            To: support@shop.test\n\
            Subject: Re: Your order 1234\n\
            Message-ID: <reply-2@example.com>\n\
            In-Reply-To: <ticket-1@shop.test>\n\
            References: <order-1234@shop.test>\n <ticket-1@shop.test>\n\
            \n\
            Still nothing arrived.\n\
            \n\
            On Mon, 23 Nov 2026 at 10:00, Shop Support <support@shop.test> wrote:\n\
            > Your parcel is on its way.\n\
            > Kind regards\n"]),
        &[],
    )
    .await;
    assert_eq!(env["in_reply_to"], json!(["ticket-1@shop.test"]));
    assert_eq!(
        env["references"],
        json!(["order-1234@shop.test", "ticket-1@shop.test"]),
        "folded References, brackets removed, order kept"
    );
    assert_eq!(
        env["stripped_text"], "Still nothing arrived.",
        "quote removed"
    );
    assert!(
        text_of(&env, "text").contains("> Your parcel is on its way."),
        "text keeps the whole body"
    );
}

#[tokio::test]
async fn auto_reply_is_marked_auto_submitted() {
    let gw = Gateway::start("schema_auto_reply").await;
    let env = deliver(
        &gw,
        mail(&[b"From: ann@example.com\n\
            To: support@shop.test\n\
            Subject: Out of office\n\
            Auto-Submitted: auto-replied\n\
            \n\
            I am away until Monday.\n"]),
        &[],
    )
    .await;
    assert_eq!(
        env["abuse"]["auto_submitted"], true,
        "Auto-Submitted: auto-replied"
    );
}

#[tokio::test]
async fn bounce_with_empty_envelope_sender_is_auto_submitted() {
    let gw = Gateway::start("schema_bounce").await;
    let env = deliver(
        &gw,
        mail(&[
            b"From: Mail Delivery System <MAILER-DAEMON@mx.example.com>\n\
            To: support@shop.test\n\
            Subject: Undelivered Mail Returned to Sender\n\
            \n\
            This is the mail system at host mx.example.com.\n",
        ]),
        &[
            ("x-intake-envelope-sender", "<>"),
            ("x-intake-envelope-recipient", "support@shop.test"),
        ],
    )
    .await;
    assert_eq!(
        env["source"]["sender"], "",
        "the bounce's empty sender is recorded as empty"
    );
    assert_eq!(
        env["abuse"]["auto_submitted"], true,
        "an empty envelope sender is a bounce"
    );
}

#[tokio::test]
async fn delivery_status_report_is_auto_submitted() {
    let gw = Gateway::start("schema_dsn").await;
    let env = deliver(
        &gw,
        mail(&[b"From: MAILER-DAEMON@mx.example.com\n\
            To: support@shop.test\n\
            Subject: Delivery Status Notification (Failure)\n\
            MIME-Version: 1.0\n\
            Content-Type: multipart/report; report-type=delivery-status; boundary=\"r\"\n\
            \n\
            --r\n\
            Content-Type: text/plain\n\
            \n\
            Delivery to ann@example.com failed.\n\
            --r\n\
            Content-Type: message/delivery-status\n\
            \n\
            Reporting-MTA: dns; mx.example.com\n\
            \n\
            Final-Recipient: rfc822; ann@example.com\n\
            Action: failed\n\
            Status: 5.1.1\n\
            --r--\n"]),
        &[("x-intake-envelope-sender", "postmaster@mx.example.com")],
    )
    .await;
    assert_eq!(
        env["abuse"]["auto_submitted"], true,
        "multipart/report is a machine"
    );
}

#[tokio::test]
async fn plus_addressed_recipient_gives_the_mailbox_hash() {
    let gw = Gateway::start("schema_mailbox_hash").await;
    let env = deliver(
        &gw,
        mail(&[b"From: ann@example.com\n\
            To: support@shop.test\n\
            Subject: About my order\n\
            \n\
            Any news?\n"]),
        &[
            ("x-intake-envelope-sender", "ann@example.com"),
            (
                "x-intake-envelope-recipient",
                "support+order-1234@shop.test",
            ),
        ],
    )
    .await;
    assert_eq!(env["customer"]["mailbox_hash"], "order-1234");
    assert_eq!(
        env["source"]["recipients"],
        json!(["support+order-1234@shop.test"])
    );
    assert_eq!(env["source"]["sender"], "ann@example.com");
}

#[tokio::test]
async fn forwarded_mail_and_encoded_file_names_become_attachments() {
    let gw = Gateway::start("schema_forward_filenames").await;
    let env = deliver(
        &gw,
        mail(&[b"From: ann@example.com\n\
            To: support@shop.test\n\
            Subject: Fwd: invoice\n\
            MIME-Version: 1.0\n\
            Content-Type: multipart/mixed; boundary=\"b\"\n\
            \n\
            --b\n\
            Content-Type: text/plain\n\
            \n\
            See the forwarded mail and both invoices.\n\
            --b\n\
            Content-Type: message/rfc822\n\
            \n\
            From: billing@example.com\n\
            Subject: Your invoice\n\
            \n\
            Inner body.\n\
            --b\n\
            Content-Type: application/pdf\n\
            Content-Disposition: attachment; filename*=UTF-8''Rechnung%20%E2%82%AC.pdf\n\
            \n\
            %PDF-1\n\
            --b\n\
            Content-Type: application/pdf; name=\"=?UTF-8?Q?Gr=C3=BC=C3=9Fe.pdf?=\"\n\
            Content-Disposition: attachment\n\
            \n\
            %PDF-2\n\
            --b--\n"]),
        &[],
    )
    .await;
    let attachments = env["attachments"].as_array().expect("attachments list");
    let content_types: Vec<&str> = attachments
        .iter()
        .map(|a| a["content_type"].as_str().unwrap())
        .collect();
    assert_eq!(
        content_types,
        ["message/rfc822", "application/pdf", "application/pdf"],
        "the forwarded mail and both files, in order"
    );
    let forwarded = base64::engine::general_purpose::STANDARD
        .decode(attachments[0]["content_base64"].as_str().unwrap())
        .unwrap();
    assert!(
        String::from_utf8_lossy(&forwarded).contains("Inner body."),
        "the forwarded mail is attached whole"
    );
    assert_eq!(
        attachments[1]["filename"], "Rechnung €.pdf",
        "RFC 2231 file name decoded"
    );
    assert_eq!(
        attachments[2]["filename"], "Grüße.pdf",
        "RFC 2047 file name decoded"
    );
    assert_eq!(
        text_of(&env, "text").trim(),
        "See the forwarded mail and both invoices.",
        "the forwarded mail's body is not mixed into the text"
    );
}

/// `headers` values are "decoded (RFC 2047) and unfolded" (src/envelope.rs),
/// for address headers as much as for Subject.
#[tokio::test]
async fn address_header_values_are_rfc2047_decoded() {
    let gw = Gateway::start("schema_header_values_decoded").await;
    let env = deliver(
        &gw,
        mail(&[
            b"From: =?ISO-8859-1?Q?J=F6rg_M=FCller?= <joerg@example.de>\n\
            To: =?UTF-8?Q?Kundenservice_M=C3=BCnchen?= <support@shop.test>\n\
            Subject: hallo\n\
            \n\
            Bitte um Antwort.\n",
        ]),
        &[],
    )
    .await;
    let value_of = |name: &str| {
        env["headers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["name"] == name)
            .unwrap_or_else(|| panic!("{name} header listed"))["value"]
            .clone()
    };
    assert_eq!(
        value_of("From"),
        "Jörg Müller <joerg@example.de>",
        "From value decoded"
    );
    assert_eq!(
        value_of("To"),
        "Kundenservice München <support@shop.test>",
        "To value decoded"
    );
}

/// A header's value in `headers` has one shape whatever mail-parser made
/// of it: In-Reply-To with one id must look like In-Reply-To with two.
#[tokio::test]
async fn message_id_header_values_keep_their_angle_brackets() {
    let gw = Gateway::start("schema_header_ids").await;
    let env = deliver(
        &gw,
        mail(&[b"From: ann@example.com\n\
            Subject: Re: order\n\
            Message-ID: <reply-2@example.com>\n\
            In-Reply-To: <ticket-1@shop.test>\n\
            References: <order-1234@shop.test> <ticket-1@shop.test>\n\
            \n\
            ok\n"]),
        &[],
    )
    .await;
    let headers: Vec<(String, String)> = env["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["name"].as_str().unwrap().to_string(),
                h["value"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let value_of = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("{name} header listed: {headers:?}"))
    };
    assert_eq!(
        value_of("References"),
        "<order-1234@shop.test> <ticket-1@shop.test>",
        "two ids keep their brackets"
    );
    assert_eq!(
        value_of("In-Reply-To"),
        "<ticket-1@shop.test>",
        "one id keeps its brackets too"
    );
    assert_eq!(
        value_of("Message-ID"),
        "<reply-2@example.com>",
        "Message-ID as written"
    );
}

/// `mailbox_hash` is "the plus-address token of the recipient" (src/envelope.rs):
/// when the mail server named the recipient and it has no token, a
/// third party's plus address in Cc is not the shop mailbox's hash.
#[tokio::test]
async fn mailbox_hash_comes_from_the_recipient_not_a_cc() {
    let gw = Gateway::start("schema_mailbox_hash_cc").await;
    let env = deliver(
        &gw,
        mail(&[b"From: ann@example.com\n\
            To: support@shop.test\n\
            Cc: ann+shopping@example.com\n\
            Subject: About my order\n\
            \n\
            Any news?\n"]),
        &[("x-intake-envelope-recipient", "support@shop.test")],
    )
    .await;
    assert!(
        env["customer"].get("mailbox_hash").is_none(),
        "support@shop.test has no token, yet mailbox_hash is {}",
        env["customer"]["mailbox_hash"]
    );
}
