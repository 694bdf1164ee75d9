//! `sort`: orders all rows by one or more columns, each ascending or descending
//! with nulls first or last. Stable (ties keep input order) and deterministic, so
//! "sort training data by label or timestamp" gives the same split every run.
//!
//! The sort is blocking: nothing leaves before the input ends. Batches are buffered
//! under a reservation from the run's memory pool, with their keys encoded as
//! `arrow-row` bytes. When the pool refuses, the buffered rows are sorted and
//! written to a run file in the spill directory and the reservation is freed; at
//! the end the runs are merged ([`super::external`]), a chunk at a time, so output
//! flows downstream under backpressure and never piles up in memory. Peak memory is
//! about the budget plus one spill batch per run during the merge.

use arrow::array::{ArrayRef, RecordBatch};
use arrow::compute::SortOptions;
use arrow::datatypes::SchemaRef;
use arrow::row::{RowConverter, Rows, SortField};

use super::external::{Merger, SPILL_BATCH_ROWS, gather, sorted_positions, write_run};
use super::stateful_spec::SortSpec;
use crate::node::memory::{Reservation, RunMemory};
use crate::node::{Emitter, NodeError, Operator};

/// The running sort.
pub struct SortOperator {
    /// The lineage and tokens of every input consumed: what held rows carry.
    consumed: crate::node::MetaSet,
    name: String,
    spec: SortSpec,
    memory: RunMemory,
    reservation: Reservation,
    batch_rows: usize,
    schema: Option<SchemaRef>,
    key_cols: Vec<usize>,
    converter: Option<RowConverter>,
    buffered: Vec<RecordBatch>,
    keys: Vec<Rows>,
    runs: Vec<std::path::PathBuf>,
    output: Output,
}

enum Output {
    Pending,
    InMemory(std::vec::IntoIter<(usize, usize)>),
    Merge(Merger),
    Done,
}

impl SortOperator {
    /// A sort named `name` (for refusals and spill files) emitting `batch_rows`-row
    /// batches.
    pub fn new(name: &str, spec: SortSpec, memory: RunMemory, batch_rows: usize) -> Self {
        let consumer = format!("sort `{name}`");
        Self {
            consumed: crate::node::MetaSet::new(),
            reservation: memory.pool.reservation(&consumer),
            name: consumer,
            spec,
            memory,
            batch_rows: batch_rows.max(1),
            schema: None,
            key_cols: Vec::new(),
            converter: None,
            buffered: Vec::new(),
            keys: Vec::new(),
            runs: Vec::new(),
            output: Output::Pending,
        }
    }

    fn init(&mut self, schema: &SchemaRef) -> Result<(), NodeError> {
        let mut fields = Vec::new();
        for k in &self.spec.by {
            let i = schema.index_of(&k.column).map_err(|_| {
                NodeError::Config(format!(
                    "{}: sort key `{}` is not a column of the input",
                    self.name, k.column
                ))
            })?;
            self.key_cols.push(i);
            let options = SortOptions {
                descending: k.descending,
                nulls_first: k.nulls_first,
            };
            fields.push(SortField::new_with_options(
                schema.field(i).data_type().clone(),
                options,
            ));
        }
        self.converter = Some(RowConverter::new(fields)?);
        self.schema = Some(schema.clone());
        Ok(())
    }

    /// Sorts what is buffered into a run file and frees its memory.
    fn spill(&mut self) -> Result<(), NodeError> {
        if self.buffered.is_empty() {
            return Ok(());
        }
        let positions = sorted_positions(&self.keys);
        let schema = self.schema.clone().expect("initialised");
        let path = write_run(
            &self.memory.spill,
            &self.name,
            &schema,
            gather(&self.buffered, &positions, SPILL_BATCH_ROWS),
        )?;
        tracing::debug!(node = %self.name, rows = positions.len(), file = %path.display(), "spilled a sorted run");
        self.runs.push(path);
        self.buffered.clear();
        self.keys.clear();
        self.reservation.free();
        Ok(())
    }
}

impl Operator for SortOperator {
    fn process(&mut self, batch: RecordBatch, out: &mut Emitter) -> Result<(), NodeError> {
        self.consumed.push_input(out);
        if batch.num_rows() == 0 {
            return Ok(());
        }
        if self.schema.is_none() {
            self.init(&batch.schema())?;
        }
        let cols: Vec<ArrayRef> = self
            .key_cols
            .iter()
            .map(|&i| batch.column(i).clone())
            .collect();
        let keys = self
            .converter
            .as_ref()
            .expect("initialised")
            .convert_columns(&cols)?;
        let need = batch.get_array_memory_size() + keys.size();
        if self.reservation.try_grow(need).is_err() {
            self.spill()?;
            out.count("spills", 1);
            self.reservation.try_grow(need).map_err(NodeError::from)?;
        }
        self.buffered.push(batch);
        self.keys.push(keys);
        Ok(())
    }

    fn finish(&mut self, out: &mut Emitter) -> Result<(), NodeError> {
        if self.runs.is_empty() {
            let positions = sorted_positions(&self.keys);
            self.output = Output::InMemory(positions.into_iter());
        } else {
            self.spill()?;
            out.count("spills", 1);
            out.count("spill_files", self.runs.len() as u64);
            let merger = Merger::open(
                std::mem::take(&mut self.runs),
                self.schema.clone().expect("initialised"),
                self.converter.take().expect("initialised"),
                self.key_cols.clone(),
            )?;
            self.output = Output::Merge(merger);
        }
        Ok(())
    }

    fn drain(&mut self, out: &mut Emitter) -> Result<bool, NodeError> {
        match &mut self.output {
            Output::InMemory(positions) => {
                let chunk: Vec<(usize, usize)> = positions.by_ref().take(self.batch_rows).collect();
                if chunk.is_empty() {
                    self.output = Output::Done;
                    self.buffered.clear();
                    self.keys.clear();
                    self.reservation.free();
                    return Ok(false);
                }
                for b in gather(&self.buffered, &chunk, self.batch_rows) {
                    out.push_with(b?, self.consumed.union());
                }
                Ok(true)
            }
            Output::Merge(m) => match m.next_chunk(self.batch_rows)? {
                Some(b) => {
                    out.push_with(b, self.consumed.union());
                    Ok(true)
                }
                None => {
                    self.output = Output::Done;
                    Ok(false)
                }
            },
            Output::Pending | Output::Done => Ok(false),
        }
    }
}
