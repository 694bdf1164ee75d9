//! Human-friendly quantities for pipeline files: byte sizes (`"64MiB"`) and
//! durations (`"250ms"`, `"2s"`).
//!
//! Both accept a bare integer too (bytes, milliseconds), so generated specs need no
//! string formatting. Binary units (KiB, MiB, GiB) are 1024-based and decimal units
//! (KB, MB, GB) 1000-based, as in most infrastructure tools.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Splits `"1.5GiB"` into `(1.5, "GiB")`; `what` and `hint` name the quantity in
/// the error.
fn number_and_unit<'a>(s: &'a str, what: &str, hint: &str) -> Result<(f64, &'a str), String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value = num
        .parse()
        .map_err(|_| format!("`{s}` is not a {what} (try {hint})"))?;
    Ok((value, unit.trim()))
}

/// Deserializes a quantity written as an integer (in its base unit, mapped by
/// `from_int`) or as a string with a unit (parsed by `FromStr`).
fn int_or_text<'de, D, T>(d: D, from_int: impl FnOnce(u64) -> T) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr<Err = String>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Int(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Int(n) => Ok(from_int(n)),
        Raw::Text(s) => s.parse().map_err(serde::de::Error::custom),
    }
}

/// A size in bytes, written `"64MiB"`, `"1.5GiB"`, `"512KB"` or as an integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// `n` mebibytes.
    pub const fn mib(n: u64) -> Self {
        Self(n * 1024 * 1024)
    }

    /// The size in bytes, as `usize` (saturating on 32-bit hosts).
    pub fn as_usize(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }
}

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (value, unit) = number_and_unit(s, "size", "\"64MiB\" or a number of bytes")?;
        let scale: u64 = match unit.to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "kb" => 1000,
            "mb" => 1000 * 1000,
            "gb" => 1000 * 1000 * 1000,
            "kib" | "k" => 1024,
            "mib" | "m" => 1024 * 1024,
            "gib" | "g" => 1024 * 1024 * 1024,
            other => {
                return Err(format!(
                    "`{s}`: unknown size unit `{other}` (use B, KiB, MiB, GiB, KB, MB or GB)"
                ));
            }
        };
        Ok(Self((value * scale as f64).round() as u64))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(&str, u64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
        for (name, scale) in UNITS {
            if self.0 >= scale && self.0.is_multiple_of(scale) {
                return write!(f, "{}{name}", self.0 / scale);
            }
        }
        for (name, scale) in UNITS {
            if self.0 >= scale {
                return write!(f, "{:.1}{name}", self.0 as f64 / scale as f64);
            }
        }
        write!(f, "{}B", self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        int_or_text(d, Self)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

/// A duration, written `"250ms"`, `"2s"`, `"5m"`, `"1h"` or as integer milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Millis(pub Duration);

impl FromStr for Millis {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (value, unit) = number_and_unit(s, "duration", "\"250ms\", \"2s\" or \"5m\"")?;
        let ms = match unit {
            "" | "ms" => value,
            "s" => value * 1e3,
            "m" | "min" => value * 60e3,
            "h" => value * 3600e3,
            "d" => value * 86_400e3,
            other => {
                return Err(format!(
                    "`{s}`: unknown duration unit `{other}` (use ms, s, m, h or d)"
                ));
            }
        };
        Ok(Self(Duration::from_micros((ms * 1e3).round() as u64)))
    }
}

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms >= 1000 && ms.is_multiple_of(1000) {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

impl<'de> Deserialize<'de> for Millis {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        int_or_text(d, |n| Self(Duration::from_millis(n)))
    }
}

impl Serialize for Millis {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_binary_and_decimal_units() {
        assert_eq!("64MiB".parse::<ByteSize>().unwrap(), ByteSize(64 << 20));
        assert_eq!("1.5GiB".parse::<ByteSize>().unwrap(), ByteSize(3 << 29));
        assert_eq!("2KB".parse::<ByteSize>().unwrap(), ByteSize(2000));
        assert_eq!("17".parse::<ByteSize>().unwrap(), ByteSize(17));
        let err = "3 parsecs".parse::<ByteSize>().unwrap_err();
        assert!(err.contains("unknown size unit `parsecs`"), "{err}");
        assert_eq!(ByteSize(64 << 20).to_string(), "64MiB");
    }

    #[test]
    fn durations_parse_units() {
        assert_eq!(
            "250ms".parse::<Millis>().unwrap().0,
            Duration::from_millis(250)
        );
        assert_eq!("2s".parse::<Millis>().unwrap().0, Duration::from_secs(2));
        assert_eq!(
            "30m".parse::<Millis>().unwrap().0,
            Duration::from_secs(1800)
        );
        assert!(
            "2 fortnights"
                .parse::<Millis>()
                .unwrap_err()
                .contains("fortnights")
        );
        assert_eq!(Millis(Duration::from_secs(3)).to_string(), "3s");
    }
}
