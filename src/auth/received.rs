//! The SMTP client of a mail that came without one (IMAP, a mail server
//! that passed no XFORWARD), read from the `Received:` header a trusted
//! host added when it took the mail in.
//!
//! Only the topmost `Received:` whose `by` names a trusted host is read:
//! every header below it was written by hosts before it, which anyone can
//! forge.

use std::net::IpAddr;

/// What a trusted host's `Received:` says about the client it took the
/// mail from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedFrom {
    pub address: IpAddr,
    /// The HELO name, when the header gives one.
    pub helo: Option<String>,
    /// The trusted host that wrote it.
    pub by: String,
}

/// Reads the topmost `Received:` value (top first in `values`) whose `by`
/// host is in `trusted`. `None` when no such header names a client address.
pub fn client<'a>(
    values: impl IntoIterator<Item = &'a str>,
    trusted: &[String],
) -> Option<ReceivedFrom> {
    for value in values {
        let Some(by) = by_host(value) else { continue };
        if trusted.iter().any(|t| t.eq_ignore_ascii_case(by)) {
            return from_clause(value).map(|(address, helo)| ReceivedFrom {
                address,
                helo,
                by: by.to_string(),
            });
        }
    }
    None
}

/// The host after the ` by ` keyword.
fn by_host(value: &str) -> Option<&str> {
    let lower = value.to_ascii_lowercase();
    let at = find_word(&lower, "by")?;
    value[at + 2..]
        .split_whitespace()
        .next()
        .map(|h| h.trim_end_matches(';'))
}

/// The client address and HELO of the `from` clause, as Postfix
/// (`from helo (rdns [192.0.2.1])`), Exim (`from [192.0.2.1] (helo=name)`,
/// `from rdns ([192.0.2.1] helo=name)`), Sendmail and Gmail
/// (`from helo (rdns. [192.0.2.1])`) write it.
fn from_clause(value: &str) -> Option<(IpAddr, Option<String>)> {
    let lower = value.to_ascii_lowercase();
    let start = find_word(&lower, "from")? + 4;
    let end = find_word(&lower[start..], "by").map_or(value.len(), |e| start + e);
    let clause = &value[start..end];
    let address = bracketed_ip(clause)?;
    let first = clause.split_whitespace().next().unwrap_or_default();
    let helo = clause
        .to_ascii_lowercase()
        .find("helo=")
        .map(|at| {
            clause[at + 5..]
                .split(|c: char| c.is_whitespace() || c == ')')
                .next()
                .unwrap_or_default()
                .to_string()
        })
        .or_else(|| (!first.starts_with('[') && !first.starts_with('(')).then(|| first.to_string()))
        .filter(|h| !h.is_empty());
    Some((address, helo))
}

/// The first `[address]` that is an IP (`[IPv6:2001:db8::1]` too).
fn bracketed_ip(text: &str) -> Option<IpAddr> {
    let mut rest = text;
    while let Some(open) = rest.find('[') {
        let after = &rest[open + 1..];
        let close = after.find(']')?;
        let inside = &after[..close];
        let inside = inside
            .strip_prefix("IPv6:")
            .or_else(|| inside.strip_prefix("ipv6:"))
            .unwrap_or(inside);
        if let Ok(ip) = inside.parse() {
            return Some(ip);
        }
        rest = &after[close + 1..];
    }
    None
}

/// Where `word` starts as a whole word (after start or whitespace, before
/// whitespace).
fn find_word(lower: &str, word: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(at) = lower[from..].find(word).map(|i| from + i) {
        let before_ok = at == 0 || lower.as_bytes()[at - 1].is_ascii_whitespace();
        let after = lower.as_bytes().get(at + word.len());
        if before_ok && after.is_none_or(|b| b.is_ascii_whitespace()) {
            return Some(at);
        }
        from = at + word.len();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trusted() -> Vec<String> {
        vec!["mx.shop.test".into()]
    }

    #[test]
    fn postfix_header_gives_address_and_helo() {
        let got = client(
            ["from mx.customer.test (mail.customer.test [203.0.113.7])\r\n\tby mx.shop.test (Postfix) with ESMTPS id 4Xy; Tue, 1 Dec 2026 10:00:00 +0000"],
            &trusted(),
        )
        .unwrap();
        assert_eq!(got.address, "203.0.113.7".parse::<IpAddr>().unwrap());
        assert_eq!(got.helo.as_deref(), Some("mx.customer.test"));
        assert_eq!(got.by, "mx.shop.test");
    }

    #[test]
    fn exim_and_ipv6_forms() {
        let got = client(
            ["from [2001:db8::7] (helo=laptop.example) by mx.shop.test with esmtp (Exim 4.96)"],
            &trusted(),
        )
        .unwrap();
        assert_eq!(got.address, "2001:db8::7".parse::<IpAddr>().unwrap());
        assert_eq!(got.helo.as_deref(), Some("laptop.example"));
        let got = client(
            ["from host.example (host.example [IPv6:2001:db8::8]) by mx.shop.test"],
            &trusted(),
        )
        .unwrap();
        assert_eq!(got.address, "2001:db8::8".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn headers_from_untrusted_hosts_are_not_read() {
        let forged =
            "from friend.example (friend.example [127.0.0.1]) by mx.shop.test.attacker.example";
        assert!(client([forged], &trusted()).is_none());
        // The topmost trusted header is read, not a forged one below it.
        let got = client(
            [
                "from relay.example (relay.example [198.51.100.1]) by mx.shop.test",
                "from x (x [127.0.0.1]) by mx.shop.test",
            ],
            &trusted(),
        )
        .unwrap();
        assert_eq!(got.address, "198.51.100.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn a_header_without_an_address_gives_nothing() {
        assert!(client(["from localhost by mx.shop.test with LMTP"], &trusted()).is_none());
        assert!(client(["by mx.shop.test with local"], &trusted()).is_none());
    }
}
