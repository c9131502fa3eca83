//! Idempotency keys for HTTP submissions, so a client that retries after
//! losing the answer (gateway killed after the write, a timeout on the
//! client's side) gets the first receipt instead of a second desk item.
//!
//! A client may send `Idempotency-Key` (IETF draft
//! draft-ietf-httpapi-idempotency-key-header) on any submission. Raw mail
//! needs none: a mail server retries with the same bytes and the same
//! envelope, so `/v1/messages` derives its key from those.

use http::HeaderMap;
use sha2::{Digest, Sha256};

use super::respond::ApiError;

/// The request header a client names its attempt with.
pub const HEADER: &str = "idempotency-key";

/// The longest key accepted; a UUID or a ULID is far shorter.
const MAX_KEY_LEN: usize = 255;

/// The key a client sent, scoped to `scope` (the form, or `messages`) so
/// two endpoints never share one; `None` when the header is absent.
pub fn from_header(headers: &HeaderMap, scope: &str) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(HEADER) else {
        return Ok(None);
    };
    let bad = || {
        ApiError::BadRequest(format!(
            "the Idempotency-Key header must be 1 to {MAX_KEY_LEN} visible ASCII characters"
        ))
    };
    let text = value.to_str().map_err(|_| bad())?.trim();
    if text.is_empty()
        || text.len() > MAX_KEY_LEN
        || !text.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
    {
        return Err(bad());
    }
    Ok(Some(format!("http:{scope}:{}", hex(text.as_bytes()))))
}

/// The key of one mail delivery: the same message bytes for the same
/// envelope sender and recipients are the same delivery, retried. A copy
/// for another recipient (a separate pipe run) stays a delivery of its own.
pub fn of_mail(sender: Option<&str>, recipients: &[String], raw: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(sender.unwrap_or("").as_bytes());
    for recipient in recipients {
        hasher.update(b"\0");
        hasher.update(recipient.as_bytes());
    }
    // The separator cannot occur in an address, so the envelope and the
    // bytes cannot be shifted into each other.
    hasher.update(b"\0\0");
    hasher.update(raw);
    format!("mailgate:{:x}", hasher.finalize())
}

fn hex(data: &[u8]) -> String {
    format!("{:x}", Sha256::digest(data))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(HEADER, value.parse().unwrap());
        headers
    }

    #[test]
    fn header_key_is_scoped_and_hashed() {
        let a = from_header(&headers("retry-1"), "form:contact").unwrap();
        let b = from_header(&headers("retry-1"), "form:other").unwrap();
        assert!(a.as_deref().unwrap().starts_with("http:form:contact:"));
        assert_ne!(a, b, "two forms never share a key");
        assert!(
            !a.unwrap().contains("retry-1"),
            "the client's text is hashed"
        );
        assert_eq!(from_header(&HeaderMap::new(), "x").unwrap(), None);
    }

    #[test]
    fn empty_or_overlong_header_is_refused() {
        assert!(from_header(&headers(" "), "x").is_err());
        assert!(from_header(&headers(&"k".repeat(256)), "x").is_err());
        assert!(from_header(&headers(&"k".repeat(255)), "x").is_ok());
    }

    #[test]
    fn mail_key_depends_on_bytes_and_envelope() {
        let rcpt = vec!["support@shop.test".to_string()];
        let base = of_mail(Some("a@b"), &rcpt, b"mail");
        assert_eq!(base, of_mail(Some("a@b"), &rcpt, b"mail"), "a retry");
        assert_ne!(base, of_mail(Some("a@b"), &rcpt, b"mail!"));
        assert_ne!(base, of_mail(Some("x@b"), &rcpt, b"mail"));
        assert_ne!(base, of_mail(Some("a@b"), &[], b"mail"));
    }
}
