//! The zip format as far as the bomb checks read it: the end record (zip64
//! too), the central directory and each entry's local header, all from
//! the bytes in memory, every offset checked before it is used.

use super::bytes::{printable, u16_at, u32_at, u64_at};

pub(super) const LOCAL_SIG: u32 = 0x0403_4b50;
pub(super) const CENTRAL_SIG: u32 = 0x0201_4b50;
pub(super) const END_SIG: u32 = 0x0605_4b50;
pub(super) const END64_SIG: u32 = 0x0606_4b50;
pub(super) const END64_LOCATOR_SIG: u32 = 0x0706_4b50;
pub(super) const END_LEN: usize = 22;
pub(super) const END64_LOCATOR_LEN: usize = 20;
pub(super) const END64_LEN: usize = 56;
pub(super) const CENTRAL_LEN: usize = 46;
pub(super) const LOCAL_LEN: usize = 30;
pub(super) const METHOD_STORED: u16 = 0;
pub(super) const METHOD_DEFLATE: u16 = 8;
pub(super) const FLAG_ENCRYPTED: u16 = 1;
pub(super) const FLAG_DATA_DESCRIPTOR: u16 = 1 << 3;
/// The zip64 extended-information extra field.
pub(super) const ZIP64_EXTRA: u16 = 0x0001;

#[derive(Debug)]
pub(super) enum ZipError {
    /// No directory where an end record says: perhaps no zip at all.
    NotThere(&'static str),
    /// The end record declares more entries than `max_files`.
    TooMany(u64),
    Malformed(String),
}

fn bad(why: impl Into<String>) -> ZipError {
    ZipError::Malformed(why.into())
}

/// The end of central directory record nearest the end of `data` whose
/// comment fits in what follows it.
pub(super) fn find_end(data: &[u8]) -> Option<usize> {
    let last = data.len().checked_sub(END_LEN)?;
    let first = last.saturating_sub(usize::from(u16::MAX));
    (first..=last).rev().find(|&at| {
        u32_at(data, at) == Some(END_SIG)
            && u16_at(data, at + 20)
                .is_some_and(|comment| at + END_LEN + usize::from(comment) <= data.len())
    })
}

/// One central directory record, as far as the checks need it.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    pub(super) name: String,
    pub(super) flags: u16,
    pub(super) method: u16,
    /// Compressed size.
    pub(super) packed: u64,
    /// Uncompressed size, as declared.
    pub(super) size: u64,
    /// The local header's offset in `data` (the archive's base added).
    pub(super) offset: u64,
}

impl Entry {
    pub(super) fn encrypted(&self) -> bool {
        self.flags & FLAG_ENCRYPTED != 0
    }
}

/// An entry's compressed data within the archive.
#[derive(Debug, Clone, Copy)]
pub(super) struct Span {
    pub(super) start: usize,
    pub(super) end: usize,
}

#[derive(Debug)]
pub(super) struct Directory {
    pub(super) entries: Vec<Entry>,
    /// Where the central directory starts in `data`: entries' data must
    /// end before it.
    pub(super) start: usize,
}

/// The figures of an end record (the zip64 one when there is one).
struct End {
    count: u64,
    size: u64,
    offset: u64,
    /// Where the directory must end: at the (zip64) end record.
    at: usize,
}

impl Directory {
    /// Reads the end record (zip64 too) and every central directory
    /// record. The end record's count is judged against `max_files`
    /// before any record is read, and the walk stops at that count.
    pub(super) fn read(data: &[u8], max_files: u64) -> Result<Directory, ZipError> {
        let at = find_end(data).ok_or(ZipError::NotThere("it has no end of central directory"))?;
        let end = Self::end(data, at)?;
        let size = usize::try_from(end.size)
            .map_err(|_| ZipError::NotThere("its directory size is absurd"))?;
        let start = end.at.checked_sub(size).ok_or(ZipError::NotThere(
            "its directory would start before the archive",
        ))?;
        if (end.count > 0 || size > 0) && u32_at(data, start) != Some(CENTRAL_SIG) {
            return Err(ZipError::NotThere(
                "its directory is not where its end record says",
            ));
        }
        if end.count > max_files {
            return Err(ZipError::TooMany(end.count));
        }
        // Offsets count from the zip's first byte: `base` is what precedes
        // it (a self-extractor's program), 0 for a plain zip.
        let base = (start as u64)
            .checked_sub(end.offset)
            .ok_or_else(|| bad("its directory offset lies past the directory"))?;
        let mut entries = Vec::new();
        let mut next = start;
        // Bounded by the count, itself within `max_files`.
        while next < end.at {
            if entries.len() as u64 >= end.count {
                return Err(bad(
                    "its directory holds more entries than its end record declares",
                ));
            }
            let (entry, after) = Self::record(data, next, end.at, base)?;
            entries.push(entry);
            next = after;
        }
        if (entries.len() as u64) < end.count {
            return Err(bad(
                "its directory holds fewer entries than its end record declares",
            ));
        }
        Ok(Directory { entries, start })
    }

    /// The end record at `at`, with the zip64 end record's figures when a
    /// zip64 locator precedes it (the 16- and 32-bit ones then say
    /// 0xFFFF..; ones that do not must agree). Until the directory is found
    /// where these say, a problem means "perhaps no zip": `NotThere`.
    fn end(data: &[u8], at: usize) -> Result<End, ZipError> {
        let field16 = |off: usize| u16_at(data, at + off).unwrap_or(0);
        let field32 = |off: usize| u32_at(data, at + off).unwrap_or(0);
        if field16(4) != 0 || field16(6) != 0 {
            return Err(ZipError::NotThere("it spans several disks"));
        }
        let count16 = field16(10);
        let plain = End {
            count: u64::from(count16),
            size: u64::from(field32(12)),
            offset: u64::from(field32(16)),
            at,
        };
        let Some(locator) = at
            .checked_sub(END64_LOCATOR_LEN)
            .filter(|&l| u32_at(data, l) == Some(END64_LOCATOR_SIG))
        else {
            return Ok(plain);
        };
        // The zip64 end record: where the locator says, or (in a zip behind
        // other bytes, whose offsets are off by those) right before it.
        let said = u64_at(data, locator + 8).and_then(|o| usize::try_from(o).ok());
        let record = said
            .into_iter()
            .chain(locator.checked_sub(END64_LEN))
            .find(|&r| r < locator && u32_at(data, r) == Some(END64_SIG))
            .ok_or(ZipError::NotThere("its zip64 end record is missing"))?;
        let count = u64_at(data, record + 32).unwrap_or(0);
        if count16 != u16::MAX && u64::from(count16) != count {
            return Err(ZipError::NotThere(
                "its two end records disagree on the number of entries",
            ));
        }
        Ok(End {
            count,
            size: u64_at(data, record + 40).unwrap_or(0),
            offset: u64_at(data, record + 48).unwrap_or(0),
            at: record,
        })
    }

    /// The central directory record at `at` (ending before `limit`), and
    /// where the next one starts.
    fn record(data: &[u8], at: usize, limit: usize, base: u64) -> Result<(Entry, usize), ZipError> {
        let record = data
            .get(at..limit)
            .filter(|r| r.len() >= CENTRAL_LEN && u32_at(r, 0) == Some(CENTRAL_SIG))
            .ok_or_else(|| bad("a directory record is missing or cut short"))?;
        let field16 = |off: usize| u16_at(record, off).unwrap_or(0);
        let field32 = |off: usize| u32_at(record, off).unwrap_or(0);
        let name_len = usize::from(field16(28));
        let extra_len = usize::from(field16(30));
        let comment_len = usize::from(field16(32));
        let total = CENTRAL_LEN + name_len + extra_len + comment_len;
        if total > record.len() {
            return Err(bad("a directory record runs past the directory"));
        }
        let name = printable(&record[CENTRAL_LEN..CENTRAL_LEN + name_len]);
        let extra = &record[CENTRAL_LEN + name_len..CENTRAL_LEN + name_len + extra_len];
        let mut packed = u64::from(field32(20));
        let mut size = u64::from(field32(24));
        let mut offset = u64::from(field32(42));
        // zip64: the fields that say 0xFFFFFFFF are in the extra field, in
        // this order. One missing there leaves the entry unreadable (its
        // 32-bit figure would be a guess).
        let max = u64::from(u32::MAX);
        if [size, packed, offset].contains(&max) {
            let missing = || bad(format!("entry `{name}` lacks its zip64 sizes"));
            let values = zip64_values(extra).ok_or_else(missing)?;
            let mut values = values.chunks_exact(8).filter_map(|v| u64_at(v, 0));
            for field in [&mut size, &mut packed, &mut offset] {
                if *field == max {
                    *field = values.next().ok_or_else(missing)?;
                }
            }
        }
        let offset = offset
            .checked_add(base)
            .ok_or_else(|| bad(format!("entry `{name}` lies outside the archive")))?;
        let entry = Entry {
            name,
            flags: field16(8),
            method: field16(10),
            packed,
            size,
            offset,
        };
        Ok((entry, at + total))
    }

    /// Where each entry's data lies, checked: a local header where the
    /// directory says, agreeing with it, the data before the directory, and
    /// no two entries sharing bytes (the shape of a non-recursive bomb,
    /// where many entries point at one compressed kernel).
    pub(super) fn locate(&self, data: &[u8]) -> Result<Vec<Span>, String> {
        let mut spans = Vec::with_capacity(self.entries.len());
        for entry in &self.entries {
            let outside = || format!("entry `{}` lies outside the archive", entry.name);
            let header = usize::try_from(entry.offset).map_err(|_| outside())?;
            if u32_at(data, header) != Some(LOCAL_SIG) {
                return Err(format!(
                    "entry `{}` has no local header where the directory says",
                    entry.name
                ));
            }
            let field16 = |off: usize| u16_at(data, header + off).unwrap_or(0);
            let field32 = |off: usize| u32_at(data, header + off).unwrap_or(0);
            if field16(8) != entry.method {
                return Err(format!(
                    "entry `{}`'s local header and the directory disagree on its compression",
                    entry.name
                ));
            }
            // Without a data descriptor the local header repeats the sizes
            // (0xFFFFFFFF when they are in its zip64 field).
            if field16(6) & FLAG_DATA_DESCRIPTOR == 0 {
                for (local, central) in [(field32(18), entry.packed), (field32(22), entry.size)] {
                    if local != u32::MAX && u64::from(local) != central {
                        return Err(format!(
                            "entry `{}`'s local header and the directory disagree on its size",
                            entry.name
                        ));
                    }
                }
            }
            let start = header
                .checked_add(LOCAL_LEN + usize::from(field16(26)) + usize::from(field16(28)))
                .ok_or_else(outside)?;
            let end = usize::try_from(entry.packed)
                .ok()
                .and_then(|packed| start.checked_add(packed))
                .filter(|&end| end <= self.start)
                .ok_or_else(outside)?;
            spans.push((header, Span { start, end }));
        }
        let mut order: Vec<usize> = (0..spans.len()).collect();
        order.sort_by_key(|&i| spans[i].0);
        for pair in order.windows(2) {
            let (first, second) = (pair[0], pair[1]);
            if spans[second].0 < spans[first].1.end {
                return Err(format!(
                    "entries `{}` and `{}` overlap (the shape of a zip bomb)",
                    self.entries[first].name, self.entries[second].name
                ));
            }
        }
        Ok(spans.into_iter().map(|(_, span)| span).collect())
    }
}

/// The data of the zip64 extended-information field in `extra`, if any.
fn zip64_values(extra: &[u8]) -> Option<&[u8]> {
    let mut at = 0;
    // Each block takes at least its 4-byte header: bounded by the length.
    while at + 4 <= extra.len() {
        let id = u16_at(extra, at)?;
        let len = usize::from(u16_at(extra, at + 2)?);
        let body = extra.get(at + 4..at + 4 + len)?;
        if id == ZIP64_EXTRA {
            return Some(body);
        }
        at += 4 + len;
    }
    None
}
