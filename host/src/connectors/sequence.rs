//! A generator source: numbered records at a steady rate, for load tests, demos
//! and exercising unbounded pipelines (swaps, stops) without an external service.
//!
//! It produces one Int64 column of consecutive numbers, `start`, `start + 1`, …,
//! in batches of `batch_rows`. With a `rate` it paces itself against a schedule
//! fixed at the first batch (batch `k` is released at `t0 + k·batch_rows/rate`),
//! so a slow downstream does not make it burst afterwards beyond one batch. Its
//! position is the next number it will produce.

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use serde::{Deserialize, Serialize};

use crate::node::config::{BuildCx, SourceConfig, SourceNode, SpecError};
use crate::node::{Emitter, NodeError, Source};

/// A generator of numbered records (`[source.sequence]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SequenceSourceSpec {
    /// The column's name. Default: `"n"` ([`default_sequence_column`]).
    #[serde(default = "default_sequence_column")]
    pub column: String,
    /// The first number. Default: 0.
    #[serde(default)]
    pub start: i64,
    /// How many records to produce. Default: none (unbounded; the run is stopped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// Records per second. Default: none (as fast as downstream takes them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
    /// Rows per batch. Default: the pipeline's `settings.batch_rows`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_rows: Option<NonZeroUsize>,
}

/// Default column name of a sequence source: `n`.
pub fn default_sequence_column() -> String {
    "n".to_owned()
}

/// Produces the numbers.
pub struct SequenceSource {
    schema: SchemaRef,
    next: i64,
    end: Option<i64>,
    batch_rows: usize,
    interval: Option<Duration>,
    started: Option<Instant>,
    batches: u32,
}

impl SequenceSource {
    /// A source per `spec`; `default_rows` is the pipeline's `settings.batch_rows`.
    pub fn new(spec: &SequenceSourceSpec, default_rows: NonZeroUsize) -> Self {
        let batch_rows = spec.batch_rows.unwrap_or(default_rows).get();
        let interval = spec
            .rate
            .map(|r| Duration::from_secs_f64(batch_rows as f64 / r));
        Self {
            schema: Arc::new(Schema::new(vec![Field::new(
                &spec.column,
                DataType::Int64,
                false,
            )])),
            next: spec.start,
            end: spec.count.map(|c| spec.start.saturating_add(c as i64)),
            batch_rows,
            interval,
            started: None,
            batches: 0,
        }
    }
}

impl Source for SequenceSource {
    fn schema(&self) -> arrow::datatypes::SchemaRef {
        self.schema.clone()
    }

    fn next_batch(&mut self, out: &mut Emitter) -> Result<bool, NodeError> {
        let end = self.end.unwrap_or(i64::MAX);
        let rows = (end - self.next).clamp(0, self.batch_rows as i64);
        if rows == 0 {
            return Ok(false);
        }
        if let Some(interval) = self.interval {
            let t0 = *self.started.get_or_insert_with(Instant::now);
            let due = t0 + interval * self.batches;
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        let values = Int64Array::from_iter_values(self.next..self.next + rows);
        let batch = RecordBatch::try_new(self.schema.clone(), vec![Arc::new(values)])?;
        self.next += rows;
        self.batches += 1;
        out.push_at(batch, Some(self.next.to_string()));
        Ok(self.next < end)
    }

    /// The position is the next number to produce.
    fn seek(&mut self, position: &str) -> Result<(), NodeError> {
        self.next = position.parse().map_err(|_| {
            NodeError::config(format!(
                "`{position}` is not a sequence position (an integer)"
            ))
        })?;
        Ok(())
    }
}

impl SourceConfig for SequenceSourceSpec {
    fn check(&self, key: &str) -> Result<(), SpecError> {
        if self.rate.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
            return Err(SpecError::invalid(
                format!("{key}.rate"),
                "must be a positive number of records per second",
            ));
        }
        Ok(())
    }

    fn build(&self, cx: &BuildCx) -> Result<SourceNode, NodeError> {
        Ok(SourceNode::Sync(Box::new(SequenceSource::new(
            self,
            cx.batch_rows,
        ))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn produces_consecutive_numbers_and_stops_at_count() {
        let spec: SequenceSourceSpec =
            toml::from_str("start = 5\ncount = 5\nbatch_rows = 2").unwrap();
        let mut src = SequenceSource::new(&spec, NonZeroUsize::new(100).unwrap());
        let mut seen = Vec::new();
        loop {
            let mut out = Emitter::default();
            let more = src.next_batch(&mut out).unwrap();
            for b in out.batches {
                let col = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
                seen.push(col.values().to_vec());
            }
            if !more {
                break;
            }
        }
        assert_eq!(seen, vec![vec![5, 6], vec![7, 8], vec![9]]);
        src.seek("8").unwrap();
        let mut out = Emitter::default();
        src.next_batch(&mut out).unwrap();
        assert_eq!(out.positions, vec![Some("10".to_owned())]);
    }

    #[test]
    fn a_misspelled_key_is_refused() {
        let err = toml::from_str::<SequenceSourceSpec>("rates = 5")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `rates`"), "{err}");
    }
}
