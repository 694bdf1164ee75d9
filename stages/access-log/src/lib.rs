//! A weir connector plugin: reads an Apache/Nginx access log in the *combined*
//! format and emits one typed event per line.
//!
//! ```text
//! 203.0.113.7 - frank [10/Oct/2000:13:55:36 -0700] "GET /a.gif HTTP/1.0" 200 2326 "http://x/" "Mozilla/4.08"
//! └ ip        │ └ user └ ts                        └ method path protocol └status└bytes└ referer  └ user_agent
//!             └ ident (ignored)
//! ```
//!
//! | column | type | null when |
//! | --- | --- | --- |
//! | `ip` | utf8 | never |
//! | `user` | utf8 | `-` |
//! | `ts` | timestamp_ms (UTC) | never |
//! | `method`, `path`, `protocol` | utf8 | the request is `-` (Nginx's 400 for a bad request) |
//! | `status` | int32 | never |
//! | `bytes` | int64 | `-` (no body) |
//! | `referer`, `user_agent` | utf8 | `-` |
//!
//! Quoted fields may hold `\"` and `\\` (Apache's escapes) and `\xHH` (Nginx's,
//! e.g. `\x22` for a quote): each is decoded.
//!
//! Configuration (JSON, from the pipeline's `config` table): `path`, the log file,
//! as the plugin sees it (the pipeline must grant its directory with
//! `grants.read`). Unknown keys are refused.
//!
//! Checkpoint: the byte offset just after the last line of the batch. A resumed
//! run opens the file again and continues there; a checkpoint past the end of
//! the file (it was replaced by a shorter one) is refused rather than guessed at.
//! The source is bounded: it ends at the end of the file, and a last line without
//! a newline is read as a line.
//!
//! A malformed line (wrong field count, a bad timestamp or status, invalid UTF-8)
//! is skipped, never silently: it is counted in the host counter
//! `malformed_lines` (shown as `plugin:malformed_lines` in the run summary) and
//! logged at `warn` with its byte offset and its first 200 bytes. The batch it
//! was in still ends at a checkpoint after it, so it is not read again.

use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};

use serde::Deserialize;
use weir_guest::{Batch, Column, Connector, StageError};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// The log file. Required.
    path: String,
}

/// One parsed line.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub ip: String,
    pub user: Option<String>,
    pub ts_ms: i64,
    pub method: Option<String>,
    pub path: Option<String>,
    pub protocol: Option<String>,
    pub status: i32,
    pub bytes: Option<i64>,
    pub referer: Option<String>,
    pub user_agent: Option<String>,
}

struct AccessLog {
    path: String,
    reader: BufReader<File>,
    /// Byte offset of the next unread line.
    offset: u64,
    line: Vec<u8>,
}

impl Connector for AccessLog {
    fn open(config: &str, checkpoint: Option<String>) -> Result<Self, String> {
        let config: Config = weir_guest::params::parse(config)?;
        let mut file =
            File::open(&config.path).map_err(|e| format!("cannot open {}: {e}", config.path))?;
        let offset = match checkpoint {
            None => 0,
            Some(c) => {
                let offset: u64 = c
                    .parse()
                    .map_err(|_| format!("checkpoint {c:?} is not a byte offset"))?;
                let len = file
                    .metadata()
                    .map_err(|e| format!("cannot read {}: {e}", config.path))?
                    .len();
                if offset > len {
                    return Err(format!(
                        "checkpoint {offset} is past the end of {} ({len} bytes): was the file replaced?",
                        config.path
                    ));
                }
                file.seek(SeekFrom::Start(offset))
                    .map_err(|e| format!("cannot seek in {}: {e}", config.path))?;
                offset
            }
        };
        Ok(AccessLog {
            path: config.path,
            reader: BufReader::with_capacity(1 << 16, file),
            offset,
            line: Vec::new(),
        })
    }

    fn next_batch(&mut self, max_rows: u32) -> Result<Option<(Batch, String)>, StageError> {
        let mut events = Vec::with_capacity(max_rows as usize);
        let mut malformed = 0u64;
        let mut read_any = false;
        while events.len() < max_rows as usize {
            self.line.clear();
            let n = self
                .reader
                .read_until(b'\n', &mut self.line)
                .map_err(|e| StageError::new(format!("cannot read {}: {e}", self.path)))?;
            if n == 0 {
                break;
            }
            read_any = true;
            let at = self.offset;
            self.offset += n as u64;
            let text = trim_newline(&self.line);
            if text.is_empty() {
                continue;
            }
            match std::str::from_utf8(text)
                .map_err(|_| "invalid UTF-8".to_owned())
                .and_then(parse_line)
            {
                Ok(event) => events.push(event),
                Err(reason) => {
                    malformed += 1;
                    let shown = String::from_utf8_lossy(&text[..text.len().min(200)]);
                    weir_guest::log::warn(&format!(
                        "{}: malformed line at byte {at} ({reason}), skipped: {shown}",
                        self.path
                    ));
                }
            }
        }
        if malformed > 0 {
            weir_guest::metrics::counter_add("malformed_lines", malformed);
        }
        if !read_any {
            return Ok(None);
        }
        Ok(Some((to_batch(events)?, self.offset.to_string())))
    }
}

weir_guest::export_connector!(AccessLog);

fn trim_newline(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn to_batch(events: Vec<Event>) -> Result<Batch, StageError> {
    let strs = |f: fn(&Event) -> Option<&str>| events.iter().map(f).collect::<Vec<_>>();
    Batch::new(vec![
        Column::utf8("ip", events.iter().map(|e| e.ip.as_str())),
        Column::utf8_opt("user", strs(|e| e.user.as_deref())),
        Column::timestamp_ms("ts", events.iter().map(|e| e.ts_ms).collect()),
        Column::utf8_opt("method", strs(|e| e.method.as_deref())),
        Column::utf8_opt("path", strs(|e| e.path.as_deref())),
        Column::utf8_opt("protocol", strs(|e| e.protocol.as_deref())),
        Column::i32("status", events.iter().map(|e| e.status).collect()),
        Column::i64_opt("bytes", events.iter().map(|e| e.bytes)),
        Column::utf8_opt("referer", strs(|e| e.referer.as_deref())),
        Column::utf8_opt("user_agent", strs(|e| e.user_agent.as_deref())),
    ])
}

/// A cursor over one line.
struct Cursor<'a> {
    rest: &'a str,
}

impl<'a> Cursor<'a> {
    /// The next space-separated token.
    fn token(&mut self, what: &str) -> Result<&'a str, String> {
        let rest = self.rest.trim_start_matches(' ');
        if rest.is_empty() {
            return Err(format!("no {what}"));
        }
        let end = rest.find(' ').unwrap_or(rest.len());
        self.rest = &rest[end..];
        Ok(&rest[..end])
    }

    /// The next `[...]` field, without its brackets.
    fn bracketed(&mut self, what: &str) -> Result<&'a str, String> {
        let rest = self.rest.trim_start_matches(' ');
        let inner = rest
            .strip_prefix('[')
            .ok_or_else(|| format!("no [{what}]"))?;
        let end = inner
            .find(']')
            .ok_or_else(|| format!("unclosed [{what}]"))?;
        self.rest = &inner[end + 1..];
        Ok(&inner[..end])
    }

    /// The next `"..."` field, its escapes decoded.
    fn quoted(&mut self, what: &str) -> Result<String, String> {
        let rest = self.rest.trim_start_matches(' ');
        let inner = rest
            .strip_prefix('"')
            .ok_or_else(|| format!("no quoted {what}"))?;
        // Bytes, since `\xHH` escapes may spell a multi-byte character.
        let mut out = Vec::new();
        let mut chars = inner.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    self.rest = &inner[i + 1..];
                    return String::from_utf8(out)
                        .map_err(|_| format!("{what} is not UTF-8 once unescaped"));
                }
                '\\' => match chars.next() {
                    Some((_, 'x')) => {
                        let hex: String = chars.by_ref().take(2).map(|(_, h)| h).collect();
                        let byte = u8::from_str_radix(&hex, 16)
                            .map_err(|_| format!("bad escape \\x{hex} in {what}"))?;
                        out.push(byte);
                    }
                    Some((_, other)) => {
                        out.extend_from_slice(other.encode_utf8(&mut [0; 4]).as_bytes())
                    }
                    None => return Err(format!("unclosed quoted {what}")),
                },
                c => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
            }
        }
        Err(format!("unclosed quoted {what}"))
    }
}

fn dash(s: String) -> Option<String> {
    (s != "-").then_some(s)
}

/// Parses one line of the combined log format.
///
/// # Errors
/// What is wrong with it, in a few words.
pub fn parse_line(line: &str) -> Result<Event, String> {
    let mut c = Cursor { rest: line };
    let ip = c.token("ip")?.to_owned();
    let _ident = c.token("ident")?;
    let user = dash(c.token("user")?.to_owned());
    let ts_ms = parse_time(c.bracketed("time")?)?;
    let request = c.quoted("request")?;
    let (method, path, protocol) = if request == "-" {
        (None, None, None)
    } else {
        let parts: Vec<&str> = request.split(' ').collect();
        let [method, path, protocol] = parts[..] else {
            return Err(format!("request {request:?} is not `METHOD PATH PROTOCOL`"));
        };
        (
            Some(method.to_owned()),
            Some(path.to_owned()),
            Some(protocol.to_owned()),
        )
    };
    let status = c.token("status")?;
    let status: i32 = status
        .parse()
        .ok()
        .filter(|s| (100..=999).contains(s))
        .ok_or_else(|| format!("status {status:?} is not a 3-digit number"))?;
    let bytes = match c.token("bytes")? {
        "-" => None,
        b => Some(
            b.parse::<i64>()
                .ok()
                .filter(|b| *b >= 0)
                .ok_or_else(|| format!("bytes {b:?} is not a number or -"))?,
        ),
    };
    let referer = dash(c.quoted("referer")?);
    let user_agent = dash(c.quoted("user agent")?);
    if !c.rest.trim().is_empty() {
        return Err("text after the user agent".into());
    }
    Ok(Event {
        ip,
        user,
        ts_ms,
        method,
        path,
        protocol,
        status,
        bytes,
        referer,
        user_agent,
    })
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// `10/Oct/2000:13:55:36 -0700` as milliseconds since the Unix epoch (UTC).
fn parse_time(text: &str) -> Result<i64, String> {
    let bad = || format!("time {text:?} is not `dd/Mon/yyyy:hh:mm:ss ±hhmm`");
    let (stamp, zone) = text.split_once(' ').ok_or_else(bad)?;
    let b = stamp.as_bytes();
    if b.len() != 20 || b[2] != b'/' || b[6] != b'/' || b[11] != b':' {
        return Err(bad());
    }
    let num = |s: &str| s.parse::<i64>().map_err(|_| bad());
    let day = num(&stamp[0..2])?;
    let month = MONTHS
        .iter()
        .position(|m| *m == &stamp[3..6])
        .ok_or_else(bad)? as i64
        + 1;
    let year = num(&stamp[7..11])?;
    let hms: Vec<&str> = stamp[12..].split(':').collect();
    let [h, m, s] = hms[..] else {
        return Err(bad());
    };
    let (h, m, s) = (num(h)?, num(m)?, num(s)?);
    if !(1..=31).contains(&day) || h > 23 || m > 59 || s > 60 {
        return Err(bad());
    }
    let zb = zone.as_bytes();
    if zb.len() != 5 || !(zb[0] == b'+' || zb[0] == b'-') {
        return Err(bad());
    }
    let offset = num(&zone[1..3])? * 3600 + num(&zone[3..5])? * 60;
    let offset = if zb[0] == b'-' { -offset } else { offset };
    let secs = days_from_civil(year, month, day) * 86_400 + h * 3600 + m * 60 + s - offset;
    Ok(secs * 1000)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_combined_line_parses_into_typed_fields() {
        let e = parse_line(
            r#"127.0.0.1 - frank [10/Oct/2000:13:55:36 -0700] "GET /apache_pb.gif HTTP/1.0" 200 2326 "http://www.example.com/start.html" "Mozilla/4.08 [en] (Win98; I ;Nav)""#,
        )
        .unwrap();
        assert_eq!(e.ip, "127.0.0.1");
        assert_eq!(e.user.as_deref(), Some("frank"));
        assert_eq!(e.ts_ms, 971_211_336_000);
        assert_eq!(e.method.as_deref(), Some("GET"));
        assert_eq!(e.status, 200);
        assert_eq!(e.bytes, Some(2326));
        assert_eq!(
            e.user_agent.as_deref(),
            Some("Mozilla/4.08 [en] (Win98; I ;Nav)")
        );
    }

    #[test]
    fn dashes_escapes_and_bad_lines() {
        let e = parse_line(
            r#"::1 - - [01/Jan/2024:00:00:00 +0000] "-" 400 - "-" "say \"hi\" \x22x\x22""#,
        )
        .unwrap();
        assert_eq!(
            (e.user, e.method, e.bytes, e.referer),
            (None, None, None, None)
        );
        assert_eq!(e.ts_ms, 1_704_067_200_000);
        assert_eq!(e.user_agent.as_deref(), Some(r#"say "hi" "x""#));
        assert!(parse_line("garbage").is_err());
        assert!(
            parse_line(
                r#"1.2.3.4 - - [01/Foo/2024:00:00:00 +0000] "GET / HTTP/1.1" 200 1 "-" "-""#
            )
            .is_err()
        );
    }
}
