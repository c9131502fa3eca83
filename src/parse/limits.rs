//! MIME limits: how deep, how many parts, how long a header line and how
//! much decoded content a mail may have. The parser measures every mail
//! ([`MimeStats`]); a mail beyond a `[mime]` limit is not refused (a mail
//! server would only retry it) but stored in `intake:quarantine` with kind
//! `mime-limit` and a reason naming the limit, so an operator can look at
//! it and nothing reaches the desk that its tools might choke on.

use serde::Deserialize;

use crate::units::ByteSize;

/// The `[mime]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MimeConfig {
    /// Deepest nesting of multipart and message/rfc822 parts; the message
    /// itself is depth 0. Real mail rarely goes past 5.
    #[serde(default = "default_max_depth")]
    pub max_depth: usize,
    /// Most MIME parts in one message, nested messages' parts included.
    #[serde(default = "default_max_parts")]
    pub max_parts: usize,
    /// Longest header line in bytes, before unfolding. RFC 5322 allows 998;
    /// the default leaves room for sloppy senders.
    #[serde(default = "default_max_header_line")]
    pub max_header_line: usize,
    /// Largest total of the decoded part contents.
    #[serde(default = "default_max_decoded_size")]
    pub max_decoded_size: ByteSize,
}

fn default_max_depth() -> usize {
    20
}
fn default_max_parts() -> usize {
    500
}
fn default_max_header_line() -> usize {
    10_000
}
fn default_max_decoded_size() -> ByteSize {
    ByteSize(100 * 1000 * 1000)
}

impl Default for MimeConfig {
    fn default() -> Self {
        MimeConfig {
            max_depth: default_max_depth(),
            max_parts: default_max_parts(),
            max_header_line: default_max_header_line(),
            max_decoded_size: default_max_decoded_size(),
        }
    }
}

impl MimeConfig {
    /// The first limit `stats` exceeds, as the reason an operator reads.
    pub fn exceeded(&self, stats: &MimeStats) -> Option<String> {
        if stats.depth > self.max_depth {
            return Some(format!(
                "nesting depth {} exceeds mime.max_depth {}",
                stats.depth, self.max_depth
            ));
        }
        if stats.parts > self.max_parts {
            return Some(format!(
                "{} MIME parts exceed mime.max_parts {}",
                stats.parts, self.max_parts
            ));
        }
        if stats.longest_header_line > self.max_header_line {
            return Some(format!(
                "a header line of {} bytes exceeds mime.max_header_line {}",
                stats.longest_header_line, self.max_header_line
            ));
        }
        if stats.decoded_size > self.max_decoded_size.0 {
            return Some(format!(
                "decoded content of {} bytes exceeds mime.max_decoded_size {}",
                stats.decoded_size, self.max_decoded_size.0
            ));
        }
        None
    }
}

impl crate::validate::Validate for MimeConfig {
    fn validate(&self, at: &str, problems: &mut Vec<String>) {
        if self.max_depth == 0 {
            problems.push(format!("{at}.max_depth: must be at least 1"));
        }
        if self.max_parts == 0 {
            problems.push(format!("{at}.max_parts: must be at least 1"));
        }
        if self.max_header_line < 998 {
            problems.push(format!(
                "{at}.max_header_line: must be at least 998 (RFC 5322)"
            ));
        }
        if self.max_decoded_size.0 == 0 {
            problems.push(format!("{at}.max_decoded_size: must be above 0"));
        }
    }
}

/// What the parser measured of one mail; all zeros for a form post.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MimeStats {
    /// Deepest part; the message itself is 0, its multipart children 1.
    pub depth: usize,
    /// Parts, nested messages' parts included.
    pub parts: usize,
    /// Longest header line of the message and of every part, in bytes.
    pub longest_header_line: usize,
    /// Sum of the decoded leaf contents.
    pub decoded_size: u64,
}

/// Measures a parsed message. Walks with an explicit stack, never by
/// recursion, so a hostile nesting cannot exhaust the thread's stack.
pub(super) fn measure(message: &mail_parser::Message<'_>) -> MimeStats {
    use mail_parser::PartType;

    let mut stats = MimeStats::default();
    // (message, part index, depth)
    let mut stack: Vec<(&mail_parser::Message<'_>, usize, usize)> = vec![(message, 0, 0)];
    while let Some((msg, index, depth)) = stack.pop() {
        let Some(part) = msg.parts.get(index) else {
            continue;
        };
        stats.parts += 1;
        stats.depth = stats.depth.max(depth);
        let raw = msg.raw_message.as_ref();
        let headers = raw
            .get(part.offset_header as usize..part.offset_body as usize)
            .unwrap_or_default();
        let longest = headers
            .split(|b| *b == b'\n')
            .map(|line| line.strip_suffix(b"\r").unwrap_or(line).len())
            .max()
            .unwrap_or(0);
        stats.longest_header_line = stats.longest_header_line.max(longest);
        match &part.body {
            PartType::Text(t) | PartType::Html(t) => stats.decoded_size += t.len() as u64,
            PartType::Binary(b) | PartType::InlineBinary(b) => stats.decoded_size += b.len() as u64,
            PartType::Multipart(children) => {
                for &child in children {
                    stack.push((msg, child as usize, depth + 1));
                }
            }
            PartType::Message(nested) => stack.push((nested, 0, depth + 1)),
        }
    }
    stats
}

/// Drops a parsed message level by level. mail-parser's own drop recurses
/// once per nested message/rfc822, and some 10,000 levels (300 KB of
/// hostile mail) overflow a 2 MiB worker stack and abort the process.
pub(super) fn dismantle(message: mail_parser::Message<'_>) {
    let mut stack = vec![message];
    while let Some(mut message) = stack.pop() {
        for part in &mut message.parts {
            if let mail_parser::PartType::Message(nested) = std::mem::take(&mut part.body) {
                stack.push(nested);
            }
        }
        // `message` is dropped here, with no nested message left inside.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(raw: &[u8]) -> MimeStats {
        let message = mail_parser::MessageParser::default()
            .parse(raw)
            .expect("parses");
        measure(&message)
    }

    /// A multipart/mixed nested `depth` times around one text part.
    pub(crate) fn nested_multipart(depth: usize) -> Vec<u8> {
        let mut raw = b"From: a@example.com\r\nSubject: deep\r\nMIME-Version: 1.0\r\n".to_vec();
        for level in 0..depth {
            raw.extend_from_slice(
                format!(
                    "Content-Type: multipart/mixed; boundary=\"b{level}\"\r\n\r\n--b{level}\r\n"
                )
                .as_bytes(),
            );
        }
        raw.extend_from_slice(b"Content-Type: text/plain\r\n\r\ninnermost\r\n");
        for level in (0..depth).rev() {
            raw.extend_from_slice(format!("--b{level}--\r\n").as_bytes());
        }
        raw
    }

    #[test]
    fn a_plain_mail_is_one_part_at_depth_zero() {
        let s = stats(b"From: a@example.com\r\nSubject: hi\r\n\r\nhello\r\n");
        assert_eq!((s.depth, s.parts), (0, 1));
        assert_eq!(s.longest_header_line, "From: a@example.com".len());
        assert_eq!(s.decoded_size, "hello\r\n".len() as u64);
    }

    #[test]
    fn deep_nesting_is_measured_without_recursion() {
        let s = stats(&nested_multipart(100));
        assert_eq!(s.depth, 100, "one level per multipart");
        assert_eq!(s.parts, 101, "100 multiparts and the text part");
        let config = MimeConfig::default();
        assert_eq!(
            config.exceeded(&s).as_deref(),
            Some("nesting depth 100 exceeds mime.max_depth 20")
        );
    }

    #[test]
    fn nested_messages_count_their_parts_and_depth() {
        let mut raw = Vec::new();
        for _ in 0..30 {
            raw.extend_from_slice(b"From: a@example.com\r\nContent-Type: message/rfc822\r\n\r\n");
        }
        raw.extend_from_slice(b"From: z@example.com\r\nSubject: core\r\n\r\ncore\r\n");
        let s = stats(&raw);
        assert!(
            s.depth >= 21,
            "30 nested messages are deeper than 20: {s:?}"
        );
        assert!(MimeConfig::default().exceeded(&s).is_some());
    }

    #[test]
    fn long_header_lines_and_many_parts_are_reported() {
        let mut raw = format!(
            "From: a@example.com\r\nX-Long: {}\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n",
            "x".repeat(20_000)
        )
        .into_bytes();
        for i in 0..600 {
            raw.extend_from_slice(
                format!("--b\r\nContent-Type: text/plain\r\n\r\npart {i}\r\n").as_bytes(),
            );
        }
        raw.extend_from_slice(b"--b--\r\n");
        let s = stats(&raw);
        assert_eq!(s.parts, 601);
        assert_eq!(s.longest_header_line, "X-Long: ".len() + 20_000);
        let config = MimeConfig {
            max_depth: 20,
            max_parts: 1000,
            ..MimeConfig::default()
        };
        assert_eq!(
            config.exceeded(&s).as_deref(),
            Some("a header line of 20008 bytes exceeds mime.max_header_line 10000")
        );
        assert_eq!(
            MimeConfig::default().exceeded(&s).as_deref(),
            Some("601 MIME parts exceed mime.max_parts 500")
        );
    }

    #[test]
    fn very_deep_attached_messages_parse_on_a_small_stack() {
        // Far past any limit, as a hostile sender could post within
        // messages.max_size; parse, measure and drop on a 2 MiB stack
        // (a tokio worker's) must not overflow.
        let mut raw = Vec::new();
        for _ in 0..DEEP {
            raw.extend_from_slice(b"Content-Type: message/rfc822\r\n\r\n");
        }
        raw.extend_from_slice(b"Subject: core\r\n\r\ncore\r\n");
        let depth = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || {
                let submission = crate::submission::Submission::new(
                    crate::envelope::Source::Mailgate {
                        sender: None,
                        recipients: vec![],
                        ip: "127.0.0.1".into(),
                        client: None,
                    },
                    crate::submission::Payload::Mail(raw.into()),
                );
                let options = crate::parse::ParseOptions {
                    form: None,
                    keep_raw: true,
                };
                crate::parse::parse(submission, options).unwrap().mime.depth
            })
            .unwrap()
            .join()
            .expect("no stack overflow");
        assert!(depth > 20, "measured as deep: {depth}");
    }

    const DEEP: usize = 20_000;

    #[test]
    fn validation_names_every_bad_setting() {
        let config = MimeConfig {
            max_depth: 0,
            max_parts: 0,
            max_header_line: 100,
            max_decoded_size: ByteSize(0),
        };
        let mut problems = Vec::new();
        crate::validate::Validate::validate(&config, "mime", &mut problems);
        assert_eq!(problems.len(), 4, "{problems:#?}");
    }
}
