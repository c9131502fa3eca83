//! Magic: whether bytes are an archive the check reads (a zip, found by
//! its start or its end record, or a gzip stream), cheap enough for the
//! pipeline to ask of every scan target.

use super::bytes::u32_at;
use super::zip::{find_end, END_SIG, LOCAL_SIG};

/// Whether `data` is an archive this module reads: a zip (local header or
/// end record at the start, or an end record at the end: a self-extractor
/// or a zip behind other bytes) or a gzip stream. Cheap: the pipeline skips
/// the check for items without one.
pub fn is_archive(data: &[u8]) -> bool {
    starts_like_zip(data) || starts_like_gzip(data) || find_end(data).is_some()
}

pub(super) fn starts_like_zip(data: &[u8]) -> bool {
    matches!(u32_at(data, 0), Some(LOCAL_SIG | END_SIG))
}

pub(super) fn starts_like_gzip(data: &[u8]) -> bool {
    // ID1 ID2 and CM = 8 (deflate), the only method gzip defines.
    data.starts_with(&[0x1f, 0x8b, 0x08])
}

/// What a nested entry must start with to be read as an archive.
pub(super) fn is_nested_archive(data: &[u8]) -> bool {
    starts_like_zip(data) || starts_like_gzip(data)
}
