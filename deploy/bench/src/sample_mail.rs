//! The parts of the benchmark mails that `mail_scan.rs` and `smtp_load.rs`
//! share (each writes its own headers around them): about 10 KB of a
//! customer's text and a 50 KB attachment of random-looking bytes, base64
//! in 76-column lines. Included by both with `#[path]`.

use base64::Engine as _;

/// Mixed into every attachment's bytes: `BENCH_MAIL_SEED` (any text; empty
/// when unset). clamd caches the digests of clean files and answers a file
/// it has seen at once, so each contender of a comparison, and each run,
/// is given mails of its own.
pub fn seed() -> u64 {
    use std::hash::{Hash, Hasher};
    // `DefaultHasher::new()` has fixed keys: the same text, the same seed.
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    std::env::var("BENCH_MAIL_SEED")
        .unwrap_or_default()
        .hash(&mut hasher);
    hasher.finish()
}

/// The text part's body.
pub fn text() -> String {
    let mut text = String::new();
    while text.len() < 10_000 {
        text.push_str("Hello, the parcel for order 4711 arrived damaged; photo attached. ");
        text.push_str("Could you send a replacement or refund it, please?\r\n");
    }
    text
}

/// Mail `i`'s attachment, base64, each line ended by CRLF.
pub fn attachment_lines(i: usize, seed: u64) -> String {
    // xorshift: random-looking, so clamd cannot shortcut, yet repeatable.
    // Never zero: xorshift would stay there.
    let mut state = (0x9E37_79B9_7F4A_7C15u64 ^ seed ^ (i as u64 + 1)) | 1;
    let attachment: Vec<u8> = (0..50_000)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    let encoded = base64::engine::general_purpose::STANDARD.encode(&attachment);
    let mut out = String::with_capacity(encoded.len() + encoded.len() / 38 + 2);
    for line in encoded.as_bytes().chunks(76) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push_str("\r\n");
    }
    out
}
