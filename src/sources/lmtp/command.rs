//! Command lines to commands (RFC 2033 over RFC 5321). Parsing is strict
//! where a mistake would lose mail (addresses, SIZE) and lenient where
//! real clients differ (case, a space after the colon).

use super::reply::Reply;

/// The longest address accepted (RFC 5321 4.5.3.1.3: 256 octets for a path).
const MAX_ADDRESS: usize = 256;

/// One command from the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    Lhlo,
    /// HELO or EHLO: SMTP greetings, which an LMTP server must refuse.
    SmtpGreeting,
    Mail {
        /// The reverse path without angle brackets; empty for `<>`.
        sender: String,
        /// The `SIZE=` the client declared.
        size: Option<u64>,
    },
    Rcpt {
        recipient: String,
    },
    Data,
    Rset,
    Noop,
    Quit,
    Vrfy,
    Help,
    /// Postfix's XFORWARD; `args` is everything after the verb, read by
    /// `xforward.rs` once the session knows the client may send it.
    Xforward {
        args: String,
    },
    /// A command this server knows but does not offer (STARTTLS, BDAT,
    /// AUTH, ...).
    NotImplemented,
}

/// Parses one command line; an `Err` is the reply that refuses it.
pub fn parse(line: &[u8]) -> Result<Command, Reply> {
    let Ok(line) = std::str::from_utf8(line) else {
        return Err(Reply::new(500, "5.5.2", "command is not valid text"));
    };
    let (verb, rest) = match line.split_once(' ') {
        Some((verb, rest)) => (verb, rest.trim()),
        None => (line.trim(), ""),
    };
    match verb.to_ascii_uppercase().as_str() {
        "LHLO" if rest.is_empty() => Err(Reply::new(501, "5.5.4", "LHLO needs a host name")),
        "LHLO" => Ok(Command::Lhlo),
        "HELO" | "EHLO" => Ok(Command::SmtpGreeting),
        "MAIL" => mail(rest),
        "RCPT" => rcpt(rest),
        "DATA" | "RSET" | "QUIT" if !rest.is_empty() => {
            Err(Reply::new(501, "5.5.4", "this command takes no arguments"))
        }
        "DATA" => Ok(Command::Data),
        "RSET" => Ok(Command::Rset),
        "QUIT" => Ok(Command::Quit),
        "NOOP" => Ok(Command::Noop),
        "VRFY" => Ok(Command::Vrfy),
        "HELP" => Ok(Command::Help),
        "XFORWARD" => Ok(Command::Xforward {
            args: rest.to_owned(),
        }),
        "STARTTLS" | "BDAT" | "AUTH" | "EXPN" | "TURN" | "ETRN" => Ok(Command::NotImplemented),
        _ => Err(Reply::new(500, "5.5.2", "command not recognized")),
    }
}

/// `MAIL FROM:<sender> [SIZE=n] [BODY=7BIT|8BITMIME] [SMTPUTF8]`. SMTPUTF8
/// (RFC 6531) asks for UTF-8 in addresses and headers: the message is
/// stored byte for byte whatever its headers hold and an address may be
/// UTF-8 either way, so it needs nothing more here, but a server whose mail
/// carries UTF-8 headers (Postfix marks locally submitted ones so) bounces
/// it with 5.6.7 to a listener that does not offer it.
fn mail(rest: &str) -> Result<Command, Reply> {
    let Some(after) = strip_prefix_ci(rest, "FROM:") else {
        return Err(Reply::new(501, "5.5.4", "syntax: MAIL FROM:<address>"));
    };
    let (sender, params) = path(after).map_err(|why| Reply::new(501, "5.1.7", why))?;
    let mut size = None;
    for param in params.split_ascii_whitespace() {
        let (key, value) = param.split_once('=').unwrap_or((param, ""));
        match key.to_ascii_uppercase().as_str() {
            "SIZE" => match value.parse::<u64>() {
                Ok(n) => size = Some(n),
                Err(_) => return Err(Reply::new(501, "5.5.4", "SIZE= needs a number")),
            },
            "BODY"
                if value.eq_ignore_ascii_case("7BIT") || value.eq_ignore_ascii_case("8BITMIME") => {
            }
            "SMTPUTF8" if value.is_empty() && !param.contains('=') => {}
            _ => {
                return Err(Reply::new(
                    555,
                    "5.5.4",
                    "parameter not supported here (only SIZE, BODY and SMTPUTF8)",
                ))
            }
        }
    }
    Ok(Command::Mail { sender, size })
}

/// `RCPT TO:<recipient>`
fn rcpt(rest: &str) -> Result<Command, Reply> {
    let Some(after) = strip_prefix_ci(rest, "TO:") else {
        return Err(Reply::new(501, "5.5.4", "syntax: RCPT TO:<address>"));
    };
    let (recipient, params) = path(after).map_err(|why| Reply::new(501, "5.1.3", why))?;
    if !params.trim().is_empty() {
        return Err(Reply::new(
            555,
            "5.5.4",
            "RCPT parameters are not supported here",
        ));
    }
    let is_postmaster = recipient.eq_ignore_ascii_case("postmaster");
    match recipient.rsplit_once('@') {
        _ if is_postmaster => {}
        Some((local, domain)) if !local.is_empty() && !domain.is_empty() => {}
        _ => {
            return Err(Reply::new(
                501,
                "5.1.3",
                "the recipient must be a full address, local@domain",
            ))
        }
    }
    Ok(Command::Rcpt { recipient })
}

/// An address in angle brackets (or, leniently, bare up to the first
/// space) and what follows it. A source route (`<@a,@b:user@c>`) is
/// dropped, as RFC 5321 says a receiver may.
fn path(text: &str) -> Result<(String, &str), &'static str> {
    let text = text.trim_start();
    let (address, rest) = if let Some(inner) = text.strip_prefix('<') {
        let Some(end) = inner.find('>') else {
            return Err("the address has no closing `>`");
        };
        (&inner[..end], &inner[end + 1..])
    } else {
        text.split_once(' ').unwrap_or((text, ""))
    };
    let address = match address.split_once(':') {
        Some((route, address)) if route.starts_with('@') => address,
        _ => address,
    };
    if address.len() > MAX_ADDRESS {
        return Err("the address is too long");
    }
    if address
        .chars()
        .any(|c| c.is_control() || c.is_whitespace() || c == '<' || c == '>')
    {
        return Err("the address contains characters not allowed in one");
    }
    Ok((address.to_string(), rest))
}

fn strip_prefix_ci<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &text[prefix.len()..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(line: &str) -> Command {
        parse(line.as_bytes()).unwrap_or_else(|r| panic!("{line}: {r:?}"))
    }

    fn code(line: &str) -> (u16, &'static str) {
        let reply = parse(line.as_bytes()).unwrap_err();
        (reply.code, reply.status)
    }

    #[test]
    fn mail_from_with_size_and_body() {
        assert_eq!(
            ok("mail from:<Ann@Example.com> SIZE=1234 BODY=8BITMIME"),
            Command::Mail {
                sender: "Ann@Example.com".into(),
                size: Some(1234)
            }
        );
        assert_eq!(
            ok("MAIL FROM: <>"),
            Command::Mail {
                sender: String::new(),
                size: None
            }
        );
        assert_eq!(code("MAIL FROM:<a@b> SIZE=lots"), (501, "5.5.4"));
        assert_eq!(
            ok("MAIL FROM:<josé@correo.example> BODY=8BITMIME SMTPUTF8"),
            Command::Mail {
                sender: "josé@correo.example".into(),
                size: None
            }
        );
        assert_eq!(code("MAIL FROM:<a@b> SMTPUTF8=yes"), (555, "5.5.4"));
        assert_eq!(code("MAIL FROM:<a@b> AUTH=<>"), (555, "5.5.4"));
        assert_eq!(code("MAIL TO:<a@b>"), (501, "5.5.4"));
        assert_eq!(code("MAIL FROM:<a@b"), (501, "5.1.7"));
    }

    #[test]
    fn rcpt_to_needs_a_full_address() {
        assert_eq!(
            ok("RCPT TO:<support+order-7@shop.test>"),
            Command::Rcpt {
                recipient: "support+order-7@shop.test".into()
            }
        );
        assert_eq!(
            ok("RCPT TO:<@relay.example:bob@shop.test>"),
            Command::Rcpt {
                recipient: "bob@shop.test".into()
            }
        );
        assert_eq!(
            ok("rcpt to:<Postmaster>"),
            Command::Rcpt {
                recipient: "Postmaster".into()
            }
        );
        assert_eq!(code("RCPT TO:<bob>"), (501, "5.1.3"));
        assert_eq!(code("RCPT TO:<>"), (501, "5.1.3"));
        assert_eq!(code("RCPT TO:<a\u{7}b@c>"), (501, "5.1.3"));
        assert_eq!(code("RCPT TO:<a@b> NOTIFY=NEVER"), (555, "5.5.4"));
    }

    #[test]
    fn other_commands() {
        assert_eq!(ok("LHLO client.example"), Command::Lhlo);
        assert_eq!(code("LHLO"), (501, "5.5.4"));
        assert_eq!(ok("EHLO x"), Command::SmtpGreeting);
        assert_eq!(ok("data"), Command::Data);
        assert_eq!(code("DATA now"), (501, "5.5.4"));
        assert_eq!(ok("VRFY bob"), Command::Vrfy);
        assert_eq!(ok("STARTTLS"), Command::NotImplemented);
        assert_eq!(
            ok("xforward ADDR=192.0.2.1  HELO=mx.example "),
            Command::Xforward {
                args: "ADDR=192.0.2.1  HELO=mx.example".into()
            }
        );
        assert_eq!(
            ok("XFORWARD"),
            Command::Xforward { args: "".into() },
            "refused by the session (501), after it checked who sends it"
        );
        assert_eq!(code("XYZZY"), (500, "5.5.2"));
        assert_eq!(code(""), (500, "5.5.2"));
        assert_eq!(parse(b"\xff\xfe").unwrap_err().code, 500);
    }
}
