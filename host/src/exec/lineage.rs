//! Lineage: which code and which input made each output batch.
//!
//! ```text
//!   source ── stamps {pipeline, version, sources: [{source, from, to}]}
//!     │
//!   stage  ── appends {stage, digest, params_hash}   (the version that processed it)
//!     │
//!   sink   ── the run's lineage log records (sink, first row, rows, lineage);
//!             a JSON-lines sink with `lineage = true` also writes it to `<path>.lineage.jsonl`
//! ```
//!
//! Lineage travels inside the batch, as JSON in the Arrow schema metadata under
//! [`LINEAGE_KEY`]: it is per batch, never per row, so the hot path pays one small
//! JSON parse and write per batch and the data stays columnar. A stage appends its
//! own entry after it processed the batch, so during a swap each batch names the
//! exact component digest and parameters that produced it. The pipeline version is
//! the one active when the source read the batch; the stage entries are the
//! authority on what code ran.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::Schema;
use serde::{Deserialize, Serialize};

/// The schema-metadata key lineage is stored under.
pub const LINEAGE_KEY: &str = "weir.lineage";

/// Where one output batch came from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lineage {
    /// The pipeline's name.
    pub pipeline: String,
    /// The pipeline version active when the source read the batch (`None` when the
    /// pipeline was run from a file, not from the store).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// The input positions, one span per source batch merged into this one.
    pub sources: Vec<SourceSpan>,
    /// The stages that processed it, in order.
    pub stages: Vec<StageLineage>,
}

/// A source's positions before and after the batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceSpan {
    /// The source node.
    pub source: String,
    /// Its position before the batch (`None` at the start).
    pub from: Option<String>,
    /// Its position after the batch.
    pub to: Option<String>,
}

/// The code and parameters of one stage that processed a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageLineage {
    /// The stage node.
    pub stage: String,
    /// sha256 of the component.
    pub digest: String,
    /// sha256 of the parameters' JSON text.
    pub params_hash: String,
}

impl Lineage {
    /// The lineage stamped on `batch`, if any.
    pub fn of(batch: &RecordBatch) -> Option<Self> {
        serde_json::from_str(batch.schema_ref().metadata().get(LINEAGE_KEY)?).ok()
    }

    /// `batch` with this lineage in its schema metadata (replacing any).
    pub fn stamp(&self, batch: RecordBatch) -> RecordBatch {
        let json = serde_json::to_string(self).expect("lineage serializes");
        let mut metadata: HashMap<String, String> = batch.schema_ref().metadata().into();
        metadata.insert(LINEAGE_KEY.to_owned(), json);
        let schema = Arc::new(Schema::new_with_metadata(
            batch.schema_ref().fields().clone(),
            metadata,
        ));
        // Not `with_schema`: it refuses a changed metadata value.
        let (_, columns, rows) = batch.into_parts();
        let options = arrow::array::RecordBatchOptions::new().with_row_count(Some(rows));
        RecordBatch::try_new_with_options(schema, columns, &options)
            .expect("same fields, same columns")
    }
}

/// sha256 of a stage's parameter text, in hex.
pub fn params_hash(params: &str) -> String {
    crate::sandbox::digest(params.as_bytes())
}

/// One entry of a run's lineage log: a run of consecutive output rows of a sink
/// that share one lineage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineageRecord {
    /// The sink.
    pub sink: String,
    /// Index of the first row (counted over the sink's output in this run).
    pub first_row: u64,
    /// Number of rows.
    pub rows: u64,
    /// Where they came from.
    pub lineage: Lineage,
}
