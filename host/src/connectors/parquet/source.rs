//! The Parquet source: a file, a glob or a directory of Parquet files, read a
//! row group at a time.
//!
//! ```text
//!   open:  every file's footer ──► one schema (all files agree) · codecs checked
//!   read:  file 0: rg 0 ─► batch, batch, batch@"a.parquet:0"   (the last batch of a
//!                  rg 1 ─► batch@"a.parquet:1"                   row group carries
//!          file 1: rg 0 ─► ...                                   its position)
//!   seek("a.parquet:0") ─► continues at row group 1 of a.parquet
//! ```
//!
//! A row group is the unit Parquet readers decode, so it is the unit of resume: a
//! position names a file (by its name in the set, see [`super::super::files`])
//! and the row group just finished, `{file}:{row_group}` (row groups counted from
//! 0, as every Parquet tool counts them). A row group larger than `batch_rows` is
//! read as several batches; only the last carries the position, so a position is
//! always exact and a resumed run never reads half a row group twice.
//!
//! A row group that cannot be decoded (a corrupt page, rows missing) does not
//! stop the run: what is left of it becomes one dead letter, reason
//! `corrupt_batch`, naming the file, the row group, its rows and the file's
//! bytes it spans, and reading goes on with the next row group. (Page
//! checksums are verified only in a build of the `parquet` crate with its
//! `crc` feature; without it a corrupt page shows as a page that does not
//! decode, which is the same case.)

use std::fs::File;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{Field, Schema, SchemaRef};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReader,
    ParquetRecordBatchReaderBuilder,
};
use parquet::basic::Compression;
use serde::{Deserialize, Serialize};

use super::super::files::{self, InputFile};
use crate::node::{DeadLetter, Emitter, Fault, NodeError, Source};

/// A Parquet source (`[source.parquet]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParquetSourceSpec {
    /// A file, a glob (`data/*.parquet`, `*` and `?` in any part), or a
    /// directory (every `*.parquet` under it, at any depth); relative to the
    /// pipeline file. Files are read in the order of their names.
    pub path: PathBuf,
    /// Rows per batch at most (a row group is cut into batches of this size).
    /// Default: the pipeline's `settings.batch_rows`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_rows: Option<NonZeroUsize>,
    /// Columns to read, in this order (only these are decoded). Default: every
    /// column, in file order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub columns: Option<Vec<String>>,
}

/// Batches a call emits at most: enough that the blocking pool's hand-off is
/// paid once per several batches, few enough that a call stays short.
const BATCHES_PER_CALL: usize = 8;

/// The codecs this build decodes; others fail at open with one clear message.
fn readable(c: Compression) -> bool {
    matches!(
        c,
        Compression::UNCOMPRESSED | Compression::SNAPPY | Compression::ZSTD(_)
    )
}

/// A codec as people call it.
fn codec_name(c: Compression) -> &'static str {
    match c {
        Compression::UNCOMPRESSED => "none",
        Compression::SNAPPY => "snappy",
        Compression::GZIP(_) => "gzip",
        Compression::LZO => "lzo",
        Compression::BROTLI(_) => "brotli",
        Compression::LZ4 => "lz4",
        Compression::ZSTD(_) => "zstd",
        Compression::LZ4_RAW => "lz4_raw",
    }
}

/// A row group being read.
struct Current {
    reader: ParquetRecordBatchReader,
    row_group: usize,
    rows_left: u64,
}

/// Reads a set of Parquet files a row group at a time (see the module docs).
pub struct ParquetSource {
    display: String,
    files: Vec<InputFile>,
    metas: Vec<ArrowReaderMetadata>,
    masks: Vec<ProjectionMask>,
    /// Output column `i` is column `order[i]` of what the reader yields (the
    /// reader keeps file order; `columns` may ask for another).
    order: Option<Vec<usize>>,
    schema: SchemaRef,
    batch_rows: usize,
    /// The file being read, and its next row group.
    file: usize,
    row_group: usize,
    handle: Option<File>,
    current: Option<Current>,
}

/// A parquet error reading `file`, as the node error that says whose fault it is:
/// a codec not compiled in is the configuration's, anything else the data's.
fn read_error(file: &str, what: &str, text: &str) -> NodeError {
    if let Some(codec) = text
        .split("Disabled feature at compile time: ")
        .nth(1)
        .map(str::trim)
    {
        return NodeError::config(format!(
            "{file}: {what}: the file is compressed with {codec}, which this build of weir \
             does not read (it reads uncompressed, snappy and zstd Parquet)"
        ));
    }
    NodeError::data(format!("{file}: {what}: {text}"))
}

/// The fields of `schema` without metadata, so files written by different tools
/// (which add their own) compare by what matters: names, types, nullability.
fn plain(fields: &[Arc<Field>]) -> Vec<Field> {
    fields
        .iter()
        .map(|f| Field::new(f.name(), f.data_type().clone(), f.is_nullable()))
        .collect()
}

impl ParquetSource {
    /// Opens every file `path` (resolved) names and reads their footers: the
    /// schema is known before the first read.
    ///
    /// # Errors
    /// No file matches; a file is not Parquet, or uses a codec this build does
    /// not read; the files' schemas differ (naming both files); a `columns`
    /// entry is not in the files.
    pub fn open(
        spec: &ParquetSourceSpec,
        path: &Path,
        default_batch_rows: NonZeroUsize,
    ) -> Result<Self, NodeError> {
        let display = spec.path.display().to_string();
        let files = files::resolve(path, "parquet").map_err(|e| NodeError::io(&display, e))?;
        let mut metas = Vec::with_capacity(files.len());
        let mut masks = Vec::with_capacity(files.len());
        let mut order = None;
        let mut agreed: Option<(Vec<Field>, &str)> = None;
        for f in &files {
            let handle = File::open(&f.path).map_err(|e| NodeError::io(f.path.display(), e))?;
            let meta = ArrowReaderMetadata::load(&handle, ArrowReaderOptions::new())
                .map_err(|e| read_error(&f.name, "not a readable Parquet file", &e.to_string()))?;
            let all = meta.schema();
            let indices: Vec<usize> = match &spec.columns {
                None => (0..all.fields().len()).collect(),
                Some(columns) => {
                    let mut ix = Vec::with_capacity(columns.len());
                    for c in columns {
                        let i = all.index_of(c).map_err(|_| {
                            let names: Vec<&str> =
                                all.fields().iter().map(|f| f.name().as_str()).collect();
                            NodeError::config(format!(
                                "{}: no column `{c}` to read (`columns`); it has {}",
                                f.name,
                                names.join(", ")
                            ))
                        })?;
                        ix.push(i);
                    }
                    ix
                }
            };
            let mut sorted = indices.clone();
            sorted.sort_unstable();
            sorted.dedup();
            if sorted != indices {
                order = Some(
                    indices
                        .iter()
                        .map(|i| sorted.binary_search(i).unwrap_or_default())
                        .collect(),
                );
            }
            let wanted: Vec<&str> = sorted
                .iter()
                .map(|&i| all.field(i).name().as_str())
                .collect();
            for rg in meta.metadata().row_groups() {
                for col in rg.columns() {
                    let top = col.column_path().parts().first().map(String::as_str);
                    if top.is_some_and(|t| wanted.contains(&t)) && !readable(col.compression()) {
                        return Err(NodeError::config(format!(
                            "{}: column `{}` is compressed with {}, which this build of weir \
                             does not read (it reads uncompressed, snappy and zstd Parquet)",
                            f.name,
                            col.column_path().string(),
                            codec_name(col.compression())
                        )));
                    }
                }
            }
            let fields: Vec<Field> = indices.iter().map(|&i| all.field(i).clone()).collect();
            let fields = plain(&fields.into_iter().map(Arc::new).collect::<Vec<_>>());
            match &mut agreed {
                None => agreed = Some((fields, &f.name)),
                Some((first, first_name)) => {
                    let names =
                        |v: &[Field]| v.iter().map(|f| f.name().clone()).collect::<Vec<_>>();
                    if names(first) != names(&fields) {
                        return Err(NodeError::config(format!(
                            "{}: its columns ({}) differ from {}'s ({}): every file of a \
                             source must have the same schema",
                            f.name,
                            names(&fields).join(", "),
                            first_name,
                            names(first).join(", ")
                        )));
                    }
                    for (a, b) in first.iter_mut().zip(&fields) {
                        if a.data_type() != b.data_type() {
                            return Err(NodeError::config(format!(
                                "{}: column `{}` is {} there but {} in {}: every file of a \
                                 source must have the same schema",
                                f.name,
                                a.name(),
                                b.data_type(),
                                a.data_type(),
                                first_name
                            )));
                        }
                        if b.is_nullable() && !a.is_nullable() {
                            *a = a.clone().with_nullable(true);
                        }
                    }
                }
            }
            masks.push(ProjectionMask::roots(meta.parquet_schema(), sorted));
            metas.push(meta);
        }
        let fields = agreed.map(|(f, _)| f).unwrap_or_default();
        Ok(Self {
            display,
            schema: Arc::new(Schema::new(fields)),
            files,
            metas,
            masks,
            order,
            batch_rows: spec.batch_rows.unwrap_or(default_batch_rows).get(),
            file: 0,
            row_group: 0,
            handle: None,
            current: None,
        })
    }

    /// The names of the files read, in order (for tests and the run summary).
    pub fn file_names(&self) -> Vec<&str> {
        self.files.iter().map(|f| f.name.as_str()).collect()
    }

    /// Starts the next row group; `false` when every file is read. A row
    /// group whose reader cannot even be made is dead-lettered into `out`
    /// (then nothing is current, and the call returns `true`).
    fn start_next(&mut self, out: &mut Emitter) -> Result<bool, NodeError> {
        loop {
            let Some(meta) = self.metas.get(self.file) else {
                return Ok(false);
            };
            if self.row_group >= meta.metadata().num_row_groups() {
                self.file += 1;
                self.row_group = 0;
                self.handle = None;
                continue;
            }
            let f = &self.files[self.file];
            if self.handle.is_none() {
                let h = File::open(&f.path).map_err(|e| NodeError::io(f.path.display(), e))?;
                self.handle = Some(h);
            }
            let handle = match &self.handle {
                Some(h) => h
                    .try_clone()
                    .map_err(|e| NodeError::io(f.path.display(), e))?,
                None => return Err(NodeError::Bug("no file handle".into())),
            };
            let rg = self.row_group;
            let rows = meta.metadata().row_group(rg).num_rows().max(0) as u64;
            let built = ParquetRecordBatchReaderBuilder::new_with_metadata(handle, meta.clone())
                .with_row_groups(vec![rg])
                .with_projection(self.masks[self.file].clone())
                .with_batch_size(self.batch_rows)
                .build();
            let reader = match built {
                Ok(r) => r,
                Err(e) => match read_error(&f.name, &format!("row group {rg}"), &e.to_string()) {
                    NodeError::Data { .. } => {
                        let position = format!("{}:{rg}", f.name);
                        self.row_group += 1;
                        self.corrupt(out, rg, rows, position, &e.to_string());
                        return Ok(true);
                    }
                    other => return Err(other),
                },
            };
            self.current = Some(Current {
                reader,
                row_group: rg,
                rows_left: rows,
            });
            self.row_group += 1;
            return Ok(true);
        }
    }

    /// The row group being read cannot be decoded (a page whose header,
    /// compression or values are corrupt; rows missing or extra): what is
    /// left of it becomes one dead letter (fault `data`, reason
    /// `corrupt_batch`) naming the file, the row group, the rows and the
    /// bytes of the file it spans, and the position moves past it, so the
    /// run goes on with the next row group.
    fn corrupt_row_group(&mut self, out: &mut Emitter, position: String, why: &str) {
        let Some(cur) = self.current.take() else {
            return;
        };
        self.corrupt(out, cur.row_group, cur.rows_left, position, why);
    }

    /// Row group `rg` of the current file, `rows_left` of its rows unread,
    /// as one dead letter (see [`ParquetSource::corrupt_row_group`]), and the
    /// position past it.
    fn corrupt(&self, out: &mut Emitter, rg: usize, rows_left: u64, position: String, why: &str) {
        let file = &self.files[self.file];
        let meta = self.metas[self.file].metadata().row_group(rg);
        let total = meta.num_rows().max(0) as u64;
        let from = total.saturating_sub(rows_left);
        let (start, end) = meta
            .columns()
            .iter()
            .map(|c| {
                let (s, n) = c.byte_range();
                (s, s + n)
            })
            .fold((u64::MAX, 0), |(a, b), (s, e)| (a.min(s), b.max(e)));
        let bytes = if start < end {
            format!(", bytes {start}..{end} of the file")
        } else {
            String::new()
        };
        tracing::warn!(file = %file.name, row_group = rg, "a corrupt row group is kept as a dead letter: {why}");
        out.dead_letter(DeadLetter {
            fault: Fault::Data,
            reason: "corrupt_batch".into(),
            detail: format!("{}: row group {} cannot be decoded: {why}", file.name, rg),
            position: format!("{position} rows {from}..{total}{bytes}"),
            payload: crate::node::Payload::Raw(Vec::new()),
        });
        out.push_at(RecordBatch::new_empty(self.schema.clone()), Some(position));
    }

    /// `batch` with the source's schema: columns in `columns` order, the
    /// agreed nullability, no file metadata.
    fn conform(&self, batch: RecordBatch) -> Result<RecordBatch, NodeError> {
        let columns = match &self.order {
            None => batch.columns().to_vec(),
            Some(order) => order.iter().map(|&i| batch.column(i).clone()).collect(),
        };
        let options =
            arrow::array::RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
        Ok(RecordBatch::try_new_with_options(
            self.schema.clone(),
            columns,
            &options,
        )?)
    }
}

impl Source for ParquetSource {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn next_batch(&mut self, out: &mut Emitter) -> Result<bool, NodeError> {
        if self.current.is_none() && !self.start_next(out)? {
            return Ok(false);
        }
        for _ in 0..BATCHES_PER_CALL {
            let Some(cur) = self.current.as_mut() else {
                break;
            };
            let name = &self.files[self.file].name;
            let position = format!("{name}:{}", cur.row_group);
            match cur.reader.next() {
                Some(Ok(batch)) => {
                    let rows = batch.num_rows() as u64;
                    if rows > cur.rows_left {
                        let why = "it holds more rows than its footer says".to_owned();
                        self.corrupt_row_group(out, position, &why);
                        break;
                    }
                    cur.rows_left -= rows;
                    let last = cur.rows_left == 0;
                    let batch = self.conform(batch)?;
                    if last {
                        out.push_at(batch, Some(position));
                        self.current = None;
                        break;
                    }
                    out.push_at(batch, None);
                }
                Some(Err(e)) => {
                    let what = format!("row group {}", cur.row_group);
                    match read_error(name, &what, &e.to_string()) {
                        NodeError::Data { .. } => {
                            self.corrupt_row_group(out, position, &e.to_string());
                            break;
                        }
                        other => return Err(other),
                    }
                }
                None => {
                    if cur.rows_left > 0 {
                        let why = format!("it ended {} rows short of its footer", cur.rows_left);
                        self.corrupt_row_group(out, position, &why);
                        break;
                    }
                    // A row group of no rows still moves the position on.
                    out.push_at(RecordBatch::new_empty(self.schema.clone()), Some(position));
                    self.current = None;
                    break;
                }
            }
        }
        Ok(true)
    }

    /// Continues at the row group after the one `position` names
    /// (`{file}:{row_group}`), in the file of that name.
    fn seek(&mut self, position: &str) -> Result<(), NodeError> {
        let bad = |why: String| {
            NodeError::config(format!(
                "cannot resume {} after `{position}`: {why}",
                self.display
            ))
        };
        let (name, rg) = position
            .rsplit_once(':')
            .and_then(|(n, r)| Some((n, r.parse::<usize>().ok()?)))
            .ok_or_else(|| bad("not a `file:row_group` position".into()))?;
        let file = files::find(&self.files, name)
            .ok_or_else(|| bad(format!("it has no file `{name}` now")))?;
        let groups = self.metas[file].metadata().num_row_groups();
        if rg >= groups {
            return Err(bad(format!(
                "`{name}` has only {groups} row groups now; the file changed"
            )));
        }
        self.file = file;
        self.row_group = rg + 1;
        self.handle = None;
        self.current = None;
        Ok(())
    }
}

/// Opens `path` as Parquet and returns its row groups' row counts (for tests
/// and tools that check a written file).
///
/// # Errors
/// The file cannot be opened or is not Parquet.
pub fn row_group_rows(path: &Path) -> Result<Vec<i64>, NodeError> {
    let handle = File::open(path).map_err(|e| NodeError::io(path.display(), e))?;
    let meta = ArrowReaderMetadata::load(&handle, ArrowReaderOptions::new()).map_err(|e| {
        read_error(
            &path.display().to_string(),
            "not a readable Parquet file",
            &e.to_string(),
        )
    })?;
    Ok(meta
        .metadata()
        .row_groups()
        .iter()
        .map(|rg| rg.num_rows())
        .collect())
}

impl crate::node::config::SourceConfig for ParquetSourceSpec {
    fn build(
        &self,
        cx: &crate::node::config::BuildCx,
    ) -> Result<crate::node::config::SourceNode, NodeError> {
        let source = ParquetSource::open(self, &cx.resolve(&self.path), cx.batch_rows)?;
        Ok(crate::node::config::SourceNode::Sync(Box::new(source)))
    }
}
