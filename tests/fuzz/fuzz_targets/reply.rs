//! Reply extraction on any text and any HTML: `stripped_text` and
//! `stripped_signature` from a text body, and from an HTML body read as
//! lines. The first input byte picks the reading (even: text, odd: HTML);
//! the rest is the body.
//!
//! What must hold: nothing panics; a body with something to read gives a
//! non-empty reply; from a text body, every line of the reply and of the
//! signature is a line of the body (extraction removes lines, it never
//! writes or merges them), so no customer word can be made up or garbled.

#![no_main]

use intake::parse::reply::{self, html};
use intake_fuzz::on_worker_stack;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    let body = String::from_utf8_lossy(body).into_owned();
    on_worker_stack(move || {
        if mode % 2 == 0 {
            check_text(&body);
        } else {
            check_html(&body);
        }
    });
});

fn check_text(body: &str) {
    let found = reply::from_text(body);
    if !body.trim().is_empty() {
        assert!(!found.text.is_empty(), "a body with text gives a reply");
    }
    let lines: Vec<&str> = body.lines().map(unquoted).collect();
    for line in found
        .text
        .lines()
        .chain(found.signature.iter().flat_map(|s| s.lines()))
    {
        let line = unquoted(line);
        assert!(
            lines.contains(&line),
            "the reply line {line:?} is not a line of the body"
        );
    }
}

fn check_html(body: &str) {
    let (readable, found) = reply::from_html(body);
    assert_eq!(readable, html::to_text(body), "one reading, one text");
    if !readable.trim().is_empty() {
        assert!(
            !found.text.is_empty(),
            "an HTML body with text gives a reply"
        );
    }
    // Entities only shrink and tags are dropped: the text is never longer
    // than the markup by more than the quote prefixes it adds.
    assert!(
        readable.len() <= body.len() * 2 + 16,
        "readable text is bounded"
    );
}

/// A line without its quote prefix and surrounding space, as the extractor
/// compares them.
fn unquoted(line: &str) -> &str {
    line.trim_start_matches(|c: char| c == '>' || c == ' ' || c == '\t')
        .trim()
}
