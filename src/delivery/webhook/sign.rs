//! The `Intake-Signature` header: `t=<unix time>,v1=<hex HMAC-SHA256 of
//! "<t>.<body>">`, one `v1=` per secret in force (two during a rotation),
//! the scheme Stripe's and Mailgun's users already check. The receiver
//! recomputes the HMAC over the timestamp, a dot and the raw body, accepts
//! any `v1=` that matches, and refuses a timestamp older than it allows
//! (deploy/README.md, "Delivery to the desk", has the recipe).

use ring::hmac;

/// The keys requests are signed with: the current one first.
pub struct Signer {
    keys: Vec<hmac::Key>,
}

impl Signer {
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a [u8]>) -> Signer {
        Signer {
            keys: secrets
                .into_iter()
                .map(|s| hmac::Key::new(hmac::HMAC_SHA256, s))
                .collect(),
        }
    }

    /// The header value for `body` sent at unix time `t`.
    pub fn header(&self, t: u64, body: &[u8]) -> String {
        let mut value = format!("t={t}");
        let prefix = format!("{t}.");
        for key in &self.keys {
            let mut context = hmac::Context::with_key(key);
            context.update(prefix.as_bytes());
            context.update(body);
            value.push_str(",v1=");
            value.push_str(&hex(context.sign().as_ref()));
        }
        value
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 15) as usize] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_signature_is_hmac_sha256_of_time_dot_body_per_secret() {
        // RFC 4231 test case 2 ("Jefe"), with the message split at "t.".
        let signer = Signer::new([b"Jefe".as_slice()]);
        let header = signer.header(0, b"what do ya want for nothing?");
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"Jefe");
        let expected = hex(hmac::sign(&key, b"0.what do ya want for nothing?").as_ref());
        assert_eq!(header, format!("t=0,v1={expected}"));
        let rotating = Signer::new([b"new-secret".as_slice(), b"old-secret".as_slice()]);
        let header = rotating.header(1700000000, b"{}");
        assert_eq!(header.matches(",v1=").count(), 2, "{header}");
        assert!(header.starts_with("t=1700000000,v1="));
        assert_eq!(hex(&[0x00, 0xab, 0xff]), "00abff");
    }
}
