//! `XFORWARD` (Postfix's XFORWARD_README): a mail server passes on the SMTP
//! client it took the mail from, which the LMTP connection does not show
//! and SPF checks. Postfix's LMTP client sends it with
//! `lmtp_send_xforward_command = yes` when the LHLO answer announces it,
//! before `MAIL`, in one or more commands of `NAME=value` pairs:
//!
//! ```text
//! XFORWARD NAME=mx.customer.test ADDR=203.0.113.7 PORT=40122
//! XFORWARD PROTO=ESMTP HELO=mx.customer.test IDENT=4dGhJ2 SOURCE=REMOTE
//! ```
//!
//! Values are xtext (RFC 3461 4: `+XX` for a byte outside `!`..`~`, `+`
//! and `=`); `[UNAVAILABLE]` and `[TEMPUNAVAIL]` say the server does not
//! know. Of the attributes only ADDR and HELO are kept (for the envelope's
//! `source.client`); the others are checked as strictly and dropped. Who
//! may send XFORWARD at all (`lmtp.xforward_from`) is the session's
//! business: here it is only read.

use std::net::IpAddr;

use super::reply::Reply;
use crate::envelope::SmtpClient;
use crate::sources::smtp_client::{self, MAX_VALUE};

/// Every attribute of XFORWARD_README, as the LHLO answer announces them:
/// Postfix sends only the announced ones, so all of them, and then all it
/// knows.
const ATTRIBUTES: &str = "NAME ADDR PROTO HELO SOURCE PORT IDENT";

/// The LHLO line that offers XFORWARD.
pub fn announcement() -> String {
    format!("XFORWARD {ATTRIBUTES}")
}

/// What XFORWARD said so far about the client of the transaction to come.
/// Empty until a command says something; reset with the transaction.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Forwarded {
    address: Option<IpAddr>,
    helo: Option<String>,
}

impl Forwarded {
    /// This state with one XFORWARD command's attributes (the text after
    /// the verb) applied: a later command overrides what an earlier one
    /// said, `[UNAVAILABLE]` included. A command with any bad attribute is
    /// refused whole (501) and changes nothing.
    pub fn with(&self, args: &str) -> Result<Forwarded, Reply> {
        if args.is_empty() {
            return Err(syntax());
        }
        let mut next = self.clone();
        for pair in args.split_ascii_whitespace() {
            let Some((name, value)) = pair.split_once('=') else {
                return Err(syntax());
            };
            let attribute = Attribute::parse(name).ok_or_else(|| {
                Reply::new(
                    501,
                    "5.5.4",
                    format!("XFORWARD attribute {name} is not one of {ATTRIBUTES}"),
                )
            })?;
            let value = xtext(value)
                .map_err(|why| Reply::new(501, "5.5.4", format!("XFORWARD {name}: {why}")))?;
            let too_long = || {
                Reply::new(
                    501,
                    "5.5.4",
                    format!("XFORWARD {name}: the value is over {MAX_VALUE} bytes"),
                )
            };
            if value.len() > MAX_VALUE {
                return Err(too_long());
            }
            let unknown = [&b"[UNAVAILABLE]"[..], b"[TEMPUNAVAIL]"]
                .iter()
                .any(|sentinel| value.eq_ignore_ascii_case(sentinel));
            match attribute {
                Attribute::Addr if unknown => next.address = None,
                // Postfix sends what it has: a value that is no address is
                // as good as none, not a reason to refuse the mail.
                Attribute::Addr => {
                    next.address = smtp_client::address(&value).map_err(|_| too_long())?
                }
                Attribute::Helo if unknown => next.helo = None,
                Attribute::Helo => next.helo = smtp_client::helo(&value).map_err(|_| too_long())?,
                Attribute::Name
                | Attribute::Port
                | Attribute::Proto
                | Attribute::Ident
                | Attribute::Source => {}
            }
        }
        Ok(next)
    }

    /// The envelope's `source.client`: `None` when neither the address nor
    /// the HELO is known.
    pub fn client(&self) -> Option<SmtpClient> {
        smtp_client::client(self.address, self.helo.clone())
    }
}

/// The attributes of XFORWARD_README ([`ATTRIBUTES`]); Postfix sends no
/// others, so another name is a client speaking something else: 501.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attribute {
    Name,
    Addr,
    Port,
    Proto,
    Helo,
    Ident,
    Source,
}

impl Attribute {
    fn parse(name: &str) -> Option<Attribute> {
        Some(match name.to_ascii_uppercase().as_str() {
            "NAME" => Attribute::Name,
            "ADDR" => Attribute::Addr,
            "PORT" => Attribute::Port,
            "PROTO" => Attribute::Proto,
            "HELO" => Attribute::Helo,
            "IDENT" => Attribute::Ident,
            "SOURCE" => Attribute::Source,
            _ => return None,
        })
    }
}

fn syntax() -> Reply {
    Reply::new(
        501,
        "5.5.4",
        format!("syntax: XFORWARD attribute=value ... ({ATTRIBUTES})"),
    )
}

/// Decodes RFC 3461 xtext: `+` and two hex digits stand for one byte
/// (Postfix writes them in upper case; lower case is taken too), every
/// other character for itself. Decoding stops at no length: the caller
/// bounds the result.
fn xtext(value: &str) -> Result<Vec<u8>, &'static str> {
    let mut out = Vec::with_capacity(value.len());
    let mut bytes = value.bytes();
    while let Some(byte) = bytes.next() {
        if byte != b'+' {
            out.push(byte);
            continue;
        }
        let hex = |digit: Option<u8>| {
            digit
                .and_then(|d| (d as char).to_digit(16))
                .ok_or("bad xtext: `+` must be followed by two hex digits")
        };
        let high = hex(bytes.next())?;
        let low = hex(bytes.next())?;
        out.push((high * 16 + low) as u8);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(commands: &[&str]) -> Result<Forwarded, Reply> {
        commands
            .iter()
            .try_fold(Forwarded::default(), |state, args| state.with(args))
    }

    fn client(commands: &[&str]) -> Option<SmtpClient> {
        apply(commands).unwrap().client()
    }

    fn refusal(args: &str) -> Reply {
        Forwarded::default().with(args).unwrap_err()
    }

    fn smtp(address: Option<&str>, helo: Option<&str>) -> Option<SmtpClient> {
        Some(SmtpClient {
            address: address.map(Into::into),
            helo: helo.map(Into::into),
        })
    }

    #[test]
    fn postfix_commands_give_address_and_helo() {
        assert_eq!(
            client(&[
                "NAME=mx.customer.test ADDR=203.0.113.7 PORT=40122",
                "PROTO=ESMTP HELO=mx.customer.test IDENT=4dGhJ2 SOURCE=REMOTE",
            ]),
            smtp(Some("203.0.113.7"), Some("mx.customer.test"))
        );
        assert_eq!(
            client(&["addr=IPv6:2001:DB8::7 helo=[IPv6:2001:db8::7]"]),
            smtp(Some("2001:db8::7"), Some("[IPv6:2001:db8::7]")),
            "names in any case; the IPv6: prefix dropped, a literal HELO kept as given"
        );
    }

    #[test]
    fn values_are_xtext_decoded() {
        assert_eq!(
            client(&["HELO=a+2Bb+3Dc+20d ADDR=192.0.2.1"]),
            smtp(Some("192.0.2.1"), Some("a+b=c d"))
        );
        assert_eq!(
            xtext("+c3+A9"),
            Ok("é".as_bytes().to_vec()),
            "lower-case hex too"
        );
        assert_eq!(refusal("HELO=a+2").code, 501, "a `+` needs two digits");
        assert_eq!(refusal("HELO=a+zz").code, 501);
        assert_eq!(refusal("HELO=a+").code, 501);
    }

    #[test]
    fn unavailable_values_are_unknown_and_override_earlier_ones() {
        assert_eq!(client(&["ADDR=[UNAVAILABLE] HELO=[UNAVAILABLE]"]), None);
        assert_eq!(
            client(&["NAME=[TEMPUNAVAIL] ADDR=192.0.2.1 HELO=[UNAVAILABLE]"]),
            smtp(Some("192.0.2.1"), None)
        );
        assert_eq!(
            client(&["ADDR=192.0.2.1 HELO=mx.example", "ADDR=[UNAVAILABLE]"]),
            smtp(None, Some("mx.example")),
            "a later command overrides, an attribute it leaves out stays"
        );
    }

    #[test]
    fn an_address_that_is_no_ip_is_unknown_not_an_error() {
        assert_eq!(
            client(&["ADDR=unknown HELO=mx.example"]),
            smtp(None, Some("mx.example"))
        );
        assert_eq!(client(&["ADDR=mx.example.com"]), None);
        assert_eq!(
            client(&["ADDR=192.0.2.1", "ADDR=not-an-address"]),
            None,
            "an odd later value forgets the earlier address, as [UNAVAILABLE] would"
        );
    }

    #[test]
    fn bad_commands_are_refused_501_and_change_nothing() {
        for args in [
            "",
            "ADDR",
            "ADDR=192.0.2.1 HELO",
            "XCLIENT=1",
            "ADDR=192.0.2.1 COLOR=blue",
        ] {
            let reply = refusal(args);
            assert_eq!(
                (reply.code, reply.status),
                (501, "5.5.4"),
                "{args:?}: {reply:?}"
            );
        }
        assert!(
            refusal("COLOR=blue").lines[0].contains("COLOR is not one of NAME ADDR"),
            "names the attribute and what is allowed"
        );
        let before = apply(&["ADDR=192.0.2.1"]).unwrap();
        assert!(
            before.with("HELO=mx.example COLOR=blue").is_err(),
            "one bad attribute refuses the command"
        );
        assert_eq!(before.client(), smtp(Some("192.0.2.1"), None));
    }

    #[test]
    fn values_are_bounded_after_decoding() {
        let long = "a".repeat(MAX_VALUE);
        assert_eq!(
            client(&[&format!("HELO={long}")]),
            smtp(None, Some(&long)),
            "{MAX_VALUE} bytes pass"
        );
        assert_eq!(refusal(&format!("HELO={long}a")).code, 501);
        assert_eq!(
            refusal(&format!("IDENT={long}a")).code,
            501,
            "every attribute is bounded, kept or not"
        );
        let encoded = "+41".repeat(MAX_VALUE);
        assert!(Forwarded::default()
            .with(&format!("HELO={encoded}"))
            .is_ok());
        assert_eq!(refusal(&format!("HELO={encoded}+41")).code, 501);
    }

    #[test]
    fn a_helo_with_control_characters_is_unknown() {
        assert_eq!(client(&["HELO=mx+0D+0AX-Forged:+201"]), None);
    }
}
