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

#[cfg(test)]
mod tests {
    use super::*;

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
