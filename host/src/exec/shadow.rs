//! Shadow runs: a candidate version of a WebAssembly stage processes the same
//! batches as the active one; its output is compared and discarded.
//!
//! ```text
//!   batch ──► active stage ──► output ──► downstream
//!     │                          │ compare: rows differing, per column,
//!     └──► candidate stage ──────┘          errors, time per batch
//!                 │ (output dropped)
//!                 └─ rule: N clean batches in a row → promote (next batch runs on it)
//!                          M errors                 → drop
//! ```
//!
//! The candidate runs on the stage's own thread right after the active version, so
//! a shadow adds its time to the stage's latency but never changes what flows
//! downstream. It is configured in the pipeline (`[stage.wasm.shadow]`) and
//! reported in the run summary's `shadow:*` counters:
//!
//! | counter | meaning |
//! | --- | --- |
//! | `shadow:batches` | batches compared |
//! | `shadow:rows`, `shadow:rows_differing` | rows compared, rows with any difference |
//! | `shadow:col:<name>` | rows whose column `<name>` differs (or is missing on one side) |
//! | `shadow:errors` | batches the candidate failed (trap or error) |
//! | `shadow:active_us`, `shadow:candidate_us` | time spent in each, for time per batch |
//! | `shadow:promoted`, `shadow:dropped` | 1 when the rule fired |
//!
//! Promotion happens between batches, exactly like a swap: the batch that
//! completed the streak was delivered from the active version, the next one runs
//! on the candidate, and lineage names the candidate's digest from then on.

use std::num::NonZeroU64;
use std::path::PathBuf;
use std::time::Duration;

use arrow::array::{Array, ArrayRef, RecordBatch};
use serde::{Deserialize, Serialize};

use super::node::Emitter;
use super::plan::{PlanError, RunEnv};
use crate::sandbox::FeaturizerStage;
use crate::spec::{PipelineSpec, StageSpec};

/// A candidate running beside a WebAssembly stage (`[stage.wasm.shadow]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowSpec {
    /// The candidate's component: a file (relative to the pipeline file) or a
    /// store reference (`name@3`, `sha256:…`). Default: the active stage's
    /// component (a parameters-only candidate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component: Option<PathBuf>,
    /// The candidate's parameters. Default: the active stage's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<serde_json::Value>,
    /// Promote the candidate after this many batches in a row with output
    /// identical to the active version's and no error. Default: none (never
    /// promoted automatically; only compared).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promote_after: Option<NonZeroU64>,
    /// Drop the candidate after this many failed batches. Default: 1
    /// ([`default_drop_after_errors`]).
    #[serde(default = "default_drop_after_errors")]
    pub drop_after_errors: NonZeroU64,
}

/// Default of [`ShadowSpec::drop_after_errors`]: the first failure drops the
/// candidate.
pub fn default_drop_after_errors() -> NonZeroU64 {
    NonZeroU64::MIN
}

/// What the rule decided after a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Keep comparing.
    Keep,
    /// The candidate replaces the active version from the next batch on.
    Promote,
    /// The candidate is discarded.
    Drop,
}

/// A running candidate and its rule's state.
pub struct Shadow {
    candidate: FeaturizerStage,
    promote_after: Option<u64>,
    drop_after_errors: u64,
    clean_streak: u64,
    errors: u64,
}

impl Shadow {
    /// A candidate stage with the rule from `spec`.
    pub fn new(candidate: FeaturizerStage, spec: &ShadowSpec) -> Self {
        Self {
            candidate,
            promote_after: spec.promote_after.map(NonZeroU64::get),
            drop_after_errors: spec.drop_after_errors.get(),
            clean_streak: 0,
            errors: 0,
        }
    }

    /// The candidate, to promote it.
    pub fn into_candidate(self) -> FeaturizerStage {
        self.candidate
    }

    /// Runs the candidate on `input`, compares its output with `active` (which took
    /// `active_time`), counts the comparison into `out` and applies the rule.
    pub fn observe(
        &mut self,
        input: &RecordBatch,
        active: &RecordBatch,
        active_time: Duration,
        out: &mut Emitter,
    ) -> Verdict {
        let started = std::time::Instant::now();
        let result = self.candidate.process(input);
        out.count("shadow:batches", 1);
        out.count("shadow:active_us", active_time.as_micros() as u64);
        out.count("shadow:candidate_us", started.elapsed().as_micros() as u64);
        match result {
            Err(e) => {
                tracing::warn!(stage = %self.candidate.name(), error = %e, "shadow candidate failed a batch");
                out.count("shadow:errors", 1);
                self.errors += 1;
                self.clean_streak = 0;
                if self.errors >= self.drop_after_errors {
                    tracing::warn!(stage = %self.candidate.name(), errors = self.errors, "shadow candidate dropped");
                    out.count("shadow:dropped", 1);
                    return Verdict::Drop;
                }
            }
            Ok(candidate) => {
                let differing = compare(active, &candidate, out);
                out.count(
                    "shadow:rows",
                    active.num_rows().max(candidate.num_rows()) as u64,
                );
                out.count("shadow:rows_differing", differing);
                if differing == 0 {
                    self.clean_streak += 1;
                } else {
                    self.clean_streak = 0;
                }
                if self.promote_after.is_some_and(|n| self.clean_streak >= n) {
                    tracing::info!(stage = %self.candidate.name(), digest = %self.candidate.digest(), "shadow candidate promoted");
                    out.count("shadow:promoted", 1);
                    return Verdict::Promote;
                }
            }
        }
        Verdict::Keep
    }
}

/// Counts rows of `a` and `b` that differ, and per column (`shadow:col:<name>`)
/// the rows where that column differs. Batches of different lengths differ in
/// every row.
pub fn compare(a: &RecordBatch, b: &RecordBatch, out: &mut Emitter) -> u64 {
    let rows = a.num_rows().max(b.num_rows());
    if a.num_rows() != b.num_rows() {
        out.count("shadow:row_count_mismatch", 1);
        return rows as u64;
    }
    let mut names: Vec<&str> = a
        .schema_ref()
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect();
    for f in b.schema_ref().fields() {
        if !names.contains(&f.name().as_str()) {
            names.push(f.name());
        }
    }
    let mut row_differs = vec![false; rows];
    for name in names {
        let differs: Vec<bool> = match (a.column_by_name(name), b.column_by_name(name)) {
            (Some(x), Some(y)) => column_differs(x, y),
            _ => vec![true; rows],
        };
        let n = differs.iter().filter(|d| **d).count() as u64;
        if n > 0 {
            out.count(&format!("shadow:col:{name}"), n);
        }
        for (r, d) in row_differs.iter_mut().zip(differs) {
            *r |= d;
        }
    }
    row_differs.iter().filter(|d| **d).count() as u64
}

/// Per row, whether the two columns (of equal length) differ; nulls equal nulls.
fn column_differs(x: &ArrayRef, y: &ArrayRef) -> Vec<bool> {
    if x.data_type() != y.data_type() {
        return vec![true; x.len()];
    }
    match arrow::compute::kernels::cmp::distinct(x, y) {
        Ok(mask) => (0..mask.len()).map(|i| mask.value(i)).collect(),
        // Nested types the kernel does not compare: row by row.
        Err(_) => (0..x.len())
            .map(|i| x.slice(i, 1).to_data() != y.slice(i, 1).to_data())
            .collect(),
    }
}

/// Builds the candidate for `stage` if it has `[stage.wasm.shadow]`; `active_digest`
/// and `load` give the active component when the shadow names none.
///
/// # Errors
/// [`PlanError`] naming the stage when the candidate's component cannot be read,
/// loaded or started.
pub fn build(
    spec: &PipelineSpec,
    env: &RunEnv,
    stage: &StageSpec,
    active: &crate::sandbox::LoadedComponent,
) -> Result<Option<Shadow>, PlanError> {
    let Some(w) = stage.wasm.as_ref() else {
        return Ok(None);
    };
    let Some(shadow) = w.shadow.as_ref() else {
        return Ok(None);
    };
    let open = |message: String| PlanError::Open {
        node: stage.name.clone(),
        message: format!("shadow: {message}"),
    };
    let loaded;
    let component = match shadow.component.as_deref() {
        None => active,
        Some(c) => {
            let text = c.to_str().unwrap_or_default();
            let result = if crate::store::is_reference(text) {
                let store = env.store.as_ref().ok_or_else(|| {
                    open(format!(
                        "component `{text}` names the store, but this run has none"
                    ))
                })?;
                let bytes = store
                    .resolve(text)
                    .and_then(|d| store.component_bytes(&d))
                    .map_err(|e| open(e.to_string()))?;
                env.sandbox.load(&bytes)
            } else {
                env.sandbox.load_file(&spec.resolve(c))
            };
            loaded = result.map_err(|e| open(e.to_string()))?;
            &loaded
        }
    };
    let params = shadow.params.as_ref().unwrap_or(&w.params).to_string();
    let mut candidate = FeaturizerStage::new(
        &env.sandbox,
        component,
        &stage.name,
        &params,
        w.limits,
        w.grants.clone(),
    )
    .map_err(|e| open(e.to_string()))?;
    // The wiring is the pipeline's, as for the active version.
    candidate.set_projection(w.columns.clone());
    candidate.set_filter(w.filter);
    candidate.set_outputs(w.declared_outputs().map_err(|e| open(e.to_string()))?);
    Ok(Some(Shadow::new(candidate, shadow)))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, StringArray};

    use super::*;

    fn batch(n: Vec<Option<i64>>, s: Vec<&str>) -> RecordBatch {
        RecordBatch::try_from_iter([
            ("n", Arc::new(Int64Array::from(n)) as ArrayRef),
            ("s", Arc::new(StringArray::from(s)) as ArrayRef),
        ])
        .unwrap()
    }

    #[test]
    fn counts_rows_and_columns_that_differ() {
        let a = batch(vec![Some(1), None, Some(3), None], vec!["a", "b", "c", "d"]);
        let b = batch(
            vec![Some(1), None, Some(4), Some(0)],
            vec!["a", "x", "y", "d"],
        );
        let mut out = Emitter::default();
        assert_eq!(compare(&a, &b, &mut out), 3);
        let counters: Vec<(&str, u64)> =
            out.counters.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        assert_eq!(counters, [("shadow:col:n", 2), ("shadow:col:s", 2)]);
    }

    #[test]
    fn a_missing_column_differs_in_every_row_and_equal_batches_not_at_all() {
        let a = batch(vec![Some(1), Some(2)], vec!["a", "b"]);
        let b =
            RecordBatch::try_from_iter([("n", Arc::new(Int64Array::from(vec![1, 2])) as ArrayRef)])
                .unwrap();
        let mut out = Emitter::default();
        assert_eq!(compare(&a, &b, &mut out), 2);
        assert_eq!(out.counters["shadow:col:s"], 2);
        let mut out = Emitter::default();
        assert_eq!(compare(&a, &a.clone(), &mut out), 0);
        assert!(out.counters.is_empty());
    }
}
