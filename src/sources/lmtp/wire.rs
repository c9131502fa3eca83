//! Bytes to lines: command lines with a length limit, and the message
//! after DATA with dot-unstuffing, bounded by the size limit.
//!
//! Only CRLF ends a line. A command line ending in a bare LF, or holding a
//! bare CR, is refused as a whole. In the message a bare LF or CR is
//! content, kept as sent and never a line end for dot handling, so only
//! CRLF `.` CRLF ends the data (or `.` CRLF right after the 354): a
//! `\n.\n` inside a message cannot end it early and smuggle what follows
//! in as commands (the SMTP smuggling of 2023).

use std::io;

use tokio::io::{AsyncBufRead, AsyncBufReadExt};

/// One line read from the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A whole line, without its CRLF.
    Complete(Vec<u8>),
    /// Longer than the limit; the rest of it was read and thrown away, so
    /// the next read starts at the next line.
    TooLong,
    /// Ended in a LF without a CR before it.
    BareLf,
    /// Holds a CR that is not part of its CRLF end.
    BareCr,
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
                // One byte of slack for the CR of the line end.
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
    if too_long {
        return Ok(Line::TooLong);
    }
    if line.pop() != Some(b'\r') {
        return Ok(Line::BareLf);
    }
    if line.len() > max {
        return Ok(Line::TooLong);
    }
    if line.contains(&b'\r') {
        return Ok(Line::BareCr);
    }
    Ok(Line::Complete(line))
}

/// The message after `354`, up to CRLF `.` CRLF.
#[derive(Debug, PartialEq, Eq)]
pub enum Data {
    /// The message, dot-unstuffed, otherwise as sent.
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
    let mut message = Unstuffer::new(max_size);
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(None);
        }
        let (used, done) = message.feed(available);
        reader.consume(used);
        if done {
            return Ok(Some(message.finish()));
        }
    }
}

/// Where the unstuffer is in the byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum At {
    /// Right after a CRLF (or the 354).
    LineStart,
    /// A `.` at a line start, held back.
    Dot,
    /// `.` CR at a line start, held back: LF next ends the data.
    DotCr,
    /// Inside a line.
    Text,
    /// A CR inside a line, held back: LF next ends the line.
    Cr,
}

/// Dot-unstuffing as a byte-wise state machine over CRLF lines only.
struct Unstuffer {
    at: At,
    message: Vec<u8>,
    size: u64,
    max_size: u64,
}

impl Unstuffer {
    fn new(max_size: u64) -> Self {
        Unstuffer {
            at: At::LineStart,
            message: Vec::new(),
            size: 0,
            max_size,
        }
    }

    /// Takes bytes; returns how many were used and whether the end of the
    /// data was among them (the bytes after it are left for commands).
    fn feed(&mut self, input: &[u8]) -> (usize, bool) {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            i += 1;
            match self.at {
                At::LineStart if b == b'.' => self.at = At::Dot,
                At::Dot if b == b'\r' => self.at = At::DotCr,
                At::DotCr if b == b'\n' => return (i, true),
                At::DotCr => {
                    // `.` CR then more: the dot was stuffing, the CR content.
                    self.keep(b"\r");
                    self.text(b);
                }
                At::Cr if b == b'\n' => {
                    self.keep(b"\r\n");
                    self.at = At::LineStart;
                }
                At::Cr => {
                    self.keep(b"\r");
                    self.text(b);
                }
                // RFC 5321 4.5.2: a leading dot was doubled by the client;
                // the one left is what follows it.
                At::LineStart | At::Dot | At::Text => {
                    self.text(b);
                    if self.at == At::Text {
                        // The rest of the line up to the next CR at once.
                        let run = input[i..]
                            .iter()
                            .position(|&c| c == b'\r')
                            .unwrap_or(input.len() - i);
                        self.keep(&input[i..i + run]);
                        i += run;
                    }
                }
            }
        }
        (i, false)
    }

    /// A byte inside a line: content, or a CR held back.
    fn text(&mut self, b: u8) {
        if b == b'\r' {
            self.at = At::Cr;
        } else {
            self.keep(&[b]);
            self.at = At::Text;
        }
    }

    fn keep(&mut self, bytes: &[u8]) {
        self.size = self.size.saturating_add(bytes.len() as u64);
        if self.size <= self.max_size {
            self.message.extend_from_slice(bytes);
        } else if !self.message.is_empty() {
            self.message = Vec::new();
        }
    }

    fn finish(self) -> Data {
        if self.size > self.max_size {
            Data::TooBig { size: self.size }
        } else {
            Data::Complete(self.message)
        }
    }
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

    /// Reads `input` as DATA through a buffer of `chunk` bytes, so the
    /// state machine sees every split of its input.
    async fn data(input: &[u8], chunk: usize, max: u64) -> (Option<Data>, Vec<u8>) {
        let mut reader = tokio::io::BufReader::with_capacity(chunk, input);
        let data = read_data(&mut reader, max).await.unwrap();
        let mut rest = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut reader, &mut rest)
            .await
            .unwrap();
        (data, rest)
    }

    // Bare LF ended a command line before (as CRLF did); now only CRLF
    // does, and a line with a bare LF or CR is refused whole.
    #[tokio::test]
    async fn only_crlf_ends_a_command_line() {
        assert_eq!(
            lines(b"NOOP\r\nRSET\nQUIT\r\nNO\rOP\r\nlast", 512).await,
            vec![
                Line::Complete(b"NOOP".to_vec()),
                Line::BareLf,
                Line::Complete(b"QUIT".to_vec()),
                Line::BareCr,
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
        let over = [vec![b'y'; 513], b"\r\n".to_vec()].concat();
        assert_eq!(lines(&over, 512).await[0], Line::TooLong);
    }

    // Before, a bare LF ended a line here too, and the stored lines were
    // rewritten to CRLF; now a bare LF is content, kept as sent.
    #[tokio::test]
    async fn data_is_unstuffed_and_ends_only_at_crlf_dot_crlf() {
        let input = b"Subject: x\r\n\r\n..leading dot\r\nbare\nlf\n.\r\nlast\r\n.\r\nNOOP\r\n";
        for chunk in [1, 2, 3, 7, 4096] {
            let (message, rest) = data(input, chunk, 1000).await;
            assert_eq!(
                message,
                Some(Data::Complete(
                    b"Subject: x\r\n\r\n.leading dot\r\nbare\nlf\n.\r\nlast\r\n".to_vec()
                )),
                "read {chunk} bytes at a time"
            );
            assert_eq!(rest, b"NOOP\r\n", "the next command is left unread");
        }
    }

    #[tokio::test]
    async fn no_smuggling_sequence_ends_the_data() {
        // Each of these ended a message at some server in 2023; here they
        // are content, and only the final CRLF . CRLF ends it.
        let ends: [&[u8]; 7] = [
            b"\n.\n", b"\n.\r\n", b"\r.\r", b"\r\n.\n", b"\r\n.\r", b"\r.\r\n", b"\n.\r",
        ];
        for end in ends {
            let smuggled: &[u8] =
                b"MAIL FROM:<ceo@shop.test>\r\nRCPT TO:<support@shop.test>\r\nDATA\r\n";
            let tail: &[u8] = b"pay now\r\n.\r\nQUIT\r\n";
            let input = [b"hello".as_slice(), end, smuggled, tail].concat();
            for chunk in [1, 3, 4096] {
                let (message, rest) = data(&input, chunk, 10_000).await;
                let Some(Data::Complete(message)) = message else {
                    panic!("{end:?}: no message: {message:?}");
                };
                assert!(
                    message.ends_with(b"DATA\r\npay now\r\n"),
                    "{end:?} did not end the data: {:?}",
                    String::from_utf8_lossy(&message)
                );
                assert_eq!(rest, b"QUIT\r\n", "{end:?} in chunks of {chunk}");
            }
        }
    }

    #[tokio::test]
    async fn bare_cr_is_content_and_a_dot_after_it_is_not_unstuffed() {
        let (message, _) = data(b"a\r..b\r\n.\rc\r\n\r\r\n.\r\n", 2, 100).await;
        // `.` CR c at a line start: the dot is stuffing, CR c the text.
        assert_eq!(
            message,
            Some(Data::Complete(b"a\r..b\r\n\rc\r\n\r\r\n".to_vec()))
        );
    }

    #[tokio::test]
    async fn a_dot_right_after_354_is_an_empty_message() {
        let (message, rest) = data(b".\r\nQUIT\r\n", 1, 100).await;
        assert_eq!(message, Some(Data::Complete(Vec::new())));
        assert_eq!(rest, b"QUIT\r\n");
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
        let mut reader: &[u8] = b"Subject: x\r\n\r\nhalf\n.\n";
        assert_eq!(read_data(&mut reader, 1000).await.unwrap(), None);
    }
}
