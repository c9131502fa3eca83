//! Step 1 of a run: the whole message off stdin, kept up to `--max-size`
//! and, past it, read on and counted but not kept, so the size verdict
//! needs no network and the mail server's write never meets a broken pipe.

use std::io::{self, Read};

use bytes::Bytes;

use super::error::MailgateError;

/// What was found on stdin.
#[derive(Debug)]
pub(super) enum Message {
    /// The whole message, within the limit.
    Complete(Bytes),
    /// More than the limit; the rest was read and discarded.
    TooBig {
        /// Bytes read in all.
        size: u64,
    },
}

/// Reads the whole of `input`, keeping at most `limit` bytes. Over the
/// limit it reads on and discards, so the writer sees its data taken rather
/// than a broken pipe, then reports the size.
pub(super) fn read_message(input: &mut impl Read, limit: u64) -> Result<Message, MailgateError> {
    let mut body = Vec::new();
    // One byte past the limit tells "exactly at the limit" from "over it".
    input
        .take(limit.saturating_add(1))
        .read_to_end(&mut body)
        .map_err(MailgateError::Stdin)?;
    let kept = body.len() as u64;
    if kept <= limit {
        return Ok(Message::Complete(Bytes::from(body)));
    }
    drop(body);
    let rest = io::copy(input, &mut io::sink()).map_err(MailgateError::Stdin)?;
    Ok(Message::TooBig { size: kept + rest })
}

/// The message without a leading mbox `From ` line, which Exim (without
/// `message_prefix =`), procmail and other local delivery agents put
/// before the headers: kept, it would be stored in `raw` and parsed as a
/// bogus header. Only a first line of the form `From <sender> <date>` goes
/// (a date with a time in it, as every mbox writer puts there); a `From:`
/// header, also in the obsolete `From :` spelling, is the message's own.
pub(super) fn without_mbox_from_line(message: Bytes) -> Bytes {
    let Some(rest) = message.strip_prefix(b"From ") else {
        return message;
    };
    let Some(end) = rest.iter().position(|&b| b == b'\n') else {
        return message;
    };
    let line = String::from_utf8_lossy(&rest[..end]);
    let mut fields = line.split_whitespace();
    let sender = fields.next().unwrap_or(":");
    let date: Vec<&str> = fields.collect();
    let has_time = date.iter().any(|field| {
        let mut parts = field.split(':');
        parts.clone().count() >= 2
            && parts.all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    });
    if sender.starts_with(':') || !has_time {
        return message;
    }
    message.slice(b"From ".len() + end + 1..)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leading_mbox_from_line_is_dropped() {
        for (first, what) in [
            (
                "From ann@example.com Mon Jan 15 10:00:00 2024\n",
                "Exim's, LF",
            ),
            (
                "From MAILER-DAEMON Fri Jul  8 12:08:34 2011\r\n",
                "a bounce's, CRLF",
            ),
            (
                "From ann@example.com  Mon Jan 15 10:00:00 2024 +0000\n",
                "with a zone",
            ),
        ] {
            let message = format!("{first}From: Ann <ann@example.com>\r\nSubject: hi\r\n\r\nbody");
            let kept = without_mbox_from_line(Bytes::from(message));
            assert_eq!(
                &kept[..],
                b"From: Ann <ann@example.com>\r\nSubject: hi\r\n\r\nbody",
                "{what}: the mbox line must go and nothing else"
            );
        }
    }

    #[test]
    fn a_from_header_or_a_line_without_a_date_is_kept() {
        for message in [
            "From: Ann <ann@example.com>\r\n\r\nbody",
            "From : Ann <ann@example.com> 10:00\r\n\r\nbody",
            "From ann@example.com\r\n\r\nbody",
            "From ann@example.com no date here\r\n\r\nbody",
            "Subject: hi\r\n\r\nFrom ann@example.com Mon Jan 15 10:00:00 2024\n",
            "From ann@example.com Mon Jan 15 10:00:00 2024",
        ] {
            let kept = without_mbox_from_line(Bytes::from(message));
            assert_eq!(
                &kept[..],
                message.as_bytes(),
                "must be kept whole: {message:?}"
            );
        }
    }

    #[test]
    fn oversized_input_is_drained_and_reported() {
        let input = vec![b'a'; 5_000];
        match read_message(&mut input.as_slice(), 1_000).unwrap() {
            Message::TooBig { size } => {
                assert_eq!(size, 5_000, "the rest must be read and counted")
            }
            Message::Complete(_) => panic!("5000 bytes passed a 1000-byte limit"),
        }
        match read_message(&mut input.as_slice(), 5_000).unwrap() {
            Message::Complete(body) => assert_eq!(body.len(), 5_000),
            Message::TooBig { .. } => panic!("a message exactly at the limit was refused"),
        }
    }
}
