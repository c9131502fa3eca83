//! An entry's `envelope` field: JSON already encoded, or the envelope itself,
//! which the sink encodes while it writes. A mail's JSON carries its raw
//! message and attachments in base64, about 2.3 times the mail; encoded on
//! the way to the socket (see `resp.rs`), it is never held whole.

use std::borrow::Cow;
use std::io;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use crate::envelope::Envelope;

/// Entry field `envelope`: envelope v1 as JSON.
#[derive(Debug, Clone)]
pub enum EnvelopeJson {
    /// Encoded already: an entry read back and moved on (the held re-drive,
    /// a quarantine release), an `events` body.
    Encoded(String),
    /// Encoded by the sink as it writes the entry.
    Deferred(Arc<Envelope>),
}

impl From<String> for EnvelopeJson {
    fn from(json: String) -> Self {
        EnvelopeJson::Encoded(json)
    }
}

impl From<&str> for EnvelopeJson {
    fn from(json: &str) -> Self {
        EnvelopeJson::Encoded(json.to_string())
    }
}

impl From<Envelope> for EnvelopeJson {
    fn from(envelope: Envelope) -> Self {
        EnvelopeJson::Deferred(Arc::new(envelope))
    }
}

impl EnvelopeJson {
    /// The whole JSON (small entries, Redis Cluster, the memory sink, tests).
    pub fn to_json(&self) -> serde_json::Result<Cow<'_, str>> {
        match self {
            EnvelopeJson::Encoded(json) => Ok(Cow::Borrowed(json)),
            EnvelopeJson::Deferred(envelope) => serde_json::to_string(&**envelope).map(Cow::Owned),
        }
    }

    /// The whole JSON when it is at most `limit` bytes; `None` when it is
    /// longer, found out without encoding more than `limit` bytes of it.
    pub fn to_json_within(&self, limit: usize) -> serde_json::Result<Option<Cow<'_, str>>> {
        let envelope = match self {
            EnvelopeJson::Encoded(json) => {
                return Ok((json.len() <= limit).then_some(Cow::Borrowed(json)))
            }
            EnvelopeJson::Deferred(envelope) => envelope,
        };
        if base64_len(largest_parts(envelope)) > limit {
            return Ok(None);
        }
        let mut out = Capped {
            buf: Vec::new(),
            limit,
        };
        match serde_json::to_writer(&mut out, &**envelope) {
            Ok(()) => Ok(Some(Cow::Owned(
                String::from_utf8(out.buf).expect("serde_json writes UTF-8"),
            ))),
            // The only write error a Vec gives is the one of the cap.
            Err(e) if e.is_io() => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// The bytes the envelope carries as base64 (raw message and attachments):
/// its JSON is at least their encoded length.
fn largest_parts(envelope: &Envelope) -> usize {
    envelope.raw.as_ref().map_or(0, |raw| raw.bytes().len())
        + envelope
            .attachments
            .iter()
            .map(|a| a.content_base64.bytes().len())
            .sum::<usize>()
}

fn base64_len(bytes: usize) -> usize {
    bytes.div_ceil(3) * 4
}

/// A Vec that refuses to grow past `limit`.
struct Capped {
    buf: Vec<u8>,
    limit: usize,
}

impl io::Write for Capped {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.len() + data.len() > self.limit {
            return Err(io::Error::other("over the cap"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Text an envelope copy may duplicate for [`encoded_len`]'s shortcut.
const COPY_AT_MOST: usize = 1 << 20;

/// The length of the envelope's JSON, counted without keeping it.
/// CPU-bound for a large envelope: call it off the async workers.
///
/// Base64 of n bytes is 4⌈n/3⌉ characters, none of which JSON escapes:
/// when the envelope's text is small, the rest is counted on a copy whose
/// base64 parts are empty (their bytes are shared, not copied) and their
/// lengths added, instead of encoding them only to count.
pub fn encoded_len(envelope: &Envelope) -> serde_json::Result<u64> {
    if text_len(envelope) > COPY_AT_MOST {
        return counted(envelope);
    }
    let mut skeleton = envelope.clone();
    let mut parts = 0;
    let empty = |b64: &mut crate::envelope::Base64| {
        let len = b64.bytes().len();
        *b64 = crate::envelope::Base64::default();
        base64_len(len) as u64
    };
    if let Some(raw) = skeleton.raw.as_mut() {
        parts += empty(raw);
    }
    for attachment in &mut skeleton.attachments {
        parts += empty(&mut attachment.content_base64);
    }
    Ok(counted(&skeleton)? + parts)
}

fn counted(envelope: &Envelope) -> serde_json::Result<u64> {
    let mut counter = Counter(0);
    serde_json::to_writer(&mut counter, envelope)?;
    Ok(counter.0)
}

/// About the bytes an envelope's clone copies (its strings).
fn text_len(envelope: &Envelope) -> usize {
    let text = [
        &envelope.text,
        &envelope.html,
        &envelope.stripped_text,
        &envelope.stripped_signature,
    ]
    .into_iter()
    .map(|t| t.as_ref().map_or(0, String::len))
    .sum::<usize>();
    let headers = envelope
        .headers
        .iter()
        .map(|h| h.name.len() + h.value.len())
        .sum::<usize>();
    let fields = envelope
        .fields
        .values()
        .map(|v| match v {
            crate::envelope::FieldValue::One(v) => v.len(),
            crate::envelope::FieldValue::Many(vs) => vs.iter().map(String::len).sum(),
        })
        .sum::<usize>();
    text + headers + fields
}

struct Counter(u64);

impl io::Write for Counter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.0 += data.len() as u64;
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Encodes the envelope in pieces of about `piece` bytes, handing each to
/// `send` as it is full; `send` failing (the writer gave up) stops the
/// encoding. Returns the bytes encoded. CPU-bound: run it off the async
/// workers; at most one piece is held here at a time.
pub fn encode_in_pieces(
    envelope: &Envelope,
    piece: usize,
    send: impl FnMut(Bytes) -> io::Result<()>,
) -> serde_json::Result<u64> {
    let mut out = Pieces {
        buf: BytesMut::with_capacity(piece),
        piece,
        sent: 0,
        send,
    };
    serde_json::to_writer(&mut out, envelope)?;
    out.hand_on().map_err(serde_json::Error::io)?;
    Ok(out.sent)
}

struct Pieces<F> {
    buf: BytesMut,
    piece: usize,
    sent: u64,
    send: F,
}

impl<F: FnMut(Bytes) -> io::Result<()>> Pieces<F> {
    fn hand_on(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let full = std::mem::replace(&mut self.buf, BytesMut::with_capacity(self.piece));
        self.sent += full.len() as u64;
        (self.send)(full.freeze())
    }
}

impl<F: FnMut(Bytes) -> io::Result<()>> io::Write for Pieces<F> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= self.piece {
            self.hand_on()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::{parse, ParseOptions};
    use crate::submission::{Payload, Submission};

    fn envelope_of(raw: Vec<u8>) -> Envelope {
        let source = crate::envelope::Source::Mailgate {
            sender: None,
            recipients: vec![],
            ip: "127.0.0.1".into(),
            client: None,
        };
        let submission = Submission::new(source, Payload::Mail(Bytes::from(raw)));
        let options = ParseOptions {
            form: None,
            keep_raw: true,
        };
        parse(submission, options).expect("parses").envelope
    }

    fn mail_with_attachment(size: usize) -> Vec<u8> {
        use base64::Engine as _;
        let data: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
        let encoded = base64::engine::general_purpose::STANDARD.encode(&data);
        let mut mail = b"From: ann@example.com\r\nSubject: big\r\nMIME-Version: 1.0\r\n\
            Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\
            Content-Type: text/plain\r\n\r\nSee attached.\r\n--b\r\n\
            Content-Type: application/octet-stream\r\n\
            Content-Disposition: attachment; filename=x.bin\r\n\
            Content-Transfer-Encoding: base64\r\n\r\n"
            .to_vec();
        for line in encoded.as_bytes().chunks(76) {
            mail.extend_from_slice(line);
            mail.extend_from_slice(b"\r\n");
        }
        mail.extend_from_slice(b"--b--\r\n");
        mail
    }

    #[test]
    fn pieces_counted_and_whole_json_agree_byte_for_byte() {
        // Not a multiple of 3: the base64 ends in padding.
        let envelope = envelope_of(mail_with_attachment(300_001));
        let whole = serde_json::to_string(&envelope).unwrap();
        let mut pieces = Vec::new();
        let sent = encode_in_pieces(&envelope, 16 * 1024, |piece| {
            pieces.extend_from_slice(&piece);
            Ok(())
        })
        .unwrap();
        assert_eq!(encoded_len(&envelope).unwrap(), whole.len() as u64);
        assert_eq!(counted(&envelope).unwrap(), whole.len() as u64);
        assert_eq!(sent, whole.len() as u64);
        assert_eq!(pieces, whole.as_bytes(), "the pieces make the same JSON");
    }

    #[test]
    fn a_text_heavy_envelope_is_counted_whole_and_right() {
        let text = format!("From: a@b.c\r\n\r\n{}\r\n", "quote \" ".repeat(300_000));
        let envelope = envelope_of(text.into_bytes());
        assert!(text_len(&envelope) > COPY_AT_MOST, "takes the whole count");
        let whole = serde_json::to_string(&envelope).unwrap();
        assert_eq!(encoded_len(&envelope).unwrap(), whole.len() as u64);
    }

    #[test]
    fn a_writer_that_gives_up_stops_the_encoding() {
        let envelope = envelope_of(mail_with_attachment(300_000));
        let mut handed = 0;
        let result = encode_in_pieces(&envelope, 16 * 1024, |_| {
            handed += 1;
            Err(io::ErrorKind::BrokenPipe.into())
        });
        assert!(result.is_err(), "the encoder reports the writer's failure");
        assert_eq!(handed, 1, "nothing is encoded after the first refusal");
    }

    #[test]
    fn json_within_a_limit_is_whole_or_nothing() {
        let small = EnvelopeJson::from(envelope_of(b"From: a@b.c\r\n\r\nhi\r\n".to_vec()));
        let json = small.to_json_within(1 << 20).unwrap().expect("small fits");
        assert_eq!(json, small.to_json().unwrap());
        let large = EnvelopeJson::from(envelope_of(mail_with_attachment(2 << 20)));
        assert!(large.to_json_within(1 << 20).unwrap().is_none());
        // Text is not base64: the cap still stops it.
        let text = format!("From: a@b.c\r\n\r\n{}\r\n", "word ".repeat(300_000));
        let mut envelope = envelope_of(text.into_bytes());
        envelope.raw = None;
        let texty = EnvelopeJson::from(envelope);
        assert!(texty.to_json_within(1 << 20).unwrap().is_none());
        assert!(texty.to_json_within(8 << 20).unwrap().is_some());
    }
}
