//! Bounded reads of little-endian integers (`None` past the end, never a
//! panic on hostile input) and names made fit for a reason or a log line.
//! The bottom of the check: the format readers and the walk all use them.

pub(super) fn u16_at(data: &[u8], at: usize) -> Option<u16> {
    let bytes = data.get(at..at.checked_add(2)?)?;
    Some(u16::from_le_bytes([bytes[0], bytes[1]]))
}

pub(super) fn u32_at(data: &[u8], at: usize) -> Option<u32> {
    let bytes = data.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

pub(super) fn u64_at(data: &[u8], at: usize) -> Option<u64> {
    let bytes: [u8; 8] = data.get(at..at.checked_add(8)?)?.try_into().ok()?;
    Some(u64::from_le_bytes(bytes))
}

/// A name fit for a reason and a log line: no control characters, at most
/// [`MAX_NAME`] characters.
pub(super) fn printable(raw: &[u8]) -> String {
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
