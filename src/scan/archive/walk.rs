//! The walk: one target read archive by archive, down through nested
//! ones, every figure judged against the limits as it is found (declared
//! sizes before anything is inflated, then what inflating produces). The
//! zip and gzip walks are here; reading their bytes is `zip.rs` and
//! `deflate.rs`.

use std::time::Instant;

use super::bytes::{printable, u32_at};
use super::deflate::{gzip_header_len, InflateError, Inflater, Kept};
use super::limits::{Beyond, Inspected, Limits, Problem, RATIO_FLOOR};
use super::magic::{is_nested_archive, starts_like_gzip, starts_like_zip};
use super::zip::{find_end, Directory, Entry, ZipError, METHOD_DEFLATE, METHOD_STORED};

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
