//! `[stage.batch]`: regroup a stream into batches of at most `max_rows` rows and at
//! most `max_bytes` bytes, and, in streaming runs, flush what waits after `linger`.
//!
//! ```toml
//! [stage.batch]
//! max_rows = 512          # default 4096
//! max_bytes = "1MiB"      # default: no byte limit
//! linger = "50ms"         # default: none (rows wait for more input or the end)
//! ```
//!
//! Sources batch for reading speed, models for serving: a model server may want 64
//! rows per request, a file sink large batches. Rows are buffered (zero-copy
//! slices of the input) and emitted, in order, as soon as `max_rows` rows or
//! `max_bytes` bytes are waiting; whatever is left goes out when the input ends or,
//! with `linger`, when its oldest row has waited that long — the executor owns the
//! clock (see [`Operator::linger`]), so tests run it on tokio's paused time.
//!
//! Bytes are Arrow memory estimated per row from the batch a row arrived in
//! (`get_array_memory_size / num_rows`), since a slice shares its parent's buffers
//! and cannot be measured alone. A single row larger than `max_bytes` goes out
//! alone. Batches whose columns differ are never merged: a change of schema
//! flushes what waits first. The lineage and delivery tokens of merged batches are
//! merged: the output names every source span it holds.

use std::num::NonZeroUsize;
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::compute::concat_batches;
use serde::{Deserialize, Serialize};

use crate::node::Meta;
use crate::node::config::{BuildCx, OperatorConfig, SpecError};
use crate::node::{AtBarrier, Emitter, NodeError, Operator};
use crate::units::{ByteSize, Millis};

/// A batch stage's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchSpec {
    /// Rows per output batch, at most. Default: 4096 ([`default_max_rows`]).
    #[serde(default = "default_max_rows")]
    pub max_rows: NonZeroUsize,
    /// Arrow bytes per output batch, at most (estimated). Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<ByteSize>,
    /// How long the oldest buffered row may wait before what is buffered goes out.
    /// Default: none (wait for more input or the end of the input).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub linger: Option<Millis>,
}

/// Default rows per output batch: 4096, the sources' default.
pub fn default_max_rows() -> NonZeroUsize {
    NonZeroUsize::new(4096).expect("non-zero")
}

/// The running batcher.
pub struct BatchOp {
    max_rows: usize,
    max_bytes: Option<u64>,
    linger: Option<Duration>,
    /// Buffered slices with their estimated bytes per row.
    pending: Vec<(RecordBatch, f64, crate::node::Meta)>,
    rows: usize,
    bytes: f64,
}

impl BatchOp {
    /// Checks the configuration (`key` is its key path, e.g. `stage[1].batch`).
    ///
    /// # Errors
    /// [`SpecError::Invalid`] for a zero `max_bytes` or `linger`.
    pub fn new(key: &str, spec: &BatchSpec) -> Result<Self, SpecError> {
        if spec.max_bytes.is_some_and(|b| b.0 == 0) {
            return Err(SpecError::invalid(
                format!("{key}.max_bytes"),
                "must be greater than 0",
            ));
        }
        if spec.linger.is_some_and(|l| l.0.is_zero()) {
            return Err(SpecError::invalid(
                format!("{key}.linger"),
                "must be greater than 0 (or left out)",
            ));
        }
        Ok(Self {
            max_rows: spec.max_rows.get(),
            max_bytes: spec.max_bytes.map(|b| b.0),
            linger: spec.linger.map(|l| l.0),
            pending: Vec::new(),
            rows: 0,
            bytes: 0.0,
        })
    }

    fn full(&self) -> bool {
        self.rows >= self.max_rows || self.max_bytes.is_some_and(|m| self.bytes >= m as f64)
    }

    /// Emits one batch from the front of the buffer: up to `max_rows` rows and
    /// `max_bytes` bytes (at least one row).
    fn emit_one(&mut self, out: &mut Emitter) -> Result<(), NodeError> {
        let mut take: Vec<RecordBatch> = Vec::new();
        let mut metas: Vec<Meta> = Vec::new();
        let (mut rows, mut bytes) = (0usize, 0f64);
        while let Some((b, per_row, meta)) = self.pending.first().cloned() {
            let room_rows = self.max_rows - rows;
            let room_bytes = self.max_bytes.map_or(usize::MAX, |m| {
                ((m as f64 - bytes) / per_row.max(1e-9)).floor() as usize
            });
            let n = b
                .num_rows()
                .min(room_rows)
                .min(room_bytes)
                .max(usize::from(rows == 0));
            if n == 0 {
                break;
            }
            take.push(b.slice(0, n));
            metas.push(meta);
            rows += n;
            bytes += n as f64 * per_row;
            if n == b.num_rows() {
                self.pending.remove(0);
            } else {
                self.pending[0].0 = b.slice(n, b.num_rows() - n);
                break;
            }
            if rows == self.max_rows {
                break;
            }
        }
        self.rows -= rows;
        self.bytes = (self.bytes - bytes).max(0.0);
        if self.pending.is_empty() {
            self.bytes = 0.0;
        }
        out.push_with(merge(&take)?, Meta::union(metas.iter()));
        Ok(())
    }

    fn drain(&mut self, out: &mut Emitter) -> Result<(), NodeError> {
        while self.rows > 0 {
            self.emit_one(out)?;
        }
        Ok(())
    }
}

/// Concatenates same-field batches.
fn merge(batches: &[RecordBatch]) -> Result<RecordBatch, NodeError> {
    let first = &batches[0];
    if batches.len() == 1 {
        return Ok(first.clone());
    }
    Ok(concat_batches(first.schema_ref(), batches)?)
}

impl Operator for BatchOp {
    fn process(&mut self, batch: RecordBatch, out: &mut Emitter) -> Result<(), NodeError> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        if let Some((last, ..)) = self.pending.last()
            && last.schema_ref().fields() != batch.schema_ref().fields()
        {
            self.drain(out)?;
        }
        let per_row = batch.get_array_memory_size() as f64 / batch.num_rows() as f64;
        self.rows += batch.num_rows();
        self.bytes += per_row * batch.num_rows() as f64;
        let meta = out.input_meta().cloned().unwrap_or_default();
        self.pending.push((batch, per_row, meta));
        while self.full() {
            self.emit_one(out)?;
        }
        Ok(())
    }

    fn finish(&mut self, out: &mut Emitter) -> Result<(), NodeError> {
        self.drain(out)
    }

    fn linger(&self) -> Option<Duration> {
        self.linger
    }

    fn buffered_rows(&self) -> usize {
        self.rows
    }

    fn flush(&mut self, out: &mut Emitter) -> Result<(), NodeError> {
        self.drain(out)
    }

    /// What waits goes out ahead of a checkpoint barrier, as a short batch:
    /// the checkpoint then holds no row of it, and need not wait for `linger`
    /// or for more input.
    fn at_barrier(&self) -> AtBarrier {
        AtBarrier::Flush
    }
}

/// Checked by building: [`BatchOp::new`] refuses a bad configuration, naming the key.
impl OperatorConfig for BatchSpec {
    fn check(&self, key: &str) -> Result<(), SpecError> {
        BatchOp::new(key, self).map(drop)
    }

    fn build(&self, cx: &BuildCx) -> Result<Box<dyn Operator>, NodeError> {
        Ok(Box::new(BatchOp::new(cx.key, self)?))
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{Int64Array, StringArray};

    use super::*;
    use crate::ops::testutil::{arc, batch, run};

    fn ints(r: std::ops::Range<i64>) -> RecordBatch {
        batch(vec![("k", arc(Int64Array::from_iter_values(r)))])
    }

    fn sizes(out: &Emitter) -> Vec<usize> {
        out.batches.iter().map(RecordBatch::num_rows).collect()
    }

    fn values(out: &Emitter) -> Vec<i64> {
        out.batches
            .iter()
            .flat_map(|b| {
                b.column(0)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap()
                    .values()
                    .to_vec()
            })
            .collect()
    }

    fn op(toml: &str) -> BatchOp {
        BatchOp::new("stage[0].batch", &toml::from_str(toml).unwrap()).unwrap()
    }

    #[test]
    fn regroups_by_rows_keeping_order() {
        let mut b = op("max_rows = 4");
        let out = run(
            &mut b,
            vec![ints(0..3), ints(3..3), ints(3..10), ints(10..11)],
        );
        assert_eq!(sizes(&out), [4, 4, 3]);
        assert_eq!(values(&out), (0..11).collect::<Vec<_>>());
    }

    #[test]
    fn a_byte_limit_cuts_earlier() {
        // 100 Int64 rows: 800 value bytes plus the array's fixed overhead, spread
        // evenly; 8 rows' worth of bytes per output batch.
        let input = ints(0..100);
        let per_row = input.get_array_memory_size() as f64 / 100.0;
        let max = (per_row * 8.0).ceil() as u64;
        let mut b = op(&format!("max_rows = 1000\nmax_bytes = {max}"));
        let out = run(&mut b, vec![input]);
        assert_eq!(sizes(&out), [vec![8; 12], vec![4]].concat());
        assert_eq!(values(&out), (0..100).collect::<Vec<_>>());
        // A row larger than the limit goes out alone.
        let mut b = op("max_bytes = 1");
        assert_eq!(sizes(&run(&mut b, vec![ints(0..3)])), [1, 1, 1]);
    }

    #[test]
    fn a_schema_change_flushes_first() {
        let mut b = op("max_rows = 10");
        let s = batch(vec![("s", arc(StringArray::from(vec!["x"])))]);
        let out = run(&mut b, vec![ints(0..2), s, ints(2..3)]);
        assert_eq!(sizes(&out), [2, 1, 1]);
    }

    #[test]
    fn linger_and_flush_hand_out_what_waits() {
        let mut b = op("max_rows = 10\nlinger = \"20ms\"");
        assert_eq!(b.linger(), Some(Duration::from_millis(20)));
        let mut out = Emitter::default();
        b.process(ints(0..3), &mut out).unwrap();
        assert!(out.batches.is_empty());
        assert_eq!(b.buffered_rows(), 3);
        b.flush(&mut out).unwrap();
        assert_eq!(sizes(&out), [3]);
        assert_eq!(b.buffered_rows(), 0);
    }

    #[test]
    fn config_errors_name_the_key() {
        let e = BatchOp::new("stage[0].batch", &toml::from_str("max_bytes = 0").unwrap())
            .err()
            .unwrap();
        assert_eq!(
            e.to_string(),
            "`stage[0].batch.max_bytes`: must be greater than 0"
        );
        let e = toml::from_str::<BatchSpec>("max_rows = \"ten\"").unwrap_err();
        assert_eq!(
            e.message(),
            "invalid type: string \"ten\", expected a nonzero usize"
        );
        let e = toml::from_str::<BatchSpec>("max_row = 3").unwrap_err();
        assert_eq!(
            e.message(),
            "unknown field `max_row`, expected one of `max_rows`, `max_bytes`, `linger`"
        );
    }
}
