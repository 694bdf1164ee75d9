//! What `sort` and `group` share to work past the memory budget: stable sorting of
//! buffered batches by row-encoded keys, sorted runs written to Arrow IPC files in
//! the run's spill directory, and a k-way merge of those runs.
//!
//! ```text
//!   batches ──► sort (arrow-row keys, stable) ──► run-0.arrow ┐
//!   batches ──► sort                         ──► run-1.arrow ├─► merge ──► chunks
//!   batches ──► sort                         ──► run-2.arrow ┘   (one batch per run
//!                                                                 in memory)
//! ```
//!
//! Keys are compared as `arrow-row` byte strings, so descending order and null
//! placement are encoded once and a comparison is a `memcmp`. Ties keep input
//! order: the in-memory sort is stable, and the merge breaks ties by run number
//! (runs are written in input order), so spilled and in-memory results are
//! identical. Run files are removed as soon as the merge has read them, and the
//! whole spill directory when the run ends.

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::PathBuf;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::compute::interleave_record_batch;
use arrow::datatypes::SchemaRef;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use arrow::row::{RowConverter, Rows};

use crate::node::NodeError;
use crate::node::memory::SpillDir;

/// Rows per batch written to, and read back from, a spill file: small, so a merge
/// over many runs holds little.
pub(crate) const SPILL_BATCH_ROWS: usize = 1024;

fn io(path: &std::path::Path) -> impl Fn(std::io::Error) -> NodeError + '_ {
    move |source| NodeError::Io {
        path: path.display().to_string(),
        error: source,
    }
}

/// Positions `(batch, row)` of all rows, stably sorted by their keys.
///
/// Each entry carries its key's bytes, so a comparison is one `memcmp` with no
/// lookup through the batch's offsets; ties are broken by position, which makes
/// the (faster) unstable sort give the stable order.
pub(crate) fn sorted_positions(keys: &[Rows]) -> Vec<(usize, usize)> {
    let mut idx: Vec<(&[u8], usize, usize)> = keys
        .iter()
        .enumerate()
        .flat_map(|(b, rows)| rows.iter().enumerate().map(move |(r, k)| (k.data(), b, r)))
        .collect();
    idx.sort_unstable();
    idx.into_iter().map(|(_, b, r)| (b, r)).collect()
}

/// Gathers `positions` of `batches` into batches of at most `chunk` rows.
pub(crate) fn gather(
    batches: &[RecordBatch],
    positions: &[(usize, usize)],
    chunk: usize,
) -> impl Iterator<Item = Result<RecordBatch, NodeError>> {
    let refs: Vec<&RecordBatch> = batches.iter().collect();
    positions
        .chunks(chunk.max(1))
        .map(move |p| Ok(interleave_record_batch(&refs, p)?))
}

/// Writes batches to a new file in the spill directory.
pub(crate) fn write_run(
    spill: &SpillDir,
    consumer: &str,
    schema: &SchemaRef,
    batches: impl Iterator<Item = Result<RecordBatch, NodeError>>,
) -> Result<PathBuf, NodeError> {
    let path = spill.new_file(consumer);
    let file = File::create(&path).map_err(io(&path))?;
    let mut w = StreamWriter::try_new(BufWriter::with_capacity(1 << 16, file), schema)?;
    for b in batches {
        w.write(&b?)?;
    }
    w.finish()?;
    let bytes = std::fs::metadata(&path).map_err(io(&path))?.len();
    spill.add_bytes(bytes);
    Ok(path)
}

/// Opens a spill file to read it back a batch at a time.
pub(crate) fn open_run(path: &std::path::Path) -> Result<StreamReader<BufReader<File>>, NodeError> {
    let file = File::open(path).map_err(io(path))?;
    Ok(StreamReader::try_new(
        BufReader::with_capacity(1 << 16, file),
        None,
    )?)
}

/// Reads a spill file back whole (a group's partition).
pub(crate) fn read_run(path: &std::path::Path) -> Result<Vec<RecordBatch>, NodeError> {
    let batches = open_run(path)?.collect::<Result<Vec<_>, _>>()?;
    let _ = std::fs::remove_file(path);
    Ok(batches)
}

struct Cursor {
    path: PathBuf,
    reader: Option<StreamReader<BufReader<File>>>,
    batch: RecordBatch,
    keys: Rows,
    pos: usize,
}

impl Cursor {
    fn advance(&mut self, converter: &RowConverter, key_cols: &[usize]) -> Result<bool, NodeError> {
        self.pos += 1;
        if self.pos < self.batch.num_rows() {
            return Ok(true);
        }
        loop {
            let Some(reader) = self.reader.as_mut() else {
                return Ok(false);
            };
            match reader.next() {
                Some(b) => {
                    let b = b?;
                    if b.num_rows() == 0 {
                        continue;
                    }
                    let cols: Vec<ArrayRef> =
                        key_cols.iter().map(|&i| b.column(i).clone()).collect();
                    self.keys = converter.convert_columns(&cols)?;
                    self.batch = b;
                    self.pos = 0;
                    return Ok(true);
                }
                None => {
                    self.reader = None;
                    let _ = std::fs::remove_file(&self.path);
                    return Ok(false);
                }
            }
        }
    }
}

/// A k-way merge of sorted runs, one batch per run in memory.
pub(crate) struct Merger {
    cursors: Vec<Cursor>,
    converter: RowConverter,
    key_cols: Vec<usize>,
    schema: SchemaRef,
}

impl Merger {
    /// Opens `runs` (in input order) sorted by `key_cols` as `converter` encodes them.
    pub(crate) fn open(
        runs: Vec<PathBuf>,
        schema: SchemaRef,
        converter: RowConverter,
        key_cols: Vec<usize>,
    ) -> Result<Self, NodeError> {
        let mut cursors = Vec::with_capacity(runs.len());
        for path in runs {
            let file = File::open(&path).map_err(io(&path))?;
            let reader = StreamReader::try_new(BufReader::with_capacity(1 << 16, file), None)?;
            let mut c = Cursor {
                path,
                reader: Some(reader),
                batch: RecordBatch::new_empty(schema.clone()),
                keys: converter.empty_rows(0, 0),
                pos: 0,
            };
            // Advancing past the empty batch loads the run's first rows.
            if c.advance(&converter, &key_cols)? {
                cursors.push(c);
            }
        }
        Ok(Self {
            cursors,
            converter,
            key_cols,
            schema,
        })
    }

    /// The next up to `rows` rows in order, or `None` when every run is exhausted.
    pub(crate) fn next_chunk(&mut self, rows: usize) -> Result<Option<RecordBatch>, NodeError> {
        if self.cursors.is_empty() {
            return Ok(None);
        }
        let mut batches: Vec<RecordBatch> = Vec::new();
        let mut current: Vec<usize> = vec![usize::MAX; self.cursors.len()];
        let mut picks: Vec<(usize, usize)> = Vec::with_capacity(rows);
        while picks.len() < rows && !self.cursors.is_empty() {
            // Few runs: a linear scan beats a heap's bookkeeping. Ties go to the
            // earlier run, which keeps the sort stable.
            let mut best = 0;
            for i in 1..self.cursors.len() {
                let (a, b) = (&self.cursors[i], &self.cursors[best]);
                if a.keys.row(a.pos) < b.keys.row(b.pos) {
                    best = i;
                }
            }
            if current[best] == usize::MAX {
                current[best] = batches.len();
                batches.push(self.cursors[best].batch.clone());
            }
            picks.push((current[best], self.cursors[best].pos));
            let batch_before = self.cursors[best].batch.num_rows();
            let more = self.cursors[best].advance(&self.converter, &self.key_cols)?;
            if !more {
                self.cursors.remove(best);
                current.remove(best);
            } else if self.cursors[best].pos == 0 && batch_before > 0 {
                current[best] = usize::MAX;
            }
        }
        if picks.is_empty() {
            return Ok(None);
        }
        let refs: Vec<&RecordBatch> = batches.iter().collect();
        let _ = &self.schema;
        Ok(Some(interleave_record_batch(&refs, &picks)?))
    }
}

impl Drop for Merger {
    fn drop(&mut self) {
        for c in &self.cursors {
            let _ = std::fs::remove_file(&c.path);
        }
    }
}
