//! The few REST 2.0 calls the `rt` target makes, each one bounded by the
//! target's timeout. An answer that is not what the call wants comes back
//! as the [`Answer`] the failure policy judges: RT's 5xx and a dead
//! connection are retried, its 4xx (a queue that does not exist, a token
//! without the right) go to the dead stream with RT's own message.

use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderValue, Method, Request};
use http_body_util::Full;
use serde_json::Value;

use crate::delivery::http::{Endpoint, Response};
use crate::delivery::policy::Answer;
use crate::delivery::webhook::EXCERPT_BYTES;

/// RT's answers are small JSON documents; a ticket with many custom field
/// values is the largest.
const MAX_ANSWER: usize = 4 << 20;

/// A ticket as the target needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    pub id: u64,
    /// The receipt ids already delivered to it.
    pub receipts: Vec<String>,
}

pub struct Api {
    endpoint: Endpoint,
    /// `/REST/2.0`, under the URL's own path.
    base: String,
    authorization: HeaderValue,
    timeout: Duration,
}

impl Api {
    pub fn new(
        url: &str,
        token: &str,
        ca_file: Option<&std::path::Path>,
        timeout: Duration,
    ) -> Result<Api, String> {
        let endpoint = Endpoint::new(url, ca_file)?;
        let base = format!("{}/REST/2.0", endpoint.uri.path().trim_end_matches('/'));
        let authorization = HeaderValue::from_str(&format!("token {}", token.trim()))
            .map_err(|_| "token: not a valid header value".to_string())?;
        Ok(Api {
            endpoint,
            base,
            authorization,
            timeout,
        })
    }

    /// The ticket whose receipt field holds `receipt`, if one does.
    pub async fn find_by_receipt(&self, field: &str, receipt: &str) -> Result<Option<u64>, Answer> {
        // Receipt ids are ULIDs: nothing in them needs quoting in TicketSQL.
        let query = format!("CF.{{{field}}} = '{receipt}'");
        let path = format!(
            "/tickets?{}",
            form_urlencoded::Serializer::new(String::new())
                .append_pair("query", &query)
                .append_pair("fields", "id")
                .append_pair("per_page", "1")
                .finish()
        );
        let answer = self.call(Method::GET, &path, None).await?;
        let body = expect(&answer, &[200])?;
        Ok(body["items"]
            .as_array()
            .and_then(|items| items.first())
            .and_then(|item| id_of(&item["id"])))
    }

    /// Ticket `id`, or `None` when RT has no such ticket.
    pub async fn ticket(&self, id: u64, field: &str) -> Result<Option<Ticket>, Answer> {
        let answer = self
            .call(Method::GET, &format!("/ticket/{id}"), None)
            .await?;
        if answer.code == 404 {
            return Ok(None);
        }
        let body = expect(&answer, &[200])?;
        let receipts = body["CustomFields"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|cf| cf["name"].as_str() == Some(field))
            .flat_map(|cf| cf["values"].as_array().cloned().unwrap_or_default())
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        Ok(Some(Ticket { id, receipts }))
    }

    /// Creates a ticket; its id.
    pub async fn create(&self, ticket: &Value) -> Result<u64, Answer> {
        let answer = self
            .call(
                Method::POST,
                "/ticket",
                Some(ticket.to_string().into_bytes()),
            )
            .await?;
        let body = expect(&answer, &[201])?;
        id_of(&body["id"]).ok_or_else(|| unexpected(&answer, "no ticket id in RT's answer"))
    }

    /// Adds correspondence (`kind` "correspond") or a comment ("comment")
    /// to ticket `id`.
    pub async fn add(&self, id: u64, kind: &str, message: &Value) -> Result<(), Answer> {
        let answer = self
            .call(
                Method::POST,
                &format!("/ticket/{id}/{kind}"),
                Some(message.to_string().into_bytes()),
            )
            .await?;
        expect(&answer, &[201]).map(|_| ())
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Response, Answer> {
        let has_body = body.is_some();
        let mut request = Request::new(Full::new(Bytes::from(body.unwrap_or_default())));
        *request.method_mut() = method;
        *request.uri_mut() = format!("{}{path}", self.base)
            .parse()
            .map_err(|e| Answer::Unusable(format!("request path: {e}")))?;
        let headers = request.headers_mut();
        headers.insert(AUTHORIZATION, self.authorization.clone());
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        if has_body {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        match tokio::time::timeout(self.timeout, self.endpoint.send(request, MAX_ANSWER)).await {
            Err(_elapsed) => Err(Answer::Timeout),
            Ok(Err(failure)) => Err(Answer::Unreachable(failure)),
            Ok(Ok(response)) => Ok(response),
        }
    }
}

/// The JSON body of an answer with one of `codes`; any other answer as
/// the policy's [`Answer::Status`].
fn expect(answer: &Response, codes: &[u16]) -> Result<Value, Answer> {
    if !codes.contains(&answer.code) {
        return Err(status(answer));
    }
    serde_json::from_slice(&answer.body)
        .map_err(|_| unexpected(answer, "RT's answer is not JSON (is the URL RT's?)"))
}

fn status(answer: &Response) -> Answer {
    Answer::Status {
        code: answer.code,
        retry_after: answer.retry_after,
        excerpt: excerpt(&answer.body),
    }
}

/// A 2xx that is not what RT answers: retried as a server fault (a proxy's
/// page in front of a restarting RT), with what came.
fn unexpected(answer: &Response, why: &str) -> Answer {
    Answer::Status {
        code: 502,
        retry_after: None,
        excerpt: format!("{why}: {}", excerpt(&answer.body)),
    }
}

fn excerpt(body: &[u8]) -> String {
    let end = body.len().min(EXCERPT_BYTES);
    String::from_utf8_lossy(&body[..end]).into_owned()
}

/// RT gives ids as numbers or as strings.
fn id_of(value: &Value) -> Option<u64> {
    value
        .as_u64()
        .or_else(|| value.as_str().and_then(|s| s.parse().ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rt_ids_come_as_numbers_or_strings() {
        assert_eq!(id_of(&serde_json::json!(7)), Some(7));
        assert_eq!(id_of(&serde_json::json!("12")), Some(12));
        assert_eq!(id_of(&serde_json::json!("x")), None);
    }

    #[test]
    fn rt_answers_other_than_wanted_are_judged_by_their_status() {
        let answer = Response {
            code: 400,
            retry_after: None,
            body: br#"{"message":"Invalid queue"}"#.to_vec(),
        };
        match expect(&answer, &[201]) {
            Err(Answer::Status { code, excerpt, .. }) => {
                assert_eq!(code, 400);
                assert!(excerpt.contains("Invalid queue"));
            }
            other => panic!("{other:?}"),
        }
        let page = Response {
            code: 201,
            retry_after: None,
            body: b"<html>".to_vec(),
        };
        assert!(matches!(
            expect(&page, &[201]),
            Err(Answer::Status { code: 502, .. })
        ));
    }
}
