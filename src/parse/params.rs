//! RFC 2231 parameter continuations (`filename*0*=utf-8''Solidarno%C5;
//! filename*1*=%9B%C4%87.pdf`), where mail-parser 0.11 gets them wrong: it
//! decodes each segment by itself, so a character split across two
//! segments comes out as U+FFFD, and segments after the first are read as
//! UTF-8 whatever charset the first named (`iso-8859-1''Gr%FC; ...*1*=%DFe`).
//!
//! [`repair`] reassembles a parameter's segments in order, percent-decoding
//! the extended ones (`*N*=`), joins all their bytes and only then decodes
//! them with the charset of segment 0. It runs only on a Content-Type or
//! Content-Disposition whose raw value has an extended continuation.

use std::borrow::Cow;

use mail_parser::{Attribute, ContentType};

use super::charset;

/// Whether a raw header value has an extended continuation segment
/// (`*0*=`, `*1*=`, ...): the only shape mail-parser misreads.
pub(super) fn has_extended_continuation(value: &[u8]) -> bool {
    value
        .windows(4)
        .any(|w| w[0] == b'*' && w[1].is_ascii_digit() && w[2] == b'*' && w[3] == b'=')
        || value.windows(5).any(|w| {
            w[0] == b'*'
                && w[1].is_ascii_digit()
                && w[2].is_ascii_digit()
                && w[3] == b'*'
                && w[4] == b'='
        })
}

/// Re-reads every continued parameter of `content_type` from the raw
/// header `value`.
pub(super) fn repair(content_type: &mut ContentType<'_>, value: &[u8]) {
    let params = params(value);
    let mut names: Vec<&str> = params
        .iter()
        .filter(|p| p.segment.is_some())
        .map(|p| p.name)
        .collect();
    names.sort_unstable_by_key(|n| n.to_ascii_lowercase());
    names.dedup_by(|a, b| a.eq_ignore_ascii_case(b));
    for name in names {
        let Some(joined) = join(&params, name) else {
            continue;
        };
        let attributes = content_type.attributes.get_or_insert_with(Vec::new);
        let lower = name.to_ascii_lowercase();
        match attributes
            .iter_mut()
            .find(|a| a.name.eq_ignore_ascii_case(&lower))
        {
            Some(attribute) => attribute.value = joined.into(),
            None => attributes.push(Attribute {
                name: lower.into(),
                value: joined.into(),
            }),
        }
    }
}

/// One `name[*N][*]=value` parameter as written.
struct Param<'a> {
    name: &'a str,
    /// The continuation number, for `name*N` and `name*N*`.
    segment: Option<u32>,
    /// Whether it is extended (`*` before `=`): percent-encoded, and for
    /// the first segment prefixed by `charset'language'`.
    extended: bool,
    /// The value, unquoted, as bytes.
    value: Cow<'a, [u8]>,
}

/// The value of the continued parameter `name`, decoded; `None` when it
/// has no segment 0.
fn join(params: &[Param<'_>], name: &str) -> Option<String> {
    let mut segments: Vec<&Param<'_>> = params
        .iter()
        .filter(|p| p.segment.is_some() && p.name.eq_ignore_ascii_case(name))
        .collect();
    segments.sort_by_key(|p| p.segment);
    if segments.first()?.segment != Some(0) {
        return None;
    }
    let mut charset = None;
    let mut bytes = Vec::new();
    for param in &segments {
        let mut value: &[u8] = &param.value;
        if param.extended && param.segment == Some(0) {
            // charset'language'text
            let mut parts = value.splitn(3, |&b| b == b'\'');
            match (parts.next(), parts.next(), parts.next()) {
                (Some(cs), Some(_language), Some(text)) => {
                    charset = std::str::from_utf8(cs).ok().filter(|c| !c.is_empty());
                    value = text;
                }
                _ => value = &param.value,
            }
        }
        if param.extended {
            percent_decode_into(value, &mut bytes);
        } else {
            bytes.extend_from_slice(value);
        }
    }
    Some(charset::decode(&bytes, charset))
}

fn percent_decode_into(value: &[u8], out: &mut Vec<u8>) {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut i = 0;
    while i < value.len() {
        if value[i] == b'%' && i + 2 < value.len() {
            if let (Some(h), Some(l)) = (hex(value[i + 1]), hex(value[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(value[i]);
        i += 1;
    }
}

/// The parameters after the first `;` of a raw Content-Type or
/// Content-Disposition value.
fn params(value: &[u8]) -> Vec<Param<'_>> {
    let mut out = Vec::new();
    let mut rest = match value.iter().position(|&b| b == b';') {
        Some(at) => &value[at + 1..],
        None => return out,
    };
    while !rest.is_empty() {
        let (param, tail) = split_param(rest);
        rest = tail;
        if let Some(param) = parse_param(param) {
            out.push(param);
        }
    }
    out
}

/// The first `;`-separated piece of `rest` (a `;` inside quotes is text)
/// and what follows it.
fn split_param(rest: &[u8]) -> (&[u8], &[u8]) {
    let mut quoted = false;
    let mut escaped = false;
    for (i, &b) in rest.iter().enumerate() {
        match b {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            b';' if !quoted => return (&rest[..i], &rest[i + 1..]),
            _ => {}
        }
    }
    (rest, &[])
}

fn parse_param(param: &[u8]) -> Option<Param<'_>> {
    let eq = param.iter().position(|&b| b == b'=')?;
    let key = std::str::from_utf8(&param[..eq]).ok()?.trim();
    let (key, extended) = match key.strip_suffix('*') {
        Some(key) => (key, true),
        None => (key, false),
    };
    let (name, segment) = match key.split_once('*') {
        Some((name, n)) => (name, Some(n.parse().ok()?)),
        None => (key, None),
    };
    let value = trim_ws(&param[eq + 1..]);
    let value: Cow<'_, [u8]> = match value.strip_prefix(b"\"") {
        Some(quoted) => {
            let quoted = quoted.strip_suffix(b"\"").unwrap_or(quoted);
            unquote(quoted)
        }
        None => value.into(),
    };
    Some(Param {
        name,
        segment,
        extended,
        value,
    })
}

/// A quoted-string's content: folding removed, `\x` as `x`.
fn unquote(quoted: &[u8]) -> Cow<'_, [u8]> {
    if !quoted.iter().any(|&b| matches!(b, b'\\' | b'\r' | b'\n')) {
        return quoted.into();
    }
    let mut out = Vec::with_capacity(quoted.len());
    let mut escaped = false;
    for &b in quoted {
        match b {
            _ if escaped => {
                out.push(b);
                escaped = false;
            }
            b'\\' => escaped = true,
            b'\r' | b'\n' => {}
            _ => out.push(b),
        }
    }
    out.into()
}

fn trim_ws(mut bytes: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = bytes {
        if !first.is_ascii_whitespace() {
            break;
        }
        bytes = rest;
    }
    while let [rest @ .., last] = bytes {
        if !last.is_ascii_whitespace() {
            break;
        }
        bytes = rest;
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filename(value: &str) -> Option<String> {
        let value = value.as_bytes();
        let mut line = value.to_vec();
        line.extend_from_slice(b"\r\n");
        let mut stream = mail_parser::parsers::MessageStream::new(&line);
        let mail_parser::HeaderValue::ContentType(mut ct) = stream.parse_content_type() else {
            panic!("not a content type");
        };
        if has_extended_continuation(value) {
            repair(&mut ct, value);
        }
        ct.attribute("filename").map(str::to_string)
    }

    #[test]
    fn a_character_split_across_continuations_is_whole() {
        assert_eq!(
            filename(
                " attachment;\r\n filename*0*=utf-8''Solidarno%C5;\r\n filename*1*=%9B%C4%87.pdf"
            )
            .as_deref(),
            Some("Solidarność.pdf")
        );
    }

    #[test]
    fn later_segments_use_the_first_segment_s_charset() {
        assert_eq!(
            filename(" attachment;\r\n filename*0*=iso-8859-1''Gr%FC;\r\n filename*1*=%DFe.pdf")
                .as_deref(),
            Some("Grüße.pdf")
        );
    }

    #[test]
    fn segments_are_joined_in_order_plain_and_extended_alike() {
        assert_eq!(
            filename(
                " attachment; filename*2*=%C4%87.pdf; filename*1=\"_umowa\";\r\n\tfilename*0*=utf-8'pl'Solidarno%C5%9B"
            )
            .as_deref(),
            Some("Solidarnoś_umować.pdf")
        );
    }

    #[test]
    fn continuations_without_a_charset_are_joined() {
        let value = " attachment;\r\n filename*0=\"Solidar\";\r\n filename*1=\"nosc.pdf\"";
        assert!(
            !has_extended_continuation(value.as_bytes()),
            "mail-parser's own job"
        );
        assert_eq!(filename(value).as_deref(), Some("Solidarnosc.pdf"));
        assert_eq!(
            filename(" attachment; filename*0*=''Solidarno%C5%9B; filename*1*=%C4%87.pdf")
                .as_deref(),
            Some("Solidarność.pdf"),
            "no charset: UTF-8 by the module's rule"
        );
    }

    #[test]
    fn a_quoted_semicolon_does_not_split_a_parameter() {
        assert_eq!(
            filename(" attachment; filename*0*=utf-8''a%C5; filename*1=\"b;c\"").as_deref(),
            Some("aÅb;c"),
            "not UTF-8 at all: windows-1252"
        );
    }
}
