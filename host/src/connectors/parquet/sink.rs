//! The Parquet sink: one file, or a Hive-partitioned directory of files, written
//! whole and published atomically, with a write-ahead log so a stopped or
//! crashed run resumes.
//!
//! ```text
//!   write ─┬─► ArrowWriter ──► out.parquet.weir-inprogress   (row groups of row_group_rows)
//!          └─► log          ──► out.parquet.weir-log/0.arrows (Arrow IPC, uncompressed)
//!   flush ───► sync the log; state {"rows": n, "log": [bytes of each segment]}
//!   close ───► footer, fsync, rename over out.parquet; a complete run deletes the log
//! ```
//!
//! A Parquet file is readable only once its footer is written, so the output
//! cannot be durable piece by piece the way a JSON-lines file is. What is
//! durable at a checkpoint is the log: every row written, as Arrow IPC messages,
//! synced at each flush ([`Durability::OnFlush`]). A resumed run truncates the
//! log to the checkpoint's length, replays it into a fresh Parquet file (the
//! rows after the checkpoint arrive again from the source), and appends a new
//! log segment from there. A run stopped before its input ended publishes what
//! it has and keeps the log, so resuming it makes the whole output; a complete
//! run deletes the log. With `resumable = false` there is no log: the sink is
//! durable only when it closes ([`Durability::OnClose`]), a resumed run writes
//! the output again from the start, and a stop fails the run rather than
//! publish a part that a resume could not complete.
//!
//! With `partition_by`, rows go to `path/{column}={value}/part-{n}.parquet`, the
//! layout Hive, Spark, DuckDB and pyarrow read as partitions: the value is
//! escaped as Hive escapes path names, null and empty values are
//! `__HIVE_DEFAULT_PARTITION__`, and the column itself is not stored in the
//! files (readers take it from the path). At most `max_open_files` files are
//! open at once; the least recently used is closed when another is needed, and
//! a later row of its value starts `part-{n+1}.parquet`. The tree is written
//! under `path.weir-inprogress/` and swapped in at close (the old tree renamed
//! aside, the new one renamed in, the old one deleted: a reader may find no
//! directory for that instant, never a half-written one). A directory is only
//! replaced if it holds nothing but `{column}=…` directories and hidden files,
//! so a mistyped `path` never deletes someone's data.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufWriter;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, RecordBatch, StringArray, UInt32Array};
use arrow::datatypes::{DataType, Schema};
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};

use crate::node::atomic::{self, beside, remove_any};
use crate::node::config::SpecError;
use crate::node::{Durability, Lineage, NodeError, Sink};

/// How the Parquet sink compresses pages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Codec {
    /// zstd: small files, fast to read (Polars' default). The default.
    #[default]
    Zstd,
    /// snappy: faster to write, larger (pyarrow's, Spark's and DuckDB's default).
    Snappy,
    /// No compression.
    None,
}

/// A Parquet sink (`[sink.parquet]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParquetSinkSpec {
    /// The file (or, with `partition_by`, the directory), relative to the
    /// pipeline file; replaced on each run.
    pub path: PathBuf,
    /// Page compression: `"zstd"`, `"snappy"` or `"none"`. Default: `"zstd"`.
    #[serde(default)]
    pub compression: Codec,
    /// The zstd level, 1 (fastest) to 22 (smallest). Default: zstd's own, 3.
    /// Only with `compression = "zstd"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression_level: Option<i32>,
    /// Rows per row group at most; the writer holds one row group per open
    /// file in memory before it writes it. Default: 131072 (128 Ki).
    #[serde(default = "default_row_group_rows")]
    pub row_group_rows: NonZeroUsize,
    /// Write `path/{column}={value}/part-{n}.parquet`, one directory per value
    /// of this column (Hive-style). Default: none (one file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition_by: Option<String>,
    /// With `partition_by`: files open at once at most (each holds a row group
    /// in memory). Default: 32.
    #[serde(default = "default_max_open_files")]
    pub max_open_files: NonZeroUsize,
    /// Keep a write-ahead log beside the output so a stopped or crashed run
    /// resumes (see the module docs); it costs a second, uncompressed write of
    /// every row. Default: true.
    #[serde(default = "yes", skip_serializing_if = "Clone::clone")]
    pub resumable: bool,
}

/// Default rows per row group: 128 Ki, a few MiB per column chunk for typical
/// feature columns, so a file reads well and the writer's buffer stays small.
pub fn default_row_group_rows() -> NonZeroUsize {
    NonZeroUsize::new(128 * 1024).unwrap_or(NonZeroUsize::MIN)
}

/// Default open partition files: 32.
pub fn default_max_open_files() -> NonZeroUsize {
    NonZeroUsize::new(32).unwrap_or(NonZeroUsize::MIN)
}

fn yes() -> bool {
    true
}

impl ParquetSinkSpec {
    /// Checks what can be checked without the data; errors name the key under
    /// `key` (e.g. `sink[0].parquet`).
    ///
    /// # Errors
    /// A level without zstd or out of zstd's range, an empty `partition_by`.
    pub fn check(&self, key: &str) -> Result<(), SpecError> {
        if let Some(level) = self.compression_level {
            if self.compression != Codec::Zstd {
                return Err(SpecError::invalid(
                    format!("{key}.compression_level"),
                    "only zstd has levels; remove it or set `compression = \"zstd\"`",
                ));
            }
            if ZstdLevel::try_new(level).is_err() {
                return Err(SpecError::invalid(
                    format!("{key}.compression_level"),
                    format!("{level} is not a zstd level (1 to 22)"),
                ));
            }
        }
        if self.partition_by.as_deref() == Some("") {
            return Err(SpecError::invalid(
                format!("{key}.partition_by"),
                "names no column",
            ));
        }
        Ok(())
    }

    fn properties(&self) -> WriterProperties {
        let compression = match self.compression {
            Codec::Zstd => Compression::ZSTD(
                self.compression_level
                    .and_then(|l| ZstdLevel::try_new(l).ok())
                    .unwrap_or_default(),
            ),
            Codec::Snappy => Compression::SNAPPY,
            Codec::None => Compression::UNCOMPRESSED,
        };
        WriterProperties::builder()
            .set_compression(compression)
            .set_max_row_group_row_count(Some(self.row_group_rows.get()))
            .set_created_by(format!("weir {}", env!("CARGO_PKG_VERSION")))
            .build()
    }
}

/// The value Hive and Spark write for a null (or empty) partition value.
pub const HIVE_DEFAULT_PARTITION: &str = "__HIVE_DEFAULT_PARTITION__";

/// `value` escaped for a path part as Hive does (`FileUtils.escapePathName`):
/// control characters and `"#%'*/:=?\{[]^` become `%XX`.
pub fn hive_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if (c as u32) < 0x20 || c == '\x7f' || "\"#%'*/:=?\\{[]^".contains(c) {
            out.push_str(&format!("%{:02X}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// What a flush made durable: the rows logged and each log segment's length.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct FlushState {
    rows: u64,
    log: Vec<u64>,
}

type FileWriter = ArrowWriter<BufWriter<File>>;

/// One open partition file.
struct Part {
    writer: FileWriter,
    used: u64,
}

/// Where rows go.
enum Output {
    Single(Option<Box<FileWriter>>),
    Partitioned {
        column: String,
        max_open: usize,
        open: HashMap<String, Part>,
        /// Files started per partition directory.
        started: HashMap<String, u32>,
        tick: u64,
    },
}

/// The write-ahead log: Arrow IPC stream segments `0.arrows`, `1.arrows`, …
/// (a resumed run starts a new segment rather than append to a stream).
struct Log {
    dir: PathBuf,
    /// Synced length of each segment, the current one last.
    segments: Vec<u64>,
    writer: Option<StreamWriter<BufWriter<File>>>,
}

impl Log {
    fn segment(&self, i: usize) -> PathBuf {
        self.dir.join(format!("{i}.arrows"))
    }

    fn append(&mut self, batch: &RecordBatch) -> Result<(), NodeError> {
        let io = |e| NodeError::io(self.dir.display(), e);
        if self.writer.is_none() {
            std::fs::create_dir_all(&self.dir).map_err(io)?;
            let path = self.segment(self.segments.len());
            let file = File::create(&path).map_err(|e| NodeError::io(path.display(), e))?;
            let writer =
                StreamWriter::try_new(BufWriter::with_capacity(1 << 20, file), &batch.schema())
                    .map_err(|e| NodeError::io(path.display(), std::io::Error::other(e)))?;
            self.writer = Some(writer);
            self.segments.push(0);
        }
        if let Some(w) = self.writer.as_mut() {
            w.write(batch)
                .map_err(|e| NodeError::io(self.dir.display(), std::io::Error::other(e)))?;
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<(), NodeError> {
        if self.writer.is_none() {
            return Ok(());
        }
        let path = self.segment(self.segments.len() - 1);
        let Some(w) = self.writer.as_mut() else {
            return Ok(());
        };
        let io = |e| NodeError::io(path.display(), e);
        w.flush().map_err(|e| io(std::io::Error::other(e)))?;
        let file = w.get_ref().get_ref();
        file.sync_data().map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if let Some(last) = self.segments.last_mut() {
            *last = len;
        }
        Ok(())
    }
}

/// Writes batches to Parquet (see the module docs).
pub struct ParquetSink {
    path: PathBuf,
    tmp: PathBuf,
    props: WriterProperties,
    out: Output,
    log: Option<Log>,
    rows: u64,
    /// The in-progress output was prepared (stale files of a failed run removed).
    prepared: bool,
    /// Restored from the published output of a complete run (its log is gone):
    /// the output stands as it is, and a write cannot extend it.
    adopted: bool,
    /// The log holds only this run's rows: a restore replayed it, or a stale
    /// log of an earlier run was removed.
    log_ready: bool,
}

/// Why the sink may not replace directory `dir`: the first entry that is
/// neither a `{column}=…` directory nor hidden.
fn foreign_entry(dir: &Path, column: &str) -> std::io::Result<Option<String>> {
    let prefix = format!("{}=", hive_escape(column));
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let ours = name.starts_with('.')
            || name.starts_with('_')
            || (name.starts_with(&prefix) && entry.path().is_dir());
        if !ours {
            return Ok(Some(name));
        }
    }
    Ok(None)
}

fn parquet_error(path: &Path, e: parquet::errors::ParquetError) -> NodeError {
    match e {
        parquet::errors::ParquetError::ArrowError(m) => {
            NodeError::config(format!("{}: {m}", path.display()))
        }
        other => NodeError::io(path.display(), std::io::Error::other(other)),
    }
}

/// Finishes `writer`: footer, flush; the file, for the caller to sync.
fn finish(writer: FileWriter, path: &Path) -> Result<File, NodeError> {
    let out = writer.into_inner().map_err(|e| parquet_error(path, e))?;
    out.into_inner()
        .map_err(|e| NodeError::io(path.display(), e.into_error()))
}

impl ParquetSink {
    /// A sink writing to `path` (resolved), creating its parent directory. The
    /// output is opened at the first write or by [`Sink::restore`].
    ///
    /// # Errors
    /// The directory cannot be created; `path` is a directory (without
    /// `partition_by`) or a file (with it), or a directory holding something
    /// other than this sink's partitions.
    pub fn create(spec: &ParquetSinkSpec, path: PathBuf) -> Result<Self, NodeError> {
        spec.check("parquet")
            .map_err(|e| NodeError::config(e.to_string()))?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| NodeError::io(dir.display(), e))?;
        }
        let out = match &spec.partition_by {
            None => {
                if path.is_dir() {
                    return Err(NodeError::config(format!(
                        "{} is a directory; without `partition_by` the sink writes one file",
                        path.display()
                    )));
                }
                Output::Single(None)
            }
            Some(column) => {
                Self::check_replaceable(&path, column)?;
                Output::Partitioned {
                    column: column.clone(),
                    max_open: spec.max_open_files.get(),
                    open: HashMap::new(),
                    started: HashMap::new(),
                    tick: 0,
                }
            }
        };
        Ok(Self {
            tmp: atomic::in_progress(&path),
            log: spec.resumable.then(|| Log {
                dir: beside(&path, ".weir-log"),
                segments: Vec::new(),
                writer: None,
            }),
            path,
            props: spec.properties(),
            out,
            rows: 0,
            prepared: false,
            adopted: false,
            log_ready: false,
        })
    }

    fn check_replaceable(path: &Path, column: &str) -> Result<(), NodeError> {
        if path.exists() && !path.is_dir() {
            return Err(NodeError::config(format!(
                "{} is a file; with `partition_by` the sink writes a directory",
                path.display()
            )));
        }
        if path.is_dir()
            && let Some(name) =
                foreign_entry(path, column).map_err(|e| NodeError::io(path.display(), e))?
        {
            return Err(NodeError::config(format!(
                "refusing to replace {}: it holds `{name}`, which is not a `{column}=…` \
                 partition this sink writes; point `path` at a new directory or a former output",
                path.display()
            )));
        }
        Ok(())
    }

    /// Removes what a failed run left in progress and, for a partitioned sink,
    /// makes the in-progress directory.
    fn prepare(&mut self) -> Result<(), NodeError> {
        if self.prepared {
            return Ok(());
        }
        remove_any(&self.tmp).map_err(|e| NodeError::io(self.tmp.display(), e))?;
        if matches!(self.out, Output::Partitioned { .. }) {
            std::fs::create_dir_all(&self.tmp).map_err(|e| NodeError::io(self.tmp.display(), e))?;
        }
        self.prepared = true;
        Ok(())
    }

    /// Writes `batch` to the Parquet output (not the log).
    fn put(&mut self, batch: &RecordBatch) -> Result<(), NodeError> {
        self.prepare()?;
        match &mut self.out {
            Output::Single(writer) => {
                if writer.is_none() {
                    let file = File::create(&self.tmp)
                        .map_err(|e| NodeError::io(self.tmp.display(), e))?;
                    let w = ArrowWriter::try_new(
                        BufWriter::with_capacity(1 << 20, file),
                        batch.schema(),
                        Some(self.props.clone()),
                    )
                    .map_err(|e| parquet_error(&self.tmp, e))?;
                    *writer = Some(Box::new(w));
                }
                if let Some(w) = writer.as_mut() {
                    w.write(batch).map_err(|e| parquet_error(&self.path, e))?;
                }
            }
            Output::Partitioned {
                column,
                max_open,
                open,
                started,
                tick,
            } => {
                for (dir, rows) in split(batch, column)? {
                    *tick += 1;
                    if !open.contains_key(&dir) {
                        if open.len() >= *max_open
                            && let Some(oldest) = open
                                .iter()
                                .min_by_key(|(_, p)| p.used)
                                .map(|(k, _)| k.clone())
                            && let Some(part) = open.remove(&oldest)
                        {
                            let n = started.get(&oldest).copied().unwrap_or(1) - 1;
                            let p = self.tmp.join(&oldest).join(format!("part-{n}.parquet"));
                            let file = finish(part.writer, &p)?;
                            file.sync_all().map_err(|e| NodeError::io(p.display(), e))?;
                        }
                        let n = started.entry(dir.clone()).or_insert(0);
                        let d = self.tmp.join(&dir);
                        std::fs::create_dir_all(&d).map_err(|e| NodeError::io(d.display(), e))?;
                        let p = d.join(format!("part-{n}.parquet"));
                        *n += 1;
                        let file = File::create(&p).map_err(|e| NodeError::io(p.display(), e))?;
                        let writer = ArrowWriter::try_new(
                            BufWriter::with_capacity(1 << 18, file),
                            rows.schema(),
                            Some(self.props.clone()),
                        )
                        .map_err(|e| parquet_error(&p, e))?;
                        open.insert(dir.clone(), Part { writer, used: 0 });
                    }
                    if let Some(part) = open.get_mut(&dir) {
                        part.used = *tick;
                        let p = self.tmp.join(&dir);
                        part.writer.write(&rows).map_err(|e| parquet_error(&p, e))?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Finishes every open file and renames the output into place.
    fn publish(&mut self) -> Result<(), NodeError> {
        self.prepare()?;
        match &mut self.out {
            Output::Single(writer) => {
                let w = match writer.take() {
                    Some(w) => *w,
                    None => {
                        // No rows arrived, so no schema: a valid file of no
                        // columns and no rows, rather than last run's output.
                        let file = File::create(&self.tmp)
                            .map_err(|e| NodeError::io(self.tmp.display(), e))?;
                        ArrowWriter::try_new(
                            BufWriter::new(file),
                            Arc::new(Schema::empty()),
                            Some(self.props.clone()),
                        )
                        .map_err(|e| parquet_error(&self.tmp, e))?
                    }
                };
                let file = finish(w, &self.tmp)?;
                atomic::publish(file, &self.tmp, &self.path)
                    .map_err(|e| NodeError::io(self.path.display(), e))?;
            }
            Output::Partitioned {
                column,
                open,
                started,
                ..
            } => {
                for (dir, part) in open.drain() {
                    let n = started.get(&dir).copied().unwrap_or(1) - 1;
                    let p = self.tmp.join(&dir).join(format!("part-{n}.parquet"));
                    let file = finish(part.writer, &p)?;
                    file.sync_all().map_err(|e| NodeError::io(p.display(), e))?;
                }
                for dir in started.keys() {
                    atomic::sync_dir(&self.tmp.join(dir)).map_err(|e| NodeError::io(dir, e))?;
                }
                let column = column.clone();
                Self::check_replaceable(&self.path, &column)?;
                atomic::publish_dir(&self.tmp, &self.path)
                    .map_err(|e| NodeError::io(self.path.display(), e))?;
            }
        }
        self.prepared = false;
        Ok(())
    }

    /// Rows in the published output, from its footers.
    fn published_rows(&self) -> Result<u64, NodeError> {
        let mut files = Vec::new();
        if self.path.is_dir() {
            files = super::super::files::resolve(&self.path, "parquet")
                .map(|v| v.into_iter().map(|f| f.path).collect())
                .unwrap_or_default();
        } else if self.path.exists() {
            files.push(self.path.clone());
        }
        let mut rows = 0;
        for f in files {
            rows += super::source::row_group_rows(&f)?
                .iter()
                .map(|r| *r as u64)
                .sum::<u64>();
        }
        Ok(rows)
    }
}

/// `batch`'s rows grouped by the Hive directory of their `column` value (in the
/// order values first appear), each without `column`.
fn split(batch: &RecordBatch, column: &str) -> Result<Vec<(String, RecordBatch)>, NodeError> {
    let schema = batch.schema();
    let index = schema.index_of(column).map_err(|_| {
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        NodeError::config(format!(
            "`partition_by = \"{column}\"`: the input has no such column; it has {}",
            names.join(", ")
        ))
    })?;
    let keep: Vec<usize> = (0..schema.fields().len()).filter(|&i| i != index).collect();
    let values = arrow::compute::cast(batch.column(index), &DataType::Utf8).map_err(|e| {
        NodeError::config(format!(
            "`partition_by = \"{column}\"`: a {} column cannot name a directory: {e}",
            schema.field(index).data_type()
        ))
    })?;
    let values = values
        .as_any()
        .downcast_ref::<StringArray>()
        .ok_or_else(|| NodeError::Bug("a cast to Utf8 gave another type".into()))?;
    let name = hive_escape(column);
    let dir_of = |i: usize| {
        let v = if values.is_null(i) || values.value(i).is_empty() {
            HIVE_DEFAULT_PARTITION.to_owned()
        } else {
            hive_escape(values.value(i))
        };
        format!("{name}={v}")
    };
    let rest = batch.project(&keep)?;
    let mut order: Vec<String> = Vec::new();
    let mut rows: HashMap<String, Vec<u32>> = HashMap::new();
    let mut last: Option<(String, usize)> = None;
    for i in 0..batch.num_rows() {
        // Sorted input repeats a value for long runs: reuse its key.
        let dir = match &last {
            Some((d, j))
                if values.is_null(i) == values.is_null(*j)
                    && values.value(i) == values.value(*j) =>
            {
                d.clone()
            }
            _ => dir_of(i),
        };
        last = Some((dir.clone(), i));
        rows.entry(dir.clone())
            .or_insert_with(|| {
                order.push(dir.clone());
                Vec::new()
            })
            .push(i as u32);
    }
    if order.len() == 1 {
        return Ok(order.into_iter().map(|d| (d, rest.clone())).collect());
    }
    let mut out = Vec::with_capacity(order.len());
    for dir in order {
        let ix = UInt32Array::from(rows.remove(&dir).unwrap_or_default());
        out.push((dir, arrow::compute::take_record_batch(&rest, &ix)?));
    }
    Ok(out)
}

impl Sink for ParquetSink {
    fn write(&mut self, batch: &RecordBatch, _lineage: &Lineage) -> Result<(), NodeError> {
        if self.adopted {
            return Err(NodeError::config(format!(
                "{}: cannot add rows to the output of a completed run (a Parquet file is \
                 written whole, and the log of its rows was deleted when that run \
                 completed); run the pipeline without resuming",
                self.path.display()
            )));
        }
        self.prepare()?;
        if let Some(log) = self.log.as_mut() {
            if !self.log_ready {
                remove_any(&log.dir).map_err(|e| NodeError::io(log.dir.display(), e))?;
                self.log_ready = true;
            }
            log.append(batch)?;
        }
        self.put(batch)?;
        self.rows += batch.num_rows() as u64;
        Ok(())
    }

    fn durability(&self) -> Durability {
        if self.log.is_some() {
            Durability::OnFlush
        } else {
            Durability::OnClose
        }
    }

    fn flush(&mut self) -> Result<Option<String>, NodeError> {
        let Some(log) = self.log.as_mut() else {
            return Ok(None);
        };
        log.sync()?;
        let state = FlushState {
            rows: self.rows,
            log: log.segments.clone(),
        };
        serde_json::to_string(&state)
            .map(Some)
            .map_err(|e| NodeError::Bug(e.to_string()))
    }

    fn restore(&mut self, state: &str) -> Result<(), NodeError> {
        let shown = self.path.display().to_string();
        let bad = |why: String| NodeError::config(format!("{shown}: cannot resume: {why}"));
        let state: FlushState = serde_json::from_str(state).map_err(|e| {
            bad(format!(
                "the checkpoint's sink state `{state}` does not parse: {e}"
            ))
        })?;
        let Some(log_dir) = self.log.as_ref().map(|l| l.dir.clone()) else {
            // Without a log the output is written again from the start.
            return Ok(());
        };
        self.log_ready = true;
        if !log_dir.exists() {
            if state.rows == 0 {
                return Ok(());
            }
            let published = self.published_rows()?;
            if published != state.rows {
                return Err(bad(format!(
                    "the checkpoint names {} rows, but there is no log ({}) and the output \
                     holds {published}",
                    state.rows,
                    log_dir.display()
                )));
            }
            self.adopted = true;
            self.rows = state.rows;
            return Ok(());
        }
        self.prepare()?;
        let mut rows = 0u64;
        for (i, &bytes) in state.log.iter().enumerate() {
            let path = log_dir.join(format!("{i}.arrows"));
            let io = |e| NodeError::io(path.display(), e);
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(io)?;
            let len = file.metadata().map_err(io)?.len();
            if len < bytes {
                return Err(bad(format!(
                    "{} holds {len} bytes, the checkpoint names {bytes}",
                    path.display()
                )));
            }
            file.set_len(bytes).map_err(io)?;
            file.sync_all().map_err(io)?;
            if bytes == 0 {
                continue;
            }
            let reader = StreamReader::try_new(std::io::BufReader::new(file), None)
                .map_err(|e| io(std::io::Error::other(e)))?;
            for batch in reader {
                let batch = batch.map_err(|e| io(std::io::Error::other(e)))?;
                rows += batch.num_rows() as u64;
                self.put(&batch)?;
            }
        }
        // Segments past the checkpoint were written after it: their rows come
        // again from the source.
        for i in state.log.len().. {
            let path = log_dir.join(format!("{i}.arrows"));
            if !path.exists() {
                break;
            }
            std::fs::remove_file(&path).map_err(|e| NodeError::io(path.display(), e))?;
        }
        if rows != state.rows {
            return Err(bad(format!(
                "the log holds {rows} rows, the checkpoint names {}",
                state.rows
            )));
        }
        self.rows = rows;
        if let Some(log) = self.log.as_mut() {
            log.segments = state.log;
            log.writer = None;
        }
        Ok(())
    }

    fn close(&mut self, complete: bool) -> Result<(), NodeError> {
        if self.adopted {
            // Nothing was written (a write would have failed): the published
            // output of the completed run stands.
            return Ok(());
        }
        match self.log.as_mut() {
            None if !complete => {
                return Err(NodeError::config(format!(
                    "{}: the run stopped before its input ended; a Parquet file is written \
                     whole, so the previous output was left as it was (set `resumable = true` \
                     to publish what was written and resume later)",
                    self.path.display()
                )));
            }
            None => {}
            Some(log) => log.sync()?,
        }
        self.publish()?;
        if complete && let Some(log) = self.log.as_mut() {
            log.writer = None;
            remove_any(&log.dir).map_err(|e| NodeError::io(log.dir.display(), e))?;
        }
        Ok(())
    }
}

impl crate::node::config::SinkConfig for ParquetSinkSpec {
    fn check(&self, key: &str) -> Result<(), SpecError> {
        ParquetSinkSpec::check(self, key)
    }

    fn build(
        &self,
        cx: &crate::node::config::BuildCx,
    ) -> Result<crate::node::config::SinkNode, NodeError> {
        let sink = ParquetSink::create(self, cx.resolve(&self.path))?;
        Ok(crate::node::config::SinkNode::Sync(Box::new(sink)))
    }

    /// The `partition_by` column is in the input and can name a directory.
    fn check_input(&self, key: &str, input: &arrow::datatypes::Schema) -> Result<(), NodeError> {
        let Some(column) = &self.partition_by else {
            return Ok(());
        };
        let field = input.field_with_name(column).map_err(|_| {
            NodeError::config(format!(
                "`{key}.partition_by`: column `{column}` is not in the input (columns: {})",
                crate::node::config::column_list(input)
            ))
        })?;
        if !arrow::compute::can_cast_types(field.data_type(), &DataType::Utf8) {
            return Err(NodeError::config(format!(
                "`{key}.partition_by`: column `{column}` is {}, which cannot name a directory",
                field.data_type()
            )));
        }
        Ok(())
    }
}
