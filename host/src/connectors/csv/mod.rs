//! CSV files in and out.
//!
//! - [`CsvSource`] (here): a file, a glob or a directory of CSV files with a
//!   header (or none) and a delimiter, read into the typed schema of the
//!   JSON-lines source. Each field's text is turned into the same cell the
//!   JSON-lines source builds and judged by the same rules (`required`,
//!   `[min, max]`, 32-bit range) into the same Arrow builders, so a column means
//!   the same thing whichever file format it came from. A row that does not fit
//!   becomes a dead letter with its reason and `file:line`, never a failed run.
//! - [`CsvSink`] (`sink.rs`): header, delimiter, the JSON-lines sink's atomic
//!   write and resume.
//!
//! ```text
//!   a.csv ─► header ─► column of each schema field ─► rows ─► cell ─► judge ─► builders
//!                                                              └─► dead letter `a.csv:17`
//!   position after a batch: `{file}:{line}:{byte offset}` (the last line read,
//!   and where the next record starts); seek goes straight to the byte.
//! ```
//!
//! Values, per schema type: `boolean` is `true`/`false` (any case); `int32`,
//! `int64` are decimal integers; `float32`, `float64` any number Rust parses
//! (`1e-3`, `NaN`, `inf`); `utf8` the text as is; `timestamp_ms` an integer of
//! epoch milliseconds or an RFC 3339 / ISO 8601 time (`2024-01-01T12:00:00Z`,
//! no zone meaning UTC). An empty field is null, for every type (as DuckDB and
//! Spark read CSV), so an empty string does not survive a round trip.

use std::borrow::Cow;
use std::fs::File;
use std::io::{Read, Seek};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::SchemaRef;
use serde::{Deserialize, Serialize};

use super::files::{self, InputFile};
use crate::batch::records::{Cell, ColumnBuilder, judge, schema_of};
use crate::node::config::{FieldSpec, FieldType, SpecError};
use crate::node::{DeadLetter, Emitter, NodeError, Source};

mod sink;
#[cfg(test)]
mod tests;

pub use sink::{CsvSink, CsvSinkSpec};

/// A CSV source (`[source.csv]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsvSourceSpec {
    /// A file, a glob (`data/*.csv`), or a directory (every `*.csv` under it);
    /// relative to the pipeline file. Files are read in the order of their names.
    pub path: PathBuf,
    /// The columns to read, as for the JSON-lines source. With a header they are
    /// found by name (other columns are ignored); without one, field `i` is
    /// column `i`.
    pub schema: Vec<FieldSpec>,
    /// The first line of each file names the columns. Default: true.
    #[serde(default = "yes")]
    pub header: bool,
    /// The field delimiter, one ASCII character (`"\t"` for TSV). Default: `","`.
    #[serde(default = "default_delimiter")]
    pub delimiter: String,
    /// Rows per batch. Default: the pipeline's `settings.batch_rows`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_rows: Option<NonZeroUsize>,
    /// Where rows that do not fit the schema go (JSON lines: position, reason,
    /// text). Default: the run's dead-letter file in the data directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejects: Option<PathBuf>,
}

pub(super) fn yes() -> bool {
    true
}

/// The default delimiter: a comma.
pub fn default_delimiter() -> String {
    ",".to_owned()
}

/// The delimiter byte of `text`, checked: one ASCII character that is not a
/// quote or a line end.
///
/// # Errors
/// Names `key` (e.g. `source[0].csv.delimiter`).
pub fn delimiter_byte(key: &str, text: &str) -> Result<u8, SpecError> {
    match text.as_bytes() {
        [b] if b.is_ascii() && !matches!(b, b'"' | b'\n' | b'\r') => Ok(*b),
        _ => Err(SpecError::invalid(
            key,
            format!("`{text}` is not one ASCII character other than a quote or a line end"),
        )),
    }
}

impl CsvSourceSpec {
    /// Checks what can be checked without the files; errors name the key under
    /// `key` (e.g. `source[0].csv`).
    ///
    /// # Errors
    /// A bad delimiter, an empty schema or a column named twice.
    pub fn check(&self, key: &str) -> Result<(), SpecError> {
        delimiter_byte(&format!("{key}.delimiter"), &self.delimiter)?;
        if self.schema.is_empty() {
            return Err(SpecError::invalid(
                format!("{key}.schema"),
                "names no columns",
            ));
        }
        for (i, f) in self.schema.iter().enumerate() {
            if self.schema[..i].iter().any(|g| g.name == f.name) {
                return Err(SpecError::invalid(
                    format!("{key}.schema[{i}]"),
                    format!("column `{}` is named twice", f.name),
                ));
            }
        }
        Ok(())
    }
}

/// The file being read.
struct Open {
    reader: ::csv::Reader<File>,
    /// For each schema field, its column in the file (`None`: not there, which
    /// only happens without a header; a header must name every field).
    columns: Vec<usize>,
    /// Fields a row must have (the header's count); `None` without a header.
    width: Option<usize>,
    /// A second handle, to copy a rejected row's raw text.
    raw: File,
}

/// Reads CSV files into batches of a declared schema (see the module docs).
pub struct CsvSource {
    display: String,
    files: Vec<InputFile>,
    fields: Arc<[FieldSpec]>,
    schema: SchemaRef,
    batch_rows: usize,
    header: bool,
    delimiter: u8,
    file: usize,
    open: Option<Open>,
    record: ::csv::ByteRecord,
}

/// What to call a wanted type in a message.
fn wanted(t: FieldType) -> &'static str {
    match t {
        FieldType::Boolean => "a boolean (true or false)",
        FieldType::Int32 => "a 32-bit integer",
        FieldType::Int64 => "an integer",
        FieldType::Float32 | FieldType::Float64 => "a number",
        FieldType::Utf8 => "text",
        FieldType::TimestampMs => "epoch milliseconds or an RFC 3339 time",
    }
}

/// The cell a CSV field's bytes make for a column of type `t`, or the reason it
/// makes none (`{name}:type`, `invalid_utf8`).
fn cell<'a>(field: &FieldSpec, raw: &'a [u8]) -> Result<Cell<'a>, (String, String)> {
    if raw.is_empty() {
        return Ok(Cell::Null);
    }
    let name = &field.name;
    let text = std::str::from_utf8(raw).map_err(|e| {
        (
            "invalid_utf8".to_owned(),
            format!("`{name}` is not UTF-8: {e}"),
        )
    })?;
    let parsed = match field.data_type {
        FieldType::Utf8 => Some(Cell::Str(Cow::Borrowed(text))),
        FieldType::Boolean => {
            if text.eq_ignore_ascii_case("true") {
                Some(Cell::Bool(true))
            } else if text.eq_ignore_ascii_case("false") {
                Some(Cell::Bool(false))
            } else {
                None
            }
        }
        FieldType::Int32 | FieldType::Int64 => text
            .parse::<i64>()
            .map(Cell::Int)
            .or_else(|_| text.parse::<u64>().map(Cell::BigInt))
            .ok(),
        FieldType::Float32 | FieldType::Float64 => text.parse::<f64>().map(Cell::Float).ok(),
        FieldType::TimestampMs => text.parse::<i64>().map(Cell::Int).ok().or_else(|| {
            arrow::compute::kernels::cast_utils::string_to_timestamp_nanos(text)
                .ok()
                .map(|ns| Cell::Int(ns.div_euclid(1_000_000)))
        }),
    };
    parsed.ok_or_else(|| {
        let shown: String = text.chars().take(40).collect();
        (
            format!("{name}:type"),
            format!(
                "`{name}` must be {}, found `{shown}`",
                wanted(field.data_type)
            ),
        )
    })
}

impl CsvSource {
    /// Resolves `path` (resolved against the pipeline file) to its files; the
    /// first is opened at the first read.
    ///
    /// # Errors
    /// No file matches, or the spec does not check.
    pub fn open(
        spec: &CsvSourceSpec,
        path: &Path,
        default_batch_rows: NonZeroUsize,
    ) -> Result<Self, NodeError> {
        spec.check("csv")
            .map_err(|e| NodeError::config(e.to_string()))?;
        let display = spec.path.display().to_string();
        let files = files::resolve(path, "csv").map_err(|e| NodeError::io(&display, e))?;
        let fields: Arc<[FieldSpec]> = spec.schema.clone().into();
        Ok(Self {
            display,
            files,
            schema: schema_of(&fields),
            fields,
            batch_rows: spec.batch_rows.unwrap_or(default_batch_rows).get(),
            header: spec.header,
            delimiter: delimiter_byte("delimiter", &spec.delimiter)
                .map_err(|e| NodeError::config(e.to_string()))?,
            file: 0,
            open: None,
            record: ::csv::ByteRecord::new(),
        })
    }

    /// Opens file `i` and reads its header.
    fn open_file(&self, i: usize) -> Result<Open, NodeError> {
        let f = &self.files[i];
        let io = |e| NodeError::io(f.path.display(), e);
        let handle = File::open(&f.path).map_err(io)?;
        let raw = File::open(&f.path).map_err(io)?;
        let mut reader = ::csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .delimiter(self.delimiter)
            .from_reader(handle);
        if !self.header {
            return Ok(Open {
                reader,
                columns: (0..self.fields.len()).collect(),
                width: None,
                raw,
            });
        }
        let mut head = ::csv::ByteRecord::new();
        let got = reader
            .read_byte_record(&mut head)
            .map_err(|e| NodeError::data(format!("{}: the header: {e}", f.name)))?;
        if !got {
            return Ok(Open {
                reader,
                columns: Vec::new(),
                width: Some(0),
                raw,
            });
        }
        let names: Vec<String> = head
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let n = String::from_utf8_lossy(n);
                let n = if i == 0 {
                    n.trim_start_matches('\u{feff}')
                } else {
                    &n
                };
                n.trim().to_owned()
            })
            .collect();
        let mut columns = Vec::with_capacity(self.fields.len());
        for field in self.fields.iter() {
            let c = names.iter().position(|n| *n == field.name).ok_or_else(|| {
                NodeError::config(format!(
                    "{}: the header has no column `{}` (it has {})",
                    f.name,
                    field.name,
                    names.join(", ")
                ))
            })?;
            columns.push(c);
        }
        Ok(Open {
            reader,
            columns,
            width: Some(names.len()),
            raw,
        })
    }

    /// Bytes `start..end` of the open file without the line ending, for a dead
    /// letter: kept byte for byte, UTF-8 or not.
    fn raw_bytes(open: &mut Open, start: u64, end: u64) -> Vec<u8> {
        let mut buf = vec![0u8; end.saturating_sub(start).min(1 << 20) as usize];
        let read = open
            .raw
            .seek(std::io::SeekFrom::Start(start))
            .and_then(|_| open.raw.read_exact(&mut buf));
        if read.is_err() {
            return Vec::new();
        }
        while buf.last().is_some_and(|b| matches!(b, b'\r' | b'\n')) {
            buf.pop();
        }
        buf
    }
}

impl Source for CsvSource {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn next_batch(&mut self, out: &mut Emitter) -> Result<bool, NodeError> {
        if self.open.is_none() {
            if self.file >= self.files.len() {
                return Ok(false);
            }
            self.open = Some(self.open_file(self.file)?);
        }
        let name = self.files[self.file].name.clone();
        let fields = self.fields.clone();
        let Some(open) = self.open.as_mut() else {
            return Ok(false);
        };
        let mut builders: Vec<ColumnBuilder> = fields
            .iter()
            .map(|f| ColumnBuilder::new(f.data_type, self.batch_rows))
            .collect();
        let mut ended = false;
        for _ in 0..self.batch_rows {
            let got = open.reader.read_byte_record(&mut self.record);
            let got = match got {
                Ok(got) => got,
                Err(e) => match e.into_kind() {
                    ::csv::ErrorKind::Io(e) => {
                        return Err(NodeError::io(self.files[self.file].path.display(), e));
                    }
                    other => {
                        return Err(NodeError::data(format!("{name}: {other:?}")));
                    }
                },
            };
            if !got {
                ended = true;
                break;
            }
            let (start, line) = self
                .record
                .position()
                .map_or((0, 0), |p| (p.byte(), p.line()));
            let mut letter = |reason: String, detail: String, open: &mut Open| {
                let end = open.reader.position().byte();
                out.dead_letter(DeadLetter {
                    fault: crate::node::Fault::Data,
                    reason,
                    detail,
                    position: format!("{name}:{line}"),
                    payload: crate::node::Payload::Raw(Self::raw_bytes(open, start, end)),
                });
            };
            if let Some(width) = open.width
                && self.record.len() != width
            {
                letter(
                    "field_count".into(),
                    format!(
                        "the row has {} fields, the header {width}",
                        self.record.len()
                    ),
                    open,
                );
                continue;
            }
            let mut cells: Vec<Cell<'_>> = Vec::with_capacity(fields.len());
            let mut failed = None;
            for (field, &c) in fields.iter().zip(&open.columns) {
                match self.record.get(c).map(|raw| cell(field, raw)) {
                    None => cells.push(Cell::Missing),
                    Some(Ok(v)) => cells.push(v),
                    Some(Err(why)) => {
                        failed = Some(why);
                        break;
                    }
                }
            }
            let failed =
                failed.or_else(|| fields.iter().zip(&cells).find_map(|(f, c)| judge(f, c)));
            if let Some((reason, detail)) = failed {
                letter(reason, detail, open);
                continue;
            }
            for (b, c) in builders.iter_mut().zip(&cells) {
                b.append(c);
            }
        }
        let next = open.reader.position();
        let position = format!("{name}:{}:{}", next.line().saturating_sub(1), next.byte());
        let rows = builders.first().map_or(0, ColumnBuilder::len);
        let columns: Vec<ArrayRef> = builders.iter_mut().map(ColumnBuilder::finish).collect();
        let options = arrow::array::RecordBatchOptions::new().with_row_count(Some(rows));
        let batch = RecordBatch::try_new_with_options(self.schema.clone(), columns, &options)?;
        out.push_at(batch, Some(position));
        if ended {
            self.open = None;
            self.file += 1;
        }
        Ok(self.file < self.files.len() || self.open.is_some())
    }

    /// Continues after `position` (`{file}:{line}:{byte offset}`): the header of
    /// that file is read again, then the reader jumps to the byte.
    fn seek(&mut self, position: &str) -> Result<(), NodeError> {
        let bad = |why: String| {
            NodeError::config(format!(
                "cannot resume {} after `{position}`: {why}",
                self.display
            ))
        };
        let mut parts = position.rsplitn(3, ':');
        let (offset, line, name) = match (parts.next(), parts.next(), parts.next()) {
            (Some(o), Some(l), Some(n)) => match (o.parse::<u64>(), l.parse::<u64>()) {
                (Ok(o), Ok(l)) => (o, l, n),
                _ => return Err(bad("not a `file:line:offset` position".into())),
            },
            _ => return Err(bad("not a `file:line:offset` position".into())),
        };
        let file = files::find(&self.files, name)
            .ok_or_else(|| bad(format!("it has no file `{name}` now")))?;
        let mut open = self.open_file(file)?;
        let path = &self.files[file].path;
        let len = std::fs::metadata(path)
            .map_err(|e| NodeError::io(path.display(), e))?
            .len();
        if offset > len {
            return Err(bad(format!("`{name}` is only {len} bytes long now")));
        }
        if offset > 0 {
            let mut before = [0u8; 1];
            open.raw
                .seek(std::io::SeekFrom::Start(offset - 1))
                .and_then(|_| open.raw.read_exact(&mut before))
                .map_err(|e| NodeError::io(path.display(), e))?;
            if before[0] != b'\n' && offset < len {
                return Err(bad(format!(
                    "byte {offset} of `{name}` does not start a line; the file changed"
                )));
            }
        }
        let mut at = ::csv::Position::new();
        at.set_byte(offset).set_line(line + 1).set_record(line);
        open.reader
            .seek(at)
            .map_err(|e| bad(format!("cannot seek: {e}")))?;
        self.file = file;
        self.open = Some(open);
        Ok(())
    }
}

impl crate::node::config::SourceConfig for CsvSourceSpec {
    fn check(&self, key: &str) -> Result<(), SpecError> {
        CsvSourceSpec::check(self, key)
    }

    fn build(
        &self,
        cx: &crate::node::config::BuildCx,
    ) -> Result<crate::node::config::SourceNode, NodeError> {
        let source = CsvSource::open(self, &cx.resolve(&self.path), cx.batch_rows)?;
        Ok(crate::node::config::SourceNode::Sync(Box::new(source)))
    }

    fn rejects(&self) -> Option<&Path> {
        self.rejects.as_deref()
    }
}
