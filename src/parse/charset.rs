//! Text bytes and the charset they were labelled with, to a string, the way
//! mail readers settle the usual mislabels. mail-parser decodes every label
//! it knows; this module decides only where its answer is known to be wrong:
//!
//! - a label of the windows-1252 family (`us-ascii`, `iso-8859-1`, `latin1`,
//!   `windows-1252`, the WHATWG Encoding Standard's aliases) on bytes that
//!   are valid UTF-8 with non-ASCII in them: that is UTF-8 (a client that
//!   wrote UTF-8 and declared its default), not mojibake (`GrÃ¼ÃŸe`);
//! - no label, a label of that family or `utf-8`, on bytes with no UTF-8
//!   sequence of more than one byte in them at all: windows-1252, as
//!   browsers read latin-1 (curly quotes and € where ISO 8859-1 has C1
//!   controls), not U+FFFD for every non-ASCII byte.
//!
//! Bytes that are partly UTF-8 and partly not stay UTF-8 with U+FFFD for
//! the broken bytes: one stray byte does not turn a UTF-8 text into
//! mojibake.

use std::borrow::Cow;

use encoding_rs::{Encoding, UTF_8, WINDOWS_1252};
use mail_parser::{Encoding as TransferEncoding, Message, MessagePart, MimeHeaders, PartType};

/// How bytes under a label are to be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reading {
    /// By the label: mail-parser's decoder for it, or UTF-8 for an
    /// unknown label or none.
    AsLabelled,
    /// As UTF-8: valid UTF-8 under a windows-1252-family label.
    Utf8,
    /// As windows-1252: a windows-1252-family label on bytes that are not
    /// UTF-8, or bytes with no UTF-8 in them at all, unlabelled or labelled
    /// UTF-8 (or with a label mail-parser does not know).
    Windows1252,
}

/// The label without RFC 2231 language (`utf-8*en`), quotes or spaces.
fn clean(label: &str) -> &str {
    let label = label.trim().trim_matches('"');
    label.split_once('*').map_or(label, |(charset, _)| charset)
}

/// Whether the label is one of windows-1252's (us-ascii and latin-1 too).
fn is_windows_1252_family(label: &str) -> bool {
    Encoding::for_label(label.as_bytes()) == Some(WINDOWS_1252)
}

/// mail-parser's decoder for a label; `None`: it reads the bytes as UTF-8.
fn decoder(label: &str) -> Option<mail_parser::decoders::charsets::DecoderFnc> {
    if Encoding::for_label(label.as_bytes()) == Some(UTF_8) {
        return None;
    }
    mail_parser::decoders::charsets::map::charset_decoder(label.as_bytes())
}

/// Whether `bytes` hold a UTF-8 sequence of two or more bytes.
fn has_multibyte_utf8(bytes: &[u8]) -> bool {
    bytes.utf8_chunks().any(|chunk| !chunk.valid().is_ascii())
}

/// How `bytes` labelled `label` (`None`: unlabelled) are to be read.
pub(super) fn reading(bytes: &[u8], label: Option<&str>) -> Reading {
    if bytes.is_ascii() {
        return Reading::AsLabelled;
    }
    let label = label.map(clean).filter(|l| !l.is_empty());
    if label.is_some_and(is_windows_1252_family) {
        return if std::str::from_utf8(bytes).is_ok() {
            Reading::Utf8
        } else {
            Reading::Windows1252
        };
    }
    if label.and_then(decoder).is_some() {
        return Reading::AsLabelled;
    }
    if std::str::from_utf8(bytes).is_err() && !has_multibyte_utf8(bytes) {
        Reading::Windows1252
    } else {
        Reading::AsLabelled
    }
}

/// Whether mail-parser, decoding `bytes` under `label` itself, gets a
/// different text than [`decode`] (it reads the windows-1252 family as
/// windows-1252 already).
pub(super) fn misread_by_mail_parser(bytes: &[u8], label: Option<&str>) -> bool {
    match reading(bytes, label) {
        Reading::AsLabelled => false,
        Reading::Utf8 => true,
        Reading::Windows1252 => label
            .map(clean)
            .is_none_or(|l| !is_windows_1252_family(l) || decoder(l).is_none()),
    }
}

/// `bytes` labelled `label` as text, by the rules of this module.
pub(super) fn decode(bytes: &[u8], label: Option<&str>) -> String {
    match reading(bytes, label) {
        Reading::Utf8 => String::from_utf8_lossy(bytes).into_owned(),
        Reading::Windows1252 => WINDOWS_1252
            .decode_without_bom_handling(bytes)
            .0
            .into_owned(),
        Reading::AsLabelled => match label.map(clean).and_then(decoder) {
            Some(decoder) => decoder(bytes),
            None => String::from_utf8_lossy(bytes).into_owned(),
        },
    }
}

/// Decodes again, from the raw message, every text part of `message`
/// (nested messages aside: intake keeps only their raw bytes) that
/// mail-parser decoded otherwise than this module's rules say.
pub(super) fn repair_texts(message: &mut Message<'_>) {
    let raw = message.raw_message.clone();
    for part in &mut message.parts {
        let (PartType::Text(text) | PartType::Html(text)) = &part.body else {
            continue;
        };
        // The fast path: only a non-ASCII text can have been misread, and
        // under a UTF-8 reading only one with U+FFFD in it.
        if text.is_ascii() {
            continue;
        }
        let label = part
            .content_type()
            .and_then(|ct| ct.attribute("charset"))
            .map(|l| clean(l).to_string());
        let label = label.as_deref().filter(|l| !l.is_empty());
        let suspect = match label {
            Some(l) if is_windows_1252_family(l) => true,
            Some(l) if decoder(l).is_some() => false,
            _ => text.contains('\u{FFFD}'),
        };
        if !suspect {
            continue;
        }
        let Some(bytes) = transfer_decoded(&raw, part) else {
            continue;
        };
        if misread_by_mail_parser(&bytes, label) {
            let fixed = Cow::Owned(decode(&bytes, label));
            if let PartType::Text(text) | PartType::Html(text) = &mut part.body {
                *text = fixed;
            }
        }
    }
}

/// A part's body bytes as sent, transfer-decoded, before any charset.
fn transfer_decoded<'r>(raw: &'r [u8], part: &MessagePart<'_>) -> Option<Cow<'r, [u8]>> {
    let body = raw.get(part.offset_body as usize..part.offset_end as usize)?;
    match part.encoding {
        TransferEncoding::None => Some(body.into()),
        TransferEncoding::Base64 => {
            mail_parser::decoders::base64::base64_decode(body).map(Cow::Owned)
        }
        TransferEncoding::QuotedPrintable => {
            mail_parser::decoders::quoted_printable::quoted_printable_decode(body).map(Cow::Owned)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UTF8: &[u8] = "Grüße “quoted” €".as_bytes();
    /// "Grüße “quoted” € …" in windows-1252.
    const CP1252: &[u8] = b"Gr\xfc\xdfe \x93quoted\x94 \x80 \x85";

    #[test]
    fn utf8_declared_as_us_ascii_or_latin1_is_utf8() {
        for label in [
            "us-ascii",
            "US-ASCII",
            "ascii",
            "iso-8859-1",
            "latin1",
            "windows-1252",
        ] {
            assert_eq!(decode(UTF8, Some(label)), "Grüße “quoted” €", "{label}");
        }
    }

    #[test]
    fn windows_1252_declared_as_latin1_keeps_its_quotes_and_euro() {
        for label in [
            "iso-8859-1",
            "ISO_8859-1",
            "latin1",
            "us-ascii",
            "windows-1252",
        ] {
            assert_eq!(decode(CP1252, Some(label)), "Grüße “quoted” € …", "{label}");
        }
    }

    #[test]
    fn unlabelled_and_utf8_labelled_bytes_with_no_utf8_in_them_are_windows_1252() {
        assert_eq!(decode(CP1252, None), "Grüße “quoted” € …");
        assert_eq!(decode(CP1252, Some("utf-8")), "Grüße “quoted” € …");
        assert_eq!(decode(UTF8, None), "Grüße “quoted” €", "UTF-8 stays UTF-8");
    }

    #[test]
    fn mostly_utf8_with_a_stray_byte_stays_utf8() {
        let mut bytes = UTF8.to_vec();
        bytes.push(0xff);
        assert_eq!(decode(&bytes, Some("utf-8")), "Grüße “quoted” €\u{FFFD}");
        assert_eq!(decode(&bytes, None), "Grüße “quoted” €\u{FFFD}");
    }

    #[test]
    fn other_labels_are_mail_parser_s_decoders() {
        let koi8 = b"\xf0\xd2\xc9\xd7\xc5\xd4";
        assert_eq!(decode(koi8, Some("koi8-r")), "Привет");
        assert_eq!(reading(koi8, Some("koi8-r")), Reading::AsLabelled);
        assert!(!misread_by_mail_parser(koi8, Some("koi8-r")));
        assert!(
            !misread_by_mail_parser(CP1252, Some("iso-8859-1")),
            "mail-parser reads latin-1 as windows-1252 too"
        );
        assert!(misread_by_mail_parser(UTF8, Some("us-ascii")));
        assert!(misread_by_mail_parser(CP1252, None));
        assert_eq!(decode(b"\xa4", Some("iso-8859-15")), "€");
        assert_eq!(
            decode(b"\x83n\x83\x8D\x81[", Some("shift_jis")),
            "ハロー",
            "multi-byte charsets"
        );
        assert_eq!(decode(b"plain", Some("x-unknown")), "plain");
        assert_eq!(decode("Grüße".as_bytes(), Some("x-unknown")), "Grüße");
        assert_eq!(
            decode(b"Gr\xfc\xdfe", Some("utf-8*de")),
            "Grüße",
            "RFC 2231 language"
        );
    }
}
