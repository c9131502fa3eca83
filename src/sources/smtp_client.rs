//! The SMTP client a mail server passes on with a mail (LMTP `XFORWARD`,
//! `intake mailgate --client-address` / `--helo`, and the headers those
//! become on `POST /v1/messages`), checked the same way wherever it comes
//! in. SPF verification reads what is kept here as
//! [`crate::envelope::SmtpClient`], so a value is kept only when it can
//! mean what it says; anything else is "unknown", which SPF treats as a
//! mail with nothing to check, never as an error that loses the mail.

use std::net::IpAddr;

use crate::envelope::SmtpClient;

/// The longest value accepted, in bytes: a HELO name is a domain name
/// (255 octets at most, RFC 1035 2.3.4) or an address literal, and an
/// address is far shorter. Longer is a broken or hostile client.
pub const MAX_VALUE: usize = 255;

/// A value over [`MAX_VALUE`] bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLong;

/// An IP address as a mail server passes it on: `192.0.2.7`,
/// `2001:db8::7`, or with Postfix's `IPv6:` prefix (`IPv6:2001:db8::7`).
/// Anything else (`unknown`, a host name, junk) is `None`: the server sent
/// what it had, and having no address is no reason to refuse the mail. An
/// IPv4-mapped IPv6 address comes back as the IPv4 address SPF checks.
pub fn address(value: &[u8]) -> Result<Option<IpAddr>, TooLong> {
    if value.len() > MAX_VALUE {
        return Err(TooLong);
    }
    let Ok(text) = std::str::from_utf8(value) else {
        return Ok(None);
    };
    let text = match text.get(..5) {
        Some(prefix) if prefix.eq_ignore_ascii_case("IPv6:") => &text[5..],
        _ => text,
    };
    Ok(text.parse::<IpAddr>().ok().map(|ip| ip.to_canonical()))
}

/// A HELO name as the client gave it: not checked to be a host name (SPF
/// checks the HELO identity as it was said, address literals and
/// nonsense included), only to be text. An empty one, or one that is not
/// UTF-8 or holds control characters, is `None`: no host name looks like
/// that, and such bytes would travel on to the desk's screens.
pub fn helo(value: &[u8]) -> Result<Option<String>, TooLong> {
    if value.len() > MAX_VALUE {
        return Err(TooLong);
    }
    let Ok(text) = std::str::from_utf8(value) else {
        return Ok(None);
    };
    if text.is_empty() || text.chars().any(char::is_control) {
        return Ok(None);
    }
    Ok(Some(text.to_owned()))
}

/// The envelope's client: `None` when neither the address nor the HELO is
/// known, so an envelope never carries an empty object.
pub fn client(address: Option<IpAddr>, helo: Option<String>) -> Option<SmtpClient> {
    if address.is_none() && helo.is_none() {
        return None;
    }
    Some(SmtpClient {
        address: address.map(|ip| ip.to_string()),
        helo,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_with_and_without_the_ipv6_prefix() {
        assert_eq!(
            address(b"203.0.113.7"),
            Ok(Some("203.0.113.7".parse().unwrap()))
        );
        assert_eq!(
            address(b"IPv6:2001:db8::7"),
            Ok(Some("2001:db8::7".parse().unwrap()))
        );
        assert_eq!(
            address(b"ipv6:2001:DB8::7"),
            Ok(Some("2001:db8::7".parse().unwrap())),
            "prefix and hex digits in any case"
        );
        assert_eq!(
            address(b"::ffff:192.0.2.1"),
            Ok(Some("192.0.2.1".parse().unwrap())),
            "an IPv4-mapped address is the IPv4 address"
        );
    }

    #[test]
    fn what_is_not_an_address_is_unknown_not_an_error() {
        for odd in [
            &b""[..],
            b"unknown",
            b"mx.example.com",
            b"[192.0.2.1]",
            b"192.0.2.1:25",
            b"\xff\xfe",
        ] {
            assert_eq!(address(odd), Ok(None), "{:?}", String::from_utf8_lossy(odd));
        }
        assert_eq!(address(&[b'1'; 256]), Err(TooLong));
    }

    #[test]
    fn helo_is_kept_as_given_but_bounded_and_text() {
        assert_eq!(
            helo(b"mx.customer.test"),
            Ok(Some("mx.customer.test".into()))
        );
        assert_eq!(helo(b"[192.0.2.1]"), Ok(Some("[192.0.2.1]".into())));
        assert_eq!(helo(b"not a host name"), Ok(Some("not a host name".into())));
        assert_eq!(
            helo("münchen.example".as_bytes()),
            Ok(Some("münchen.example".into()))
        );
        assert_eq!(helo(b""), Ok(None));
        assert_eq!(helo(b"mx\r\nX-Forged: 1"), Ok(None));
        assert_eq!(helo(b"\xff"), Ok(None));
        assert_eq!(helo(&[b'a'; 255]), Ok(Some("a".repeat(255))));
        assert_eq!(helo(&[b'a'; 256]), Err(TooLong));
    }

    #[test]
    fn a_client_needs_an_address_or_a_helo() {
        assert_eq!(client(None, None), None);
        assert_eq!(
            client(Some("2001:db8::7".parse().unwrap()), None),
            Some(SmtpClient {
                address: Some("2001:db8::7".into()),
                helo: None
            })
        );
        assert_eq!(
            client(None, Some("mx.example".into())),
            Some(SmtpClient {
                address: None,
                helo: Some("mx.example".into())
            })
        );
    }
}
