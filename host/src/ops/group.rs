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
//! ([`super::external::Merger`]) and emitted a chunk at a time. A single partition
//! must fit the budget; if it does not, the run fails with the refusal, which
//! names this operator (raise `partitions` or `settings.memory`).

/// Group keys are hashed per row: a fast seeded hasher.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, UInt32Array};
use arrow::compute::take_record_batch;
use arrow::datatypes::{Field, Schema, SchemaRef};
use arrow::ipc::writer::StreamWriter;
use arrow::row::{RowConverter, SortField};

use super::aggregate::Aggregates;
use super::external::{Merger, read_run};
use crate::exec::memory::{Reservation, RunMemory};
use crate::exec::{Emitter, NodeError, Operator};
use crate::spec::GroupSpec;

type Writer = StreamWriter<std::io::BufWriter<std::fs::File>>;

/// The running group.
pub struct GroupOperator {
    name: String,
    spec: GroupSpec,
    memory: RunMemory,
    reservation: Reservation,
    batch_rows: usize,
    input: Option<SchemaRef>,
    output: Option<SchemaRef>,
    key_cols: Vec<usize>,
    buffered: Vec<RecordBatch>,
    partitions: Vec<(std::path::PathBuf, Writer)>,
    emit: Emit,
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
            reservation: memory.pool.reservation(&consumer),
            name: consumer,
            spec,
            memory,
            batch_rows: batch_rows.max(1),
            input: None,
            output: None,
            key_cols: Vec::new(),
            buffered: Vec::new(),
            partitions: Vec::new(),
            emit: Emit::Pending,
        }
    }

    fn init(&mut self, schema: &SchemaRef) -> Result<(), NodeError> {
        let mut fields: Vec<Field> = Vec::new();
        for k in &self.spec.by {
            let i = schema.index_of(k).map_err(|_| {
                NodeError::Data(format!(
                    "{}: key `{k}` is not a column of the input",
                    self.name
                ))
            })?;
            self.key_cols.push(i);
            fields.push(schema.field(i).clone().with_nullable(true));
        }
        let aggs = Aggregates::new(&self.spec.aggregates, schema)?;
        fields.extend(aggs.fields());
        self.output = Some(Arc::new(Schema::new(fields)));
        self.input = Some(schema.clone());
        Ok(())
    }

    fn converter(&self) -> Result<RowConverter, NodeError> {
        let schema = self.input.as_ref().expect("initialised");
        Ok(RowConverter::new(
            self.key_cols
                .iter()
                .map(|&i| SortField::new(schema.field(i).data_type().clone()))
                .collect(),
        )?)
    }

    /// Aggregates `batches` (all rows of the keys they hold) into one batch sorted by key.
    fn aggregate(&self, batches: &[RecordBatch]) -> Result<RecordBatch, NodeError> {
        let schema = self.input.as_ref().expect("initialised");
        let converter = self.converter()?;
        let mut aggs = Aggregates::new(&self.spec.aggregates, schema)?;
        let mut slot_of: HashMap<Box<[u8]>, usize> = HashMap::default();
        let mut keys = converter.empty_rows(0, 0);
        for batch in batches {
            let cols: Vec<ArrayRef> = self
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
        Ok(RecordBatch::try_new(
            self.output.clone().expect("initialised"),
            columns,
        )?)
    }

    fn partition_of(&self, batch: &RecordBatch) -> Result<Vec<Vec<u32>>, NodeError> {
        let converter = self.converter()?;
        let cols: Vec<ArrayRef> = self
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
            h.write(row.as_ref());
            parts[(h.finish() % n as u64) as usize].push(i as u32);
        }
        Ok(parts)
    }

    fn write_partitioned(&mut self, batch: &RecordBatch) -> Result<(), NodeError> {
        let parts = self.partition_of(batch)?;
        for (p, rows) in parts.into_iter().enumerate() {
            if rows.is_empty() {
                continue;
            }
            let piece = take_record_batch(batch, &UInt32Array::from(rows))?;
            self.partitions[p].1.write(&piece)?;
        }
        Ok(())
    }

    fn start_spilling(&mut self) -> Result<(), NodeError> {
        let schema = self.input.clone().expect("initialised");
        for _ in 0..self.spec.partitions.get() {
            let path = self.memory.spill.new_file(&self.name);
            let file = std::fs::File::create(&path).map_err(|source| NodeError::Io {
                path: path.display().to_string(),
                source,
            })?;
            let w =
                StreamWriter::try_new(std::io::BufWriter::with_capacity(1 << 16, file), &schema)?;
            self.partitions.push((path, w));
        }
        for batch in std::mem::take(&mut self.buffered) {
            self.write_partitioned(&batch)?;
        }
        self.reservation.free();
        Ok(())
    }
}

impl Operator for GroupOperator {
    fn process(&mut self, batch: RecordBatch, out: &mut Emitter) -> Result<(), NodeError> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        if self.input.is_none() {
            self.init(&batch.schema())?;
        }
        if self.partitions.is_empty() {
            if self
                .reservation
                .try_grow(batch.get_array_memory_size())
                .is_ok()
            {
                self.buffered.push(batch);
                return Ok(());
            }
            tracing::debug!(node = %self.name, "memory budget reached; spilling partitions");
            out.count("spill_files", self.spec.partitions.get() as u64);
            self.start_spilling()?;
        }
        self.write_partitioned(&batch)
    }

    fn finish(&mut self, _out: &mut Emitter) -> Result<(), NodeError> {
        if self.input.is_none() {
            return Ok(());
        }
        if self.partitions.is_empty() {
            let all = self.aggregate(&self.buffered)?;
            let batches: Vec<RecordBatch> = (0..all.num_rows())
                .step_by(self.batch_rows)
                .map(|o| all.slice(o, self.batch_rows.min(all.num_rows() - o)))
                .collect();
            self.buffered.clear();
            self.reservation.free();
            self.emit = Emit::Batches(batches.into_iter());
            return Ok(());
        }
        let output = self.output.clone().expect("initialised");
        let mut runs = Vec::new();
        for (path, mut w) in std::mem::take(&mut self.partitions) {
            w.finish()?;
            drop(w);
            // The file's size is the partition's Arrow size (IPC is the in-memory
            // layout); read-back batches share one buffer per message, which
            // `get_array_memory_size` would count once per column.
            let bytes = std::fs::metadata(&path)
                .map_err(|source| NodeError::Io {
                    path: path.display().to_string(),
                    source,
                })?
                .len() as usize;
            self.reservation
                .try_grow(bytes)
                .map_err(|e| NodeError::Data(e.to_string()))?;
            let batches = read_run(&path)?;
            let result = self.aggregate(&batches)?;
            drop(batches);
            self.reservation.free();
            let chunks: Vec<RecordBatch> = (0..result.num_rows())
                .step_by(super::external::SPILL_BATCH_ROWS)
                .map(|o| {
                    result.slice(
                        o,
                        super::external::SPILL_BATCH_ROWS.min(result.num_rows() - o),
                    )
                })
                .collect();
            runs.push(super::external::write_run(
                &self.memory.spill,
                &self.name,
                &output,
                chunks.into_iter().map(Ok),
            )?);
        }
        let fields = self
            .key_cols
            .iter()
            .map(|&i| {
                SortField::new(
                    self.input
                        .as_ref()
                        .expect("initialised")
                        .field(i)
                        .data_type()
                        .clone(),
                )
            })
            .collect();
        let key_cols: Vec<usize> = (0..self.key_cols.len()).collect();
        self.emit = Emit::Merge(Merger::open(
            runs,
            output,
            RowConverter::new(fields)?,
            key_cols,
        )?);
        Ok(())
    }

    fn drain(&mut self, out: &mut Emitter) -> Result<bool, NodeError> {
        match &mut self.emit {
            Emit::Pending => Ok(false),
            Emit::Batches(it) => match it.next() {
                Some(b) => {
                    out.push(b);
                    Ok(true)
                }
                None => Ok(false),
            },
            Emit::Merge(m) => match m.next_chunk(self.batch_rows)? {
                Some(b) => {
                    out.push(b);
                    Ok(true)
                }
                None => Ok(false),
            },
        }
    }
}
