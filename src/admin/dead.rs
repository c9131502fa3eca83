//! The dead stream on the admin listener: `GET /v1/dead?count=N&after=ID`
//! (one page, oldest first, without envelopes), `POST
//! /v1/dead/{entry_id}/redrive` and `POST /v1/dead/redrive[?delivery=NAME]`.

use http::StatusCode;

use super::{bad_query, unavailable, AdminState};
use crate::delivery::dead;
use crate::delivery::store::is_entry_id;
use crate::sources::http::respond::{json_response, Body};

/// Entries per page unless `count` says.
const DEFAULT_PAGE: usize = 50;
/// The most entries on one page.
const MAX_PAGE: usize = 500;
/// The most entries one `POST /v1/dead/redrive` moves; call it again for
/// more.
const MAX_REDRIVE: usize = 1000;

pub(super) async fn list(state: &AdminState, query: Option<&str>) -> http::Response<Body> {
    let mut count = DEFAULT_PAGE;
    let mut after = None;
    for (name, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match &*name {
            "count" => match value.parse().ok().filter(|n| (1..=MAX_PAGE).contains(n)) {
                Some(n) => count = n,
                None => return bad_query(format!("count must be a number from 1 to {MAX_PAGE}")),
            },
            "after" if is_entry_id(&value) => after = Some(value.into_owned()),
            "after" => return bad_query(
                "after must be a stream entry id (`<ms>-<seq>`), the `next` of the previous page"
                    .into(),
            ),
            other => {
                return bad_query(format!(
                    "unknown query parameter `{other}`; use count and after"
                ))
            }
        }
    }
    let mut redis = state.redis.clone();
    match dead::list(&mut redis, &state.prefix, after.as_deref(), count).await {
        Ok(page) => json_response(StatusCode::OK, &page),
        Err(error) => {
            tracing::warn!(%error, "dead listing failed");
            unavailable(state, "Redis did not answer; retry later".into())
        }
    }
}

pub(super) async fn redrive_one(state: &AdminState, entry_id: &str) -> http::Response<Body> {
    let mut redis = state.redis.clone();
    match dead::redrive(&mut redis, &state.prefix, entry_id).await {
        Ok(Some(moved)) => {
            tracing::info!(entry = entry_id, delivery = %moved.delivery, "dead entry re-driven");
            json_response(
                StatusCode::OK,
                &serde_json::json!({"status": "redriven", "redriven": [moved]}),
            )
        }
        Ok(None) => json_response(
            StatusCode::NOT_FOUND,
            &serde_json::json!({"error": "not_found", "message": "no such dead entry (unknown, or already re-driven)"}),
        ),
        Err(error) => {
            tracing::warn!(entry = entry_id, %error, "re-drive not done; the entry stays dead");
            unavailable(
                state,
                "Redis did not answer; the entry stays dead, retry later".into(),
            )
        }
    }
}

pub(super) async fn redrive_all(state: &AdminState, query: Option<&str>) -> http::Response<Body> {
    let mut delivery = None;
    for (name, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match &*name {
            "delivery" if !value.is_empty() && value.len() <= 200 => {
                delivery = Some(value.into_owned())
            }
            "delivery" => return bad_query("delivery must be a delivery's name".into()),
            other => return bad_query(format!("unknown query parameter `{other}`; use delivery")),
        }
    }
    let mut redis = state.redis.clone();
    match dead::redrive_all(&mut redis, &state.prefix, delivery.as_deref(), MAX_REDRIVE).await {
        Ok(moved) => {
            tracing::info!(count = moved.len(), delivery = ?delivery, "dead entries re-driven");
            json_response(
                StatusCode::OK,
                &serde_json::json!({"status": "redriven", "redriven": moved}),
            )
        }
        Err(error) => {
            tracing::warn!(%error, "re-drive of all stopped; what was not moved stays dead");
            unavailable(
                state,
                "Redis did not answer; what was not re-driven stays dead, retry".into(),
            )
        }
    }
}
