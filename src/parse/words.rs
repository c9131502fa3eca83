//! RFC 2047 encoded-words, where mail-parser 0.11 gets them wrong. It
//! decodes each word by itself, so a character split across two adjacent
//! words (`=?UTF-8?B?0J/R?= =?UTF-8?B?gNC4...?=`) comes out as two U+FFFD,
//! and folding between words inside a quoted parameter (`name="=?..?=\r\n
//! =?..?="`) leaves a space in the name; it also reads UTF-8 under a
//! `us-ascii` or `iso-8859-1` word as windows-1252 (see [`super::charset`]).
//!
//! [`repair_headers`] finds the headers intake reads whose raw value has
//! such words (a byte scan, nothing allocated for the others), rewrites
//! each run of adjacent words as one UTF-8 word, their bytes joined before
//! the charset decode, and lets mail-parser's own header parser read the
//! rewritten value, so every other rule of its parsing still holds. RFC
//! 2231 continuations of a Content-Type or Content-Disposition are then
//! joined by [`super::params`].

use base64::Engine as _;
use mail_parser::parsers::MessageStream;
use mail_parser::{HeaderName, HeaderValue, Message};

use super::charset;

/// One encoded-word found in a header value.
struct Word<'a> {
    /// Where it starts (`=?`) and ends (after `?=`) in the value.
    start: usize,
    end: usize,
    charset: &'a str,
    /// Its decoded bytes, before the charset decode.
    bytes: Vec<u8>,
}

/// Which of mail-parser's parsers reads a header.
#[derive(Clone, Copy)]
enum Kind {
    Unstructured,
    Address,
    ContentType,
}

/// The kind of a header intake reads decoded, as mail-parser's default
/// parser assigns them; `None` for those it keeps as written.
fn kind(name: &HeaderName<'_>) -> Option<Kind> {
    use HeaderName::*;
    match name {
        Subject | Comments | ContentDescription | ContentLocation => Some(Kind::Unstructured),
        From | To | Cc | Bcc | ReplyTo | Sender | ResentTo | ResentFrom | ResentBcc | ResentCc
        | ResentSender => Some(Kind::Address),
        ContentType | ContentDisposition => Some(Kind::ContentType),
        _ => None,
    }
}

/// Re-reads every header of every part (nested messages aside: intake
/// reads only their raw bytes) whose raw value mail-parser decoded wrong.
pub(super) fn repair_headers(message: &mut Message<'_>) {
    let raw = message.raw_message.clone();
    for part in &mut message.parts {
        for header in &mut part.headers {
            let Some(kind) = kind(&header.name) else {
                continue;
            };
            let Some(value) = raw.get(header.offset_start as usize..header.offset_end as usize)
            else {
                continue;
            };
            if let Some(rewritten) = rewrite(value) {
                header.value = reparse(kind, &rewritten);
            }
            if let (Kind::ContentType, HeaderValue::ContentType(content_type)) =
                (kind, &mut header.value)
            {
                if super::params::has_extended_continuation(value) {
                    super::params::repair(content_type, value);
                }
            }
        }
    }
}

/// The value read by mail-parser's parser for `kind`.
fn reparse(kind: Kind, value: &[u8]) -> HeaderValue<'static> {
    let mut line = value.to_vec();
    if !line.ends_with(b"\n") {
        line.extend_from_slice(b"\r\n");
    }
    let mut stream = MessageStream::new(&line);
    let value = match kind {
        Kind::Unstructured => stream.parse_unstructured(),
        Kind::Address => stream.parse_address(),
        Kind::ContentType => stream.parse_content_type(),
    };
    value.into_owned()
}

/// `value` with each run of adjacent encoded-words as one UTF-8 word and
/// raw 8-bit text that is not UTF-8 read as windows-1252; `None` when
/// mail-parser reads `value` right as it is (the fast path).
pub(super) fn rewrite(value: &[u8]) -> Option<Vec<u8>> {
    let raw_8bit_not_utf8 = !value.is_ascii() && std::str::from_utf8(value).is_err();
    if !raw_8bit_not_utf8 && !contains(value, b"=?") {
        return None;
    }
    let words = words(value);
    let runs = runs(value, &words);
    let needed = raw_8bit_not_utf8
        || runs.iter().any(|run| {
            run.windows(2)
                .any(|w| w[0].charset.eq_ignore_ascii_case(w[1].charset))
                || run
                    .iter()
                    .any(|w| charset::misread_by_mail_parser(&w.bytes, Some(w.charset)))
        });
    if !needed {
        return None;
    }
    let mut out = Vec::with_capacity(value.len());
    let mut at = 0;
    for run in runs {
        let (first, last) = (&run[0], &run[run.len() - 1]);
        out.extend_from_slice(&text(&value[at..first.start]));
        out.extend_from_slice(b"=?UTF-8?B?");
        let decoded = decode_run(run);
        out.extend_from_slice(
            base64::engine::general_purpose::STANDARD
                .encode(decoded.as_bytes())
                .as_bytes(),
        );
        out.extend_from_slice(b"?=");
        at = last.end;
    }
    out.extend_from_slice(&text(&value[at..]));
    Some(out)
}

/// Text outside encoded-words: as it is when it is UTF-8 (mail-parser reads
/// it so), else read by [`charset::decode`] unlabelled.
fn text(segment: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    if std::str::from_utf8(segment).is_ok() {
        segment.into()
    } else {
        charset::decode(segment, None).into_bytes().into()
    }
}

/// A run of adjacent words as one string: the bytes of consecutive words
/// of the same charset joined, then decoded.
fn decode_run(run: &[Word<'_>]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < run.len() {
        let charset = run[i].charset;
        let mut bytes = Vec::new();
        while i < run.len() && run[i].charset.eq_ignore_ascii_case(charset) {
            bytes.extend_from_slice(&run[i].bytes);
            i += 1;
        }
        out.push_str(&charset::decode(&bytes, Some(charset)));
    }
    out
}

/// The words in `value`, in order, that decode.
fn words(value: &[u8]) -> Vec<Word<'_>> {
    let mut found = Vec::new();
    let mut at = 0;
    while let Some(offset) = find(&value[at..], b"=?") {
        let start = at + offset;
        match word_at(value, start) {
            Some(word) => {
                at = word.end;
                found.push(word);
            }
            None => at = start + 2,
        }
    }
    found
}

/// The encoded-word `=?charset?B|Q?text?=` starting at `start`, if one
/// does and decodes.
fn word_at(value: &[u8], start: usize) -> Option<Word<'_>> {
    let rest = &value[start + 2..];
    let charset_len = rest
        .iter()
        .position(|&b| b == b'?' || b.is_ascii_whitespace())?;
    if charset_len == 0 || rest[charset_len] != b'?' {
        return None;
    }
    let charset = std::str::from_utf8(&rest[..charset_len]).ok()?;
    let encoding = *rest.get(charset_len + 1)?;
    if rest.get(charset_len + 2) != Some(&b'?') {
        return None;
    }
    let text_start = start + 2 + charset_len + 3;
    let text = &value[text_start..];
    // RFC 2047: no white space inside a word.
    let text_len = find(text, b"?=")?;
    if text[..text_len].iter().any(u8::is_ascii_whitespace) {
        return None;
    }
    let end = text_start + text_len + 2;
    // mail-parser's word decoders read up to and including the `?=`.
    let mut stream = MessageStream::new(&value[text_start..end]);
    let bytes = match encoding {
        b'B' | b'b' => stream.decode_base64_word()?,
        b'Q' | b'q' => stream.decode_quoted_printable_word()?,
        _ => return None,
    };
    Some(Word {
        start,
        end,
        charset,
        bytes,
    })
}

/// The words grouped into runs: words with only white space (folding
/// included) between them, which RFC 2047 section 6.2 says to ignore.
fn runs<'w, 'a>(value: &[u8], words: &'w [Word<'a>]) -> Vec<&'w [Word<'a>]> {
    let mut runs = Vec::new();
    let mut first = 0;
    for i in 1..=words.len() {
        let joined = i < words.len()
            && value[words[i - 1].end..words[i].start]
                .iter()
                .all(u8::is_ascii_whitespace);
        if !joined {
            if first < i {
                runs.push(&words[first..i]);
            }
            first = i;
        }
    }
    runs
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    find(haystack, needle).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unstructured(value: &str) -> String {
        let value = value.as_bytes();
        let rewritten = rewrite(value).unwrap_or_else(|| value.to_vec());
        match reparse(Kind::Unstructured, &rewritten) {
            HeaderValue::Text(text) => text.into_owned(),
            other => panic!("not text: {other:?}"),
        }
    }

    #[test]
    fn a_character_split_across_two_b_words_is_whole() {
        // "Привет": the second word starts inside "р" (d1 80).
        assert_eq!(
            unstructured(" =?UTF-8?B?0J/R?= =?UTF-8?B?gNC40LLQtdGC?="),
            "Привет"
        );
    }

    #[test]
    fn a_character_split_across_two_folded_q_words_is_whole() {
        assert_eq!(
            unstructured(" =?utf-8?Q?Solidarno=C5?=\r\n =?utf-8?q?=9B=C4=87?="),
            "Solidarność"
        );
    }

    #[test]
    fn words_of_different_charsets_are_each_decoded_and_text_between_is_kept() {
        assert_eq!(
            unstructured(
                " =?iso-8859-2?Q?=B6?= =?utf-8?Q?=C4=87?= and =?utf-8?B?0J/R?= =?utf-8?B?gA==?="
            ),
            "ść and Пр"
        );
    }

    #[test]
    fn values_mail_parser_reads_right_are_not_rewritten() {
        for value in [
            " plain subject",
            " =?utf-8?Q?Gr=C3=BC=C3=9Fe?=",
            " =?utf-8?Q?a?= text =?utf-8?Q?b?=",
            " =?iso-8859-1?Q?Gr=FC=DFe?=",
            " Grüße, raw UTF-8",
            " =?broken",
        ] {
            assert!(rewrite(value.as_bytes()).is_none(), "{value:?}");
        }
    }

    #[test]
    fn utf8_in_a_us_ascii_word_is_utf8() {
        assert_eq!(unstructured(" =?us-ascii?Q?Gr=C3=BC=C3=9Fe?="), "Grüße");
    }

    #[test]
    fn raw_windows_1252_in_a_header_is_read_as_such() {
        let value = b" Gr\xfc\xdfe \x93x\x94";
        let rewritten = rewrite(value).expect("not UTF-8: rewritten");
        match reparse(Kind::Unstructured, &rewritten) {
            HeaderValue::Text(text) => assert_eq!(text, "Grüße “x”"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_display_name_split_across_words_is_whole() {
        let value = " =?UTF-8?B?xYF1a2FzeiDF?= =?UTF-8?B?u8OzxYJ3?= <l@example.com>";
        let rewritten = rewrite(value.as_bytes()).expect("rewritten");
        let HeaderValue::Address(address) = reparse(Kind::Address, &rewritten) else {
            panic!("not an address");
        };
        let first = address.first().expect("one address");
        assert_eq!(first.name(), Some("Łukasz Żółw"));
        assert_eq!(first.address(), Some("l@example.com"));
    }

    #[test]
    fn a_folded_quoted_name_parameter_has_no_stray_space() {
        let value = b" application/pdf;\r\n name=\"=?UTF-8?Q?Solidarno=C5=9B?=\r\n  =?UTF-8?Q?=C4=87.pdf?=\"";
        let rewritten = rewrite(value).expect("rewritten");
        let HeaderValue::ContentType(ct) = reparse(Kind::ContentType, &rewritten) else {
            panic!("not a content type");
        };
        assert_eq!(ct.attribute("name"), Some("Solidarność.pdf"));
        assert_eq!(ct.subtype(), Some("pdf"));
    }
}
