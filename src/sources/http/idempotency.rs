//! Idempotency keys for HTTP submissions, so a client that retries after
//! losing the answer (gateway killed after the write, a timeout on the
//! client's side) gets the first receipt instead of a second desk item.
//!
//! A client may send `Idempotency-Key` (IETF draft
//! draft-ietf-httpapi-idempotency-key-header) on any submission. The key is
//! scoped to its endpoint and form and stored with a digest of what it was
//! sent with (the decoded payload and the client's address): the same key
//! with another payload is refused 422, never answered with the first
//! item's receipt. Without a header a key is derived from the payload: a
//! mail server retries with the same bytes and the same envelope, and a
//! browser that posts a form again (a double click, a resend after a lost
//! answer) sends the same fields from the same network, within the form's
//! `retry_window`.

use std::net::IpAddr;
use std::time::Duration;

use http::HeaderMap;
use sha2::{Digest, Sha256};

use super::respond::ApiError;
use crate::submission::{FormPost, IdempotencyKey};

/// How long a client's own key is remembered (the draft leaves it to the
/// server; a day covers every retry a client makes).
pub const CLIENT_KEY_TTL: Duration = Duration::from_secs(24 * 3600);

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

/// A client's key with the digest of what it stands for: `payload` (a
/// digest of the decoded post or message) from `ip`.
pub fn client_key(key: String, payload: &str, ip: IpAddr) -> IdempotencyKey {
    let mut hasher = Sha256::new();
    hasher.update(payload.as_bytes());
    hasher.update(b"\0");
    hasher.update(ip.to_string().as_bytes());
    IdempotencyKey {
        key,
        digest: Some(format!("{:x}", hasher.finalize())),
        ttl: Some(CLIENT_KEY_TTL),
        folds_copies: false,
    }
}

/// A digest of a decoded form post: every field and value (in name order)
/// and every file (field, name, type and content digest). It does not
/// depend on the wire format (a multipart boundary, the order of
/// urlencoded pairs), so a resend of the same form has the same digest.
pub fn digest_of_post(post: &FormPost) -> String {
    let mut hasher = Sha256::new();
    for (name, value) in &post.fields {
        let values: &[String] = match value {
            crate::envelope::FieldValue::One(v) => std::slice::from_ref(v),
            crate::envelope::FieldValue::Many(vs) => vs,
        };
        for value in values {
            // Lengths first: no value can shift into the next.
            hasher.update((name.len() as u64).to_be_bytes());
            hasher.update(name.as_bytes());
            hasher.update((value.len() as u64).to_be_bytes());
            hasher.update(value.as_bytes());
        }
    }
    for file in &post.files {
        hasher.update(b"\xfffile");
        for part in [
            file.field.as_str(),
            file.filename.as_deref().unwrap_or(""),
            file.content_type.as_str(),
        ] {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part.as_bytes());
        }
        hasher.update(Sha256::digest(&file.data));
    }
    format!("{:x}", hasher.finalize())
}

/// The key of a form post sent without one: the form, the client's
/// network (/24, /64: a phone that changes address keeps it) and the
/// post, for `window`.
pub fn of_post(form: &str, ip: IpAddr, post_digest: &str, window: Duration) -> IdempotencyKey {
    let network = match ip {
        IpAddr::V4(_) => ipnet::IpNet::new(ip, 24),
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => ipnet::IpNet::new(ip, 120),
        IpAddr::V6(_) => ipnet::IpNet::new(ip, 64),
    }
    .map(|net| net.trunc().to_string())
    .unwrap_or_else(|_| ip.to_string());
    IdempotencyKey {
        key: format!("form:{form}:{}:{post_digest}", hex(network.as_bytes())),
        digest: None,
        ttl: Some(window),
        folds_copies: false,
    }
}

/// The key of one mail delivery (see [`IdempotencyKey::of_delivery`]).
pub fn of_mail(sender: Option<&str>, recipients: &[String], raw: &[u8]) -> IdempotencyKey {
    IdempotencyKey::of_delivery("mailgate", sender, recipients, raw)
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

    fn post(fields: &[(&str, &str)]) -> FormPost {
        let mut post = FormPost::default();
        for (name, value) in fields {
            post.add_field(name.to_string(), value.to_string());
        }
        post
    }

    #[test]
    fn a_post_digest_depends_on_every_field_not_on_their_order() {
        let a = digest_of_post(&post(&[("email", "a@x.test"), ("message", "hi")]));
        let b = digest_of_post(&post(&[("message", "hi"), ("email", "a@x.test")]));
        assert_eq!(a, b, "the same fields in another order");
        let c = digest_of_post(&post(&[("email", "b@x.test"), ("message", "hi")]));
        assert_ne!(a, c, "another email");
        let shifted = digest_of_post(&post(&[("email", "a@x.testmessage"), ("", "hi")]));
        assert_ne!(a, shifted, "values cannot shift into names");
    }

    #[test]
    fn a_client_key_stands_for_its_payload_and_address() {
        let ip: IpAddr = "198.51.100.7".parse().unwrap();
        let other_ip: IpAddr = "198.51.100.8".parse().unwrap();
        let a = client_key("k".into(), "p1", ip);
        assert_eq!(a.digest, client_key("k".into(), "p1", ip).digest);
        assert_ne!(a.digest, client_key("k".into(), "p2", ip).digest);
        assert_ne!(a.digest, client_key("k".into(), "p1", other_ip).digest);
        assert_eq!(a.ttl, Some(CLIENT_KEY_TTL));
    }

    #[test]
    fn a_derived_form_key_holds_for_the_network_and_the_window() {
        let window = Duration::from_secs(3600);
        let a = of_post("contact", "198.51.100.7".parse().unwrap(), "d", window);
        let same_net = of_post("contact", "198.51.100.200".parse().unwrap(), "d", window);
        let other_net = of_post("contact", "198.51.101.7".parse().unwrap(), "d", window);
        let v6 = of_post("contact", "2001:db8:1:2::1".parse().unwrap(), "d", window);
        let v6_same = of_post(
            "contact",
            "2001:db8:1:2:ffff::9".parse().unwrap(),
            "d",
            window,
        );
        assert_eq!(a.key, same_net.key, "one /24");
        assert_ne!(a.key, other_net.key);
        assert_eq!(v6.key, v6_same.key, "one /64");
        assert_ne!(
            a.key,
            of_post("other", "198.51.100.7".parse().unwrap(), "d", window).key
        );
        assert_eq!(a.ttl, Some(window));
        assert_eq!(a.digest, None, "the key names its payload by itself");
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
