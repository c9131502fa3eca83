//! What a webhook request carries: the entry's envelope JSON, without
//! `raw` unless `include_raw`, and under `max_body`: a larger body is sent
//! without the attachments' `content_base64` and with
//! `"attachments_omitted": true` (their names, types, sizes and SHA-256
//! stay, so the receiver can say what was left out). An `events` update is
//! sent as its own JSON body, as it is in the stream.

use serde_json::Value;

/// The bytes to `POST`, and whether attachments were left out.
pub struct Shaped {
    pub body: Vec<u8>,
    pub attachments_omitted: bool,
}

/// Shapes `envelope` (the entry's `envelope` field) for the receiver.
/// Text that is not JSON is sent as it is: nothing is lost or rewritten.
pub fn shape(envelope: &str, include_raw: bool, max_body: usize) -> Shaped {
    let Ok(Value::Object(mut object)) = serde_json::from_str::<Value>(envelope) else {
        return Shaped {
            body: envelope.as_bytes().to_vec(),
            attachments_omitted: false,
        };
    };
    if !include_raw {
        object.remove("raw");
    }
    let mut body = serde_json::to_vec(&object).unwrap_or_else(|_| envelope.as_bytes().to_vec());
    if body.len() <= max_body {
        return Shaped {
            body,
            attachments_omitted: false,
        };
    }
    let mut omitted = false;
    if let Some(Value::Array(attachments)) = object.get_mut("attachments") {
        for attachment in attachments.iter_mut().filter_map(Value::as_object_mut) {
            omitted |= attachment.remove("content_base64").is_some();
        }
    }
    if omitted {
        object.insert("attachments_omitted".into(), Value::Bool(true));
        body = serde_json::to_vec(&object).unwrap_or(body);
    }
    // Still too large (a huge text): sent as it is; a receiver that refuses
    // it with 413 sends the entry to the dead stream, where it is kept whole.
    Shaped {
        body,
        attachments_omitted: omitted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_body_leaves_out_raw_and_big_attachments_with_a_flag() {
        let envelope = serde_json::json!({
            "id": "01ABC", "text": "hi", "raw": "cmF3",
            "attachments": [{"filename": "a.pdf", "size": 3000, "content_base64": "x".repeat(4000)}],
        })
        .to_string();
        let small = shape(&envelope, false, 1_000_000);
        let value: Value = serde_json::from_slice(&small.body).unwrap();
        assert!(value.get("raw").is_none(), "raw left out by default");
        assert!(value["attachments"][0]["content_base64"].is_string());
        assert!(!small.attachments_omitted);
        let with_raw = shape(&envelope, true, 1_000_000);
        let value: Value = serde_json::from_slice(&with_raw.body).unwrap();
        assert_eq!(value["raw"], "cmF3");
        let capped = shape(&envelope, false, 2000);
        let value: Value = serde_json::from_slice(&capped.body).unwrap();
        assert!(capped.attachments_omitted);
        assert_eq!(value["attachments_omitted"], true);
        assert!(value["attachments"][0].get("content_base64").is_none());
        assert_eq!(value["attachments"][0]["filename"], "a.pdf");
        let not_json = shape("not json", false, 10);
        assert_eq!(not_json.body, b"not json");
    }
}
