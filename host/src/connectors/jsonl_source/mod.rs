//! A JSON-lines file source with a declared schema.
//!
//! Each line is parsed straight into typed column builders: a line that is one
//! flat object of plain values (strings without escapes, non-negative numbers
//! without exponents, `true`, `false`, `null`) by a hand-written scanner
//! ([`fast`]), any other through a serde visitor, so unusual values and every
//! error are judged by `serde_json`. No intermediate `serde_json::Value`; strings
//! are borrowed from the line when they have no escapes. A line that is not strict JSON, is not an object, or
//! breaks its schema (a `required` field missing, a value of the wrong JSON type,
//! a number outside `[min, max]`) becomes a dead letter with the first reason that
//! applies, in the order: invalid JSON, then the schema's fields in order. Blank
//! lines are skipped. Nothing is dropped silently.
//!
//! Parsing is the costly part of reading, so it runs on several threads:
//!
//! ```text
//!   file ──read blocks──► buffer ──cut at newlines every `batch_rows` lines──► pieces
//!                                                                              │
//!        thread 0: pieces 0..k   thread 1: pieces k..2k   ...   (parse_lines) ◄┘
//!                                                                              │
//!   batches and dead letters, in file order, exact line numbers ◄──────────────┘
//! ```
//!
//! [`parse_lines`] is a pure function over a chunk of whole lines; [`parse_pieces`]
//! cuts a buffer into chunks of `batch_rows` lines and parses them on scoped
//! threads. Each call of [`JsonlSource::next_batch`] hands `threads × 4` chunks to
//! them, so the bytes held at once stay near `threads × 4 × batch_rows` lines (a few
//! MiB), and the output is the same batches, in the same order, with the same dead
//! letters and line numbers as one thread would give: a batch is always the
//! `batch_rows` lines (corrupt ones included) that one thread would have read.

use std::borrow::Cow;
use std::fmt;
use std::fs::File;
use std::io::{Read, Seek};
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{
    ArrayBuilder, ArrayRef, BooleanBuilder, Float32Builder, Float64Builder, Int32Builder,
    Int64Builder, RecordBatch, StringBuilder, TimestampMillisecondBuilder,
};
use arrow::datatypes::{Field, Schema, SchemaRef};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::node::config::{FieldSpec, FieldType};
use crate::node::{DeadLetter, Emitter, NodeError, Source};

mod fast;

/// A JSON-lines file source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonlSourceSpec {
    /// The file, relative to the pipeline file.
    pub path: PathBuf,
    /// The columns to read, in order. Keys of a record not listed are ignored.
    pub schema: Vec<FieldSpec>,
    /// Rows per batch. Default: the pipeline's `settings.batch_rows`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_rows: Option<NonZeroUsize>,
    /// Where corrupt lines go (JSON lines: line number, reason, text). Default: the
    /// run's dead-letter file in the data directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejects: Option<PathBuf>,
    /// Threads parsing lines. Default: one per core, at most 8. Fewer leaves cores to
    /// a downstream operator that is the slower part of the run (the run summary's
    /// `blocked` column says which).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<NonZeroUsize>,
}

/// Bytes asked of the file per read: large enough that system calls do not show
/// in a profile, small next to the chunks a call parses.
const READ_BYTES: usize = 1 << 20;

/// Chunks of `batch_rows` lines each parsing thread gets per call: four, so the
/// threads' start and join, and a thread that drew short lines waiting for the
/// other, are paid once per four chunks (measured: about 2% of the clickstream
/// run against two), while the buffer stays under ten MiB.
const CHUNKS_PER_THREAD: usize = 4;

/// Most parsing threads a source uses, whatever the machine has: past a few, the
/// downstream stages, not parsing, bound a run.
const MAX_THREADS: usize = 8;

/// Reads a JSON-lines file in batches of `batch_rows` lines, parsing on several
/// threads (see the module docs).
pub struct JsonlSource {
    path: PathBuf,
    display: String,
    file: File,
    fields: Arc<[FieldSpec]>,
    schema: SchemaRef,
    batch_rows: usize,
    threads: NonZeroUsize,
    read_bytes: usize,
    /// Lines handed out so far (the 1-based number of the last one).
    line_no: u64,
    /// Bytes of the file handed out so far (where the next line starts).
    offset: u64,
    /// Bytes read but not yet parsed: whole lines, then perhaps part of one.
    buf: Vec<u8>,
    /// Newlines in `buf`.
    buf_lines: usize,
    eof: bool,
}

impl JsonlSource {
    /// Opens the file named by the spec. Parsing uses `threads` threads, by default
    /// as many as the machine has cores, at most 8.
    ///
    /// # Errors
    /// The file cannot be opened.
    pub fn open(
        spec: &JsonlSourceSpec,
        path: PathBuf,
        default_batch_rows: NonZeroUsize,
    ) -> std::io::Result<Self> {
        let file = File::open(&path)
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        let batch_rows = spec.batch_rows.unwrap_or(default_batch_rows);
        let source = Self::from_file(
            file,
            path,
            spec.path.display().to_string(),
            spec.schema.clone().into(),
            batch_rows,
        );
        Ok(match spec.threads {
            Some(threads) => source.with_threads(threads),
            None => source,
        })
    }

    fn from_file(
        file: File,
        path: PathBuf,
        display: String,
        fields: Arc<[FieldSpec]>,
        batch_rows: NonZeroUsize,
    ) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
        Self {
            display,
            path,
            file,
            schema: schema_of(&fields),
            fields,
            batch_rows: batch_rows.get(),
            threads: NonZeroUsize::new(cores.min(MAX_THREADS)).unwrap_or(NonZeroUsize::MIN),
            read_bytes: READ_BYTES,
            line_no: 0,
            offset: 0,
            buf: Vec::new(),
            buf_lines: 0,
            eof: false,
        }
    }

    /// Uses `threads` parsing threads instead of one per core.
    pub fn with_threads(mut self, threads: NonZeroUsize) -> Self {
        self.threads = threads;
        self
    }

    /// Reads until `buf` holds `lines` whole lines or the file ends.
    fn fill(&mut self, lines: usize) -> Result<(), NodeError> {
        while !self.eof && self.buf_lines < lines {
            let start = self.buf.len();
            self.buf.resize(start + self.read_bytes, 0);
            let n = loop {
                match self.file.read(&mut self.buf[start..]) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(source) => {
                        self.buf.truncate(start);
                        return Err(NodeError::io(self.path.display(), source));
                    }
                }
            };
            self.buf.truncate(start + n);
            self.eof = n == 0;
            self.buf_lines += newlines(&self.buf[start..]);
        }
        Ok(())
    }
}

/// The Arrow schema for a list of fields (all nullable).
pub fn schema_of(fields: &[FieldSpec]) -> SchemaRef {
    Arc::new(Schema::new(
        fields
            .iter()
            .map(|f| Field::new(&f.name, f.data_type.arrow(), !f.required))
            .collect::<Vec<_>>(),
    ))
}

impl Source for JsonlSource {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// Each batch is pushed with the position after its own last line,
    /// `line:offset` (the 1-based number of that line and the byte offset where
    /// the next line starts), so a batch's lineage span names exactly its lines
    /// and a resumed run seeks straight to the byte.
    fn next_batch(&mut self, out: &mut Emitter) -> Result<bool, NodeError> {
        let want = self.batch_rows * self.threads.get() * CHUNKS_PER_THREAD;
        self.fill(want)?;
        // Whole chunks of `batch_rows` lines; at the end of the file, the rest too
        // (a last line without a newline included).
        let whole = self.buf_lines.min(want) / self.batch_rows * self.batch_rows;
        let take = if self.eof && self.buf_lines <= want {
            self.buf.len()
        } else {
            nth_line_end(&self.buf, whole)
        };
        let chunk = &self.buf[..take];
        let parsed = parse_pieces(
            chunk,
            self.line_no + 1,
            self.batch_rows,
            self.threads,
            &self.display,
            &self.fields,
            &self.schema,
        )?;
        let bounds = piece_bounds(chunk, self.batch_rows);
        debug_assert_eq!(bounds.len(), parsed.len());
        let newlines_taken = newlines(chunk);
        for ((batch, letters), (end, lines)) in parsed.into_iter().zip(bounds) {
            for letter in letters {
                out.dead_letter(letter);
            }
            let position = format!("{}:{}", self.line_no + lines, self.offset + end as u64);
            out.push_at(batch, Some(position));
        }
        let lines_total = newlines_taken + usize::from(take > 0 && chunk.last() != Some(&b'\n'));
        self.line_no += lines_total as u64;
        self.offset += take as u64;
        self.buf.drain(..take);
        self.buf_lines -= newlines_taken;
        Ok(!(self.eof && self.buf.is_empty()))
    }

    fn seek(&mut self, position: &str) -> Result<(), NodeError> {
        let bad = |why: &str| {
            NodeError::config(format!(
                "cannot resume {} after `{position}`: {why}",
                self.display
            ))
        };
        let (line, offset) = position
            .split_once(':')
            .and_then(|(l, o)| Some((l.parse::<u64>().ok()?, o.parse::<u64>().ok()?)))
            .ok_or_else(|| bad("not a `line:offset` position"))?;
        let len = self
            .file
            .metadata()
            .map_err(|e| NodeError::io(self.path.display(), e))?
            .len();
        if offset > len {
            return Err(bad(&format!("the file is only {len} bytes long now")));
        }
        if offset > 0 {
            let mut before = [0u8; 1];
            self.file
                .seek(std::io::SeekFrom::Start(offset - 1))
                .and_then(|_| self.file.read_exact(&mut before))
                .map_err(|e| NodeError::io(self.path.display(), e))?;
            if before[0] != b'\n' && offset < len {
                return Err(bad("it is not the start of a line; the file changed"));
            }
        }
        self.file
            .seek(std::io::SeekFrom::Start(offset))
            .map_err(|e| NodeError::io(self.path.display(), e))?;
        self.line_no = line;
        self.offset = offset;
        self.buf.clear();
        self.buf_lines = 0;
        self.eof = false;
        Ok(())
    }
}

/// Where each piece of [`parse_pieces`] ends in `chunk` (byte offset past it)
/// and how many lines it holds, by the same cut: every `piece_lines` newlines,
/// then the rest.
fn piece_bounds(chunk: &[u8], piece_lines: usize) -> Vec<(usize, u64)> {
    let piece_lines = piece_lines.max(1);
    let mut out = Vec::new();
    let mut start = 0;
    for i in memchr::memchr_iter(b'\n', chunk)
        .skip(piece_lines - 1)
        .step_by(piece_lines)
    {
        out.push((i + 1, piece_lines as u64));
        start = i + 1;
    }
    if start < chunk.len() {
        let rest = &chunk[start..];
        let lines = newlines(rest) + usize::from(rest.last() != Some(&b'\n'));
        out.push((chunk.len(), lines as u64));
    }
    // Lines are cumulative within the call.
    let mut acc = 0;
    for (_, l) in &mut out {
        acc += *l;
        *l = acc;
    }
    out
}

/// The byte offset just past the `n`th newline of `bytes` (`n` ≥ 1 and present),
/// or 0 for `n` = 0.
fn nth_line_end(bytes: &[u8], n: usize) -> usize {
    match n.checked_sub(1) {
        None => 0,
        Some(k) => memchr::memchr_iter(b'\n', bytes)
            .nth(k)
            .map_or(bytes.len(), |i| i + 1),
    }
}

/// Cuts `chunk` (whole lines; the last may lack its newline) into pieces of
/// `piece_lines` lines and parses them with [`parse_lines`] on up to `threads`
/// scoped threads, each taking a contiguous run of pieces. `first_line` is the
/// 1-based number of the chunk's first line in `file`.
///
/// The result is what parsing the pieces one after another on one thread gives:
/// one batch per piece, in order, each with the dead letters of its lines (exact
/// line numbers). Concatenated, the batches and dead letters equal those of
/// `parse_lines` over the whole chunk.
///
/// # Errors
/// Only an internal Arrow failure, which is a bug.
pub fn parse_pieces(
    chunk: &[u8],
    first_line: u64,
    piece_lines: usize,
    threads: NonZeroUsize,
    file: &str,
    fields: &[FieldSpec],
    schema: &SchemaRef,
) -> Result<Vec<(RecordBatch, Vec<DeadLetter>)>, NodeError> {
    let piece_lines = piece_lines.max(1);
    let mut pieces: Vec<(&[u8], u64)> = Vec::new();
    let (mut start, mut line) = (0, first_line);
    for i in memchr::memchr_iter(b'\n', chunk)
        .skip(piece_lines - 1)
        .step_by(piece_lines)
    {
        pieces.push((&chunk[start..=i], line));
        start = i + 1;
        line += piece_lines as u64;
    }
    if start < chunk.len() {
        pieces.push((&chunk[start..], line));
    }
    let parse = |run: &[(&[u8], u64)]| -> Result<Vec<_>, NodeError> {
        run.iter()
            .map(|&(text, line)| parse_lines(text, line, file, fields, schema))
            .collect()
    };
    let threads = threads.get().min(pieces.len());
    if threads <= 1 {
        return parse(&pieces);
    }
    let per = pieces.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = pieces
            .chunks(per)
            .map(|run| scope.spawn(move || parse(run)))
            .collect();
        let mut all = Vec::with_capacity(pieces.len());
        for handle in handles {
            match handle.join() {
                Ok(parsed) => all.extend(parsed?),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        Ok(all)
    })
}

/// A value as it appeared in the JSON, before the schema judges it.
#[derive(Debug, Clone, PartialEq)]
enum Cell<'a> {
    Missing,
    Null,
    Bool(bool),
    Int(i64),
    /// An integer above `i64::MAX`.
    BigInt(u64),
    Float(f64),
    Str(Cow<'a, str>),
    Nested,
}

impl Cell<'_> {
    fn json_type(&self) -> &'static str {
        match self {
            Cell::Missing => "nothing",
            Cell::Null => "null",
            Cell::Bool(_) => "a boolean",
            Cell::Int(_) | Cell::BigInt(_) => "an integer",
            Cell::Float(_) => "a float",
            Cell::Str(_) => "a string",
            Cell::Nested => "an array or object",
        }
    }

    fn as_f64(&self) -> Option<f64> {
        match self {
            Cell::Int(i) => Some(*i as f64),
            Cell::BigInt(u) => Some(*u as f64),
            Cell::Float(f) => Some(*f),
            _ => None,
        }
    }
}

struct CellVisitor;

impl<'de> Visitor<'de> for CellVisitor {
    type Value = Cell<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Cell<'de>, E> {
        Ok(Cell::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Cell<'de>, E> {
        Ok(Cell::Int(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Cell<'de>, E> {
        Ok(i64::try_from(v).map_or(Cell::BigInt(v), Cell::Int))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Cell<'de>, E> {
        Ok(Cell::Float(v))
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Cell<'de>, E> {
        Ok(Cell::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Cell<'de>, E> {
        Ok(Cell::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Cell<'de>, E> {
        Ok(Cell::Str(Cow::Owned(v)))
    }
    fn visit_unit<E>(self) -> Result<Cell<'de>, E> {
        Ok(Cell::Null)
    }
    fn visit_none<E>(self) -> Result<Cell<'de>, E> {
        Ok(Cell::Null)
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Cell<'de>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Cell::Nested)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Cell<'de>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Cell::Nested)
    }
}

impl<'de> DeserializeSeed<'de> for CellVisitor {
    type Value = Cell<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Cell<'de>, D::Error> {
        d.deserialize_any(self)
    }
}

/// Fills `cells` (one per schema field) from one JSON object.
struct RecordSeed<'s, 'de> {
    fields: &'s [FieldSpec],
    cells: &'s mut Vec<Cell<'de>>,
    /// The field each key position named on the previous line (see [`KeySeed`]).
    hints: &'s mut Vec<Option<usize>>,
}

/// Reads an object key as the index of the schema field it names (`None` for a
/// key the schema does not list), without allocating: serde's `Cow<str>` would
/// copy every key into a `String`.
///
/// Lines of one file almost always list their keys in the same order, so the field
/// the same position named on the previous line is tried first: one comparison per
/// key instead of a scan of the schema.
struct KeySeed<'s> {
    fields: &'s [FieldSpec],
    hint: Option<usize>,
}

impl<'s> KeySeed<'s> {
    /// The seed for the key at `position` of a line, hinted by the previous line.
    fn at(fields: &'s [FieldSpec], hints: &[Option<usize>], position: usize) -> Self {
        KeySeed {
            fields,
            hint: hints.get(position).copied().flatten(),
        }
    }

    fn find(&self, key: &str) -> Option<usize> {
        if let Some(i) = self.hint.filter(|&i| same_key(&self.fields[i].name, key)) {
            return Some(i);
        }
        self.fields.iter().position(|f| same_key(&f.name, key))
    }
}

/// Records that the key at `position` named `field`, for the next line's hint.
fn remember_key(hints: &mut Vec<Option<usize>>, position: usize, field: Option<usize>) {
    match hints.get_mut(position) {
        Some(h) => *h = field,
        None => hints.push(field),
    }
}

/// `a == b` for the short strings JSON keys are, inline: `==` on strings calls
/// `memcmp`, whose call costs more than comparing a few bytes, and this runs for
/// every key of every line.
#[inline]
fn same_key(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y)
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }
    fn visit_str<E>(self, v: &str) -> Result<Option<usize>, E> {
        Ok(self.find(v))
    }
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Option<usize>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<usize>, D::Error> {
        d.deserialize_str(self)
    }
}

/// Marks a top-level value that parsed but was not an object.
const NOT_AN_OBJECT: &str = "\u{0}not an object";

impl<'de> Visitor<'de> for RecordSeed<'_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut position = 0;
        while let Some(field) = map.next_key_seed(KeySeed::at(self.fields, self.hints, position))? {
            remember_key(self.hints, position, field);
            position += 1;
            match field {
                Some(i) => self.cells[i] = map.next_value_seed(CellVisitor)?,
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Err(de::Error::custom(NOT_AN_OBJECT))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Err(E::custom(NOT_AN_OBJECT))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Err(E::custom(NOT_AN_OBJECT))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Err(E::custom(NOT_AN_OBJECT))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Err(E::custom(NOT_AN_OBJECT))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Err(E::custom(NOT_AN_OBJECT))
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(E::custom(NOT_AN_OBJECT))
    }
}

impl<'de> DeserializeSeed<'de> for RecordSeed<'_, 'de> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

enum ColumnBuilder {
    Boolean(BooleanBuilder),
    Int32(Int32Builder),
    Int64(Int64Builder),
    Float32(Float32Builder),
    Float64(Float64Builder),
    Utf8(StringBuilder),
    TimestampMs(TimestampMillisecondBuilder),
}

impl ColumnBuilder {
    fn new(t: FieldType, rows: usize) -> Self {
        match t {
            FieldType::Boolean => Self::Boolean(BooleanBuilder::with_capacity(rows)),
            FieldType::Int32 => Self::Int32(Int32Builder::with_capacity(rows)),
            FieldType::Int64 => Self::Int64(Int64Builder::with_capacity(rows)),
            FieldType::Float32 => Self::Float32(Float32Builder::with_capacity(rows)),
            FieldType::Float64 => Self::Float64(Float64Builder::with_capacity(rows)),
            FieldType::Utf8 => Self::Utf8(StringBuilder::with_capacity(rows, rows * 8)),
            FieldType::TimestampMs => {
                Self::TimestampMs(TimestampMillisecondBuilder::with_capacity(rows))
            }
        }
    }

    /// Appends a cell already judged valid for this column.
    fn append(&mut self, cell: &Cell<'_>) {
        match (self, cell) {
            (Self::Boolean(b), Cell::Bool(v)) => b.append_value(*v),
            (Self::Int32(b), Cell::Int(v)) => b.append_value(*v as i32),
            (Self::Int64(b), Cell::Int(v)) => b.append_value(*v),
            (Self::TimestampMs(b), Cell::Int(v)) => b.append_value(*v),
            (Self::Float32(b), c) if c.as_f64().is_some() => {
                b.append_value(c.as_f64().unwrap_or_default() as f32)
            }
            (Self::Float64(b), c) if c.as_f64().is_some() => {
                b.append_value(c.as_f64().unwrap_or_default())
            }
            (Self::Utf8(b), Cell::Str(s)) => b.append_value(s),
            (this, _) => this.append_null(),
        }
    }

    fn append_null(&mut self) {
        match self {
            Self::Boolean(b) => b.append_null(),
            Self::Int32(b) => b.append_null(),
            Self::Int64(b) => b.append_null(),
            Self::Float32(b) => b.append_null(),
            Self::Float64(b) => b.append_null(),
            Self::Utf8(b) => b.append_null(),
            Self::TimestampMs(b) => b.append_null(),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Self::Boolean(b) => Arc::new(b.finish()),
            Self::Int32(b) => Arc::new(b.finish()),
            Self::Int64(b) => Arc::new(b.finish()),
            Self::Float32(b) => Arc::new(b.finish()),
            Self::Float64(b) => Arc::new(b.finish()),
            Self::Utf8(b) => Arc::new(b.finish()),
            Self::TimestampMs(b) => Arc::new(b.finish()),
        }
    }

    fn len(&self) -> usize {
        match self {
            Self::Boolean(b) => b.len(),
            Self::Int32(b) => b.len(),
            Self::Int64(b) => b.len(),
            Self::Float32(b) => b.len(),
            Self::Float64(b) => b.len(),
            Self::Utf8(b) => b.len(),
            Self::TimestampMs(b) => b.len(),
        }
    }
}

/// Why a cell breaks its field's rules: (reason code, detail).
fn judge(field: &FieldSpec, cell: &Cell<'_>) -> Option<(String, String)> {
    let name = &field.name;
    match cell {
        Cell::Missing | Cell::Null => {
            return field.required.then(|| {
                let what = if *cell == Cell::Missing {
                    "missing"
                } else {
                    "null"
                };
                (
                    format!("{name}:missing"),
                    format!("required field `{name}` is {what}"),
                )
            });
        }
        _ => {}
    }
    let type_ok = match field.data_type {
        FieldType::Boolean => matches!(cell, Cell::Bool(_)),
        FieldType::Int32 => matches!(cell, Cell::Int(v) if i32::try_from(*v).is_ok()),
        FieldType::Int64 | FieldType::TimestampMs => matches!(cell, Cell::Int(_)),
        FieldType::Float32 | FieldType::Float64 => cell.as_f64().is_some(),
        FieldType::Utf8 => matches!(cell, Cell::Str(_)),
    };
    if !type_ok {
        let wanted = match field.data_type {
            FieldType::Boolean => "a boolean",
            FieldType::Int32 => "a 32-bit integer",
            FieldType::Int64 | FieldType::TimestampMs => "an integer",
            FieldType::Float32 | FieldType::Float64 => "a number",
            FieldType::Utf8 => "a string",
        };
        let found = match cell {
            Cell::Int(_) if field.data_type == FieldType::Int32 => "an integer out of range",
            Cell::BigInt(_) => "an integer out of range",
            other => other.json_type(),
        };
        return Some((
            format!("{name}:type"),
            format!("`{name}` must be {wanted}, found {found}"),
        ));
    }
    if let Some(v) = cell.as_f64() {
        if let Some(min) = field.min.filter(|m| v < *m) {
            return Some((
                format!("{name}:range"),
                format!("`{name}` = {v} is below the minimum {min}"),
            ));
        }
        if let Some(max) = field.max.filter(|m| v > *m) {
            return Some((
                format!("{name}:range"),
                format!("`{name}` = {v} is above the maximum {max}"),
            ));
        }
    }
    None
}

/// Fills `cells` from one line through `serde_json`: the path for every line the
/// fast path declines, and the judge of what is valid.
fn record_by_serde<'a>(
    line: &'a [u8],
    fields: &[FieldSpec],
    cells: &mut Vec<Cell<'a>>,
    hints: &mut Vec<Option<usize>>,
) -> Result<(), serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(line);
    RecordSeed {
        fields,
        cells,
        hints,
    }
    .deserialize(&mut de)
    .and_then(|()| de.end())
}

/// Parses a chunk of JSON lines into one batch plus the dead letters of its corrupt
/// lines. `first_line` is the 1-based number of the chunk's first line in `file`.
///
/// # Errors
/// Only an internal Arrow failure (the builders disagree), which is a bug.
pub fn parse_lines(
    chunk: &[u8],
    first_line: u64,
    file: &str,
    fields: &[FieldSpec],
    schema: &SchemaRef,
) -> Result<(RecordBatch, Vec<DeadLetter>), NodeError> {
    let estimate = newlines(chunk) + 1;
    let mut builders: Vec<ColumnBuilder> = fields
        .iter()
        .map(|f| ColumnBuilder::new(f.data_type, estimate))
        .collect();
    let mut letters = Vec::new();
    let mut cells: Vec<Cell<'_>> = Vec::with_capacity(fields.len());
    let mut hints: Vec<Option<usize>> = Vec::with_capacity(fields.len());
    for (i, raw) in lines_of(chunk).enumerate() {
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let line_no = first_line + i as u64;
        let letter = |reason: String, detail: String| DeadLetter {
            reason,
            detail,
            position: format!("{file}:{line_no}"),
            record: String::from_utf8_lossy(line).into_owned(),
        };
        cells.clear();
        cells.resize(fields.len(), Cell::Missing);
        let parsed = if fast::record(line, fields, &mut cells, &mut hints) {
            Ok(())
        } else {
            cells.clear();
            cells.resize(fields.len(), Cell::Missing);
            record_by_serde(line, fields, &mut cells, &mut hints)
        };
        if let Err(e) = parsed {
            let text = e.to_string();
            letters.push(if text.starts_with(NOT_AN_OBJECT) {
                letter(
                    "not_an_object".into(),
                    "the line is JSON but not an object".into(),
                )
            } else {
                letter(
                    "invalid_json".into(),
                    format!("the line is not valid JSON: {text}"),
                )
            });
            continue;
        }
        if let Some((reason, detail)) = fields.iter().zip(&cells).find_map(|(f, c)| judge(f, c)) {
            letters.push(letter(reason, detail));
            continue;
        }
        for (b, c) in builders.iter_mut().zip(&cells) {
            b.append(c);
        }
    }
    let rows = builders.first().map_or(0, ColumnBuilder::len);
    let columns: Vec<ArrayRef> = builders.iter_mut().map(ColumnBuilder::finish).collect();
    let options = arrow::array::RecordBatchOptions::new().with_row_count(Some(rows));
    let batch = RecordBatch::try_new_with_options(schema.clone(), columns, &options)?;
    Ok((batch, letters))
}

/// The number of newlines in `bytes`.
fn newlines(bytes: &[u8]) -> usize {
    memchr::memchr_iter(b'\n', bytes).count()
}

/// The lines of `chunk` as `split` on `\n` gives them (a last, possibly empty,
/// piece after the final newline included), found with SIMD `memchr` rather than
/// a byte-at-a-time scan.
fn lines_of(chunk: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut start = 0;
    memchr::memchr_iter(b'\n', chunk)
        .map(Some)
        .chain(std::iter::once(None))
        .map(move |end| {
            let end = end.unwrap_or(chunk.len());
            let line = &chunk[start..end];
            start = end + 1;
            line
        })
}

#[cfg(test)]
mod tests {
    #[test]
    fn lines_of_splits_like_split_on_newline() {
        for text in [
            &b""[..],
            b"\n",
            b"a",
            b"a\n",
            b"a\nb",
            b"\n\na\n\nbc\n",
            b"x\r\ny",
        ] {
            let want: Vec<&[u8]> = text.split(|&b| b == b'\n').collect();
            let got: Vec<&[u8]> = super::lines_of(text).collect();
            assert_eq!(got, want, "{:?}", String::from_utf8_lossy(text));
        }
    }

    use arrow::array::{Array, AsArray};
    use arrow::datatypes::Int64Type;
    use proptest::prelude::*;

    use super::*;

    fn fields() -> Vec<FieldSpec> {
        let f = |name: &str, t, required, min| FieldSpec {
            name: name.into(),
            data_type: t,
            required,
            min,
            max: None,
        };
        vec![
            f("user_id", FieldType::Utf8, true, None),
            f("ts", FieldType::Int64, true, None),
            f("price", FieldType::Float64, false, Some(0.0)),
        ]
    }

    fn parse(text: &str) -> (RecordBatch, Vec<DeadLetter>) {
        let fields = fields();
        parse_lines(text.as_bytes(), 1, "e.jsonl", &fields, &schema_of(&fields)).unwrap()
    }

    #[test]
    fn good_lines_become_typed_columns() {
        let (b, letters) = parse(
            "{\"user_id\":\"u1\",\"ts\":5,\"price\":1.5,\"extra\":[1,{\"a\":2}]}\n\
             {\"ts\":6,\"user_id\":\"u\\\"2\",\"price\":null}\n\
             \n\
             {\"user_id\":\"u3\",\"ts\":7,\"price\":3}\n",
        );
        assert!(letters.is_empty(), "{letters:?}");
        assert_eq!(b.num_rows(), 3);
        let users = b.column(0).as_string::<i32>();
        assert_eq!(
            users.iter().collect::<Vec<_>>(),
            [Some("u1"), Some("u\"2"), Some("u3")]
        );
        assert_eq!(
            b.column(1).as_primitive::<Int64Type>().values().to_vec(),
            [5, 6, 7]
        );
        let price = b.column(2).as_primitive::<arrow::datatypes::Float64Type>();
        assert_eq!(
            price.iter().collect::<Vec<_>>(),
            [Some(1.5), None, Some(3.0)]
        );
    }

    #[test]
    fn corrupt_lines_get_the_first_reason_in_schema_order() {
        let text = [
            r#"{"user_id":"u1","ts":1,"pri"#,         // truncated
            r#"{"ts":"12","price":-1}"#,              // missing user_id beats bad ts
            r#"{"user_id":7,"ts":1}"#,                // user_id not a string
            r#"{"user_id":"u","ts":"123"}"#,          // ts a string
            r#"{"user_id":"u","ts":123.0}"#,          // ts a float
            r#"{"user_id":"u","ts":1,"price":-0.5}"#, // negative price
            r#"{"user_id":"u","ts":1,"price":NaN}"#,  // not strict JSON
            r#"[1,2]"#,                               // not an object
            r#"{"user_id":null,"ts":1}"#,             // null required
            r#"{"user_id":"ok","ts":9,"price":0}"#,   // fine
        ]
        .join("\n");
        let (b, letters) = parse(&text);
        assert_eq!(b.num_rows(), 1);
        let reasons: Vec<&str> = letters.iter().map(|l| l.reason.as_str()).collect();
        assert_eq!(
            reasons,
            [
                "invalid_json",
                "user_id:missing",
                "user_id:type",
                "ts:type",
                "ts:type",
                "price:range",
                "invalid_json",
                "not_an_object",
                "user_id:missing"
            ]
        );
        assert_eq!(letters[1].position, "e.jsonl:2");
        assert_eq!(letters[1].record, r#"{"ts":"12","price":-1}"#);
        assert_eq!(letters[4].detail, "`ts` must be an integer, found a float");
        assert_eq!(letters[5].detail, "`price` = -0.5 is below the minimum 0");
        assert_eq!(letters[8].detail, "required field `user_id` is null");
    }

    #[test]
    fn an_empty_chunk_gives_an_empty_batch() {
        let (b, letters) = parse("");
        assert_eq!(b.num_rows(), 0);
        assert!(letters.is_empty());
        assert_eq!(b.column(0).len(), 0);
    }

    /// Lines of every kind the parser must tell apart, for the property test.
    fn any_line() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => (0u32..50, -5i64..1_000, proptest::option::of(0.0f64..600.0)).prop_map(|(u, ts, p)| {
                let price = p.map_or("null".to_owned(), |p| p.to_string());
                format!(r#"{{"user_id":"u{u}","ts":{ts},"price":{price}}}"#)
            }),
            1 => (0u32..50).prop_map(|u| format!(r#"{{"user_id":"u{u}","ts":"12"}}"#)),
            1 => Just(r#"{"ts":3,"price":1}"#.to_owned()),
            1 => Just(r#"{"user_id":"u","ts":1,"price":-2.5}"#.to_owned()),
            1 => (1usize..30).prop_map(|n| r#"{"user_id":"u1","ts":17,"price":2.5}"#[..n].to_owned()),
            1 => Just(String::new()),
            1 => Just("[1,2]".to_owned()),
            1 => Just("  ".to_owned()),
        ]
    }

    fn text_of(lines: &[String], crlf: bool, final_newline: bool) -> String {
        let mut text = lines.join(if crlf { "\r\n" } else { "\n" });
        if final_newline && !lines.is_empty() {
            text.push('\n');
        }
        text
    }

    fn concat(batches: &[RecordBatch]) -> RecordBatch {
        let fields = fields();
        arrow::compute::concat_batches(&schema_of(&fields), batches).unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

        /// Chunked parsing on several threads gives, concatenated, the batches and
        /// dead letters (same line numbers) of parsing the text in one chunk; the
        /// source reading the same file in tiny reads does too.
        #[test]
        fn parallel_chunks_equal_one_chunk(
            lines in proptest::collection::vec(any_line(), 0..120),
            piece_lines in 1usize..25,
            threads in 1usize..5,
            read_bytes in 1usize..300,
            crlf in any::<bool>(),
            final_newline in any::<bool>(),
        ) {
            let text = text_of(&lines, crlf, final_newline);
            let fields = fields();
            let schema = schema_of(&fields);
            let (whole, whole_letters) = parse_lines(text.as_bytes(), 1, "e.jsonl", &fields, &schema).unwrap();
            let threads = NonZeroUsize::new(threads).unwrap();

            let pieces = parse_pieces(text.as_bytes(), 1, piece_lines, threads, "e.jsonl", &fields, &schema).unwrap();
            let batches: Vec<RecordBatch> = pieces.iter().map(|(b, _)| b.clone()).collect();
            let letters: Vec<DeadLetter> = pieces.into_iter().flat_map(|(_, l)| l).collect();
            prop_assert_eq!(&concat(&batches), &whole);
            prop_assert_eq!(&letters, &whole_letters);

            let mut file = tempfile::NamedTempFile::new().unwrap();
            std::io::Write::write_all(&mut file, text.as_bytes()).unwrap();
            let mut source = JsonlSource::from_file(
                File::open(file.path()).unwrap(),
                file.path().to_path_buf(),
                "e.jsonl".into(),
                fields.clone().into(),
                NonZeroUsize::new(piece_lines).unwrap(),
            )
            .with_threads(threads);
            source.read_bytes = read_bytes;
            let mut out = Emitter::default();
            let mut calls = 0;
            while source.next_batch(&mut out).unwrap() {
                calls += 1;
                prop_assert!(calls <= text.len() + 1, "the source does not end");
            }
            prop_assert!(out.batches.iter().all(|b| b.num_rows() <= piece_lines));
            prop_assert_eq!(&concat(&out.batches), &whole);
            prop_assert_eq!(&out.dead_letters, &whole_letters);
            let total = text.split('\n').count() - usize::from(text.is_empty() || text.ends_with('\n'));
            // Each batch has the span of its own lines: `piece_lines` lines each
            // but the last, ending on a line boundary.
            let positions: Vec<(u64, usize)> = out
                .positions
                .iter()
                .map(|p| {
                    let (l, o) = p.as_deref().unwrap().split_once(':').unwrap();
                    (l.parse().unwrap(), o.parse().unwrap())
                })
                .collect();
            prop_assert_eq!(positions.len(), out.batches.len());
            let mut previous = 0u64;
            for (i, &(line, offset)) in positions.iter().enumerate() {
                let lines = line - previous;
                if i + 1 < positions.len() {
                    prop_assert_eq!(lines, piece_lines as u64);
                } else {
                    prop_assert!(lines >= 1 && lines <= piece_lines as u64);
                }
                let first = previous as usize;
                let expected_end: usize = text
                    .split_inclusive('\n')
                    .take(line as usize)
                    .map(str::len)
                    .sum();
                prop_assert_eq!(offset, expected_end, "batch {} (lines {}..={})", i, first + 1, line);
                previous = line;
            }
            if let Some(&(line, offset)) = positions.last() {
                prop_assert_eq!(line as usize, total);
                prop_assert_eq!(offset, text.len());
            }
        }
    }
}
