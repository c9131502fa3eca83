//! A decoded form post to envelope (channel `form`). The form's declaration
//! says which fields hold the customer's address, name and message; reserved
//! fields (`_replyto`, `_subject`, `_next`, `_gotcha`, ...) steer the
//! gateway and are taken out of `fields`.

use super::filename::{self, FileName};
use super::{sha256_hex, ScanTarget};
use crate::envelope::{Address, Attachment, Base64, Channel, Disposition, Envelope};
use crate::submission::FormPost;

/// Which fields of a form's posts hold what: the part of a form's
/// declaration (`[[form]]`) the parser reads.
#[derive(Debug, Clone)]
pub struct FormFields {
    /// The form's id, for the default subject.
    pub id: String,
    /// The field holding the customer's address (`_replyto` without it).
    pub email_field: String,
    /// The field holding the customer's name.
    pub name_field: String,
    /// The field holding the message text (all fields without it).
    pub message_field: String,
    /// The subject when the post has no `_subject`.
    pub subject: Option<String>,
}

/// Fills `envelope` from a form post and returns the uploads to scan.
pub(super) fn fill(envelope: &mut Envelope, post: FormPost, form: &FormFields) -> Vec<ScanTarget> {
    envelope.channel = Channel::Form;

    let email = post
        .field(&form.email_field)
        .or_else(|| post.field("_replyto"))
        .map(str::to_string);
    // Name and subject become mail headers downstream (a reply's `To:`
    // display name, its `Subject:`): they are made single-line here so a
    // posted `\r\nBcc: ...` can never start a header of its own.
    let name = post.field(&form.name_field).map(single_line);
    envelope.customer.email = email.clone();
    envelope.customer.name = name.clone();
    if let Some(email) = email {
        let address = Address { email, name };
        envelope.from = Some(address.clone());
        envelope.reply_to = vec![address];
    }
    envelope.subject = Some(
        post.field("_subject")
            .map(single_line)
            .or_else(|| form.subject.clone())
            .unwrap_or_else(|| format!("Form {}", form.id)),
    );
    envelope.text = Some(match post.field(&form.message_field) {
        Some(message) => message.to_string(),
        None => render_fields(&post),
    });
    envelope.stripped_text = envelope.text.clone();

    let mut targets = Vec::with_capacity(post.files.len());
    for upload in post.files {
        // The desk and the scanner's report see the safe name; the name as
        // sent is kept beside it when it differs.
        let names = FileName::from_sent(upload.filename.as_deref());
        let scan_name = names
            .filename
            .clone()
            .unwrap_or_else(|| filename::safe_filename(&upload.field));
        envelope.attachments.push(Attachment {
            filename: names.filename,
            original_filename: names.original,
            content_type: upload.content_type.clone(),
            size: upload.data.len() as u64,
            sha256: sha256_hex(&upload.data),
            content_id: None,
            disposition: Disposition::Attachment,
            content_base64: Base64(upload.data.clone()),
        });
        targets.push(ScanTarget {
            name: scan_name,
            data: upload.data,
            whole_message: false,
        });
    }

    envelope.fields = post
        .fields
        .into_iter()
        .filter(|(name, _)| !name.starts_with('_'))
        .collect();
    targets
}

/// `value` on one line: every run of control characters (CR, LF, tab,
/// NUL, NEL, ...) and of the Unicode line and paragraph separators
/// (U+2028, U+2029, which some clients break lines at) becomes one
/// space, and the ends are trimmed.
pub(crate) fn single_line(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut in_run = false;
    for c in value.chars() {
        if c.is_control() || c == '\u{2028}' || c == '\u{2029}' {
            if !in_run {
                out.push(' ');
            }
            in_run = true;
        } else {
            out.push(c);
            in_run = false;
        }
    }
    out.trim().to_string()
}

/// A readable text body for forms without a message field.
fn render_fields(post: &FormPost) -> String {
    let mut out = String::new();
    for (name, value) in post.fields.iter().filter(|(n, _)| !n.starts_with('_')) {
        let value = match value {
            crate::envelope::FieldValue::One(v) => v.clone(),
            crate::envelope::FieldValue::Many(vs) => vs.join(", "),
        };
        out.push_str(&format!("{name}: {value}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::single_line;

    #[test]
    fn single_line_turns_line_breaks_into_one_space() {
        assert_eq!(
            single_line("Order\r\nBcc: victim@example.com"),
            "Order Bcc: victim@example.com"
        );
        assert_eq!(single_line("Ann\n\n\tExample\r"), "Ann Example");
        assert_eq!(
            single_line("Zoë Ünïcode"),
            "Zoë Ünïcode",
            "non-control text kept"
        );
        assert_eq!(single_line("a\u{0}b"), "a b");
        assert_eq!(single_line("a\u{2028}b\u{2029}\u{85}c"), "a b c");
    }
}
