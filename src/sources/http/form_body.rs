//! Form bodies from the wire: urlencoded, multipart/form-data (files become
//! uploads) and JSON objects, each bounded by the form's field and file
//! limits. Text is decoded leniently (invalid UTF-8 becomes U+FFFD) so a
//! customer's message is kept rather than refused over a byte.

use bytes::Bytes;

use super::respond::ApiError;
use crate::config::FormConfig;
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
            for (name, value) in form_urlencoded::parse(&body) {
                add_field(&mut post, form, name.into_owned(), value.into_owned())?;
            }
        }
        BodyKind::Json => decode_json(&mut post, &body, form)?,
        BodyKind::Multipart { boundary } => {
            decode_multipart(&mut post, body, boundary, form).await?
        }
    }
    Ok(post)
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
    let object: serde_json::Map<String, Value> = serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("expected a JSON object of fields: {e}")))?;
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

async fn decode_multipart(
    post: &mut FormPost,
    body: Bytes,
    boundary: String,
    form: &FormConfig,
) -> Result<(), ApiError> {
    let stream = futures_util::stream::once(async move { Ok::<Bytes, std::io::Error>(body) });
    let mut multipart = multer::Multipart::new(stream, boundary);
    let malformed =
        |e: multer::Error| ApiError::BadRequest(format!("malformed multipart body: {e}"));
    while let Some(field) = multipart.next_field().await.map_err(malformed)? {
        let name = field.name().unwrap_or_default().to_string();
        let filename = field.file_name().map(str::to_string);
        let content_type = field
            .content_type()
            .map(|m| m.essence_str().to_string())
            .unwrap_or_else(|| "application/octet-stream".to_string());
        match filename {
            // A file input left empty is sent with an empty filename and no
            // content: nothing was uploaded.
            Some(filename) => {
                let data = field.bytes().await.map_err(malformed)?;
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
                let data = field.bytes().await.map_err(malformed)?;
                let value = String::from_utf8_lossy(&data).into_owned();
                add_field(post, form, name, value)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn form() -> FormConfig {
        let c = Config::from_toml(
            "[redis]\nurl = \"redis://x\"\n[[form]]\nid = \"contact\"\nmax_fields = 3\nmax_files = 1\n",
        )
        .unwrap();
        c.forms[0].clone()
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

    #[test]
    fn other_content_types_are_415() {
        let err = BodyKind::from_content_type(Some("text/plain")).unwrap_err();
        assert_eq!(err.status(), http::StatusCode::UNSUPPORTED_MEDIA_TYPE);
        let err = BodyKind::from_content_type(None).unwrap_err();
        assert_eq!(err.status(), http::StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }
}
