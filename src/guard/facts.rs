//! What the rules look at, read once from a message: channel, normalized
//! sender, client address, form, receiving mailboxes, headers. Rules and
//! keys never parse the envelope themselves.

use std::net::IpAddr;

use crate::envelope::{Channel, Envelope, Source};
use crate::guard::normalize;

#[derive(Debug, Clone)]
pub struct Facts<'a> {
    pub channel: Channel,
    /// Normalized customer address: the form's email field, or the mail's
    /// `From` (then `Reply-To`, then the envelope sender).
    pub sender: Option<String>,
    pub ip: Option<IpAddr>,
    pub form: Option<&'a str>,
    /// Recipient addresses, or the IMAP account and folder.
    pub mailboxes: Vec<&'a str>,
    pub auto_submitted: bool,
    pub envelope: &'a Envelope,
}

impl<'a> Facts<'a> {
    pub fn of(envelope: &'a Envelope) -> Facts<'a> {
        let (ip, form, mailboxes, envelope_sender): (Option<&str>, _, Vec<&str>, Option<&str>) =
            match &envelope.source {
                Source::Form { form, ip, .. } => (Some(ip), Some(form.as_str()), vec![], None),
                Source::Mailgate {
                    sender,
                    recipients,
                    ip,
                } => (
                    Some(ip),
                    None,
                    recipients.iter().map(String::as_str).collect(),
                    sender.as_deref(),
                ),
                Source::Lmtp {
                    sender,
                    recipients,
                    ip,
                } => (
                    Some(ip),
                    None,
                    recipients.iter().map(String::as_str).collect(),
                    Some(sender.as_str()),
                ),
                Source::Imap {
                    account, mailbox, ..
                } => (None, None, vec![account.as_str(), mailbox.as_str()], None),
            };
        let mailboxes = if mailboxes.is_empty() {
            envelope.to.iter().map(|a| a.email.as_str()).collect()
        } else {
            mailboxes
        };
        let sender = envelope
            .customer
            .email
            .as_deref()
            .into_iter()
            .chain(envelope.from.iter().map(|a| a.email.as_str()))
            .chain(envelope.reply_to.iter().map(|a| a.email.as_str()))
            .chain(envelope_sender)
            .find_map(normalize::address);
        Facts {
            channel: envelope.channel,
            sender,
            ip: ip.and_then(|ip| ip.trim().parse().ok()),
            form,
            mailboxes,
            auto_submitted: envelope.abuse.auto_submitted,
            envelope,
        }
    }

    pub fn sender_domain(&self) -> Option<&str> {
        self.sender.as_deref().and_then(normalize::domain)
    }

    /// Values of one header, case-insensitive name.
    pub fn header<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'a str> + 's {
        self.envelope
            .headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str())
    }
}
