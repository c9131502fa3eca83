//! Flood collapse: exact duplicates (same Message-ID, or the same
//! normalized text from the same customer) and near duplicates (SimHash
//! over word shingles, compared with the customer's recent items) are
//! folded into the first item instead of becoming desk items.
//!
//! The history lives in Redis (keys hash-tagged per customer), so it holds
//! across replicas and restarts; `intake replay` runs the same logic on an
//! in-memory store.
//!
//! The files, bottom up: `fingerprint.rs` (what an item is compared by),
//! `history.rs` (the values kept and how a history decides a duplicate),
//! `scripts.rs` (the atomic Redis side of a reservation) and `store.rs`
//! (Redis or memory: the operations the guard calls).

mod fingerprint;
mod history;
mod scripts;
mod store;

#[cfg(test)]
mod tests;

pub use fingerprint::{fingerprint, Fingerprint, OTHER_IDENTITIES};
pub use history::Kind;
pub use store::{DedupeStore, Memory, Reserve};
