//! What the rules look at, read once from a message: channel, every
//! identity the item carries (normalized), client address, form,
//! receiving mailboxes, headers. Rules and keys never parse the envelope
//! themselves.
//!
//! Identities are bounded: at most [`MAX_IDENTITIES`] distinct ones are
//! kept, from at most [`MAX_CANDIDATES`] addresses read; past either the
//! item is marked [`Facts::too_many_identities`], so a `From:` with 500
//! decoys costs no more work than one with 16.

use std::net::IpAddr;

use ipnet::IpNet;
use mail_parser::parsers::MessageStream;
use mail_parser::HeaderValue;

use crate::envelope::{Auth, Channel, Envelope, Source};
use crate::guard::normalize;

/// Most distinct identities kept for one item.
pub const MAX_IDENTITIES: usize = 16;

/// Most addresses read for one item (the same address read twice, from
/// the envelope and its header, counts twice).
pub const MAX_CANDIDATES: usize = 64;

/// The network an unauthenticated mail's history is kept by: a /24 or a
/// /48, a mail service's outbound block, not one address of it.
const CUSTOMER_IPV4_PREFIX: u8 = 24;
const CUSTOMER_IPV6_PREFIX: u8 = 48;

/// The tag an item with more identities than are read gets.
pub const MANY_IDENTITIES_TAG: &str = "many-identities";

/// Where an identity was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The form's email field (or `_replyto`).
    Form,
    /// The envelope's `customer.email` of a mail (its Reply-To, else its
    /// From, else its envelope sender).
    Customer,
    /// A `From:` address.
    From,
    /// A `Reply-To:` address.
    ReplyTo,
    /// The SMTP envelope sender (LMTP `MAIL FROM`, mailgate `-f`,
    /// `X-Intake-Envelope-Sender`), or an IMAP mail's `Return-Path:`.
    EnvelopeSender,
    /// An IMAP mail's `Sender:`.
    Sender,
}

impl Origin {
    pub fn name(self) -> &'static str {
        match self {
            Origin::Form => "form",
            Origin::Customer => "customer",
            Origin::From => "from",
            Origin::ReplyTo => "reply-to",
            Origin::EnvelopeSender => "envelope-sender",
            Origin::Sender => "sender",
        }
    }
}

/// One identity of an item: a distinct normalized address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Normalized for display and allow lists: `ann@exämple.com`
    /// ([`normalize::Normalized::address`]).
    pub address: String,
    /// The bucket key: the confusable skeleton of the address
    /// ([`normalize::Normalized::key`]).
    pub key: String,
    /// Every place it was read, in reading order.
    pub origins: Vec<Origin>,
}

impl Identity {
    /// The domain of [`Identity::address`].
    pub fn domain(&self) -> &str {
        normalize::domain(&self.address).unwrap_or_default()
    }

    /// The domain of [`Identity::key`].
    pub fn key_domain(&self) -> &str {
        normalize::domain(&self.key).unwrap_or_default()
    }

    /// `customer, reply-to`.
    pub fn origins_text(&self) -> String {
        self.origins
            .iter()
            .map(|o| o.name())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[derive(Debug, Clone)]
pub struct Facts<'a> {
    pub channel: Channel,
    /// Every identity the item carries, first the customer's address (the
    /// form's email field, or the mail's `customer.email`), then every
    /// `From:`, every `Reply-To:`, the envelope sender, and for IMAP mail
    /// `Return-Path:` and `Sender:`; distinct by normalized address.
    pub identities: Vec<Identity>,
    /// More identities than were read ([`MAX_IDENTITIES`],
    /// [`MAX_CANDIDATES`]): rules keyed on the sender charge one shared
    /// bucket for all such items besides the identities read, and no
    /// allow list lets such an item through by address.
    pub too_many_identities: bool,
    /// The primary identity's key (the first identity: what the
    /// customer's dedupe history and latest item are kept under).
    pub sender: Option<String>,
    pub ip: Option<IpAddr>,
    pub form: Option<&'a str>,
    /// Recipient addresses, or the IMAP account and folder.
    pub mailboxes: Vec<&'a str>,
    pub auto_submitted: bool,
    /// The sender-authentication verdicts, when `[auth]` checked the mail.
    pub auth: Option<&'a Auth>,
    /// The SMTP client the mail came from (what SPF checked), else the
    /// connection's address: the network a forgery is charged to.
    pub client: Option<IpAddr>,
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
                    ..
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
                    ..
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
        let identities = Identities::of(envelope, envelope_sender);
        let ip: Option<IpAddr> = ip.and_then(|ip| ip.trim().parse().ok());
        let auth = envelope.auth.as_ref();
        let client = auth
            .and_then(|a| a.spf.as_ref())
            .and_then(|s| s.client_address.as_deref())
            .and_then(|a| a.parse().ok())
            .or(ip);
        Facts {
            channel: envelope.channel,
            sender: identities.list.first().map(|i| i.key.clone()),
            identities: identities.list,
            too_many_identities: identities.overflow,
            ip,
            form,
            mailboxes,
            auto_submitted: envelope.abuse.auto_submitted,
            auth,
            client,
            envelope,
        }
    }

    /// Whether the mail was checked and its `From:` did not authenticate:
    /// anyone could have written its sender.
    pub fn unauthenticated(&self) -> bool {
        self.auth.is_some_and(|a| !a.aligned_from)
    }

    /// The client's network at the given prefix lengths; `None` when the
    /// item has no client address (IMAP mail without a trusted
    /// `Received:`).
    pub fn client_network(&self, ipv4_prefix: u8, ipv6_prefix: u8) -> Option<IpNet> {
        let ip = self.client?;
        let len = match ip {
            IpAddr::V4(_) => ipv4_prefix,
            IpAddr::V6(_) => ipv6_prefix,
        };
        IpNet::new(ip, len).ok().map(|n| n.trunc())
    }

    /// The bucket value of an identity for keys that must not let a
    /// forgery share a customer's bucket (`verified_sender`, the dedupe
    /// history, the item a flood folds into): the identity's key, and for
    /// an unauthenticated mail also its client network
    /// (`ann@example.com~203.0.113.0/24`, `~-` without one).
    pub fn verified_key(&self, identity_key: &str, ipv4_prefix: u8, ipv6_prefix: u8) -> String {
        if !self.unauthenticated() {
            return identity_key.to_string();
        }
        match self.client_network(ipv4_prefix, ipv6_prefix) {
            Some(net) => format!("{identity_key}~{net}"),
            None => format!("{identity_key}~-"),
        }
    }

    /// Whose history the item joins: its primary identity (see
    /// [`Facts::verified_key`]), else its client address.
    pub fn customer_key(&self) -> Option<String> {
        match (&self.sender, self.ip) {
            (Some(sender), _) => Some(format!(
                "s:{}",
                self.verified_key(sender, CUSTOMER_IPV4_PREFIX, CUSTOMER_IPV6_PREFIX)
            )),
            (None, Some(ip)) => Some(format!("ip:{ip}")),
            (None, None) => None,
        }
    }

    /// The history key of another identity of the item.
    pub fn other_key(&self, identity_key: &str) -> String {
        format!(
            "s:{}",
            self.verified_key(identity_key, CUSTOMER_IPV4_PREFIX, CUSTOMER_IPV6_PREFIX)
        )
    }

    /// The first identity: the customer as the desk sees them.
    pub fn primary(&self) -> Option<&Identity> {
        self.identities.first()
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

/// Collects the identities of one envelope, within the bounds.
struct Identities {
    list: Vec<Identity>,
    read: usize,
    overflow: bool,
}

impl Identities {
    fn of(envelope: &Envelope, envelope_sender: Option<&str>) -> Identities {
        let mut ids = Identities {
            list: Vec::new(),
            read: 0,
            overflow: false,
        };
        let first = match envelope.channel {
            Channel::Form => Origin::Form,
            Channel::Email => Origin::Customer,
        };
        if let Some(customer) = &envelope.customer.email {
            ids.add(first, customer);
        }
        // The envelope keeps the first `From:` address and the Reply-To
        // list; the headers keep every address of every such header.
        if let Some(from) = &envelope.from {
            ids.add(Origin::From, &from.email);
        }
        ids.add_headers(envelope, "from", Origin::From);
        for reply_to in &envelope.reply_to {
            ids.add(Origin::ReplyTo, &reply_to.email);
        }
        ids.add_headers(envelope, "reply-to", Origin::ReplyTo);
        if let Some(sender) = envelope_sender {
            ids.add(Origin::EnvelopeSender, sender);
        }
        // IMAP mail has no SMTP envelope: what the delivering server
        // recorded of it (Return-Path) and the Sender stand in.
        if matches!(envelope.source, Source::Imap { .. }) {
            ids.add_headers(envelope, "return-path", Origin::EnvelopeSender);
            ids.add_headers(envelope, "sender", Origin::Sender);
        }
        ids
    }

    /// Every address of every header `name`.
    fn add_headers(&mut self, envelope: &Envelope, name: &str, origin: Origin) {
        for header in envelope
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
        {
            if self.overflow {
                return;
            }
            // The stored value is the decoded header (`Name <address>, ...`)
            // or, when it could not be read as addresses, its raw text:
            // mail-parser reads either. The line break ends the value.
            let mut value = String::with_capacity(header.value.len() + 1);
            value.push_str(&header.value);
            value.push('\n');
            if let HeaderValue::Address(list) = MessageStream::new(value.as_bytes()).parse_address()
            {
                for address in list.iter() {
                    if let Some(email) = address.address() {
                        self.add(origin, email);
                    }
                }
            }
        }
    }

    fn add(&mut self, origin: Origin, raw: &str) {
        if self.overflow {
            return;
        }
        self.read += 1;
        if self.read > MAX_CANDIDATES {
            self.overflow = true;
            return;
        }
        // Read before in its normalized form (the envelope's From, then
        // the same address in its header): normalizing it again would
        // give itself, so only the origin is new.
        if let Some(known) = self.list.iter_mut().find(|i| i.address == raw) {
            if !known.origins.contains(&origin) {
                known.origins.push(origin);
            }
            return;
        }
        let Some(normalized) = normalize::identity(raw) else {
            return;
        };
        if let Some(known) = self
            .list
            .iter_mut()
            .find(|i| i.address == normalized.address)
        {
            if !known.origins.contains(&origin) {
                known.origins.push(origin);
            }
            return;
        }
        if self.list.len() == MAX_IDENTITIES {
            self.overflow = true;
            return;
        }
        self.list.push(Identity {
            address: normalized.address,
            key: normalized.key,
            origins: vec![origin],
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::{parse, ParseOptions};
    use crate::submission::{Payload, Submission};

    fn lmtp(sender: &str, raw: &str) -> Envelope {
        let submission = Submission::new(
            Source::Lmtp {
                sender: sender.into(),
                recipients: vec!["support@shop.test".into()],
                ip: "192.0.2.1".into(),
                client: None,
            },
            Payload::Mail(raw.to_string().into_bytes().into()),
        );
        parse(
            submission,
            ParseOptions {
                form: None,
                keep_raw: false,
            },
        )
        .expect("parses")
        .envelope
    }

    fn shown(facts: &Facts<'_>) -> Vec<(String, String)> {
        facts
            .identities
            .iter()
            .map(|i| (i.address.clone(), i.origins_text()))
            .collect()
    }

    #[test]
    fn every_from_reply_to_and_the_envelope_sender_is_an_identity() {
        let envelope = lmtp(
            "Bounce+7@Mailer.example",
            "From: Decoy <decoy1@x.example>, ann@example.com\r\nFrom: second@x.example\r\n\
             Reply-To: Ann+desk@Example.com, other@y.example\r\nSubject: s\r\n\r\nhello\r\n",
        );
        let facts = Facts::of(&envelope);
        let mut got = shown(&facts);
        assert_eq!(
            got[0],
            ("ann@example.com".into(), "customer, from, reply-to".into()),
            "the customer first, read in three places"
        );
        got.sort();
        assert_eq!(
            got,
            [
                ("ann@example.com".into(), "customer, from, reply-to".into()),
                ("bounce@mailer.example".into(), "envelope-sender".into()),
                ("decoy1@x.example".into(), "from".into()),
                ("other@y.example".into(), "reply-to".into()),
                ("second@x.example".into(), "from".into()),
            ],
            "every address once, with where it was read"
        );
        assert_eq!(facts.sender.as_deref(), Some("ann@example.com"));
        assert_eq!(
            facts.primary().map(|i| i.address.as_str()),
            Some("ann@example.com")
        );
        assert!(!facts.too_many_identities);
    }

    #[test]
    fn a_from_with_hundreds_of_decoys_is_cut_and_marked() {
        let decoys: Vec<String> = (0..500).map(|i| format!("decoy{i}@x.example")).collect();
        let envelope = lmtp(
            "ann@example.com",
            &format!(
                "From: {}, ann@example.com\r\nSubject: s\r\n\r\nhello\r\n",
                decoys.join(", ")
            ),
        );
        let facts = Facts::of(&envelope);
        assert_eq!(facts.identities.len(), MAX_IDENTITIES, "at most 16 kept");
        assert!(
            facts.too_many_identities,
            "and the item says there were more"
        );
    }

    #[test]
    fn the_same_address_in_many_spellings_is_one_identity() {
        let envelope = lmtp(
            "ANN+x@example.com",
            "From: ann@example.com\r\nReply-To: Ann+1@EXAMPLE.com\r\nSubject: s\r\n\r\nhi\r\n",
        );
        let facts = Facts::of(&envelope);
        assert_eq!(
            shown(&facts),
            [(
                "ann@example.com".into(),
                "customer, from, reply-to, envelope-sender".into()
            )]
        );
    }

    #[test]
    fn a_form_post_has_its_email_field() {
        let envelope = crate::guard::tests::form_envelope("Bob@Example.org", "198.51.100.7");
        let facts = Facts::of(&envelope);
        assert_eq!(shown(&facts), [("bob@example.org".into(), "form".into())]);
    }

    #[test]
    fn imap_mail_counts_return_path_and_sender() {
        let submission = Submission::new(
            Source::Imap {
                account: "support".into(),
                mailbox: "INBOX".into(),
                uidvalidity: 1,
                uid: 1,
            },
            Payload::Mail(
                b"Return-Path: <list-bounces@lists.example>\r\nSender: owner@lists.example\r\n\
                  From: ann@example.com\r\nSubject: s\r\n\r\nhi\r\n"
                    .to_vec()
                    .into(),
            ),
        );
        let envelope = parse(
            submission,
            ParseOptions {
                form: None,
                keep_raw: false,
            },
        )
        .unwrap()
        .envelope;
        let facts = Facts::of(&envelope);
        assert_eq!(
            shown(&facts),
            [
                ("ann@example.com".into(), "customer, from".into()),
                (
                    "list-bounces@lists.example".into(),
                    "envelope-sender".into()
                ),
                ("owner@lists.example".into(), "sender".into()),
            ]
        );
    }
}
