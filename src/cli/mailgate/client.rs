//! `--client-address` and `--helo`: the SMTP client the mail server took
//! the mail from (Postfix's pipe: `${client_address}`, `${client_helo}`),
//! passed on to the gateway as `X-Intake-Client-Address` and
//! `X-Intake-Client-Helo` for SPF.
//!
//! Postfix fills them with what it has: nothing for a locally submitted
//! mail (an empty value, or `unknown`), and whatever its client said for a
//! HELO. None of that is ever a reason to fail. An odd value, an address
//! that is no IP address or a HELO that is no text or too long, is left
//! out with a warning on stderr and the mail goes on: a usage error (64)
//! would make Postfix bounce the mail for good over a detail only SPF
//! needs, and SPF without a client has nothing to check, as for a mail
//! submitted locally. The values are checked as the gateway checks them
//! (src/sources/smtp_client.rs), so what is sent is never refused there.

use std::ffi::OsStr;

use http::{HeaderName, HeaderValue};

use crate::sources::smtp_client::{self, MAX_VALUE};

/// Header carrying the SMTP client's IP address.
pub(super) const CLIENT_ADDRESS: HeaderName = HeaderName::from_static("x-intake-client-address");

/// Header carrying the name the SMTP client gave in HELO / EHLO.
pub(super) const CLIENT_HELO: HeaderName = HeaderName::from_static("x-intake-client-helo");

/// The client headers to send, and why any given value was left out.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ClientHeaders {
    /// `X-Intake-Client-Address`: the address, in its canonical form.
    pub address: Option<HeaderValue>,
    /// `X-Intake-Client-Helo`: the HELO name as given.
    pub helo: Option<HeaderValue>,
    /// One line per value given but not sent, for stderr.
    pub warnings: Vec<String>,
}

impl ClientHeaders {
    /// Checks `--client-address` and `--helo`; never fails.
    pub fn of(address: Option<&OsStr>, helo: Option<&OsStr>) -> ClientHeaders {
        let mut headers = ClientHeaders::default();
        if let Some(value) = address.and_then(given) {
            match smtp_client::address(value) {
                Ok(Some(ip)) => headers.address = header(ip.to_string().as_bytes()),
                Ok(None) => headers.warnings.push(format!(
                    "--client-address {} is not an IP address; the mail goes without it",
                    String::from_utf8_lossy(value).escape_debug()
                )),
                Err(_) => headers.warnings.push(format!(
                    "--client-address is over {MAX_VALUE} bytes; the mail goes without it"
                )),
            }
        }
        if let Some(value) = helo.and_then(given) {
            match smtp_client::helo(value) {
                Ok(Some(name)) => headers.helo = header(name.as_bytes()),
                Ok(None) => headers.warnings.push(format!(
                    "--helo {} is not text (control characters, or not UTF-8); the mail goes without it",
                    String::from_utf8_lossy(value).escape_debug()
                )),
                Err(_) => headers.warnings.push(format!(
                    "--helo is over {MAX_VALUE} bytes; the mail goes without it"
                )),
            }
        }
        headers
    }
}

/// The value's bytes, unless it is what Postfix passes when it has none:
/// empty, or `unknown`.
fn given(value: &OsStr) -> Option<&[u8]> {
    let bytes = value.as_encoded_bytes();
    (!bytes.is_empty() && !bytes.eq_ignore_ascii_case(b"unknown")).then_some(bytes)
}

/// A checked value as a header. The checks leave nothing a header cannot
/// carry (no control characters), so this is `None` only in theory.
fn header(value: &[u8]) -> Option<HeaderValue> {
    HeaderValue::from_bytes(value).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(address: Option<&str>, helo: Option<&str>) -> ClientHeaders {
        ClientHeaders::of(address.map(OsStr::new), helo.map(OsStr::new))
    }

    #[test]
    fn address_and_helo_become_headers() {
        let headers = of(Some("203.0.113.7"), Some("mx.customer.test"));
        assert_eq!(headers.address.unwrap(), "203.0.113.7");
        assert_eq!(headers.helo.unwrap(), "mx.customer.test");
        assert!(headers.warnings.is_empty());
        let headers = of(Some("IPv6:2001:DB8::7"), Some("[IPv6:2001:db8::7]"));
        assert_eq!(headers.address.unwrap(), "2001:db8::7", "canonical form");
        assert_eq!(headers.helo.unwrap(), "[IPv6:2001:db8::7]", "kept as given");
    }

    #[test]
    fn empty_and_unknown_are_absent_without_a_word() {
        for nothing in [None, Some(""), Some("unknown"), Some("UNKNOWN")] {
            assert_eq!(
                of(nothing, nothing),
                ClientHeaders::default(),
                "{nothing:?}"
            );
        }
    }

    #[test]
    fn odd_values_are_left_out_with_a_warning() {
        let headers = of(Some("mx.customer.test"), Some("mx\u{7}bell"));
        assert_eq!((headers.address, headers.helo), (None, None));
        assert_eq!(headers.warnings.len(), 2, "{:?}", headers.warnings);
        assert!(
            headers.warnings[0].contains("--client-address mx.customer.test is not an IP address"),
            "{:?}",
            headers.warnings
        );
        assert!(
            headers.warnings[1].contains("--helo mx\\u{7}bell"),
            "{:?}",
            headers.warnings
        );
        let long = "a".repeat(MAX_VALUE + 1);
        let headers = of(Some("192.0.2.1"), Some(&long));
        assert_eq!(
            headers.address.unwrap(),
            "192.0.2.1",
            "one odd value leaves the other"
        );
        assert_eq!(headers.helo, None);
        assert!(
            headers.warnings[0].contains("over 255 bytes"),
            "{:?}",
            headers.warnings
        );
    }

    #[cfg(unix)]
    #[test]
    fn a_helo_that_is_not_utf8_is_left_out() {
        use std::os::unix::ffi::OsStrExt as _;
        let headers = ClientHeaders::of(None, Some(OsStr::from_bytes(b"mx\xff.example")));
        assert_eq!(headers.helo, None);
        assert_eq!(headers.warnings.len(), 1);
    }

    #[test]
    fn utf8_helo_is_sent() {
        let headers = of(None, Some("münchen.example"));
        assert_eq!(
            headers.helo.unwrap().as_bytes(),
            "münchen.example".as_bytes()
        );
    }
}
