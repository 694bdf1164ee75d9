//! `group`: hash aggregation. One output row per distinct key (a user, a session
//! id) with the configured aggregates ([`super::aggregate`]), emitted when the
//! input ends, sorted by the key columns (ascending, nulls first) so the output is
//! the same however the work was split.
//!
//! Input batches are buffered under a reservation from the run's memory pool. When
//! the pool refuses, the operator switches to partitioned mode (grace hash
//! aggregation): what it buffered, and every batch after, is split by a hash of
//! the key into `partitions` spill files, so all rows of a key land in one file in
//! input order. At the end each partition is read back alone, aggregated, sorted
//! and written as a sorted run; the runs are merged by key
//! ([`super::external::Merger`]) and emitted a chunk at a time. A partition that
//! does not fit what the pool grants at that moment (other operators may hold part
//! of the budget) is split again by a differently seeded hash, up to three times;
//! only then does the run fail with the refusal, which names this operator (the
//! rows of a few keys exceed the budget: raise `settings.memory`).
//!
//! In a run with aligned checkpoints every held row goes with each checkpoint
//! (`Operator::snapshot`, Arrow IPC), and a resumed run feeds them through
//! again before its first batch.

/// Group keys are hashed per row: a fast seeded hasher.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
use std::hash::{BuildHasher, Hasher};
use std::num::NonZeroUsize;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, UInt32Array};
use arrow::compute::take_record_batch;
use arrow::datatypes::{Field, Schema, SchemaRef};
use arrow::ipc::writer::StreamWriter;
use arrow::row::{RowConverter, SortField};
use serde::{Deserialize, Serialize};

use super::aggregate::{AggregateSpec, Aggregates};
use super::external::{self, Merger, read_run};
use super::state_file;
use crate::node::config::{BuildCx, OperatorConfig, SpecError};
use crate::node::memory::{Reservation, RunMemory};
use crate::node::{AtBarrier, Emitter, NodeError, Operator};

type Writer = StreamWriter<std::io::BufWriter<std::fs::File>>;

/// `[stage.group]`: hash aggregation by key, one output row per distinct key,
/// emitted when the input ends, sorted by the key columns (ascending, nulls first).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupSpec {
    /// The key columns. At least one.
    pub by: Vec<String>,
    /// The aggregates, one output column each.
    pub aggregates: Vec<AggregateSpec>,
    /// Spill partitions when the input does not fit the budget.
    /// Default: 16 ([`default_partitions`]).
    #[serde(default = "default_partitions")]
    pub partitions: NonZeroUsize,
}

/// Default spill partitions of a group: 16.
pub fn default_partitions() -> NonZeroUsize {
    NonZeroUsize::new(16).expect("non-zero")
}

/// Hash aggregation, reserving from the run's memory budget and spilling past it.
impl OperatorConfig for GroupSpec {
    fn check(&self, key: &str) -> Result<(), SpecError> {
        if self.by.is_empty() {
            return Err(SpecError::invalid(
                format!("{key}.by"),
                "needs at least one key column",
            ));
        }
        super::aggregate::validate_aggregates(key, &self.aggregates)
    }

    fn build(&self, cx: &BuildCx) -> Result<Box<dyn Operator>, NodeError> {
        Ok(Box::new(GroupOperator::new(
            cx.name,
            self.clone(),
            cx.memory.clone(),
            cx.batch_rows.get(),
        )))
    }
}

/// The running group.
pub struct GroupOperator {
    /// The lineage and tokens of every input consumed: what held rows carry.
    consumed: crate::node::MetaSet,
    name: String,
    spec: GroupSpec,
    memory: RunMemory,
    reservation: Reservation,
    batch_rows: usize,
    /// The input's schema, the output's and the key columns: fixed by the plan
    /// when it knows the input, else by the first batch.
    bound: Option<Bound>,
    buffered: Vec<RecordBatch>,
    partitions: Vec<(std::path::PathBuf, Writer)>,
    emit: Emit,
}

/// What a group binds to its input: cheap to clone (two `Arc`s and the key
/// positions), so each call takes its own copy while it changes the operator.
#[derive(Clone)]
struct Bound {
    input: SchemaRef,
    output: SchemaRef,
    key_cols: Vec<usize>,
}

impl Bound {
    /// The group of `spec` over `input`: its key columns found, its aggregates
    /// typed.
    fn new(spec: &GroupSpec, input: &SchemaRef) -> Result<Self, NodeError> {
        let mut fields: Vec<Field> = Vec::new();
        let mut key_cols = Vec::new();
        for k in &spec.by {
            let i = input.index_of(k).map_err(|_| {
                NodeError::Config(format!(
                    "key `{k}` is not a column of the input (it has: {})",
                    crate::node::config::column_list(input)
                ))
            })?;
            key_cols.push(i);
            fields.push(input.field(i).clone().with_nullable(true));
        }
        fields.extend(Aggregates::new(&spec.aggregates, input)?.fields());
        Ok(Self {
            input: input.clone(),
            output: Arc::new(Schema::new(fields)),
            key_cols,
        })
    }

    fn converter(&self) -> Result<RowConverter, NodeError> {
        Ok(RowConverter::new(
            self.key_cols
                .iter()
                .map(|&i| SortField::new(self.input.field(i).data_type().clone()))
                .collect(),
        )?)
    }
}

enum Emit {
    Pending,
    Batches(std::vec::IntoIter<RecordBatch>),
    Merge(Merger),
}

impl GroupOperator {
    /// A group named `name` emitting `batch_rows`-row batches.
    pub fn new(name: &str, spec: GroupSpec, memory: RunMemory, batch_rows: usize) -> Self {
        let consumer = format!("group `{name}`");
        Self {
            consumed: crate::node::MetaSet::new(),
            reservation: memory.pool.reservation(&consumer),
            name: consumer,
            spec,
            memory,
            batch_rows: batch_rows.max(1),
            bound: None,
            buffered: Vec::new(),
            partitions: Vec::new(),
            emit: Emit::Pending,
        }
    }

    /// Binds to `schema` unless bound already, and returns the binding.
    fn bind(&mut self, schema: &SchemaRef) -> Result<Bound, NodeError> {
        match &self.bound {
            Some(b) => Ok(b.clone()),
            None => {
                let b = Bound::new(&self.spec, schema)?;
                self.bound = Some(b.clone());
                Ok(b)
            }
        }
    }

    /// Aggregates `batches` (all rows of the keys they hold) into one batch sorted by key.
    fn aggregate(&self, b: &Bound, batches: &[RecordBatch]) -> Result<RecordBatch, NodeError> {
        let converter = b.converter()?;
        let mut aggs = Aggregates::new(&self.spec.aggregates, &b.input)?;
        let mut slot_of: HashMap<Box<[u8]>, usize> = HashMap::default();
        let mut keys = converter.empty_rows(0, 0);
        for batch in batches {
            let cols: Vec<ArrayRef> = b
                .key_cols
                .iter()
                .map(|&i| batch.column(i).clone())
                .collect();
            let rows = converter.convert_columns(&cols)?;
            let mut slots = Vec::with_capacity(rows.num_rows());
            for row in rows.iter() {
                let next = slot_of.len();
                let slot = match slot_of.get(row.as_ref()) {
                    Some(&s) => s,
                    None => {
                        slot_of.insert(row.as_ref().into(), next);
                        keys.push(row);
                        next
                    }
                };
                slots.push(slot);
            }
            let order: Vec<usize> = (0..batch.num_rows()).collect();
            aggs.update(batch, &order, &slots)?;
        }
        let mut order: Vec<usize> = (0..slot_of.len()).collect();
        order.sort_by(|&a, &b| keys.row(a).cmp(&keys.row(b)));
        let mut columns = converter.convert_rows(order.iter().map(|&s| keys.row(s)))?;
        columns.extend(aggs.emit(&order)?);
        Ok(RecordBatch::try_new(b.output.clone(), columns)?)
    }

    /// Row indices of `batch` per partition, by a hash of the key seeded with
    /// `depth` (0 for the first split, 1, 2, … for re-splits of one partition).
    fn partition_of(
        &self,
        b: &Bound,
        batch: &RecordBatch,
        depth: u32,
    ) -> Result<Vec<Vec<u32>>, NodeError> {
        let converter = b.converter()?;
        let cols: Vec<ArrayRef> = b
            .key_cols
            .iter()
            .map(|&i| batch.column(i).clone())
            .collect();
        let rows = converter.convert_columns(&cols)?;
        let n = self.spec.partitions.get();
        let mut parts = vec![Vec::new(); n];
        // A fixed hasher: the same key goes to the same partition in every batch.
        let state =
            std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default();
        for (i, row) in rows.iter().enumerate() {
            let mut h = state.build_hasher();
            h.write_u32(depth);
            h.write(row.as_ref());
            parts[(h.finish() % n as u64) as usize].push(i as u32);
        }
        Ok(parts)
    }

    /// Appends each row of `batch` to its partition's file.
    fn write_split(
        &self,
        b: &Bound,
        batch: &RecordBatch,
        depth: u32,
        writers: &mut [(std::path::PathBuf, Writer)],
    ) -> Result<(), NodeError> {
        let parts = self.partition_of(b, batch, depth)?;
        for (p, rows) in parts.into_iter().enumerate() {
            if rows.is_empty() {
                continue;
            }
            let piece = take_record_batch(batch, &UInt32Array::from(rows))?;
            writers[p].1.write(&piece)?;
        }
        Ok(())
    }

    fn write_partitioned(&mut self, b: &Bound, batch: &RecordBatch) -> Result<(), NodeError> {
        let mut writers = std::mem::take(&mut self.partitions);
        let written = self.write_split(b, batch, 0, &mut writers);
        self.partitions = writers;
        written
    }

    /// One new spill file per partition.
    fn open_partitions(&self, b: &Bound) -> Result<Vec<(std::path::PathBuf, Writer)>, NodeError> {
        (0..self.spec.partitions.get())
            .map(|_| {
                let path = self.memory.spill.new_file(&self.name);
                let file = std::fs::File::create(&path).map_err(|source| NodeError::Io {
                    path: path.display().to_string(),
                    error: source,
                })?;
                let w = StreamWriter::try_new(
                    std::io::BufWriter::with_capacity(1 << 16, file),
                    &b.input,
                )?;
                Ok((path, w))
            })
            .collect()
    }

    fn start_spilling(&mut self, b: &Bound) -> Result<(), NodeError> {
        self.partitions = self.open_partitions(b)?;
        for batch in std::mem::take(&mut self.buffered) {
            self.write_partitioned(b, &batch)?;
        }
        self.reservation.free();
        Ok(())
    }

    /// Aggregates one spilled partition into sorted runs, appended to `runs`.
    ///
    /// A partition that does not fit what the pool grants now (the budget, less
    /// what other operators hold) is split again, a batch at a time, by a hash
    /// seeded with the next depth, and each piece is aggregated in turn: grace hash
    /// aggregation's recursion. After [`MAX_SPLIT_DEPTH`] splits the refusal stands:
    /// by then the rows of a few keys alone exceed the budget.
    fn aggregate_partition(
        &mut self,
        b: &Bound,
        path: std::path::PathBuf,
        depth: u32,
        runs: &mut Vec<std::path::PathBuf>,
        out: &mut Emitter,
    ) -> Result<(), NodeError> {
        // The file's size is the partition's Arrow size (IPC is the in-memory
        // layout); read-back batches share one buffer per message, which
        // `get_array_memory_size` would count once per column.
        let bytes = file_len(&path)?;
        if let Err(refused) = self.reservation.try_grow(bytes) {
            if depth >= MAX_SPLIT_DEPTH {
                let _ = std::fs::remove_file(&path);
                return Err(NodeError::Resource {
                    resource: crate::node::Resource::Memory,
                    error: format!(
                        "{refused}; a partition of {bytes} bytes still does not fit after {depth} re-splits (the rows of a few keys exceed the budget)"
                    )
                    .into(),
                });
            }
            out.count("partition_splits", 1);
            let mut writers = self.open_partitions(b)?;
            let reader = external::open_run(&path)?;
            for batch in reader {
                self.write_split(b, &batch?, depth + 1, &mut writers)?;
            }
            let _ = std::fs::remove_file(&path);
            for (sub, mut w) in writers {
                w.finish()?;
                drop(w);
                self.aggregate_partition(b, sub, depth + 1, runs, out)?;
            }
            return Ok(());
        }
        let batches = read_run(&path)?;
        let result = self.aggregate(b, &batches)?;
        drop(batches);
        self.reservation.free();
        if result.num_rows() == 0 {
            return Ok(());
        }
        let chunks: Vec<RecordBatch> = (0..result.num_rows())
            .step_by(external::SPILL_BATCH_ROWS)
            .map(|o| result.slice(o, external::SPILL_BATCH_ROWS.min(result.num_rows() - o)))
            .collect();
        runs.push(external::write_run(
            &self.memory.spill,
            &self.name,
            &b.output,
            chunks.into_iter().map(Ok),
        )?);
        Ok(())
    }
}

impl GroupOperator {
    /// Keeps `batch`: buffered while the pool grants it, else in its key's
    /// partition file. Returns whether this call started spilling.
    fn absorb(&mut self, batch: RecordBatch) -> Result<bool, NodeError> {
        let b = self.bind(batch.schema_ref())?;
        let mut started = false;
        if self.partitions.is_empty() {
            if self
                .reservation
                .try_grow(batch.get_array_memory_size())
                .is_ok()
            {
                self.buffered.push(batch);
                return Ok(false);
            }
            tracing::debug!(node = %self.name, "memory budget reached; spilling partitions");
            self.start_spilling(&b)?;
            started = true;
        }
        self.write_partitioned(&b, &batch)?;
        Ok(started)
    }
}

/// The schema-metadata key of a group's state file.
const STATE_KEY: &str = "weir.group.state";

/// How many times one partition may be split again before a refusal fails the run.
/// With 16 partitions, three re-splits divide a partition's keys 4096 ways.
const MAX_SPLIT_DEPTH: u32 = 3;

fn file_len(path: &std::path::Path) -> Result<usize, NodeError> {
    Ok(std::fs::metadata(path)
        .map_err(|source| NodeError::Io {
            path: path.display().to_string(),
            error: source,
        })?
        .len() as usize)
}

impl Operator for GroupOperator {
    /// An aggregate: rows are folded into state, and what it emits are new
    /// records.
    fn conservation(&self) -> crate::node::Conservation {
        crate::node::Conservation::Absorbs
    }

    /// The key columns (nullable), then one column per aggregate: bound here,
    /// so a key or an aggregate's column the input lacks fails the plan.
    fn output_schema(&mut self, input: &SchemaRef) -> Result<Option<SchemaRef>, NodeError> {
        Ok(Some(self.bind(input)?.output))
    }

    fn process(&mut self, batch: RecordBatch, out: &mut Emitter) -> Result<(), NodeError> {
        self.consumed.push_input(out);
        if batch.num_rows() == 0 {
            return Ok(());
        }
        if self.absorb(batch)? {
            out.count("spill_files", self.spec.partitions.get() as u64);
        }
        Ok(())
    }

    /// Every row is held until the input ends: they go with the checkpoint.
    fn at_barrier(&self) -> AtBarrier {
        AtBarrier::Snapshot
    }

    /// Writes `<dir>/<operator>.arrow`: every row held, in the input's schema,
    /// and the lineage so far in its metadata. Rows buffered in memory are
    /// written as they are; once the group has spilled, each partition file is
    /// flushed and read back into the state, partition after partition
    /// (so a spilled group's snapshot costs a read and a write of its input so
    /// far). Restoring feeds them through again: every row of a key sits in one
    /// partition in input order, so each key's rows come back in input order
    /// and `first`, `last` and `list` see what an uninterrupted run sees.
    fn snapshot(&mut self, dir: &std::path::Path) -> Result<std::path::PathBuf, NodeError> {
        let file = dir.join(format!("{}.arrow", state_file::stem(&self.name)));
        let state = serde_json::json!({ "lineage": state_file::lineage_json(&self.consumed) });
        let fields = self
            .bound
            .as_ref()
            .map_or_else(Schema::empty, |b| b.input.as_ref().clone());
        let mut readers = Vec::with_capacity(self.partitions.len());
        for (path, w) in &mut self.partitions {
            std::io::Write::flush(w.get_mut()).map_err(|e| NodeError::io(path.display(), e))?;
            readers.push(external::open_run(path)?);
        }
        // One batch in memory at a time.
        let spilled = readers
            .into_iter()
            .flatten()
            .map(|b| b.map_err(NodeError::from));
        state_file::write(
            &file,
            &fields,
            STATE_KEY,
            &state,
            self.buffered.iter().cloned().map(Ok).chain(spilled),
        )?;
        state_file::release_tokens(&mut self.consumed);
        Ok(file)
    }

    fn restore(&mut self, file: &std::path::Path) -> Result<(), NodeError> {
        let saved = state_file::read(file, STATE_KEY, &self.name)?;
        state_file::restore_lineage(&mut self.consumed, &saved.state["lineage"]);
        for b in saved.batches {
            self.absorb(b?)?;
        }
        Ok(())
    }

    fn finish(&mut self, out: &mut Emitter) -> Result<(), NodeError> {
        let Some(b) = self.bound.clone() else {
            // Neither the plan nor a batch bound it: no input, no output.
            return Ok(());
        };
        if self.buffered.is_empty() && self.partitions.is_empty() {
            return Ok(());
        }
        if self.partitions.is_empty() {
            let all = self.aggregate(&b, &self.buffered)?;
            let batches: Vec<RecordBatch> = (0..all.num_rows())
                .step_by(self.batch_rows)
                .map(|o| all.slice(o, self.batch_rows.min(all.num_rows() - o)))
                .collect();
            self.buffered.clear();
            self.reservation.free();
            self.emit = Emit::Batches(batches.into_iter());
            return Ok(());
        }
        let mut runs = Vec::new();
        for (path, mut w) in std::mem::take(&mut self.partitions) {
            w.finish()?;
            drop(w);
            self.aggregate_partition(&b, path, 0, &mut runs, out)?;
        }
        let key_cols: Vec<usize> = (0..b.key_cols.len()).collect();
        self.emit = Emit::Merge(Merger::open(
            runs,
            b.output.clone(),
            b.converter()?,
            key_cols,
        )?);
        Ok(())
    }

    fn drain(&mut self, out: &mut Emitter) -> Result<bool, NodeError> {
        match &mut self.emit {
            Emit::Pending => Ok(false),
            Emit::Batches(it) => match it.next() {
                Some(b) => {
                    out.push_with(b, self.consumed.union());
                    Ok(true)
                }
                None => Ok(false),
            },
            Emit::Merge(m) => match m.next_chunk(self.batch_rows)? {
                Some(b) => {
                    out.push_with(b, self.consumed.union());
                    Ok(true)
                }
                None => Ok(false),
            },
        }
    }
}
