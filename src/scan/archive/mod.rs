//! Archive bombs, caught before clamd: a zip or gzip scan target is read
//! for what it declares (entries, sizes, nested archives) and checked
//! against the `[scan]` archive limits, so a bomb is never streamed to
//! clamd (which trims a zip entry over its MaxFileSize and answers OK).
//!
//! Guarantees: hostile input never panics and every loop is bounded by the
//! input's length or a limit. Declared sizes are judged before anything is
//! inflated; a deflated entry or gzip stream is then inflated and counted
//! (kept only when it is itself an archive, at most `max_nested` bytes),
//! stopping just past what it declared or what the limits allow, so a
//! directory that understates a size is caught too. `deadline` bounds the
//! whole check in time.
//!
//! The files, bottom up: `bytes.rs` (bounded reads), `zip.rs` (a zip's
//! directory) and `deflate.rs` (inflating, gzip headers), `magic.rs`
//! (what is an archive), `limits.rs` (the limits and the answers) and
//! `walk.rs` (the check itself).

mod bytes;
mod deflate;
mod limits;
mod magic;
mod walk;
mod zip;

#[cfg(test)]
mod tests;

pub use limits::{Beyond, Inspected, Limits, Problem, RATIO_FLOOR};
pub use magic::is_archive;
pub use walk::inspect;
