//! Form bodies from the wire: urlencoded, multipart/form-data (files become
//! uploads) and JSON objects, each bounded by the form's field and file
//! limits. Text that is not UTF-8 (a shop page served in Latin-1 posts
//! `M%FCller`) is read as ISO-8859-1, one character per byte, so a
//! customer's message is kept whole rather than refused or mangled over a
//! byte. JSON must be UTF-8 (RFC 8259) and is refused otherwise.

use std::borrow::Cow;

use bytes::Bytes;

use super::respond::ApiError;
use crate::sources::http::config::FormConfig;
use crate::submission::{FormPost, Upload};

/// The body formats a form accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyKind {
    UrlEncoded,
    Multipart { boundary: String },
    Json,
}

const ACCEPTED: &str = "application/x-www-form-urlencoded, multipart/form-data or application/json";

impl BodyKind {
    /// Reads the `Content-Type` header; anything else is a 415.
    pub fn from_content_type(content_type: Option<&str>) -> Result<BodyKind, ApiError> {
        let unsupported = |got: &str| ApiError::UnsupportedType {
            got: got.to_string(),
            expected: ACCEPTED,
        };
        let Some(content_type) = content_type else {
            return Err(unsupported("(none)"));
        };
        let essence = content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        match essence.as_str() {
            "application/x-www-form-urlencoded" => Ok(BodyKind::UrlEncoded),
            "application/json" => Ok(BodyKind::Json),
            "multipart/form-data" => multer::parse_boundary(content_type)
                .map(|boundary| BodyKind::Multipart { boundary })
                .map_err(|_| ApiError::BadRequest("multipart/form-data without a boundary".into())),
            _ => Err(unsupported(&essence)),
        }
    }
}

/// Decodes a whole body (already bounded by the form's `max_size`).
pub async fn decode(kind: BodyKind, body: Bytes, form: &FormConfig) -> Result<FormPost, ApiError> {
    let mut post = FormPost::default();
    match kind {
        BodyKind::UrlEncoded => {
            for pair in body.split(|&b| b == b'&').filter(|p| !p.is_empty()) {
                let (name, value) = match pair.iter().position(|&b| b == b'=') {
                    Some(i) => (&pair[..i], &pair[i + 1..]),
                    None => (pair, &b""[..]),
                };
                add_field(
                    &mut post,
                    form,
                    decode_text(&form_unescape(name)).into_owned(),
                    decode_text(&form_unescape(value)).into_owned(),
                )?;
            }
        }
        BodyKind::Json => decode_json(&mut post, &body, form)?,
        BodyKind::Multipart { boundary } => {
            decode_multipart(&mut post, body, boundary, form).await?
        }
    }
    Ok(post)
}

/// Text from bytes: UTF-8 when it is, else ISO-8859-1 (every byte one
/// character), which loses nothing and reads legacy Latin-1 pages right.
pub fn decode_text(bytes: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => Cow::Owned(bytes.iter().map(|&b| char::from(b)).collect()),
    }
}

/// `application/x-www-form-urlencoded` unescaping to bytes: `+` is a space,
/// `%XX` a byte, and a `%` without two hex digits stays as it is (as
/// browsers do), so a broken escape loses nothing.
fn form_unescape(input: &[u8]) -> Cow<'_, [u8]> {
    if !input.iter().any(|&b| b == b'%' || b == b'+') {
        return Cow::Borrowed(input);
    }
    let hex = |b: &u8| char::from(*b).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(input.len());
    // Plain runs are copied whole, not byte by byte.
    let mut rest = input;
    while let Some(at) = rest.iter().position(|&b| b == b'%' || b == b'+') {
        out.extend_from_slice(&rest[..at]);
        if rest[at] == b'+' {
            out.push(b' ');
            rest = &rest[at + 1..];
            continue;
        }
        match (
            rest.get(at + 1).and_then(hex),
            rest.get(at + 2).and_then(hex),
        ) {
            (Some(high), Some(low)) => {
                out.push(high << 4 | low);
                rest = &rest[at + 3..];
            }
            _ => {
                out.push(b'%');
                rest = &rest[at + 1..];
            }
        }
    }
    out.extend_from_slice(rest);
    Cow::Owned(out)
}

/// A `Content-Disposition` parameter as raw bytes (`name="..."`,
/// `name=token`, or RFC 5987 `filename*=charset'lang'%XX..`, percent-
/// decoded). multer gives up on names and filenames that are not UTF-8,
/// and a file whose name it cannot read would otherwise pass as a text
/// field, unscanned.
fn disposition_param(header: &[u8], param: &str) -> Option<Vec<u8>> {
    let mut extended = None;
    let mut plain = None;
    for part in split_params(header).into_iter().skip(1) {
        let Some(eq) = part.iter().position(|&b| b == b'=') else {
            continue;
        };
        let key = part[..eq].trim_ascii();
        let value = part[eq + 1..].trim_ascii();
        if key.eq_ignore_ascii_case(param.as_bytes()) {
            plain = Some(unquote(value));
        } else if key.len() == param.len() + 1
            && key.ends_with(b"*")
            && key[..param.len()].eq_ignore_ascii_case(param.as_bytes())
        {
            // charset'language'percent-encoded
            let encoded = value.splitn(3, |&b| b == b'\'').nth(2).unwrap_or(value);
            extended = Some(form_unescape(encoded).into_owned());
        }
    }
    extended.or(plain)
}

/// Splits on `;` outside double quotes.
fn split_params(header: &[u8]) -> Vec<&[u8]> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, &b) in header.iter().enumerate() {
        match b {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            b';' if !quoted => {
                parts.push(&header[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&header[start..]);
    parts
}

fn unquote(value: &[u8]) -> Vec<u8> {
    let Some(inner) = value
        .strip_prefix(b"\"")
        .map(|v| v.strip_suffix(b"\"").unwrap_or(v))
    else {
        return value.to_vec();
    };
    let mut out = Vec::with_capacity(inner.len());
    let mut escaped = false;
    for &b in inner {
        if !escaped && b == b'\\' {
            escaped = true;
            continue;
        }
        escaped = false;
        out.push(b);
    }
    out
}

fn field_count(post: &FormPost) -> usize {
    post.fields
        .values()
        .map(|v| match v {
            crate::envelope::FieldValue::One(_) => 1,
            crate::envelope::FieldValue::Many(vs) => vs.len(),
        })
        .sum()
}

fn add_field(
    post: &mut FormPost,
    form: &FormConfig,
    name: String,
    value: String,
) -> Result<(), ApiError> {
    if field_count(post) >= form.max_fields {
        return Err(ApiError::TooMany(format!(
            "more than {} fields; this form takes at most {}",
            form.max_fields, form.max_fields
        )));
    }
    if name.is_empty() {
        return Err(ApiError::BadRequest("a field has no name".into()));
    }
    post.add_field(name, value);
    Ok(())
}

fn decode_json(post: &mut FormPost, body: &[u8], form: &FormConfig) -> Result<(), ApiError> {
    use serde_json::Value;
    if let Err(e) = std::str::from_utf8(body) {
        return Err(ApiError::BadRequest(format!(
            "the JSON body is not UTF-8 (byte {} is invalid); JSON must be sent as UTF-8",
            e.valid_up_to()
        )));
    }
    let object: serde_json::Map<String, Value> =
        serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(json_problem(&e)))?;
    for (name, value) in object {
        let scalar = |v: Value| -> Result<Option<String>, ApiError> {
            match v {
                Value::Null => Ok(None),
                Value::String(s) => Ok(Some(s)),
                Value::Bool(b) => Ok(Some(b.to_string())),
                Value::Number(n) => Ok(Some(n.to_string())),
                Value::Array(_) | Value::Object(_) => Err(ApiError::BadRequest(format!(
                    "field `{name}`: nested values are not supported; send strings, numbers or a list of them"
                ))),
            }
        };
        match value {
            Value::Array(items) => {
                for item in items {
                    if let Some(v) = scalar(item)? {
                        add_field(post, form, name.clone(), v)?;
                    }
                }
            }
            other => {
                if let Some(v) = scalar(other)? {
                    add_field(post, form, name.clone(), v)?;
                }
            }
        }
    }
    Ok(())
}

/// What is wrong with a JSON body, in the gateway's words: where in the
/// client's input, never serde_json's own text.
fn json_problem(error: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let problem = match error.classify() {
        Category::Syntax => "is not valid JSON",
        Category::Eof => "ends in the middle of a value",
        Category::Data => "is not an object of fields",
        // Not from a slice; said the same way should it ever be.
        Category::Io => "cannot be read",
    };
    format!(
        "the JSON body {problem} (line {}, column {}); send an object of fields",
        error.line(),
        error.column()
    )
}

/// What is wrong with a multipart body, in the gateway's words: multer's
/// own text names its internals (its state lock, its stream), not the
/// client's input.
fn multipart_problem(error: &multer::Error) -> &'static str {
    use multer::Error as E;
    match error {
        E::IncompleteFieldData { .. } | E::IncompleteStream => {
            "the multipart body ends before its closing boundary"
        }
        E::IncompleteHeaders
        | E::ReadHeaderFailed(_)
        | E::DecodeHeaderName { .. }
        | E::DecodeHeaderValue { .. } => "a part's headers cannot be read",
        E::FieldSizeExceeded { .. } | E::StreamSizeExceeded { .. } => {
            "a part is larger than this form takes"
        }
        _ => "the multipart body cannot be read",
    }
}

/// A part's content, without a copy when it comes in one piece. It does
/// here: the whole body is in multer's buffer, so a part is a slice of it.
/// `Field::bytes` would copy it into a buffer of its own, a third copy of
/// a large file beside the body and multer's (a 50 MB post peaked at 146 MB
/// beyond idle instead of 98 MB in about half the runs).
async fn field_bytes(mut field: multer::Field<'_>) -> Result<Bytes, multer::Error> {
    let Some(first) = field.chunk().await? else {
        return Ok(Bytes::new());
    };
    let Some(second) = field.chunk().await? else {
        return Ok(first);
    };
    let mut all = bytes::BytesMut::with_capacity(first.len() + second.len());
    all.extend_from_slice(&first);
    all.extend_from_slice(&second);
    while let Some(more) = field.chunk().await? {
        all.extend_from_slice(&more);
    }
    Ok(all.freeze())
}

async fn decode_multipart(
    post: &mut FormPost,
    body: Bytes,
    boundary: String,
    form: &FormConfig,
) -> Result<(), ApiError> {
    let stream = futures_util::stream::once(async move { Ok::<Bytes, std::io::Error>(body) });
    let mut multipart = multer::Multipart::new(stream, boundary);
    let malformed = |e: multer::Error| {
        tracing::debug!(error = %e, "multipart body refused");
        ApiError::BadRequest(format!(
            "malformed multipart body: {}",
            multipart_problem(&e)
        ))
    };
    while let Some(field) = multipart.next_field().await.map_err(malformed)? {
        let disposition = field
            .headers()
            .get(http::header::CONTENT_DISPOSITION)
            .map(|v| v.as_bytes().to_vec())
            .unwrap_or_default();
        let name = match field.name() {
            Some(name) => name.to_string(),
            None => disposition_param(&disposition, "name")
                .map(|raw| decode_text(&raw).into_owned())
                .unwrap_or_default(),
        };
        let filename = match field.file_name() {
            Some(filename) => Some(filename.to_string()),
            None => disposition_param(&disposition, "filename")
                .map(|raw| decode_text(&raw).into_owned()),
        };
        let content_type = field
            .content_type()
            .map(|m| m.essence_str().to_string())
            .unwrap_or_else(|| "application/octet-stream".to_string());
        match filename {
            // A file input left empty is sent with an empty filename and no
            // content: nothing was uploaded.
            Some(filename) => {
                let data = field_bytes(field).await.map_err(malformed)?;
                if filename.is_empty() && data.is_empty() {
                    continue;
                }
                if post.files.len() >= form.max_files {
                    return Err(ApiError::TooMany(format!(
                        "more than {} files; this form takes at most {}",
                        form.max_files, form.max_files
                    )));
                }
                post.files.push(Upload {
                    field: name,
                    filename: (!filename.is_empty()).then_some(filename),
                    content_type,
                    data,
                });
            }
            None => {
                let data = field_bytes(field).await.map_err(malformed)?;
                let value = decode_text(&data).into_owned();
                add_field(post, form, name, value)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form() -> FormConfig {
        toml::from_str("id = \"contact\"\nmax_fields = 3\nmax_files = 1\n").unwrap()
    }

    #[tokio::test]
    async fn urlencoded_fields_repeat_and_decode() {
        let post = decode(
            BodyKind::UrlEncoded,
            Bytes::from_static(b"email=a%40example.com&size=M&size=L"),
            &form(),
        )
        .await
        .unwrap();
        assert_eq!(post.field("email"), Some("a@example.com"));
        assert_eq!(
            post.fields["size"],
            crate::envelope::FieldValue::Many(vec!["M".into(), "L".into()])
        );
    }

    #[tokio::test]
    async fn too_many_fields_is_refused() {
        let err = decode(
            BodyKind::UrlEncoded,
            Bytes::from_static(b"a=1&b=2&c=3&d=4"),
            &form(),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, ApiError::TooMany(_)), "{err:?}");
    }

    #[tokio::test]
    async fn json_nested_object_is_a_clear_400() {
        let err = decode(
            BodyKind::Json,
            Bytes::from_static(br#"{"a":{"b":1}}"#),
            &form(),
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("field `a`"), "{err}");
    }

    #[tokio::test]
    async fn multipart_file_becomes_upload_and_empty_file_input_is_skipped() {
        let body = "--XX\r\nContent-Disposition: form-data; name=\"email\"\r\n\r\na@example.com\r\n\
--XX\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.txt\"\r\nContent-Type: text/plain\r\n\r\nhello\r\n\
--XX\r\nContent-Disposition: form-data; name=\"other\"; filename=\"\"\r\nContent-Type: application/octet-stream\r\n\r\n\r\n--XX--\r\n";
        let kind = BodyKind::from_content_type(Some("multipart/form-data; boundary=XX")).unwrap();
        let post = decode(kind, Bytes::from(body), &form()).await.unwrap();
        assert_eq!(post.field("email"), Some("a@example.com"));
        assert_eq!(post.files.len(), 1, "the empty file input is not an upload");
        assert_eq!(post.files[0].filename.as_deref(), Some("a.txt"));
        assert_eq!(&post.files[0].data[..], b"hello");
    }

    #[tokio::test]
    async fn urlencoded_latin1_and_broken_escapes_lose_nothing() {
        let post = decode(
            BodyKind::UrlEncoded,
            Bytes::from_static(b"name=M%FCller&note=100%+sure%zz%4&%FFkey=a+b"),
            &form(),
        )
        .await
        .unwrap();
        assert_eq!(post.field("name"), Some("Müller"), "Latin-1 read as such");
        assert_eq!(
            post.field("note"),
            Some("100% sure%zz%4"),
            "broken escapes kept as written"
        );
        assert_eq!(post.field("\u{ff}key"), Some("a b"), "names too");
    }

    #[tokio::test]
    async fn bad_json_and_multipart_are_told_in_our_words_with_the_place() {
        for (body, expected) in [
            (
                &b"{\"email\": }"[..],
                "is not valid JSON (line 1, column 11)",
            ),
            (
                b"{\"email\": \"a\"",
                "ends in the middle of a value (line 1, column 13)",
            ),
            (b"[1, 2]", "is not an object of fields (line 1, column"),
        ] {
            let err = decode(BodyKind::Json, Bytes::from_static(body), &form())
                .await
                .unwrap_err();
            let text = err.to_string();
            assert!(text.contains(expected), "{text}");
            for library in ["expected", "EOF", "invalid type", "sequence"] {
                assert!(!text.contains(library), "serde_json's words leaked: {text}");
            }
        }
        let kind = BodyKind::from_content_type(Some("multipart/form-data; boundary=XX")).unwrap();
        for (body, expected) in [
            (
                &b"--XX\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nno end"[..],
                "ends before its closing boundary",
            ),
            (
                b"--XX\r\nContent-Disposition form-data\r\n\r\nx\r\n--XX--\r\n",
                "headers cannot be read",
            ),
        ] {
            let err = decode(kind.clone(), Bytes::from_static(body), &form())
                .await
                .unwrap_err();
            let text = err.to_string();
            assert!(text.contains(expected), "{text}");
            for library in ["received", "failed to", "stream"] {
                assert!(!text.contains(library), "multer's words leaked: {text}");
            }
        }
    }

    #[tokio::test]
    async fn json_that_is_not_utf8_is_a_clear_400() {
        let err = decode(
            BodyKind::Json,
            Bytes::from_static(b"{\"email\":\"a\xff@example.com\"}"),
            &form(),
        )
        .await
        .unwrap_err();
        assert_eq!(err.status(), http::StatusCode::BAD_REQUEST);
        assert!(err.to_string().contains("not UTF-8"), "{err}");
    }

    #[tokio::test]
    async fn a_file_whose_name_is_not_utf8_is_still_a_file() {
        let kind = BodyKind::from_content_type(Some("multipart/form-data; boundary=XX")).unwrap();
        let body = b"--XX\r\nContent-Disposition: form-data; name=\"file\"; filename=\"Rechnung M\xfcller.pdf\"\r\n\
Content-Type: application/pdf\r\n\r\n%PDF-1.4 data\r\n\
--XX\r\nContent-Disposition: form-data; name=\"n\xe4me\"\r\n\r\nval\xfce\r\n--XX--\r\n";
        let post = decode(kind.clone(), Bytes::from_static(body), &form())
            .await
            .unwrap();
        assert_eq!(post.files.len(), 1, "the upload is a file: {post:?}");
        assert_eq!(
            post.files[0].filename.as_deref(),
            Some("Rechnung Müller.pdf")
        );
        assert_eq!(&post.files[0].data[..], b"%PDF-1.4 data");
        assert_eq!(post.field("näme"), Some("valüe"));

        let body = b"--XX\r\nContent-Disposition: form-data; name=\"doc\"; filename*=UTF-8''%E2%82%AC.txt\r\n\r\neuro\r\n--XX--\r\n";
        let post = decode(kind, Bytes::from_static(body), &form())
            .await
            .unwrap();
        assert_eq!(post.files[0].filename.as_deref(), Some("€.txt"), "RFC 5987");
    }

    #[test]
    fn unescaping_copies_plain_runs_and_decodes_at_every_position() {
        for (input, expected) in [
            (&b""[..], &b""[..]),
            (b"plain", b"plain"),
            (b"+", b" "),
            (b"a+b++c", b"a b  c"),
            (b"%41", b"A"),
            (b"x%41", b"xA"),
            (b"%41x", b"Ax"),
            (b"%4", b"%4"),
            (b"%", b"%"),
            (b"x%", b"x%"),
            (b"%%41", b"%A"),
            (b"%g1%41+", b"%g1A "),
            (b"%2B%25", b"+%"),
        ] {
            assert_eq!(
                &*form_unescape(input),
                expected,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn other_content_types_are_415() {
        let err = BodyKind::from_content_type(Some("text/plain")).unwrap_err();
        assert_eq!(err.status(), http::StatusCode::UNSUPPORTED_MEDIA_TYPE);
        let err = BodyKind::from_content_type(None).unwrap_err();
        assert_eq!(err.status(), http::StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }
}
