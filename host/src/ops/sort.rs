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
//!
//! In a run with aligned checkpoints the held rows go with each checkpoint
//! (`Operator::snapshot`): the buffered batches written as Arrow IPC, the
//! spilled runs hard-linked beside them, so a resumed run loses none and
//! sorts them exactly as an uninterrupted run would.

use arrow::array::{ArrayRef, RecordBatch};
use arrow::compute::SortOptions;
use arrow::datatypes::SchemaRef;
use arrow::row::{RowConverter, Rows, SortField};
use serde::{Deserialize, Serialize};

use super::external::{Merger, SPILL_BATCH_ROWS, gather, sorted_positions, write_run};
use super::state_file;
use crate::node::config::{BuildCx, OperatorConfig, SpecError};
use crate::node::memory::{Reservation, RunMemory};
use crate::node::{AtBarrier, Emitter, NodeError, Operator};

/// `[stage.sort]`: a stable, deterministic sort; an external merge sort over spill
/// files when the data does not fit the run's memory budget.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SortSpec {
    /// The sort keys, most significant first. At least one.
    pub by: Vec<SortKey>,
}

/// One sort key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SortKey {
    /// The column.
    pub column: String,
    /// Largest first. Default: false (ascending).
    #[serde(default)]
    pub descending: bool,
    /// Nulls before every value. Default: false (nulls last).
    #[serde(default)]
    pub nulls_first: bool,
}

/// A stable sort, reserving from the run's memory budget and spilling past it.
impl OperatorConfig for SortSpec {
    fn check(&self, key: &str) -> Result<(), SpecError> {
        if self.by.is_empty() {
            return Err(SpecError::invalid(
                format!("{key}.by"),
                "needs at least one key",
            ));
        }
        Ok(())
    }

    fn build(&self, cx: &BuildCx) -> Result<Box<dyn Operator>, NodeError> {
        Ok(Box::new(SortOperator::new(
            cx.name,
            self.clone(),
            cx.memory.clone(),
            cx.batch_rows.get(),
        )))
    }
}

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
    /// Rows buffered or spilled and not yet emitted (the ledger's `held`).
    held: usize,
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
            held: 0,
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

    /// Buffers `batch`, spilling what was buffered first when the pool
    /// refuses it; returns whether it spilled.
    fn buffer(&mut self, batch: RecordBatch) -> Result<bool, NodeError> {
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
        let mut spilled = false;
        if self.reservation.try_grow(need).is_err() {
            self.spill()?;
            spilled = true;
            self.reservation.try_grow(need).map_err(NodeError::from)?;
        }
        self.held += batch.num_rows();
        self.buffered.push(batch);
        self.keys.push(keys);
        Ok(spilled)
    }
}

/// The schema-metadata key of a sort's state file.
const STATE_KEY: &str = "weir.sort.state";

impl Operator for SortOperator {
    fn process(&mut self, batch: RecordBatch, out: &mut Emitter) -> Result<(), NodeError> {
        self.consumed.push_input(out);
        if batch.num_rows() == 0 {
            return Ok(());
        }
        if self.buffer(batch)? {
            out.count("spills", 1);
        }
        Ok(())
    }

    /// Every row received, until the merge emits it.
    fn held_rows(&self) -> usize {
        self.held
    }

    /// Every row is held until the input ends: they go with the checkpoint.
    fn at_barrier(&self) -> AtBarrier {
        AtBarrier::Snapshot
    }

    /// Writes `<dir>/<operator>.arrow`: the buffered rows in input order, the
    /// spilled runs (hard-linked beside it, see `state_file`) and the
    /// lineage so far in its metadata. Restoring links the runs back and
    /// buffers the rows again: runs hold earlier input than the buffer, so
    /// ties keep their input order and the result is the uninterrupted one.
    fn snapshot(&mut self, dir: &std::path::Path) -> Result<std::path::PathBuf, NodeError> {
        let stem = state_file::stem(&self.name);
        let file = dir.join(format!("{stem}.arrow"));
        let mut runs = Vec::with_capacity(self.runs.len());
        for (i, run) in self.runs.iter().enumerate() {
            let name = format!("{stem}.run-{i}.arrow");
            state_file::link_or_copy(run, &dir.join(&name))?;
            runs.push(name);
        }
        let buffered: usize = self.buffered.iter().map(RecordBatch::num_rows).sum();
        let state = serde_json::json!({
            "runs": runs,
            "run_rows": self.held - buffered,
            "lineage": state_file::lineage_json(&self.consumed),
        });
        let fields = self
            .schema
            .as_deref()
            .cloned()
            .unwrap_or_else(arrow::datatypes::Schema::empty);
        state_file::write(
            &file,
            &fields,
            STATE_KEY,
            &state,
            self.buffered.iter().cloned().map(Ok),
        )?;
        state_file::release_tokens(&mut self.consumed);
        Ok(file)
    }

    fn restore(&mut self, file: &std::path::Path) -> Result<(), NodeError> {
        let saved = state_file::read(file, STATE_KEY, &self.name)?;
        state_file::restore_lineage(&mut self.consumed, &saved.state["lineage"]);
        if saved.schema.fields().is_empty() {
            return Ok(());
        }
        self.init(&saved.schema)?;
        for name in saved.state["runs"].as_array().into_iter().flatten() {
            let from = state_file::beside(file, name.as_str().unwrap_or_default());
            let to = self.memory.spill.new_file(&self.name);
            state_file::link_or_copy(&from, &to)?;
            let bytes = std::fs::metadata(&to).map_or(0, |m| m.len());
            self.memory.spill.add_bytes(bytes);
            self.runs.push(to);
        }
        self.held += saved.state["run_rows"].as_u64().unwrap_or(0) as usize;
        for b in saved.batches {
            self.buffer(b?)?;
        }
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
                    let b = b?;
                    self.held -= b.num_rows();
                    out.push_with(b, self.consumed.union());
                }
                Ok(true)
            }
            Output::Merge(m) => match m.next_chunk(self.batch_rows)? {
                Some(b) => {
                    self.held -= b.num_rows();
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
