//! Target `webhook`: one signed `POST` of an item's JSON to a URL, over
//! HTTP/1.1 (TLS by rustls with the system roots or `ca_file`). The whole
//! exchange (connect, TLS, request, the answer's head and first bytes) is
//! bounded by `timeout`, so a receiver that never answers, or answers a
//! byte a minute, holds an attempt no longer than that.
//!
//! Headers: `Idempotency-Key` (the receipt id; for an `events` update
//! `events-<entry id>`), `Intake-Attempt` (1, 2, ...), `Intake-Kind`
//! (`message`, `duplicates`, `recipients`), `Intake-Signature` (see
//! [`sign`]). A re-drive from the dead stream keeps the same key.

pub mod body;
pub mod sign;

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, Request, Uri};
use http_body_util::Full;

use super::config::WebhookConfig;
use super::http::Endpoint;
use super::item::Item;
use super::policy::Answer;

/// The most of an answer's body kept (for the dead stream and the log).
pub const EXCERPT_BYTES: usize = 512;

/// A configured webhook, ready to send.
pub struct Webhook {
    endpoint: Endpoint,
    signer: sign::Signer,
    include_raw: bool,
    max_body: usize,
    timeout: Duration,
}

impl Webhook {
    /// Reads the secrets and the trust anchors; fails as the config check
    /// would.
    pub fn new(config: &WebhookConfig) -> Result<Webhook, String> {
        let endpoint = Endpoint::new(&config.url, config.ca_file.as_deref())?;
        let mut secrets = vec![config
            .secret
            .resolve()
            .map_err(|e| format!("secret: {e}"))?];
        if let Some(previous) = &config.previous_secret {
            secrets.push(
                previous
                    .resolve()
                    .map_err(|e| format!("previous_secret: {e}"))?,
            );
        }
        let signer = sign::Signer::new(secrets.iter().map(|s| s.expose().as_bytes()));
        Ok(Webhook {
            endpoint,
            signer,
            include_raw: config.include_raw,
            max_body: config.max_body.as_usize(),
            timeout: config.timeout.into(),
        })
    }

    /// One attempt: the answer, a timeout, or why there was no connection.
    pub async fn deliver(&self, item: &Item<'_>) -> Answer {
        let shaped = body::shape(item.envelope, self.include_raw, self.max_body);
        let now = SystemTime::now();
        let t = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let signature = self.signer.header(t, &shaped.body);
        let mut request = Request::new(Full::new(Bytes::from(shaped.body)));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = self
            .endpoint
            .uri
            .path_and_query()
            .map(|p| Uri::from(p.clone()))
            .unwrap_or_else(|| Uri::from_static("/"));
        let headers = request.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        for (name, value) in [
            ("idempotency-key", item.idempotency_key.to_string()),
            ("intake-attempt", item.attempt.to_string()),
            ("intake-kind", item.kind.to_string()),
            ("intake-signature", signature),
        ] {
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.insert(name, value);
            }
        }
        match tokio::time::timeout(self.timeout, self.endpoint.send(request, EXCERPT_BYTES)).await {
            Err(_elapsed) => Answer::Timeout,
            Ok(Err(failure)) => Answer::Unreachable(failure),
            Ok(Ok(response)) => Answer::Status {
                code: response.code,
                retry_after: response.retry_after,
                excerpt: String::from_utf8_lossy(&response.body).into_owned(),
            },
        }
    }
}
