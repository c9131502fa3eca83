//! Inflating, counted: a raw deflate stream (a zip entry, a gzip member)
//! is inflated into one reused chunk and only counted, unless its output
//! starts like an archive and fits the keep limit; and gzip's member
//! header, which precedes such a stream.

use std::time::Instant;

use super::bytes::u16_at;
use super::magic::is_nested_archive;

/// The length of a gzip member's header (RFC 1952), if it is all there.
pub(super) fn gzip_header_len(data: &[u8]) -> Option<usize> {
    const FHCRC: u8 = 1 << 1;
    const FEXTRA: u8 = 1 << 2;
    const FNAME: u8 = 1 << 3;
    const FCOMMENT: u8 = 1 << 4;
    let flags = *data.get(3)?;
    if flags & 0xe0 != 0 {
        return None;
    }
    let mut at = 10;
    if flags & FEXTRA != 0 {
        at += 2 + usize::from(u16_at(data, at)?);
    }
    for field in [FNAME, FCOMMENT] {
        if flags & field != 0 {
            at += data.get(at..)?.iter().position(|&b| b == 0)? + 1;
        }
    }
    if flags & FHCRC != 0 {
        at += 2;
    }
    (at <= data.len()).then_some(at)
}

#[derive(Debug)]
pub(super) enum InflateError {
    Corrupt,
    TooSlow,
}

/// What an inflated stream's output was kept as.
#[derive(Debug)]
pub(super) enum Kept {
    /// Not an archive: counted, not kept.
    Nothing,
    /// An archive, whole.
    Archive(Vec<u8>),
    /// An archive larger than the keep limit.
    TooLarge,
}

#[derive(Debug)]
pub(super) struct Inflated {
    /// Input bytes the stream took.
    pub(super) consumed: usize,
    /// Output bytes; at most a chunk past `cap`.
    pub(super) produced: u64,
    /// The stream ended (rather than the input, or the cap).
    pub(super) ended: bool,
    pub(super) kept: Kept,
}

/// The first bytes of an output, until they tell whether it is an archive.
const MAGIC_LEN: usize = 4;

/// Output bytes per round, counted and then overwritten.
const CHUNK: usize = 64 * 1024;

/// The inflate state and output chunk one check reuses for every entry
/// and gzip member (each is done before a nested archive is read), so
/// that thousands of tiny members do not each allocate and clear one.
pub(super) struct Inflater {
    stream: flate2::Decompress,
    chunk: Vec<u8>,
}

impl Inflater {
    pub(super) fn new() -> Self {
        Inflater {
            stream: flate2::Decompress::new(false),
            chunk: vec![0; CHUNK],
        }
    }

    /// Inflates a raw deflate stream, counting its output and stopping
    /// once it is past `cap`. The output is kept only when it starts like
    /// an archive and fits in `keep` bytes.
    pub(super) fn inflate(
        &mut self,
        input: &[u8],
        cap: u64,
        keep: usize,
        deadline: Option<Instant>,
    ) -> Result<Inflated, InflateError> {
        self.stream.reset(false);
        inflate(
            &mut self.stream,
            &mut self.chunk,
            input,
            cap,
            keep,
            deadline,
        )
    }
}

fn inflate(
    stream: &mut flate2::Decompress,
    chunk: &mut [u8],
    input: &[u8],
    cap: u64,
    keep: usize,
    deadline: Option<Instant>,
) -> Result<Inflated, InflateError> {
    use flate2::{FlushDecompress, Status};
    // `None` once the output is known not to be an archive.
    let mut head: Option<Vec<u8>> = Some(Vec::new());
    let mut too_large = false;
    let mut ended = false;
    // Every round takes input or gives output (else it stops), so rounds
    // are bounded by the input's length plus the output cap.
    loop {
        let (before_in, before_out) = (stream.total_in(), stream.total_out());
        let consumed = usize::try_from(before_in).unwrap_or(input.len());
        let status = stream
            .decompress(
                input.get(consumed..).unwrap_or_default(),
                chunk,
                FlushDecompress::None,
            )
            .map_err(|_| InflateError::Corrupt)?;
        let fresh = usize::try_from(stream.total_out() - before_out).unwrap_or(CHUNK);
        let out = &chunk[..fresh.min(CHUNK)];
        if let Some(kept) = &mut head {
            if kept.len() + out.len() > keep.max(MAGIC_LEN) {
                too_large = true;
            }
            if too_large {
                // Only the magic is still needed, to tell which it is.
                let room = MAGIC_LEN.saturating_sub(kept.len());
                kept.extend_from_slice(&out[..room.min(out.len())]);
            } else {
                kept.extend_from_slice(out);
            }
            if kept.len() >= MAGIC_LEN && !is_nested_archive(kept) {
                head = None;
            }
        }
        if status == Status::StreamEnd {
            ended = true;
            break;
        }
        if stream.total_out() > cap {
            break;
        }
        if stream.total_in() == before_in && stream.total_out() == before_out {
            // Neither input taken nor output given: the input ran out.
            break;
        }
        if deadline.is_some_and(|d| Instant::now() > d) {
            return Err(InflateError::TooSlow);
        }
    }
    let kept = match head {
        Some(bytes) if is_nested_archive(&bytes) => {
            if too_large {
                Kept::TooLarge
            } else {
                Kept::Archive(bytes)
            }
        }
        _ => Kept::Nothing,
    };
    Ok(Inflated {
        consumed: usize::try_from(stream.total_in()).unwrap_or(input.len()),
        produced: stream.total_out(),
        ended,
        kept,
    })
}
