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

/// Year, month, day of a count of days since 1970-01-01 (proleptic Gregorian;
/// H. Hinnant's `civil_from_days`): dates without a calendar crate.
pub fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Days since 1970-01-01 of a date (H. Hinnant's `days_from_civil`), the
/// inverse of [`civil`].
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Epoch milliseconds as RFC 3339 in UTC, to the millisecond
/// (`2026-12-07T17:10:47.123Z`): how listings print times, so people read
/// dates, not numbers.
pub fn rfc3339_ms(ms: u64) -> String {
    let secs = (ms / 1000) as i64;
    let (y, m, d) = civil(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        sod / 3600,
        sod / 60 % 60,
        sod % 60,
        ms % 1000
    )
}

/// A point in time as a command line gives it, in epoch milliseconds: RFC 3339
/// in UTC (`2026-12-07T17:00:00Z`, fractions allowed), a date
/// (`2026-12-07`, its midnight UTC), or an age before `now_ms` (`90s`, `15m`,
/// `2h`, `7d`).
///
/// # Errors
/// A message naming what was expected.
pub fn parse_time(text: &str, now_ms: u64) -> Result<u64, String> {
    let bad = || {
        format!(
            "`{text}` is not a time: give RFC 3339 in UTC (2026-12-07T17:00:00Z), a date (2026-12-07) or an age (90s, 15m, 2h, 7d)"
        )
    };
    let t = text.trim();
    if let Some(unit) = t.chars().last().filter(char::is_ascii_alphabetic)
        && let Ok(n) = t[..t.len() - 1].parse::<u64>()
    {
        let ms = match unit {
            's' => 1_000,
            'm' => 60_000,
            'h' => 3_600_000,
            'd' => 86_400_000,
            _ => return Err(bad()),
        };
        return Ok(now_ms.saturating_sub(n.saturating_mul(ms)));
    }
    let (date, time) = t.split_once(['T', 't', ' ']).unwrap_or((t, ""));
    let mut parts = date.splitn(3, '-');
    let mut num = |max: u32| -> Result<u32, String> {
        parts
            .next()
            .and_then(|p| p.parse::<u32>().ok())
            .filter(|v| *v <= max)
            .ok_or_else(bad)
    };
    let (y, m, d) = (num(9999)?, num(12)?, num(31)?);
    if m == 0 || d == 0 {
        return Err(bad());
    }
    let days = days_from_civil(i64::from(y), m, d);
    let mut ms = 0u64;
    if !time.is_empty() {
        let time = time
            .strip_suffix(['Z', 'z'])
            .or_else(|| time.strip_suffix("+00:00"))
            .ok_or_else(|| format!("`{text}`: give the time in UTC, ending in `Z`"))?;
        let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
        let f: Vec<u64> = hms
            .split(':')
            .map(|p| p.parse::<u64>().map_err(|_| bad()))
            .collect::<Result<_, _>>()?;
        let [h, mi, s] = f[..] else { return Err(bad()) };
        if h > 23 || mi > 59 || s > 60 {
            return Err(bad());
        }
        let frac_ms = format!("{frac:0<3}")[..3]
            .parse::<u64>()
            .map_err(|_| bad())?;
        ms = (h * 3600 + mi * 60 + s) * 1000 + frac_ms;
    }
    u64::try_from(days)
        .map(|d| d * 86_400_000 + ms)
        .map_err(|_| bad())
}

#[cfg(test)]
mod time_tests {
    use super::*;

    #[test]
    fn times_print_and_parse_both_ways() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_796_663_447_123), "2026-12-07T17:10:47.123Z");
        let now = 1_796_663_447_123;
        assert_eq!(parse_time("2026-12-07T17:10:47.123Z", 0), Ok(now));
        assert_eq!(parse_time("2026-12-07T17:10:47Z", 0), Ok(now - 123));
        assert_eq!(parse_time("2026-12-07", 0), Ok(1_796_601_600_000));
        assert_eq!(parse_time("2h", now), Ok(now - 7_200_000));
        assert_eq!(parse_time("7d", now), Ok(now - 7 * 86_400_000));
        assert!(
            parse_time("yesterday", now)
                .unwrap_err()
                .contains("RFC 3339")
        );
        assert!(
            parse_time("2026-12-07T17:10:47+01:00", now)
                .unwrap_err()
                .contains("UTC")
        );
        for days in [-1000, 0, 1, 59, 60, 365, 20_000, 2_932_896] {
            let (y, m, d) = civil(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }
}
