//! What one check runs under and what it answers: the `[scan]` archive
//! limits, what a target within them holds, and which limit a target is
//! beyond (the reason an item goes to quarantine as `unscannable`). The
//! vocabulary every other file of the check shares, importing nothing.

use std::fmt;
use std::time::Instant;

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
