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

mod deflate;
mod zip;

use std::fmt;
use std::time::Instant;

use deflate::{gzip_header_len, InflateError, Inflater, Kept};
use zip::{
    find_end, Directory, Entry, ZipError, END_SIG, LOCAL_SIG, METHOD_DEFLATE, METHOD_STORED,
};

/// The limits one check runs under (from `[scan]`).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Archives inside archives: the outermost is depth 1.
    pub max_depth: usize,
    /// Uncompressed bytes of everything an archive holds, nested archives
    /// and their contents included.
    pub max_expanded: u64,
    /// Uncompressed bytes per byte of the archive itself; judged only
    /// once an archive expands past [`RATIO_FLOOR`].
    pub max_ratio: u64,
    /// Entries of an archive, nested archives' entries included.
    pub max_files: u64,
    /// Largest nested archive inflated into memory to be read.
    pub max_nested: usize,
    /// When the check gives up (the item is then unscannable, not held:
    /// the same item would take as long again).
    pub deadline: Option<Instant>,
}

/// Below this many uncompressed bytes an archive's ratio is not judged:
/// a small file of repeated text compresses a thousandfold and is no bomb.
pub const RATIO_FLOOR: u64 = 1 << 20;

/// What a check found in a target that is within the limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Inspected {
    /// Archives read (0: the target is no archive).
    pub archives: u64,
    pub files: u64,
    /// Uncompressed bytes declared (zip) or counted (gzip).
    pub expanded: u64,
}

/// A target beyond a limit, or one that cannot be checked: the item goes
/// to quarantine as `unscannable` with this as its reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("archive {path}: {problem}")]
pub struct Beyond {
    /// The target's name, then each nested archive's, joined by `/`.
    pub path: String,
    pub problem: Problem,
}

/// Which limit an archive is beyond, with the figure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    Depth {
        depth: usize,
        limit: usize,
    },
    Expanded {
        bytes: u64,
        limit: u64,
    },
    Ratio {
        ratio: u64,
        limit: u64,
    },
    Files {
        files: u64,
        limit: u64,
    },
    /// A nested archive too large to be inflated into memory and read.
    NestedTooLarge {
        bytes: u64,
        limit: usize,
    },
    /// The structure cannot be read, or contradicts itself.
    Malformed(String),
    /// The check ran past its deadline.
    TooSlow,
}

impl Problem {
    /// A bounded label for the metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Problem::Depth { .. } => "depth",
            Problem::Expanded { .. } => "expanded",
            Problem::Ratio { .. } => "ratio",
            Problem::Files { .. } => "files",
            Problem::NestedTooLarge { .. } => "nested_size",
            Problem::Malformed(_) => "malformed",
            Problem::TooSlow => "time",
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Depth { depth, limit } => write!(
                f,
                "archives nested {depth} deep, above scan.archive_max_depth ({limit})"
            ),
            Problem::Expanded { bytes, limit } => write!(
                f,
                "expands to {bytes} bytes or more (nested archives included), above scan.archive_max_expanded ({limit} bytes)"
            ),
            Problem::Ratio { ratio, limit } => write!(
                f,
                "expands {ratio} times its own size or more, above scan.archive_max_ratio ({limit})"
            ),
            Problem::Files { files, limit } => write!(
                f,
                "holds {files} files or more (nested archives included), above scan.archive_max_files ({limit})"
            ),
            Problem::NestedTooLarge { bytes, limit } => write!(
                f,
                "a nested archive of {bytes} bytes is above scan.max_size ({limit} bytes) and cannot be opened to be checked"
            ),
            Problem::Malformed(why) => write!(f, "cannot be checked: {why}"),
            Problem::TooSlow => f.write_str("checking it took longer than scan.timeout"),
        }
    }
}

/// Whether `data` is an archive this module reads: a zip (local header or
/// end record at the start, or an end record at the end: a self-extractor
/// or a zip behind other bytes) or a gzip stream. Cheap: the pipeline skips
/// the check for items without one.
pub fn is_archive(data: &[u8]) -> bool {
    starts_like_zip(data) || starts_like_gzip(data) || find_end(data).is_some()
}

/// Checks one scan target. `name` starts the path a [`Beyond`] names.
pub fn inspect(name: &str, data: &[u8], limits: &Limits) -> Result<Inspected, Beyond> {
    let mut walk = Walk {
        limits,
        path: vec![printable(name.as_bytes())],
        found: Inspected::default(),
        inflater: Inflater::new(),
    };
    walk.target(data, 1, Strictness::Top)?;
    Ok(walk.found)
}

// ------------------------------------------------------------------ walk --

/// How sure the caller is that the bytes are an archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Strictness {
    /// A scan target: a zip found only by an end record at its end may be
    /// other data that happens to hold those four bytes, and is read as a
    /// zip only if its directory is where the record says.
    Top,
    /// The bytes start with an archive's magic: they are one, and a
    /// structure that does not read is a reason to quarantine.
    Magic,
}

struct Walk<'l> {
    limits: &'l Limits,
    /// Names from the target down to the archive being read.
    path: Vec<String>,
    found: Inspected,
    inflater: Inflater,
}

impl Walk<'_> {
    fn beyond(&self, problem: Problem) -> Beyond {
        Beyond {
            path: self.path.join("/"),
            problem,
        }
    }

    fn malformed(&self, why: impl Into<String>) -> Beyond {
        self.beyond(Problem::Malformed(why.into()))
    }

    fn check_time(&self) -> Result<(), Beyond> {
        match self.limits.deadline {
            Some(deadline) if Instant::now() > deadline => Err(self.beyond(Problem::TooSlow)),
            _ => Ok(()),
        }
    }

    /// Reads `data` if it is an archive, at nesting `depth`.
    fn target(&mut self, data: &[u8], depth: usize, strictness: Strictness) -> Result<(), Beyond> {
        if starts_like_gzip(data) {
            return self.gzip(data, depth);
        }
        let strictness = if starts_like_zip(data) {
            Strictness::Magic
        } else {
            strictness
        };
        match strictness {
            Strictness::Magic => self.zip(data, depth, true),
            Strictness::Top if find_end(data).is_some() => self.zip(data, depth, false),
            Strictness::Top => Ok(()),
        }
    }

    /// One more archive at `depth`: within `max_depth`?
    fn enter(&mut self, depth: usize) -> Result<(), Beyond> {
        if depth > self.limits.max_depth {
            return Err(self.beyond(Problem::Depth {
                depth,
                limit: self.limits.max_depth,
            }));
        }
        self.check_time()?;
        self.found.archives += 1;
        Ok(())
    }

    fn add_files(&mut self, files: u64) -> Result<(), Beyond> {
        let total = self.found.files.saturating_add(files);
        if total > self.limits.max_files {
            return Err(self.beyond(Problem::Files {
                files: total,
                limit: self.limits.max_files,
            }));
        }
        self.found.files = total;
        Ok(())
    }

    /// Judges `expanded` more bytes from an archive of `size` bytes and,
    /// when within the limits, counts them.
    fn add_expanded(&mut self, expanded: u64, size: usize) -> Result<(), Beyond> {
        self.check_growth(expanded, size)?;
        self.found.expanded = self.found.expanded.saturating_add(expanded);
        Ok(())
    }

    /// The most an archive of `size` bytes may expand to by the ratio.
    fn ratio_allows(&self, size: usize) -> u64 {
        self.limits
            .max_ratio
            .saturating_mul((size as u64).max(1))
            .max(RATIO_FLOOR)
    }

    /// `expanded` bytes out of an archive of `size` bytes.
    fn check_ratio(&self, expanded: u64, size: usize) -> Result<(), Beyond> {
        if expanded > self.ratio_allows(size) {
            return Err(self.beyond(Problem::Ratio {
                ratio: expanded / (size as u64).max(1),
                limit: self.limits.max_ratio,
            }));
        }
        Ok(())
    }

    /// `expanded` more bytes from an archive of `size` bytes: within the
    /// total and the ratio? (The total is named first: it is the limit
    /// that bounds the work.)
    fn check_growth(&self, expanded: u64, size: usize) -> Result<(), Beyond> {
        let total = self.found.expanded.saturating_add(expanded);
        if total > self.limits.max_expanded {
            return Err(self.beyond(Problem::Expanded {
                bytes: total,
                limit: self.limits.max_expanded,
            }));
        }
        self.check_ratio(expanded, size)
    }

    /// The most bytes an archive of `size` bytes may still expand to: past
    /// it, one of the limits is crossed.
    fn inflate_budget(&self, size: usize) -> u64 {
        let left = self.limits.max_expanded.saturating_sub(self.found.expanded);
        left.min(self.ratio_allows(size))
    }

    // ------------------------------------------------------------- zip --

    /// A zip: its directory first (counts and declared sizes, before
    /// anything is inflated), then every entry's data. `strict`: the bytes
    /// start like a zip, so a directory that does not read is a problem,
    /// not a sign that this is other data.
    fn zip(&mut self, data: &[u8], depth: usize, strict: bool) -> Result<(), Beyond> {
        let directory = match Directory::read(data, self.limits.max_files) {
            Ok(directory) => directory,
            Err(ZipError::NotThere(_)) if !strict => return Ok(()),
            Err(ZipError::NotThere(why)) => return Err(self.malformed(why)),
            Err(ZipError::TooMany(count)) => {
                return Err(self.beyond(Problem::Files {
                    files: self.found.files.saturating_add(count),
                    limit: self.limits.max_files,
                }))
            }
            Err(ZipError::Malformed(why)) => return Err(self.malformed(why)),
        };
        self.enter(depth)?;
        self.add_files(directory.entries.len() as u64)?;
        let declared = directory
            .entries
            .iter()
            .fold(0u64, |sum, e| sum.saturating_add(e.size));
        self.add_expanded(declared, data.len())?;
        let spans = directory.locate(data).map_err(|why| self.malformed(why))?;
        for (entry, span) in directory.entries.iter().zip(spans) {
            self.check_time()?;
            self.entry(entry, &data[span.start..span.end], depth)?;
        }
        Ok(())
    }

    /// One entry's data: inflated and counted (deflate), compared
    /// (stored), and read in turn when it is an archive itself.
    fn entry(&mut self, entry: &Entry, packed: &[u8], depth: usize) -> Result<(), Beyond> {
        // Encrypted, or compressed by a method this module cannot undo:
        // what it declares was judged above; clamd sees the rest.
        if entry.encrypted() {
            return Ok(());
        }
        match entry.method {
            METHOD_STORED => {
                if entry.size != packed.len() as u64 {
                    return Err(self.malformed(format!(
                        "stored entry `{}` declares {} bytes but holds {}",
                        entry.name,
                        entry.size,
                        packed.len()
                    )));
                }
                if is_nested_archive(packed) {
                    self.nested(&entry.name, packed, depth)?;
                }
                Ok(())
            }
            METHOD_DEFLATE => {
                // Counting stops a chunk past the declared size: enough
                // to catch a directory that understates it.
                let inflated = self
                    .inflater
                    .inflate(
                        packed,
                        entry.size,
                        self.limits.max_nested,
                        self.limits.deadline,
                    )
                    .map_err(|e| self.inflate_failed(&format!("entry `{}`", entry.name), e))?;
                if inflated.produced > entry.size {
                    return Err(self.malformed(format!(
                        "entry `{}` inflates to more than the {} bytes it declares",
                        entry.name, entry.size
                    )));
                }
                if !inflated.ended {
                    return Err(self.malformed(format!(
                        "entry `{}`'s compressed data ends before its stream does",
                        entry.name
                    )));
                }
                self.kept(&entry.name, inflated.kept, entry.size, depth)
            }
            _ => Ok(()),
        }
    }

    /// Reads what an inflate kept (a nested archive), or says it was too
    /// large to keep.
    fn kept(&mut self, name: &str, kept: Kept, size: u64, depth: usize) -> Result<(), Beyond> {
        match kept {
            Kept::Archive(bytes) => self.nested(name, &bytes, depth),
            Kept::TooLarge => Err(self.beyond(Problem::NestedTooLarge {
                bytes: size,
                limit: self.limits.max_nested,
            })),
            Kept::Nothing => Ok(()),
        }
    }

    fn nested(&mut self, name: &str, data: &[u8], depth: usize) -> Result<(), Beyond> {
        self.path.push(name.to_string());
        self.target(data, depth + 1, Strictness::Magic)?;
        self.path.pop();
        Ok(())
    }

    fn inflate_failed(&self, what: &str, error: InflateError) -> Beyond {
        match error {
            InflateError::Corrupt => {
                self.malformed(format!("{what} is not a valid deflate stream"))
            }
            InflateError::TooSlow => self.beyond(Problem::TooSlow),
        }
    }

    // ------------------------------------------------------------ gzip --

    /// A gzip stream (its members one after another): the last member's
    /// ISIZE first (a hint only: it is the size mod 2^32), then every
    /// member inflated and counted up to what the limits allow.
    fn gzip(&mut self, data: &[u8], depth: usize) -> Result<(), Beyond> {
        self.enter(depth)?;
        self.add_files(1)?;
        let isize = data
            .len()
            .checked_sub(4)
            .and_then(|at| u32_at(data, at))
            .unwrap_or(0);
        self.check_growth(u64::from(isize), data.len())?;
        let budget = self.inflate_budget(data.len());
        let mut rest = data;
        let mut produced = 0u64;
        let mut kept = Kept::Nothing;
        let mut members = 0u64;
        // A member is a file of its own (`gzip -c a b` writes two), so
        // members count against `max_files`, which bounds this loop.
        while starts_like_gzip(rest) {
            self.check_time()?;
            if members > 0 {
                self.add_files(1)?;
            }
            let body = gzip_header_len(rest)
                .and_then(|len| rest.get(len..))
                .ok_or_else(|| self.malformed("a gzip member's header is cut short"))?;
            // Only the first member's output can be read as an archive.
            let keep = if members == 0 {
                self.limits.max_nested
            } else {
                0
            };
            let inflated = self
                .inflater
                .inflate(
                    body,
                    budget.saturating_sub(produced),
                    keep,
                    self.limits.deadline,
                )
                .map_err(|e| self.inflate_failed("the gzip stream", e))?;
            produced = produced.saturating_add(inflated.produced);
            if produced > budget {
                // Past the total or the ratio: say which.
                self.check_growth(produced, data.len())?;
                return Err(self.beyond(Problem::Expanded {
                    bytes: self.found.expanded.saturating_add(produced),
                    limit: self.limits.max_expanded,
                }));
            }
            if !inflated.ended {
                return Err(self.malformed("the gzip stream ends before its data does"));
            }
            if members == 0 {
                kept = inflated.kept;
            } else if matches!(kept, Kept::Archive(_)) {
                // An archive split over members cannot be read from the
                // first one alone.
                kept = Kept::TooLarge;
            }
            members += 1;
            // The trailer: CRC-32 and ISIZE. Anything after the last member
            // that is not another member is ignored, as gzip does.
            rest = body
                .get(inflated.consumed.saturating_add(8)..)
                .ok_or_else(|| self.malformed("the gzip trailer is cut short"))?;
        }
        self.add_expanded(produced, data.len())?;
        self.kept("(gunzipped)", kept, produced, depth)
    }
}

// --------------------------------------------------------------- magic --

fn starts_like_zip(data: &[u8]) -> bool {
    matches!(u32_at(data, 0), Some(LOCAL_SIG | END_SIG))
}

fn starts_like_gzip(data: &[u8]) -> bool {
    // ID1 ID2 and CM = 8 (deflate), the only method gzip defines.
    data.starts_with(&[0x1f, 0x8b, 0x08])
}

/// What a nested entry must start with to be read as an archive.
fn is_nested_archive(data: &[u8]) -> bool {
    starts_like_zip(data) || starts_like_gzip(data)
}

fn u16_at(data: &[u8], at: usize) -> Option<u16> {
    let bytes = data.get(at..at.checked_add(2)?)?;
    Some(u16::from_le_bytes([bytes[0], bytes[1]]))
}

fn u32_at(data: &[u8], at: usize) -> Option<u32> {
    let bytes = data.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

fn u64_at(data: &[u8], at: usize) -> Option<u64> {
    let bytes: [u8; 8] = data.get(at..at.checked_add(8)?)?.try_into().ok()?;
    Some(u64::from_le_bytes(bytes))
}

/// A name fit for a reason and a log line: no control characters, at most
/// [`MAX_NAME`] characters.
fn printable(raw: &[u8]) -> String {
    const MAX_NAME: usize = 80;
    let text = String::from_utf8_lossy(raw);
    let mut name: String = text
        .chars()
        .take(MAX_NAME)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.chars().nth(MAX_NAME).is_some() {
        name.push('…');
    }
    name
}

#[cfg(test)]
mod tests {
    use super::zip::{CENTRAL_SIG, END_LEN, FLAG_ENCRYPTED, ZIP64_EXTRA};
    use super::*;
    use std::io::Write as _;

    fn limits() -> Limits {
        Limits {
            max_depth: 3,
            max_expanded: 100_000_000,
            max_ratio: 100,
            max_files: 1000,
            max_nested: 25_000_000,
            deadline: None,
        }
    }

    fn deflate(data: &[u8]) -> Vec<u8> {
        let mut encoder =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    /// One entry as a test writes it: what the directory declares may
    /// differ from what the data is (that is what hostile input does).
    #[derive(Clone)]
    struct Item {
        name: String,
        method: u16,
        flags: u16,
        /// The bytes stored in the archive (compressed for deflate).
        packed: Vec<u8>,
        /// The uncompressed size the directory (and local header) declare.
        size: u64,
    }

    fn stored(name: &str, data: &[u8]) -> Item {
        Item {
            name: name.into(),
            method: METHOD_STORED,
            flags: 0,
            packed: data.to_vec(),
            size: data.len() as u64,
        }
    }

    fn deflated(name: &str, data: &[u8]) -> Item {
        Item {
            name: name.into(),
            method: METHOD_DEFLATE,
            flags: 0,
            packed: deflate(data),
            size: data.len() as u64,
        }
    }

    /// Sizes above 4 GiB go to a zip64 extra field (in the directory).
    fn zip(items: &[Item]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut directory = Vec::new();
        for item in items {
            let offset = out.len() as u32;
            let zip64 = item.size > u64::from(u32::MAX);
            let size32 = if zip64 { u32::MAX } else { item.size as u32 };
            let local = |out: &mut Vec<u8>| {
                out.extend_from_slice(&LOCAL_SIG.to_le_bytes());
                out.extend_from_slice(&20u16.to_le_bytes());
                out.extend_from_slice(&item.flags.to_le_bytes());
                out.extend_from_slice(&item.method.to_le_bytes());
                out.extend_from_slice(&[0; 8]); // time, date, crc
                out.extend_from_slice(&(item.packed.len() as u32).to_le_bytes());
                out.extend_from_slice(&size32.to_le_bytes());
                out.extend_from_slice(&(item.name.len() as u16).to_le_bytes());
                out.extend_from_slice(&0u16.to_le_bytes());
                out.extend_from_slice(item.name.as_bytes());
            };
            local(&mut out);
            out.extend_from_slice(&item.packed);
            let extra: Vec<u8> = if zip64 {
                [
                    &ZIP64_EXTRA.to_le_bytes()[..],
                    &8u16.to_le_bytes(),
                    &item.size.to_le_bytes(),
                ]
                .concat()
            } else {
                Vec::new()
            };
            directory.extend_from_slice(&CENTRAL_SIG.to_le_bytes());
            directory.extend_from_slice(&20u16.to_le_bytes());
            directory.extend_from_slice(&20u16.to_le_bytes());
            directory.extend_from_slice(&item.flags.to_le_bytes());
            directory.extend_from_slice(&item.method.to_le_bytes());
            directory.extend_from_slice(&[0; 8]);
            directory.extend_from_slice(&(item.packed.len() as u32).to_le_bytes());
            directory.extend_from_slice(&size32.to_le_bytes());
            directory.extend_from_slice(&(item.name.len() as u16).to_le_bytes());
            directory.extend_from_slice(&(extra.len() as u16).to_le_bytes());
            directory.extend_from_slice(&[0; 6]); // comment, disk, internal attributes
            directory.extend_from_slice(&0u32.to_le_bytes()); // external attributes
            directory.extend_from_slice(&offset.to_le_bytes());
            directory.extend_from_slice(item.name.as_bytes());
            directory.extend_from_slice(&extra);
        }
        let start = out.len() as u32;
        out.extend_from_slice(&directory);
        out.extend_from_slice(&end_record(
            items.len() as u16,
            directory.len() as u32,
            start,
        ));
        out
    }

    fn end_record(count: u16, size: u32, offset: u32) -> Vec<u8> {
        let mut end = Vec::new();
        end.extend_from_slice(&END_SIG.to_le_bytes());
        end.extend_from_slice(&[0; 4]);
        end.extend_from_slice(&count.to_le_bytes());
        end.extend_from_slice(&count.to_le_bytes());
        end.extend_from_slice(&size.to_le_bytes());
        end.extend_from_slice(&offset.to_le_bytes());
        end.extend_from_slice(&0u16.to_le_bytes());
        end
    }

    fn beyond_of(result: Result<Inspected, Beyond>) -> (String, Problem) {
        match result {
            Err(beyond) => (beyond.path, beyond.problem),
            Ok(found) => panic!("expected a problem, the check passed: {found:?}"),
        }
    }

    #[test]
    fn an_invoice_zip_and_a_text_gzip_are_within_the_limits() {
        let pdf = b"%PDF-1.4 invoice 2024-117, two mugs".repeat(40);
        let text = b"Order 1234: two mugs, one teapot.\n".repeat(200);
        let archive = zip(&[stored("invoice.pdf", &pdf), deflated("notes.txt", &text)]);
        let found = inspect("invoices.zip", &archive, &limits()).expect("a normal zip");
        assert_eq!(
            found,
            Inspected {
                archives: 1,
                files: 2,
                expanded: (pdf.len() + text.len()) as u64
            }
        );
        let found = inspect("log.gz", &gzip(&text), &limits()).expect("a normal gzip");
        assert_eq!(found.expanded, text.len() as u64, "counted while inflated");
        assert!(is_archive(&archive) && is_archive(&gzip(&text)));
        assert!(!is_archive(b"%PDF-1.4 not an archive"));
    }

    #[test]
    fn a_zip_declaring_a_gigabyte_is_beyond_max_expanded_before_anything_is_inflated() {
        // The data is no deflate stream at all: had it been inflated
        // first, the check would have called it corrupt instead.
        let bomb = Item {
            packed: vec![0xff; 1000],
            size: 1 << 30,
            ..deflated("zeros.bin", b"")
        };
        let (path, problem) = beyond_of(inspect("zeros.zip", &zip(&[bomb]), &limits()));
        assert_eq!(path, "zeros.zip");
        assert_eq!(
            problem,
            Problem::Expanded {
                bytes: 1 << 30,
                limit: 100_000_000
            }
        );
        let reason = Beyond { path, problem }.to_string();
        assert!(
            reason.contains("zeros.zip")
                && reason.contains("scan.archive_max_expanded")
                && reason.contains("1073741824"),
            "the reason names the archive, the limit and the figure: {reason}"
        );
    }

    #[test]
    fn zeros_compressed_a_thousandfold_are_beyond_max_ratio() {
        let archive = zip(&[deflated("disk.img", &vec![0; 4 << 20])]);
        let (_, problem) = beyond_of(inspect("disk.zip", &archive, &limits()));
        assert!(
            matches!(problem, Problem::Ratio { ratio, limit: 100 } if ratio > 500),
            "{problem:?}"
        );
        // A small file compresses as well, and is no bomb.
        let small = zip(&[deflated("blank.txt", &[b' '; 100_000])]);
        inspect("blank.zip", &small, &limits()).expect("below the ratio floor");
    }

    #[test]
    fn too_many_entries_and_an_absurd_count_are_beyond_max_files() {
        let items: Vec<Item> = (0..1001)
            .map(|n| stored(&format!("{n}.txt"), b"x"))
            .collect();
        let (_, problem) = beyond_of(inspect("many.zip", &zip(&items), &limits()));
        assert_eq!(
            problem,
            Problem::Files {
                files: 1001,
                limit: 1000
            }
        );
        // An end record that declares 65535 entries and holds none is judged
        // by its count before any record is read.
        let mut liar = zip(&[stored("a.txt", b"a")]);
        let at = liar.len() - END_LEN;
        liar[at + 8..at + 12].copy_from_slice(&[0xff; 4]);
        let (_, problem) = beyond_of(inspect("liar.zip", &liar, &limits()));
        assert_eq!(
            problem,
            Problem::Files {
                files: 65535,
                limit: 1000
            }
        );
        let roomy = Limits {
            max_files: 100_000,
            ..limits()
        };
        let (_, problem) = beyond_of(inspect("liar.zip", &liar, &roomy));
        assert!(
            matches!(&problem, Problem::Malformed(why) if why.contains("fewer entries")),
            "{problem:?}"
        );
    }

    #[test]
    fn archives_nested_past_max_depth_are_named_down_to_the_deepest() {
        let mut archive = zip(&[deflated("readme.txt", b"hello")]);
        for level in (1..=3).rev() {
            archive = zip(&[deflated(&format!("level{level}.zip"), &archive)]);
        }
        let (path, problem) = beyond_of(inspect("top.zip", &archive, &limits()));
        assert_eq!(path, "top.zip/level1.zip/level2.zip/level3.zip");
        assert_eq!(problem, Problem::Depth { depth: 4, limit: 3 });
        let deeper = Limits {
            max_depth: 4,
            ..limits()
        };
        let found = inspect("top.zip", &archive, &deeper).expect("within depth 4");
        assert_eq!(found.archives, 4);
    }

    #[test]
    fn a_bomb_inside_a_nested_zip_or_gzip_is_found() {
        let bomb = zip(&[Item {
            size: 1 << 40,
            ..deflated("zeros.bin", b"")
        }]);
        for (outer, name) in [
            (zip(&[deflated("inner.zip", &bomb)]), "outer.zip/inner.zip"),
            (zip(&[stored("inner.zip", &bomb)]), "outer.zip/inner.zip"),
            (gzip(&bomb), "outer.zip/(gunzipped)"),
        ] {
            let (path, problem) = beyond_of(inspect("outer.zip", &outer, &limits()));
            assert_eq!(path, name);
            assert!(matches!(problem, Problem::Expanded { .. }), "{problem:?}");
        }
    }

    #[test]
    fn an_entry_that_inflates_past_its_declared_size_is_caught() {
        let liar = Item {
            size: 1000,
            ..deflated("small.txt", &vec![b'a'; 200_000])
        };
        let (_, problem) = beyond_of(inspect("liar.zip", &zip(&[liar]), &limits()));
        assert!(
            matches!(&problem, Problem::Malformed(why) if why.contains("more than the 1000 bytes")),
            "{problem:?}"
        );
    }

    #[test]
    fn entries_sharing_their_data_are_an_overlap() {
        // Two directory records pointing at one local header: the kernel of
        // a non-recursive zip bomb.
        let mut archive = zip(&[deflated("a.txt", b"aaaa"), deflated("b.txt", b"aaaa")]);
        let first = archive
            .windows(4)
            .position(|w| w == CENTRAL_SIG.to_le_bytes())
            .unwrap();
        let second = first
            + 4
            + archive[first + 4..]
                .windows(4)
                .position(|w| w == CENTRAL_SIG.to_le_bytes())
                .unwrap();
        archive[second + 42..second + 46].copy_from_slice(&0u32.to_le_bytes());
        // The local header at 0 names a.txt; the sizes agree.
        let (_, problem) = beyond_of(inspect("overlap.zip", &archive, &limits()));
        assert!(
            matches!(&problem, Problem::Malformed(why) if why.contains("overlap")),
            "{problem:?}"
        );
    }

    #[test]
    fn zip64_sizes_are_read_and_a_missing_zip64_field_is_malformed() {
        let big = Item {
            size: 64 << 40,
            ..deflated("zeros.bin", b"")
        };
        let archive = zip(&[big]);
        let (_, problem) = beyond_of(inspect("zip64.zip", &archive, &limits()));
        assert_eq!(
            problem,
            Problem::Expanded {
                bytes: 64 << 40,
                limit: 100_000_000
            }
        );
        // Drop the extra field: 0xFFFFFFFF alone is no size.
        let mut stripped = archive.clone();
        let at = stripped
            .windows(4)
            .position(|w| w == CENTRAL_SIG.to_le_bytes())
            .unwrap();
        stripped[at + 30..at + 32].copy_from_slice(&0u16.to_le_bytes());
        let (_, problem) = beyond_of(inspect("zip64.zip", &stripped, &limits()));
        assert!(matches!(problem, Problem::Malformed(_)), "{problem:?}");
    }

    #[test]
    fn a_gzip_whose_isize_lies_is_still_counted() {
        let tight = Limits {
            max_expanded: 1_000_000,
            max_ratio: 100_000,
            ..limits()
        };
        let mut gz = gzip(&vec![0; 2_000_000]);
        let (_, problem) = beyond_of(inspect("a.gz", &gz, &tight));
        assert!(
            matches!(
                problem,
                Problem::Expanded {
                    bytes: 2_000_000,
                    ..
                }
            ),
            "{problem:?}"
        );
        // ISIZE says 10 bytes: inflating finds the rest.
        let at = gz.len() - 4;
        gz[at..].copy_from_slice(&10u32.to_le_bytes());
        let (_, problem) = beyond_of(inspect("a.gz", &gz, &tight));
        assert!(
            matches!(problem, Problem::Expanded { bytes, .. } if bytes > 1_000_000),
            "{problem:?}"
        );
    }

    #[test]
    fn a_zip_behind_other_bytes_is_read_and_other_data_is_not_a_zip() {
        let bomb = zip(&[Item {
            size: 1 << 40,
            ..deflated("zeros.bin", b"")
        }]);
        let mut sfx = b"MZ a self-extracting program".repeat(10);
        sfx.extend_from_slice(&bomb);
        let (_, problem) = beyond_of(inspect("setup.exe", &sfx, &limits()));
        assert!(matches!(problem, Problem::Expanded { .. }), "{problem:?}");
        // A PDF that happens to hold an end record's four bytes.
        let mut pdf = b"%PDF-1.4 stream".to_vec();
        pdf.extend_from_slice(&end_record(3, 100, 5));
        pdf.extend_from_slice(b" endstream");
        let found = inspect("doc.pdf", &pdf, &limits()).expect("not a zip");
        assert_eq!(found.archives, 0);
    }

    #[test]
    fn every_cut_of_a_zip_is_malformed_and_no_byte_flip_panics() {
        let archive = zip(&[
            deflated("a.txt", b"hello hello hello"),
            stored("inner.zip", &zip(&[stored("b.txt", b"b")])),
        ]);
        inspect("whole.zip", &archive, &limits()).expect("the whole zip passes");
        for len in 0..archive.len() {
            let cut = &archive[..len];
            // A cut that ends with the stored inner zip is that zip behind
            // other bytes; no cut passes with more than the inner one holds.
            if let Ok(found) = inspect("cut.zip", cut, &limits()) {
                assert!(
                    found.files <= 1,
                    "a zip cut at {len} bytes passed as {found:?}"
                );
            }
        }
        for at in 0..archive.len() {
            for flip in [0x01, 0x80, 0xff] {
                let mut bent = archive.clone();
                bent[at] ^= flip;
                let _ = inspect("bent.zip", &bent, &limits());
            }
        }
    }

    #[test]
    fn gzip_members_count_as_files() {
        let text = b"log line\n".repeat(100);
        let three = [gzip(&text), gzip(&text), gzip(b"")].concat();
        let found = inspect("logs.gz", &three, &limits()).expect("three members");
        assert_eq!(found.files, 3);
        assert_eq!(
            found.expanded,
            2 * text.len() as u64,
            "every member counted"
        );
        let many = gzip(b"").repeat(20_000);
        let (_, problem) = beyond_of(inspect("many.gz", &many, &limits()));
        assert_eq!(
            problem,
            Problem::Files {
                files: 1001,
                limit: 1000
            }
        );
    }

    #[test]
    fn a_check_past_its_deadline_stops() {
        let archive = zip(&[deflated("a.txt", b"hello")]);
        let late = Limits {
            deadline: Some(Instant::now() - std::time::Duration::from_millis(1)),
            ..limits()
        };
        let (_, problem) = beyond_of(inspect("late.zip", &archive, &late));
        assert_eq!(problem, Problem::TooSlow);
    }

    #[test]
    fn an_encrypted_entry_is_judged_by_what_it_declares() {
        let secret = Item {
            flags: FLAG_ENCRYPTED,
            packed: vec![0x5a; 64],
            size: 100,
            ..deflated("secret.txt", b"")
        };
        inspect("secret.zip", &zip(std::slice::from_ref(&secret)), &limits())
            .expect("declared only");
        let bomb = Item {
            size: 1 << 33,
            ..secret
        };
        let (_, problem) = beyond_of(inspect("secret.zip", &zip(&[bomb]), &limits()));
        assert!(matches!(problem, Problem::Expanded { .. }), "{problem:?}");
    }

    #[test]
    fn a_stored_entry_or_local_header_that_disagrees_is_malformed() {
        let short = Item {
            size: 5,
            ..stored("a.txt", b"abc")
        };
        let (_, problem) = beyond_of(inspect("a.zip", &zip(&[short]), &limits()));
        assert!(matches!(problem, Problem::Malformed(_)), "{problem:?}");
        let mut archive = zip(&[deflated("a.txt", b"hello")]);
        // The local header's uncompressed size says 1 GiB.
        archive[22..26].copy_from_slice(&(1u32 << 30).to_le_bytes());
        let (_, problem) = beyond_of(inspect("a.zip", &archive, &limits()));
        assert!(
            matches!(&problem, Problem::Malformed(why) if why.contains("disagree")),
            "{problem:?}"
        );
    }

    #[test]
    fn archives_as_real_tools_make_them_pass() {
        // The fuzz seeds: zips and gzips written by Python's zipfile and
        // gzip (data descriptors, zip64 local headers, a program before
        // the zip), after their selector byte.
        let corpus =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz/corpus/archive");
        for (seed, archives) in [
            ("zip", 1),
            ("zip64", 1),
            ("nested-zip", 2),
            ("gzip", 1),
            ("gzip-of-zip", 2),
            ("self-extractor", 1),
        ] {
            let data = std::fs::read(corpus.join(seed)).unwrap();
            let found = inspect(seed, &data[1..], &limits())
                .unwrap_or_else(|e| panic!("{seed} is a normal archive: {e}"));
            assert_eq!(found.archives, archives, "{seed}: {found:?}");
        }
    }

    #[test]
    fn names_in_reasons_are_printable_and_bounded() {
        assert_eq!(printable(b"a\r\nb\x00c"), "a  b c");
        let long = printable(&[b'x'; 500]);
        assert_eq!(long.chars().count(), 81, "80 characters and an ellipsis");
    }
}
