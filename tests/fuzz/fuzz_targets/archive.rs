//! Bytes through the archive check the scanner runs before clamd
//! (src/scan/archive): it ends without a panic, and what it lets pass is
//! within its limits.
//!
//! Input: a selector byte, then the bytes. Selector 0 checks them as a
//! scan target; 1 wraps them as a stored entry of a zip, 2 as a deflated
//! entry of a zip and 3 as a gzip stream, so the fuzzer's bytes also reach
//! the nested-archive paths.

#![no_main]

use intake::scan::archive::{inspect, Limits};
use intake_fuzz::on_worker_stack;
use libfuzzer_sys::fuzz_target;

/// Small limits, so the fuzzer reaches them with small inputs.
fn limits() -> Limits {
    Limits {
        max_depth: 3,
        max_expanded: 4 << 20,
        max_ratio: 50,
        max_files: 64,
        max_nested: 1 << 20,
        deadline: None,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let target = match selector % 4 {
        0 => rest.to_vec(),
        1 => zip_of(rest, 0, rest.to_vec()),
        2 => zip_of(rest, 8, stored_deflate(rest)),
        _ => gzip_of(rest),
    };
    on_worker_stack(move || check(&target));
});

fn check(target: &[u8]) {
    let limits = limits();
    match inspect("fuzz.bin", target, &limits) {
        Ok(found) => {
            assert!(
                found.files <= limits.max_files,
                "files past the limit: {found:?}"
            );
            assert!(
                found.expanded <= limits.max_expanded,
                "expanded past the limit: {found:?}"
            );
            // Every nested archive is an entry of the one around it.
            assert!(
                found.archives <= found.files + 1,
                "more archives read than entries seen: {found:?}"
            );
        }
        Err(beyond) => {
            assert!(
                beyond.path.starts_with("fuzz.bin"),
                "the reason names the target first: {}",
                beyond.path
            );
            let reason = beyond.to_string();
            assert!(!reason.is_empty());
            assert!(
                !reason.chars().any(char::is_control),
                "a reason is one printable line: {reason:?}"
            );
        }
    }
}

/// `data` as a deflate stream of stored blocks (no compression needed).
fn stored_deflate(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 5 * (data.len() / 65535 + 1));
    let mut blocks = data.chunks(65535).peekable();
    if blocks.peek().is_none() {
        out.extend_from_slice(&[0x01, 0, 0, 0xff, 0xff]);
    }
    while let Some(block) = blocks.next() {
        let last = blocks.peek().is_none();
        let len = block.len() as u16;
        out.push(u8::from(last));
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(block);
    }
    out
}

/// A zip of one entry named `inner.zip` holding `packed` (`data` stored,
/// or deflated).
fn zip_of(data: &[u8], method: u16, packed: Vec<u8>) -> Vec<u8> {
    let name = b"inner.zip";
    let fields = |out: &mut Vec<u8>| {
        out.extend_from_slice(&20u16.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&method.to_le_bytes());
        out.extend_from_slice(&[0; 8]);
        out.extend_from_slice(&(packed.len() as u32).to_le_bytes());
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
    };
    let mut out = b"PK\x03\x04".to_vec();
    fields(&mut out);
    out.extend_from_slice(name);
    out.extend_from_slice(&packed);
    let start = out.len() as u32;
    out.extend_from_slice(b"PK\x01\x02");
    out.extend_from_slice(&20u16.to_le_bytes());
    fields(&mut out);
    out.extend_from_slice(&[0; 10]);
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(name);
    let size = out.len() as u32 - start;
    out.extend_from_slice(b"PK\x05\x06\0\0\0\0\x01\0\x01\0");
    out.extend_from_slice(&size.to_le_bytes());
    out.extend_from_slice(&start.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out
}

/// `data` as one gzip member (CRC left 0: the check does not verify it).
fn gzip_of(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 0x08, 0, 0, 0, 0, 0, 0, 0xff];
    out.extend_from_slice(&stored_deflate(data));
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}
