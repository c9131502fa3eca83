//! What the history holds and how it is read: the values stored under
//! an item's keys (its receipt, tagged with its attempt, marked while its
//! write is in flight), the members of a customer's recent set, and how a
//! history read back decides an exact or a near duplicate. Shared by the
//! Redis and the in-memory store, so both read the same values alike.

use super::fingerprint::Fingerprint;
use crate::guard::rules::Dedupe;
use crate::submission::ReceiptId;

/// What a pending reservation's value starts with: the item's write is in
/// flight, nothing may be folded into it yet.
pub(super) const PENDING: char = '?';

/// What a reservation holds: the receipt, tagged with the item's attempt
/// digest when it has one (`RECEIPT~DIGEST`).
pub(super) fn value(fp: Option<&Fingerprint>, receipt: ReceiptId) -> String {
    match fp.and_then(|f| f.attempt.as_deref()) {
        Some(attempt) => format!("{receipt}~{attempt}"),
        None => receipt.to_string(),
    }
}

/// The value of a reservation whose write has not returned yet.
pub(super) fn pending(fp: Option<&Fingerprint>, receipt: ReceiptId) -> String {
    format!("{PENDING}{}", value(fp, receipt))
}

/// The earlier receipt a stored value names; `None` when it is this very
/// item's own earlier attempt (same idempotency key), or a reservation
/// whose write has not returned (nothing is folded into an item that may
/// never be stored).
pub(super) fn earlier(stored: &str, fp: Option<&Fingerprint>) -> Option<ReceiptId> {
    if stored.starts_with(PENDING) {
        return None;
    }
    let (receipt, attempt) = match stored.split_once('~') {
        Some((receipt, attempt)) => (receipt, Some(attempt)),
        None => (stored, None),
    };
    let own = fp.and_then(|f| f.attempt.as_deref());
    if own.is_some() && attempt == own {
        return None;
    }
    receipt.parse().ok()
}

/// The suffix that marks values of this item's own attempts (same
/// idempotency key): `"~DIGEST"`, or `""` without a key.
pub(super) fn own_suffix(fp: Option<&Fingerprint>) -> String {
    fp.and_then(|f| f.attempt.as_deref())
        .map(|a| format!("~{a}"))
        .unwrap_or_default()
}

/// A recent item in the per-customer set: `simhash:numbers:value`.
pub(super) fn member(fp: &Fingerprint, receipt: ReceiptId) -> String {
    format!(
        "{:016x}:{:08x}:{}",
        fp.simhash,
        fp.numbers,
        value(Some(fp), receipt)
    )
}

/// How an item duplicates an earlier one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Exact,
    Near,
}

impl Kind {
    pub fn rule(self) -> &'static str {
        match self {
            Kind::Exact => "dedupe-exact",
            Kind::Near => "dedupe-near",
        }
    }
}

/// One customer's history: Message-ID key, text key, recent candidates.
pub(super) type History = (Option<String>, Option<String>, Vec<(ReceiptId, u64, u32)>);

/// An exact duplicate: the same Message-ID, else the same text.
pub(super) fn exact(
    settings: &Dedupe,
    fp: &Fingerprint,
    mid: Option<&str>,
    content: Option<&str>,
) -> Option<(ReceiptId, Kind)> {
    if !settings.exact {
        return None;
    }
    if fp.message_id.is_some() {
        if let Some(r) = mid.and_then(|r| earlier(r, Some(fp))) {
            return Some((r, Kind::Exact));
        }
    }
    content
        .and_then(|r| earlier(r, Some(fp)))
        .map(|r| (r, Kind::Exact))
}

/// The nearest near duplicate among the recent candidates, if close enough.
pub(super) fn near(
    settings: &Dedupe,
    fp: &Fingerprint,
    recent: Vec<(ReceiptId, u64, u32)>,
) -> Option<(ReceiptId, Kind)> {
    if !(settings.near_duplicates && fp.comparable) {
        return None;
    }
    recent
        .into_iter()
        .filter(|(_, _, n)| *n == fp.numbers)
        .map(|(r, h, _)| (r, (h ^ fp.simhash).count_ones()))
        .filter(|(_, d)| *d <= settings.max_distance)
        .min_by_key(|(_, d)| *d)
        .map(|(r, _)| (r, Kind::Near))
}
