//! Envelope helpers shared by the test binaries: the shipped JSON Schema as
//! a validator, and readable construction of raw messages.
#![allow(dead_code)] // each test binary uses a different part

use std::sync::OnceLock;

use serde_json::Value;

/// The schema as shipped.
pub const SCHEMA: &str = include_str!("../../src/envelope-v1.schema.json");

/// The compiled schema, with formats (date-time, ...) checked.
pub fn validator() -> &'static jsonschema::Validator {
    static VALIDATOR: OnceLock<jsonschema::Validator> = OnceLock::new();
    VALIDATOR.get_or_init(|| {
        let schema: Value =
            serde_json::from_str(SCHEMA).expect("src/envelope-v1.schema.json is JSON");
        jsonschema::draft202012::options()
            .should_validate_formats(true)
            .build(&schema)
            .expect("src/envelope-v1.schema.json compiles")
    })
}

/// Every way `envelope` breaks the schema, one line each.
pub fn schema_errors(envelope: &Value) -> Vec<String> {
    validator()
        .iter_errors(envelope)
        .map(|e| format!("at `{}`: {e}", e.instance_path))
        .collect()
}

/// Panics, listing the violations, when `envelope` breaks the schema.
pub fn assert_matches_schema(what: &str, envelope: &Value) {
    let errors = schema_errors(envelope);
    assert!(
        errors.is_empty(),
        "{what}: the envelope breaks src/envelope-v1.schema.json:\n  {}\nenvelope: {}",
        errors.join("\n  "),
        serde_json::to_string_pretty(envelope).unwrap()
    );
}

/// Joins byte pieces into a message, turning every bare `\n` into `\r\n`
/// so test mails can be written readably.
pub fn crlf(pieces: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for piece in pieces {
        for &byte in *piece {
            if byte == b'\n' && out.last() != Some(&b'\r') {
                out.push(b'\r');
            }
            out.push(byte);
        }
    }
    out
}
