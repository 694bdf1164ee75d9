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
//!
//! This file holds the source, its configuration and [`parse_lines`]; `chunks`
//! cuts and threads, `record` and `fast` turn a line into cells; the rules that
//! judge the cells and the builders they are appended to are shared with the
//! other sources ([`crate::batch::records`]).

use std::fs::File;
use std::io::{Read, Seek};
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::SchemaRef;
use serde::{Deserialize, Serialize};

use crate::node::config::{BuildCx, FieldSpec, SourceConfig, SourceNode, SpecError};
use crate::node::{DeadLetter, Emitter, NodeError, Source};

mod chunks;
mod fast;
mod record;
#[cfg(test)]
mod tests;

pub use crate::batch::records::schema_of;
use crate::batch::records::{Cell, ColumnBuilder, judge};
pub use chunks::parse_pieces;
use chunks::{lines_of, newlines, nth_line_end, piece_bounds};
use record::{KeySeed, NOT_AN_OBJECT, record_by_serde, remember_key};

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
    /// [`NodeError::Io`] naming the file when it cannot be opened.
    pub fn open(
        spec: &JsonlSourceSpec,
        path: PathBuf,
        default_batch_rows: NonZeroUsize,
    ) -> Result<Self, NodeError> {
        let file = File::open(&path).map_err(|e| NodeError::io(path.display(), e))?;
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
        // Lines that are only whitespace are neither records nor corrupt:
        // counted, so every line of the file is accounted for.
        let blank = blank_lines(chunk);
        if blank > 0 {
            out.count("blank_lines", blank);
        }
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

/// The lines of `chunk` that hold nothing but whitespace (a `\r` of a CRLF
/// ending included); an empty piece after the chunk's last newline is no line.
fn blank_lines(chunk: &[u8]) -> u64 {
    let blank = |line: &[u8]| line.iter().all(u8::is_ascii_whitespace);
    let mut n = 0;
    let mut start = 0;
    for end in memchr::memchr_iter(b'\n', chunk) {
        n += u64::from(blank(&chunk[start..end]));
        start = end + 1;
    }
    if start < chunk.len() {
        n += u64::from(blank(&chunk[start..]));
    }
    n
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
    parse_records(lines_of(chunk), newlines(chunk) + 1, fields, schema, |i| {
        format!("{file}:{}", first_line + i as u64)
    })
}

/// Parses records, one JSON object each, into one batch plus the dead letters
/// of the corrupt ones, by the rules of [`parse_lines`] (which calls it with the
/// lines of a chunk): the one parser of every source that reads JSON records. A
/// record may hold newlines (a message payload), which are JSON whitespace
/// here; a blank record is skipped, so a source for which blank is corrupt
/// judges that first. `estimate` is the expected number of records (a capacity
/// hint) and `position(i)` names the `i`-th record (0-based) in a dead letter;
/// it is only called for those.
///
/// # Errors
/// Only an internal Arrow failure (the builders disagree), which is a bug.
pub fn parse_records<'a>(
    records: impl Iterator<Item = &'a [u8]>,
    estimate: usize,
    fields: &[FieldSpec],
    schema: &SchemaRef,
    position: impl Fn(usize) -> String,
) -> Result<(RecordBatch, Vec<DeadLetter>), NodeError> {
    let mut builders: Vec<ColumnBuilder> = fields
        .iter()
        .map(|f| ColumnBuilder::new(f.data_type, estimate))
        .collect();
    let mut letters = Vec::new();
    let mut cells: Vec<Cell<'_>> = Vec::with_capacity(fields.len());
    let mut hints: Vec<Option<usize>> = Vec::with_capacity(fields.len());
    for (i, raw) in records.enumerate() {
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let letter = |reason: String, detail: String| DeadLetter {
            fault: crate::node::Fault::Data,
            reason,
            detail,
            position: position(i),
            payload: crate::node::Payload::Raw(line.to_vec()),
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

impl SourceConfig for JsonlSourceSpec {
    fn json_fields(&self) -> Option<&[FieldSpec]> {
        Some(&self.schema)
    }

    fn check(&self, key: &str) -> Result<(), SpecError> {
        if self.schema.is_empty() {
            return Err(SpecError::invalid(
                format!("{key}.schema"),
                "is empty; list the columns to read",
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for (f, field) in self.schema.iter().enumerate() {
            if !seen.insert(field.name.as_str()) {
                return Err(SpecError::invalid(
                    format!("{key}.schema[{f}].name"),
                    format!("column `{}` is listed twice", field.name),
                ));
            }
        }
        Ok(())
    }

    fn build(&self, cx: &BuildCx) -> Result<SourceNode, NodeError> {
        let source = JsonlSource::open(self, cx.resolve(&self.path), cx.batch_rows)?;
        Ok(SourceNode::Sync(Box::new(source)))
    }

    fn rejects(&self) -> Option<&std::path::Path> {
        self.rejects.as_deref()
    }
}
