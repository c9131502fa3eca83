//! Bot checks of web forms: the honeypot field, a signed timestamp token
//! (too fresh → faster than a human; too old → expired; seen before →
//! replayed), and a cap on links per message.
//!
//! A post that fails a check is not refused: it is answered like a success
//! and stored in `suppressed` (kind `trapped`, with the check as reason), so
//! a bot cannot learn which check fired; the log and
//! `intake_form_bot_checks_total{check}` say which did.
//!
//! Token: `base64url(issued_at_be64 || nonce || HMAC-SHA256(secret,
//! form_id 0x00 issued_at_be64 nonce))`, issued by `GET
//! /v1/forms/{form}/token`. The 16 random bytes of the nonce make every
//! token unique: without them two visitors who load the page in the same
//! second would get the same token, and the second one's post would be
//! taken for a replay.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::hmac;

use super::config::FormConfig;
pub use super::config::{FormsSecurityConfig, TokenMode};
use crate::envelope::FieldValue;
use crate::redis_connection::RedisConnection;
use crate::submission::FormPost;
pub use crate::verdict::BotCheck;

/// The field a post carries its token in.
pub const TOKEN_FIELD: &str = "_token";

/// Signs and checks form tokens.
pub struct TokenKey {
    key: hmac::Key,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

/// Random bytes in every token, so that tokens issued in the same second
/// differ.
const NONCE_LEN: usize = 16;

/// Clock slack for a token that seems issued in the future (several
/// gateways behind one balancer).
const FUTURE_SLACK: u64 = 60;

impl TokenKey {
    pub fn new(secret: &[u8]) -> Self {
        TokenKey {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        }
    }

    fn message(form: &str, issued_at: u64, nonce: &[u8]) -> Vec<u8> {
        let mut message = Vec::with_capacity(form.len() + 9 + NONCE_LEN);
        message.extend_from_slice(form.as_bytes());
        message.push(0);
        message.extend_from_slice(&issued_at.to_be_bytes());
        message.extend_from_slice(nonce);
        message
    }

    /// A token for `form`, issued at `issued_at` (Unix seconds); no two
    /// are alike.
    pub fn issue(&self, form: &str, issued_at: u64) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce)
            .expect("the system's random source works");
        let tag = hmac::sign(&self.key, &Self::message(form, issued_at, &nonce));
        let mut raw = issued_at.to_be_bytes().to_vec();
        raw.extend_from_slice(&nonce);
        raw.extend_from_slice(tag.as_ref());
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// Checks `token` for `form` at `now` (Unix seconds): signed by this
    /// key for this form, at least `min_age` and at most `max_age` old.
    pub fn verify(
        &self,
        form: &str,
        token: &str,
        now: u64,
        min_age: Duration,
        max_age: Duration,
    ) -> Result<(), BotCheck> {
        let raw = URL_SAFE_NO_PAD
            .decode(token.trim())
            .map_err(|_| BotCheck::TokenInvalid)?;
        if raw.len() != 8 + NONCE_LEN + 32 {
            return Err(BotCheck::TokenInvalid);
        }
        let issued_at = u64::from_be_bytes(raw[..8].try_into().expect("8 bytes"));
        let (nonce, tag) = raw[8..].split_at(NONCE_LEN);
        // Constant-time comparison of the tag.
        hmac::verify(&self.key, &Self::message(form, issued_at, nonce), tag)
            .map_err(|_| BotCheck::TokenInvalid)?;
        if issued_at > now + FUTURE_SLACK {
            return Err(BotCheck::TokenInvalid);
        }
        let age = now.saturating_sub(issued_at);
        if age < min_age.as_secs() {
            return Err(BotCheck::TokenTooFresh);
        }
        if age > max_age.as_secs() {
            return Err(BotCheck::TokenExpired);
        }
        Ok(())
    }
}

/// The bot checks of every form, with what they need: the key tokens are
/// signed with and the Redis that remembers used tokens. Called once per
/// post, before the pipeline; the post then carries the verdict.
pub struct BotChecks {
    /// Signs form tokens; `None` without `[forms_security]`.
    pub tokens: Option<TokenKey>,
    /// Remembers used form tokens (the replay check); `None` in tests
    /// without Redis.
    pub redis: Option<RedisConnection>,
    /// The key prefix (`redis.prefix`).
    pub prefix: String,
    /// The longest wait for Redis (`redis.timeout`).
    pub timeout: Duration,
}

impl BotChecks {
    /// Which check, if any, takes `post` for a bot: the checks without
    /// I/O first, then the replay check of a presented token. Counted and
    /// logged here, so a caller only sets the verdict on the post.
    pub async fn check(&self, form: &FormConfig, post: &FormPost) -> Option<BotCheck> {
        let check = match judge(form, self.tokens.as_ref(), post, unix_now()) {
            Err(check) => Some(check),
            Ok(None) => None,
            Ok(Some(token)) => self.replayed(form, token).await,
        }?;
        crate::telemetry::events::emit(crate::telemetry::events::http::BotTaken {
            form: &form.id,
            check: check.label(),
        });
        Some(check)
    }

    /// Records a token as used; `Some(TokenReplayed)` when it already was.
    async fn replayed(&self, form: &FormConfig, token: &str) -> Option<BotCheck> {
        let mut redis = self.redis.clone()?;
        let key = replay_key(&self.prefix, &form.id, token);
        let ttl_ms =
            u64::try_from(Duration::from(form.token_max_age).as_millis()).unwrap_or(u64::MAX);
        let mut cmd = redis::cmd("SET");
        cmd.arg(&key).arg(1).arg("NX").arg("PX").arg(ttl_ms.max(1));
        let set = cmd.query_async::<Option<String>>(&mut redis);
        match tokio::time::timeout(self.timeout, set).await {
            Ok(Ok(Some(_))) => None,
            Ok(Ok(None)) => Some(BotCheck::TokenReplayed),
            // Fail open: Redis being away is no sign of a bot, and storing the
            // item needs Redis too, so the client hears 503 there if it stays away.
            Ok(Err(e)) => {
                tracing::warn!(form = %form.id, error = %e, "cannot record a form token; replay not checked");
                None
            }
            Err(_) => {
                tracing::warn!(form = %form.id, "recording a form token timed out; replay not checked");
                None
            }
        }
    }

    /// The key that signs tokens for `form`, if the form uses them.
    pub fn token_key(&self, form: &FormConfig) -> Option<&TokenKey> {
        self.tokens
            .as_ref()
            .filter(|_| form.token != TokenMode::Off)
    }
}

/// Now, in Unix seconds.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Links in `text`: `http://`, `https://` and `www.` occurrences (a
/// `https://www.` counts once).
pub fn count_links(text: &str) -> usize {
    let lower = text.to_ascii_lowercase();
    let schemes = lower.matches("http://").count() + lower.matches("https://").count();
    let bare_www = lower.matches("www.").count()
        - lower.matches("http://www.").count()
        - lower.matches("https://www.").count();
    schemes + bare_www
}

/// The checks that need no I/O: honeypot, links, and the token's
/// signature and age. The replay check (Redis) follows when this passes
/// and a token was presented; `Ok(Some(token))` hands it over.
pub fn judge<'p>(
    form: &FormConfig,
    key: Option<&TokenKey>,
    post: &'p FormPost,
    now: u64,
) -> Result<Option<&'p str>, BotCheck> {
    let field = |name: &str| post.field(name);
    if post.filled(&form.honeypot) {
        return Err(BotCheck::Honeypot);
    }
    if let Some(max) = form.max_links {
        if links_in(form, post) > max {
            return Err(BotCheck::TooManyLinks);
        }
    }
    let Some(key) = key.filter(|_| form.token != TokenMode::Off) else {
        return Ok(None);
    };
    match field(TOKEN_FIELD) {
        None if form.token == TokenMode::Required => Err(BotCheck::TokenMissing),
        None => Ok(None),
        Some(token) => {
            key.verify(
                &form.id,
                token,
                now,
                form.token_min_age.into(),
                form.token_max_age.into(),
            )?;
            Ok(Some(token))
        }
    }
}

/// Links in the message field, or, for a form posted without one (its
/// text is then made of all fields), in every field that is not reserved.
fn links_in(form: &FormConfig, post: &FormPost) -> usize {
    if let Some(message) = post.field(&form.message_field) {
        return count_links(message);
    }
    post.fields
        .iter()
        .filter(|(name, _)| !name.starts_with('_'))
        .map(|(_, value)| match value {
            FieldValue::One(v) => count_links(v),
            FieldValue::Many(vs) => vs.iter().map(|v| count_links(v)).sum(),
        })
        .sum()
}

/// The Redis key that remembers a used token (hash-tagged per form, so a
/// cluster keeps one form's tokens on one slot).
pub fn replay_key(prefix: &str, form: &str, token: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(token.as_bytes());
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}:formtoken:{{{form}}}:{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(3);
    const MAX: Duration = Duration::from_secs(7200);

    #[test]
    fn a_token_is_valid_only_for_its_form_key_and_age() {
        let key = TokenKey::new(b"0123456789abcdef0123456789abcdef");
        let token = key.issue("contact", 1_000_000);
        assert_eq!(key.verify("contact", &token, 1_000_010, MIN, MAX), Ok(()));
        assert_eq!(
            key.verify("contact", &token, 1_000_001, MIN, MAX),
            Err(BotCheck::TokenTooFresh)
        );
        assert_eq!(
            key.verify("contact", &token, 1_000_000 + 7201, MIN, MAX),
            Err(BotCheck::TokenExpired)
        );
        assert_eq!(
            key.verify("other", &token, 1_000_010, MIN, MAX),
            Err(BotCheck::TokenInvalid),
            "a token is bound to its form"
        );
        let other_key = TokenKey::new(b"another secret, another key.....");
        assert_eq!(
            other_key.verify("contact", &token, 1_000_010, MIN, MAX),
            Err(BotCheck::TokenInvalid)
        );
    }

    #[test]
    fn tokens_issued_in_the_same_second_differ() {
        let key = TokenKey::new(b"0123456789abcdef0123456789abcdef");
        let a = key.issue("contact", 1_000_000);
        let b = key.issue("contact", 1_000_000);
        assert_ne!(a, b, "two visitors in one second must not share a token");
        for token in [a, b] {
            assert_eq!(key.verify("contact", &token, 1_000_010, MIN, MAX), Ok(()));
        }
    }

    #[test]
    fn a_tampered_or_future_token_is_invalid() {
        let key = TokenKey::new(b"0123456789abcdef0123456789abcdef");
        let token = key.issue("contact", 1_000_000);
        let mut raw = URL_SAFE_NO_PAD.decode(&token).unwrap();
        raw[7] ^= 1; // move the timestamp by a second
        let forged = URL_SAFE_NO_PAD.encode(&raw);
        assert_eq!(
            key.verify("contact", &forged, 1_000_010, MIN, MAX),
            Err(BotCheck::TokenInvalid)
        );
        assert_eq!(
            key.verify("contact", "not base64 !", 1_000_010, MIN, MAX),
            Err(BotCheck::TokenInvalid)
        );
        let future = key.issue("contact", 2_000_000);
        assert_eq!(
            key.verify("contact", &future, 1_000_000, Duration::ZERO, MAX),
            Err(BotCheck::TokenInvalid)
        );
    }

    #[test]
    fn a_honeypot_filled_in_a_second_value_is_still_filled() {
        let form: &FormConfig = &toml::from_str("id = \"contact\"").unwrap();
        let mut post = FormPost::default();
        post.add_field("email".into(), "ann@example.com".into());
        post.add_field("_gotcha".into(), "".into());
        assert_eq!(judge(form, None, &post, 0), Ok(None), "an empty honeypot");
        post.add_field("_gotcha".into(), "http://spam.example".into());
        assert_eq!(
            judge(form, None, &post, 0),
            Err(BotCheck::Honeypot),
            "the second value fills it"
        );
    }

    #[test]
    fn links_are_counted_once_each() {
        assert_eq!(count_links("no links here"), 0);
        assert_eq!(
            count_links("see https://www.a.example and www.b.example"),
            2
        );
        assert_eq!(count_links("HTTP://A.example http://b https://c"), 3);
    }
}
