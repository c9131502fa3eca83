//! The acknowledgement mail itself, made once when it is queued and kept
//! whole in `<prefix>:outbox`, so that every resend (after a relay
//! failure, a crash, a take-over by another replica) is byte for byte the
//! same message, with the same `Message-ID`, to the customer's client.
//!
//! What it carries (RFC 3834 section 3): `Auto-Submitted: auto-replied`,
//! `In-Reply-To` and `References` of the customer's message so it
//! threads under it, our `X-Loop` (mail that comes back with it is never
//! answered), `X-Auto-Response-Suppress: All` so that Exchange's
//! out-of-office does not answer us, and the null envelope sender `<>`,
//! so that a bounce of the acknowledgement answers nobody.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::SystemTime;

use lettre::message::header::{HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart, SinglePart};

use super::decide::Plan;
use super::template::{Escape, Templates};
use crate::envelope::{Envelope, Source};

/// A made acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Composed {
    /// The customer's address: the only `RCPT TO`.
    pub to: String,
    /// Without angle brackets.
    pub message_id: String,
    /// The whole RFC 5322 message.
    pub mail: Vec<u8>,
}

/// The Message-ID of the acknowledgement of `receipt`: the same for every
/// attempt, in the domain of `from`.
pub fn message_id(receipt: &str, from: &str) -> String {
    let domain = from.rsplit_once('@').map_or("intake.invalid", |(_, d)| d);
    format!("ack.{receipt}@{domain}")
}

/// The variables of [`super::template::VARIABLES`] for one item.
pub fn variables<'a>(
    envelope: &Envelope,
    plan: &Plan,
    ticket: Option<String>,
) -> BTreeMap<&'a str, String> {
    let mut vars = BTreeMap::new();
    vars.insert("receipt", envelope.id.to_string());
    // A form's envelope subject is made up ("Form contact") unless the
    // customer typed one into a `subject` field: only theirs is quoted.
    let subject = match &envelope.source {
        Source::Form { .. } => match envelope.fields.get("subject") {
            Some(crate::envelope::FieldValue::One(typed)) => Some(typed.as_str()),
            _ => None,
        },
        _ => envelope.subject.as_deref(),
    };
    vars.insert("subject", subject.map(one_line).unwrap_or_default());
    vars.insert(
        "name",
        plan.name.as_deref().map(one_line).unwrap_or_default(),
    );
    vars.insert("email", plan.to.clone());
    vars.insert("ticket", ticket.unwrap_or_default());
    vars.insert(
        "received_at",
        envelope
            .received_at
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
    );
    if let Source::Form { form, .. } = &envelope.source {
        vars.insert("form", form.clone());
    }
    vars
}

/// Makes the acknowledgement of `envelope`.
pub fn compose(
    from: &str,
    x_loop: &str,
    envelope: &Envelope,
    plan: &Plan,
    templates: &Templates,
    ticket: Option<String>,
) -> Result<Composed, String> {
    let vars = variables(envelope, plan, ticket);
    let from_box = Mailbox::from_str(from.trim()).map_err(|e| format!("acknowledge.from: {e}"))?;
    let to_box = Mailbox::new(
        plan.name.as_deref().map(one_line).filter(|n| !n.is_empty()),
        plan.to
            .parse()
            .map_err(|e| format!("the customer's address `{}`: {e}", plan.to))?,
    );
    let id = message_id(&envelope.id.to_string(), from_box.email.as_ref());
    let subject = one_line(&templates.subject.render(&vars, Escape::None));
    let mut builder = lettre::Message::builder()
        .from(from_box)
        .to(to_box)
        .subject(subject)
        .date(SystemTime::now())
        .message_id(Some(format!("<{id}>")))
        .raw_header(raw("Auto-Submitted", "auto-replied"))
        .raw_header(raw("X-Loop", x_loop))
        .raw_header(raw("X-Auto-Response-Suppress", "All"))
        .raw_header(raw("X-Intake-Receipt", &envelope.id.to_string()));
    if let Some(theirs) = envelope.message_id.as_deref().filter(|m| !m.is_empty()) {
        let theirs = angle(theirs);
        builder = builder.in_reply_to(theirs.clone());
        let mut references: Vec<String> = envelope.references.iter().map(|r| angle(r)).collect();
        if !references.contains(&theirs) {
            references.push(theirs);
        }
        builder = builder.references(references.join(" "));
    }
    let text = templates.text.render(&vars, Escape::None);
    let message = match &templates.html {
        Some(html) => builder.multipart(MultiPart::alternative_plain_html(
            text,
            html.render(&vars, Escape::Html),
        )),
        None => builder.singlepart(SinglePart::plain(text)),
    }
    .map_err(|e| format!("the acknowledgement cannot be made: {e}"))?;
    Ok(Composed {
        to: plan.to.clone(),
        message_id: id,
        mail: message.formatted(),
    })
}

fn raw(name: &'static str, value: &str) -> HeaderValue {
    HeaderValue::new(HeaderName::new_from_ascii_str(name), one_line(value))
}

fn angle(id: &str) -> String {
    format!("<{}>", id.trim().trim_matches(['<', '>']))
}

/// A header-safe single line: control characters (CR, LF) become spaces.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_string()
}
