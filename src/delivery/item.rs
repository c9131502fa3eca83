//! An entry as every target sees it: the same key, attempt number and
//! body on every attempt and re-drive.

/// One item as a target sees it.
pub struct Item<'a> {
    /// `message` for a desk item, `duplicates` or `recipients` for an
    /// `events` update.
    pub kind: &'a str,
    /// The receipt id for a desk item; `events-<entry id>` for an update.
    /// The same on every attempt and every re-drive.
    pub idempotency_key: &'a str,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// The entry's `envelope` field.
    pub envelope: &'a str,
}
