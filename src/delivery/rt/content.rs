//! What RT is given for an item: the ticket (or correspondence) JSON of
//! REST 2.0, and the text of the comments that tell a ticket about a
//! flood or about more recipients.
//!
//! The agent reads the reply text (`stripped_text`) as the message; the
//! whole text, the HTML and the signature are kept beside it as
//! attachments (`full-message.txt`, `message.html`, `signature.txt`), so
//! nothing the extraction cut is lost to the agent. A form's other fields
//! are listed under its message.

use base64::Engine as _;
use serde_json::{json, Value};

use crate::envelope::{Channel, Envelope, FieldValue};

/// The body of `POST /ticket`.
pub fn ticket(envelope: &Envelope, queue: &str, receipt_field: &str) -> Value {
    let mut ticket = json!({
        "Queue": queue,
        "Subject": subject(envelope),
        "Content": content(envelope),
        "ContentType": "text/plain",
        "Attachments": attachments(envelope),
        "CustomFields": { receipt_field: [envelope.id.to_string()] },
    });
    if let Some(email) = &envelope.customer.email {
        ticket["Requestor"] = json!(email);
    }
    ticket
}

/// The body of `POST /ticket/N/correspond`: the item's text and files, and
/// its receipt added to those the ticket holds.
pub fn correspondence(envelope: &Envelope, receipt_field: &str, receipts: &[String]) -> Value {
    let mut all: Vec<String> = receipts.to_vec();
    all.push(envelope.id.to_string());
    json!({
        "Subject": subject(envelope),
        "Content": content(envelope),
        "ContentType": "text/plain",
        "Attachments": attachments(envelope),
        "CustomFields": { receipt_field: all },
    })
}

/// The body of `POST /ticket/N/comment`.
pub fn comment(text: &str) -> Value {
    json!({ "Content": text, "ContentType": "text/plain" })
}

fn subject(envelope: &Envelope) -> String {
    match envelope.subject.as_deref().map(str::trim) {
        Some(subject) if !subject.is_empty() => subject.to_string(),
        _ => "(no subject)".to_string(),
    }
}

/// The message as the agent reads it.
fn content(envelope: &Envelope) -> String {
    let reply = envelope
        .stripped_text
        .as_deref()
        .filter(|t| !t.trim().is_empty())
        .or(envelope.text.as_deref())
        .unwrap_or("")
        .trim_end();
    let mut content = if reply.is_empty() {
        "(no text)".to_string()
    } else {
        reply.to_string()
    };
    if envelope.channel == Channel::Form {
        let listed: Vec<String> = envelope
            .fields
            .iter()
            .filter(|(_, value)| value.first().is_some_and(|v| !v.is_empty()))
            .filter(|(_, value)| {
                // The message itself is the content already.
                value.first().map(str::trim_end) != Some(reply)
            })
            .map(|(name, value)| format!("{name}: {}", field_text(value)))
            .collect();
        if !listed.is_empty() {
            content.push_str("\n\n");
            content.push_str(&listed.join("\n"));
        }
    }
    content
}

fn field_text(value: &FieldValue) -> String {
    match value {
        FieldValue::One(v) => v.clone(),
        FieldValue::Many(vs) => vs.join(", "),
    }
}

/// The item's files, then what the reply extraction kept apart.
fn attachments(envelope: &Envelope) -> Vec<Value> {
    let encode = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let mut files: Vec<Value> = envelope
        .attachments
        .iter()
        // RT refuses an attachment without content; an empty file says
        // nothing to the agent.
        .filter(|a| !a.content_base64.bytes().is_empty())
        .enumerate()
        .map(|(n, a)| {
            json!({
                "FileName": a.filename.clone().unwrap_or_else(|| format!("attachment-{}", n + 1)),
                "FileType": a.content_type,
                "FileContent": encode(a.content_base64.bytes()),
            })
        })
        .collect();
    let text = envelope.text.as_deref().unwrap_or("");
    let stripped = envelope.stripped_text.as_deref().unwrap_or("");
    if !text.trim().is_empty() && text.trim_end() != stripped.trim_end() {
        files.push(json!({
            "FileName": "full-message.txt",
            "FileType": "text/plain",
            "FileContent": encode(text.as_bytes()),
        }));
    }
    if let Some(signature) = envelope.stripped_signature.as_deref() {
        if !signature.trim().is_empty() {
            files.push(json!({
                "FileName": "signature.txt",
                "FileType": "text/plain",
                "FileContent": encode(signature.as_bytes()),
            }));
        }
    }
    if let Some(html) = envelope.html.as_deref().filter(|h| !h.trim().is_empty()) {
        files.push(json!({
            "FileName": "message.html",
            "FileType": "text/html",
            "FileContent": encode(html.as_bytes()),
        }));
    }
    files
}

/// The comment for a flood folded into a ticket: how many more came since
/// the ticket was last told.
pub fn fold_comment(more: u64, total: u64, since: &str, rule: &str, latest: &str) -> String {
    let messages = if more == 1 { "message" } else { "messages" };
    format!(
        "{more} more {messages} like this from the customer since {since} \
         ({total} folded into this ticket in all, by rule `{rule}`; the latest has receipt {latest}). \
         intake kept them out of the queue; each is in its audit log."
    )
}

/// The comment for a mail that also went to more of the shop's addresses.
pub fn recipients_comment(recipients: &[String], latest: &str) -> String {
    format!(
        "The same mail also went to {} (receipt {latest}); intake delivered it once.",
        recipients.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(json: serde_json::Value) -> Envelope {
        let mut base = json!({
            "version": 1, "id": "01JF0000000000000000000000",
            "received_at": "2026-12-02T10:00:00Z", "channel": "email",
            "source": {"type": "lmtp", "sender": "ann@example.com", "recipients": ["support@shop.test"], "ip": "127.0.0.1"},
            "customer": {"email": "ann@example.com", "name": "Ann"},
            "scan": {"status": "clean"}, "abuse": {"auto_submitted": false}
        });
        for (k, v) in json.as_object().unwrap() {
            base[k] = v.clone();
        }
        serde_json::from_value(base).expect("an envelope")
    }

    #[test]
    fn rt_ticket_carries_the_reply_text_and_keeps_the_rest_as_files() {
        let envelope = envelope(json!({
            "subject": "¿Dónde está mi pedido?",
            "text": "Hola, ¿y mi pedido?\n\nEl lun escribió:\n> viejo",
            "stripped_text": "Hola, ¿y mi pedido?",
            "stripped_signature": "Ana\nTel 600",
            "html": "<p>Hola</p>",
            "attachments": [{"filename": "factura.pdf", "content_type": "application/pdf",
                "size": 3, "sha256": "00", "disposition": "attachment", "content_base64": "JVBE"}]
        }));
        let t = ticket(&envelope, "General", "Intake Receipt");
        assert_eq!(t["Queue"], "General");
        assert_eq!(t["Requestor"], "ann@example.com");
        assert_eq!(t["Subject"], "¿Dónde está mi pedido?");
        assert_eq!(t["Content"], "Hola, ¿y mi pedido?");
        assert_eq!(
            t["CustomFields"]["Intake Receipt"],
            json!(["01JF0000000000000000000000"])
        );
        let names: Vec<&str> = t["Attachments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["FileName"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "factura.pdf",
                "full-message.txt",
                "signature.txt",
                "message.html"
            ]
        );
        assert_eq!(t["Attachments"][0]["FileContent"], "JVBE");
    }

    #[test]
    fn rt_form_ticket_lists_the_other_fields_under_the_message() {
        let envelope = envelope(json!({
            "channel": "form",
            "text": "Where is my order?", "stripped_text": "Where is my order?",
            "fields": {"message": "Where is my order?", "order": "A-1001", "email": "ann@example.com", "empty": ""}
        }));
        let t = ticket(&envelope, "General", "Intake Receipt");
        assert_eq!(
            t["Content"],
            "Where is my order?\n\nemail: ann@example.com\norder: A-1001"
        );
        assert_eq!(t["Subject"], "(no subject)");
        assert_eq!(t["Attachments"], json!([]));
    }

    #[test]
    fn rt_correspondence_adds_its_receipt_to_the_tickets() {
        let envelope = envelope(json!({"text": "thanks"}));
        let c = correspondence(&envelope, "Intake Receipt", &["01OLD".to_string()]);
        assert_eq!(
            c["CustomFields"]["Intake Receipt"],
            json!(["01OLD", "01JF0000000000000000000000"])
        );
        assert_eq!(c["Content"], "thanks");
    }
}
