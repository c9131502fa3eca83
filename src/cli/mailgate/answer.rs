//! The gateway's answer, reduced to what mailgate reports: the status,
//! `Retry-After`, and the receipt id or error text of the JSON body. Every
//! text taken from the gateway is cut to one short line before it reaches
//! the mail log or a bounce.

use http::header::RETRY_AFTER;
use http::StatusCode;

/// The longest piece of gateway-supplied text we repeat on one output line,
/// so a chatty or hostile answer cannot flood the mail log or a bounce.
const MAX_ECHO_CHARS: usize = 200;

/// The gateway's answer as far as mailgate cares. The body is parsed
/// leniently: an answer that is not JSON leaves the text fields empty, and
/// the status alone decides.
#[derive(Debug, Clone)]
pub struct GatewayAnswer {
    /// The HTTP status.
    pub status: StatusCode,
    /// `Retry-After` in seconds, when given as a number (429, 503).
    pub retry_after: Option<u64>,
    /// The receipt id of a stored message (`{"id": ...}`).
    pub id: Option<String>,
    /// The machine-readable error code (`{"error": ...}`).
    pub error: Option<String>,
    /// The human-readable error text (`{"message": ...}`).
    pub message: Option<String>,
}

impl GatewayAnswer {
    /// Reads what we need from the status, headers and (possibly absent)
    /// body. Every text taken from the body is cut to one short line.
    pub(super) fn new(status: StatusCode, headers: &http::HeaderMap, body: Option<&[u8]>) -> Self {
        let retry_after = headers
            .get(RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.trim().parse::<u64>().ok());
        let json = body.and_then(|body| serde_json::from_slice::<serde_json::Value>(body).ok());
        let text = |key: &str| {
            json.as_ref()
                .and_then(|json| json.get(key))
                .and_then(serde_json::Value::as_str)
                .map(one_line)
                .filter(|text| !text.is_empty())
        };
        GatewayAnswer {
            status,
            retry_after,
            id: text("id"),
            error: text("error"),
            message: text("message"),
        }
    }

    /// The gateway's human text, else its error code.
    pub(super) fn message_or_error(&self) -> Option<&str> {
        self.message.as_deref().or(self.error.as_deref())
    }

    /// `HTTP 503 Service Unavailable (code: text)`, for stderr.
    pub(super) fn describe(&self) -> String {
        let mut said = format!("gateway answered HTTP {}", self.status);
        match (&self.error, &self.message) {
            (Some(error), Some(message)) => said.push_str(&format!(" ({error}: {message})")),
            (Some(text), None) | (None, Some(text)) => said.push_str(&format!(" ({text})")),
            (None, None) => {}
        }
        said
    }
}

/// Makes text from the gateway safe for one output line: control
/// characters become spaces, and it is cut to [`MAX_ECHO_CHARS`].
fn one_line(text: &str) -> String {
    let mut line: String = text
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_ECHO_CHARS)
        .collect();
    if text.trim().chars().count() > MAX_ECHO_CHARS {
        line.push_str("...");
    }
    line
}
