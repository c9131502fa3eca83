//! Bytes to lines: command lines with a length limit, and the message
//! after DATA with dot-unstuffing, bounded by the size limit. A bare LF
//! ends a line as CRLF does (some clients send it); stored lines end in
//! CRLF, the form RFC 5322 defines.

use std::io;

use tokio::io::{AsyncBufRead, AsyncBufReadExt};

/// One line read from the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A whole line, without its CRLF or LF.
    Complete(Vec<u8>),
    /// Longer than the limit; the rest of it was read and thrown away, so
    /// the next read starts at the next line.
    TooLong,
    /// The client closed the connection (a partial last line is dropped).
    Closed,
}

/// Reads one line of at most `max` bytes (without its end). Memory stays
/// bounded by `max` however long the line is.
pub async fn read_line<R: AsyncBufRead + Unpin>(reader: &mut R, max: usize) -> io::Result<Line> {
    let mut line = Vec::new();
    let mut too_long = false;
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(Line::Closed);
        }
        let (chunk, done) = match available.iter().position(|&b| b == b'\n') {
            Some(end) => (&available[..end], true),
            None => (available, false),
        };
        if !too_long {
            if line.len() + chunk.len() > max + 1 {
                // One byte of slack for a CR that belongs to the line end.
                too_long = true;
                line = Vec::new();
            } else {
                line.extend_from_slice(chunk);
            }
        }
        let used = chunk.len() + usize::from(done);
        reader.consume(used);
        if done {
            break;
        }
    }
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    if too_long || line.len() > max {
        return Ok(Line::TooLong);
    }
    Ok(Line::Complete(line))
}

/// The message after `354`, up to the line holding only `.`.
#[derive(Debug, PartialEq, Eq)]
pub enum Data {
    /// The message, dot-unstuffed, lines ending in CRLF.
    Complete(Vec<u8>),
    /// Over `max_size`: read to its end and thrown away.
    TooBig { size: u64 },
}

/// Reads a message of at most `max_size` bytes. A bigger one is read to
/// its final dot (so the connection stays usable) but not kept. `None`
/// when the client closed the connection before the final dot.
pub async fn read_data<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    max_size: u64,
) -> io::Result<Option<Data>> {
    let limit = usize::try_from(max_size).unwrap_or(usize::MAX);
    let mut message = Vec::new();
    let mut size: u64 = 0;
    loop {
        // A single line may be as long as the whole message may be; past
        // that it is too big anyway and is only counted.
        let line = match read_line(reader, limit.saturating_add(2)).await? {
            Line::Closed => return Ok(None),
            Line::TooLong => {
                size = size.saturating_add(max_size.saturating_add(1));
                message = Vec::new();
                continue;
            }
            Line::Complete(line) => line,
        };
        if line == b"." {
            break;
        }
        // RFC 5321 4.5.2: a leading dot was doubled by the client.
        let line = line.strip_prefix(b".").unwrap_or(&line);
        size = size.saturating_add(line.len() as u64 + 2);
        if size <= max_size {
            message.extend_from_slice(line);
            message.extend_from_slice(b"\r\n");
        } else if !message.is_empty() {
            message = Vec::new();
        }
    }
    if size > max_size {
        return Ok(Some(Data::TooBig { size }));
    }
    Ok(Some(Data::Complete(message)))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines(input: &[u8], max: usize) -> Vec<Line> {
        let mut reader = input;
        let mut out = Vec::new();
        loop {
            let line = read_line(&mut reader, max).await.unwrap();
            let closed = line == Line::Closed;
            out.push(line);
            if closed {
                return out;
            }
        }
    }

    #[tokio::test]
    async fn crlf_and_bare_lf_both_end_a_line() {
        assert_eq!(
            lines(b"NOOP\r\nRSET\nQUIT", 512).await,
            vec![
                Line::Complete(b"NOOP".to_vec()),
                Line::Complete(b"RSET".to_vec()),
                Line::Closed
            ]
        );
    }

    #[tokio::test]
    async fn a_long_line_is_skipped_and_the_next_one_read() {
        let mut input = vec![b'x'; 600];
        input.extend_from_slice(b"\r\nNOOP\r\n");
        assert_eq!(
            lines(&input, 512).await,
            vec![
                Line::TooLong,
                Line::Complete(b"NOOP".to_vec()),
                Line::Closed
            ]
        );
        let exact = [vec![b'y'; 512], b"\r\n".to_vec()].concat();
        assert_eq!(lines(&exact, 512).await[0], Line::Complete(vec![b'y'; 512]));
    }

    #[tokio::test]
    async fn data_is_unstuffed_and_ends_at_the_lone_dot() {
        let mut reader: &[u8] = b"Subject: x\r\n\r\n..leading dot\n.\r\nNOOP\r\n";
        let data = read_data(&mut reader, 1000).await.unwrap();
        assert_eq!(
            data,
            Some(Data::Complete(
                b"Subject: x\r\n\r\n.leading dot\r\n".to_vec()
            ))
        );
        assert_eq!(reader, b"NOOP\r\n", "the next command is left unread");
    }

    #[tokio::test]
    async fn too_big_data_is_read_to_its_end() {
        let mut reader: &[u8] = b"0123456789\r\n0123456789\r\n.\r\nQUIT\r\n";
        let data = read_data(&mut reader, 15).await.unwrap();
        assert_eq!(data, Some(Data::TooBig { size: 24 }));
        assert_eq!(reader, b"QUIT\r\n");
    }

    #[tokio::test]
    async fn data_cut_off_is_none() {
        let mut reader: &[u8] = b"Subject: x\r\n\r\nhalf";
        assert_eq!(read_data(&mut reader, 1000).await.unwrap(), None);
    }
}
