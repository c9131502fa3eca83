//! Card-number redaction (`[privacy] redact_cards`) through a real gateway
//! and the dev Redis: a card number a customer typed into any field of a
//! form or any part of a mail never reaches a stream, whole or in `raw`;
//! its last four digits stay for the desk, the item is tagged, and numbers
//! that are not cards (order numbers, longer digit runs) are left alone.

mod support;

use base64::Engine as _;
use reqwest::header;
use serde_json::Value;
use support::{client, Entry, Gateway, TOKEN};

/// Test card numbers (Luhn-valid, published by the card schemes for tests).
const VISA: &str = "4111111111111111";
const MASTERCARD: &str = "5555555555554444";
const AMEX: &str = "378282246310005";
const DISCOVER: &str = "6011111111111117";
const VISA_2: &str = "4012888888881881";
const JCB: &str = "3530111333300000";
/// A 16-digit order number that fails the Luhn check: not a card.
const ORDER: &str = "1234567890123456";

/// `4111111111111111` written in groups of four joined by `sep`.
fn grouped(card: &str, sep: char) -> String {
    card.as_bytes()
        .chunks(4)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect::<Vec<_>>()
        .join(&sep.to_string())
}

/// Everything the stored entry holds, as text: every field, plus every
/// base64 value of the envelope (raw, attachments) decoded, with spaces and
/// dashes removed so a number is found however it was written.
fn stored_digits(entry: &Entry) -> String {
    let mut all = String::new();
    for value in entry.fields.values() {
        all.push_str(value);
        all.push('\n');
    }
    let envelope = entry.envelope();
    let mut blobs = Vec::new();
    if let Some(raw) = envelope["raw"].as_str() {
        blobs.push(raw.to_string());
    }
    for attachment in envelope["attachments"].as_array().into_iter().flatten() {
        if let Some(b) = attachment["content_base64"].as_str() {
            blobs.push(b.to_string());
        }
    }
    for blob in blobs {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(blob)
            .expect("base64 fields decode");
        all.push_str(&String::from_utf8_lossy(&bytes));
    }
    all.replace([' ', '-'], "")
}

fn assert_no_card(entry: &Entry, cards: &[&str]) {
    let stored = stored_digits(entry);
    for card in cards {
        assert!(
            !stored.contains(card),
            "card {card} must not be stored anywhere in the entry: {stored}"
        );
    }
}

fn tags(envelope: &Value) -> Vec<String> {
    envelope["abuse"]["tags"]
        .as_array()
        .expect("abuse.tags")
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn card_numbers_in_every_form_field_are_masked_keeping_the_last_four() {
    let gw = Gateway::start("card_form").await;
    let message = format!(
        "Please charge {} again. Order {ORDER}, parcel 99{VISA}77.",
        grouped(MASTERCARD, ' ')
    );
    let response = client()
        .post(gw.form_url("contact"))
        .form(&[
            ("email", "ann@example.com"),
            ("name", "Ann Example"),
            ("message", message.as_str()),
            ("payment", &grouped(VISA_2, '-')),
            ("note", AMEX),
            ("note", &format!("second card {DISCOVER}")),
            ("_subject", &format!("Refund to card {JCB}")),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202, "a message with a card is accepted");

    let desk = gw.entries("desk").await;
    assert_eq!(desk.len(), 1, "exactly one desk entry");
    assert_no_card(&desk[0], &[MASTERCARD, VISA_2, AMEX, DISCOVER, JCB]);
    let env = desk[0].envelope();
    assert_eq!(env["subject"], "Refund to card ************0000");
    assert_eq!(
        env["fields"]["payment"], "****-****-****-1881",
        "dashes kept, last four kept"
    );
    assert_eq!(
        env["fields"]["note"],
        serde_json::json!(["***********0005", "second card ************1117"]),
        "every value of a repeated field is masked"
    );
    let text = env["text"].as_str().expect("text");
    assert!(
        text.contains("charge **** **** **** 4444 again"),
        "spaces kept, last four kept: {text}"
    );
    assert!(
        text.contains(&format!("Order {ORDER},")),
        "a 16-digit order number that fails Luhn is not masked: {text}"
    );
    assert!(
        text.contains(&format!("parcel 99{VISA}77.")),
        "a card number inside a longer digit run is not partially masked: {text}"
    );
    assert!(
        tags(&env).contains(&"card-redacted".to_string()),
        "the item is tagged: {:?}",
        tags(&env)
    );
    gw.stop().await;
}

#[tokio::test]
async fn card_numbers_in_a_mail_are_masked_and_its_raw_copy_is_dropped() {
    let gw = Gateway::start("card_mail").await;
    let raw = format!(
        "From: Ann Example <ann@example.com>\r\n\
To: support@shop.test\r\n\
Subject: card {VISA}\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/alternative; boundary=\"b1\"\r\n\
\r\n\
--b1\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
\r\n\
My card is {spaced}, order {ORDER}.\r\n\
--b1\r\n\
Content-Type: text/html; charset=utf-8\r\n\
\r\n\
<p>My card is <b>{dashed}</b>, order {ORDER}.</p>\r\n\
--b1--\r\n",
        spaced = grouped(MASTERCARD, ' '),
        dashed = grouped(VISA_2, '-'),
    );
    let response = client()
        .post(format!("{}/v1/messages", gw.url))
        .bearer_auth(TOKEN)
        .header(header::CONTENT_TYPE, "message/rfc822")
        .body(raw)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202, "a mail with a card is accepted");

    let desk = gw.entries("desk").await;
    assert_eq!(desk.len(), 1, "exactly one desk entry");
    assert_no_card(&desk[0], &[VISA, MASTERCARD, VISA_2]);
    let env = desk[0].envelope();
    assert!(
        env.get("raw").is_none(),
        "messages.keep_raw is on, but raw held the card number: dropped"
    );
    assert_eq!(env["subject"], "card ************1111");
    let subject_header = env["headers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"].as_str().unwrap().eq_ignore_ascii_case("subject"))
        .expect("Subject header listed");
    assert_eq!(subject_header["value"], "card ************1111");
    let text = env["text"].as_str().expect("text");
    assert!(text.contains("**** **** **** 4444"), "text: {text}");
    assert!(text.contains(ORDER), "order number kept: {text}");
    let html = env["html"].as_str().expect("html");
    assert!(html.contains("<b>****-****-****-1881</b>"), "html: {html}");
    let tags = tags(&env);
    assert!(
        tags.contains(&"card-redacted".to_string()) && tags.contains(&"raw-dropped".to_string()),
        "tagged card-redacted and raw-dropped: {tags:?}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn a_mail_without_a_card_keeps_its_raw_copy_and_no_tag() {
    let gw = Gateway::start("card_none").await;
    let raw = format!(
        "From: ann@example.com\r\nSubject: order {ORDER}\r\n\r\nWhere is order {ORDER}?\r\n"
    );
    let response = client()
        .post(format!("{}/v1/messages", gw.url))
        .bearer_auth(TOKEN)
        .header(header::CONTENT_TYPE, "message/rfc822")
        .body(raw.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let env = gw.entries("desk").await[0].envelope();
    let stored = base64::engine::general_purpose::STANDARD
        .decode(env["raw"].as_str().expect("raw kept"))
        .unwrap();
    assert_eq!(stored, raw.as_bytes(), "raw is the exact message");
    assert!(
        !tags(&env).contains(&"card-redacted".to_string()),
        "no card, no tag: {:?}",
        tags(&env)
    );
    gw.stop().await;
}

#[tokio::test]
async fn redaction_switched_off_stores_the_number_as_written() {
    let gw = Gateway::start_with(
        "card_off",
        &support::redis_url(),
        "[privacy]\nredact_cards = false\n",
    )
    .await;
    let response = client()
        .post(gw.form_url("contact"))
        .form(&[("email", "ann@example.com"), ("message", VISA)])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let env = gw.entries("desk").await[0].envelope();
    assert_eq!(env["text"], VISA, "redact_cards = false: stored as posted");
    assert!(!tags(&env).contains(&"card-redacted".to_string()));
    gw.stop().await;
}
