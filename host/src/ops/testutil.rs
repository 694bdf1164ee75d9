//! Helpers for the operators' tests: batches from JSON literals, batches back to
//! JSON, running an operator over several batches.

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch};
use serde_json::Value;

use crate::batch::json::{JsonOptions, rows_as_objects};
use crate::node::{Emitter, Operator};

/// A batch from `(name, column)` pairs.
pub fn batch(columns: Vec<(&str, ArrayRef)>) -> RecordBatch {
    RecordBatch::try_from_iter(columns).expect("test batch")
}

/// Every row of `batches` as a JSON object, in order.
pub fn rows(batches: &[RecordBatch]) -> Value {
    Value::Array(
        batches
            .iter()
            .flat_map(|b| rows_as_objects(b, None, JsonOptions::default()).expect("renders"))
            .map(Value::Object)
            .collect(),
    )
}

/// Runs `op` over `input` and `finish`, returning what it emitted.
pub fn run(op: &mut dyn Operator, input: Vec<RecordBatch>) -> Emitter {
    let mut out = Emitter::default();
    for b in input {
        op.process(b, &mut out).expect("process");
    }
    op.finish(&mut out).expect("finish");
    out
}

/// Shorthand for an `Arc`ed array.
pub fn arc<A: arrow::array::Array + 'static>(a: A) -> ArrayRef {
    Arc::new(a)
}
