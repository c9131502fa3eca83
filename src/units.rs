//! Human units in the config file: durations (`"30s"`, `"5m"`) and sizes
//! (`"25MB"`, `"512KiB"`, or a plain number of bytes).

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// A duration written as humans write it: `"250ms"`, `"30s"`, `"5m"`, `"1h"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(text.trim())
            .map(HumanDuration)
            .map_err(|e| {
                serde::de::Error::custom(format!(
                    "`{text}` is not a duration ({e}); write it like \"30s\", \"5m\" or \"1h\""
                ))
            })
    }
}

impl From<HumanDuration> for Duration {
    fn from(d: HumanDuration) -> Duration {
        d.0
    }
}

/// A size in bytes: `"25MB"` (decimal), `"25MiB"` (binary), `"512KB"`, or a
/// bare integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn bytes(self) -> u64 {
        self.0
    }

    /// The size as a `usize`, saturating on 32-bit targets.
    pub fn as_usize(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }

    pub fn parse(text: &str) -> Result<ByteSize, String> {
        let t = text.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (number, unit) = t.split_at(split);
        let number: f64 = number
            .parse()
            .map_err(|_| format!("`{text}` is not a size; write it like \"25MB\" or \"512KiB\""))?;
        let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" => 1_000,
            "kib" => 1 << 10,
            "m" | "mb" => 1_000_000,
            "mib" => 1 << 20,
            "g" | "gb" => 1_000_000_000,
            "gib" => 1 << 30,
            other => {
                return Err(format!(
                    "`{text}` has an unknown unit `{other}`; use B, KB, KiB, MB, MiB, GB or GiB"
                ))
            }
        };
        Ok(ByteSize((number * multiplier as f64).round() as u64))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        if b >= 1_000_000 && b % 1_000_000 == 0 {
            write!(f, "{}MB", b / 1_000_000)
        } else if b >= 1_000 && b % 1_000 == 0 {
            write!(f, "{}KB", b / 1_000)
        } else {
            write!(f, "{b}B")
        }
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(n) => Ok(ByteSize(n)),
            Raw::Text(t) => ByteSize::parse(&t).map_err(serde::de::Error::custom),
        }
    }
}

/// The longest grace a connection limit may give (longer is "never", and
/// would overflow the clock arithmetic).
pub const MAX_GRACE: Duration = Duration::from_secs(24 * 3600);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_sysadmins_write_them() {
        assert_eq!(ByteSize::parse("25MB").unwrap().0, 25_000_000);
        assert_eq!(ByteSize::parse("1 MiB").unwrap().0, 1 << 20);
        assert_eq!(ByteSize::parse("512").unwrap().0, 512);
        assert_eq!(ByteSize::parse("1.5kb").unwrap().0, 1500);
        assert!(ByteSize::parse("many").is_err());
        assert!(ByteSize::parse("10 parsecs").is_err());
    }
}
