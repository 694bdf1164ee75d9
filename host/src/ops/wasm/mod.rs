//! A WebAssembly featurizer as an [`Operator`], swappable while it runs. Its
//! `[stage.wasm]` table and how it builds itself are in `config`; where its code
//! comes from is [`crate::sandbox::ComponentRef`].
//!
//! A swap ([`Operator::swap`], see [`crate::node::swap`]) is applied between two
//! batches. The version it replaced is kept until the new one has processed one
//! batch: if that first batch fails (a trap, or an error the old version did not
//! have), the previous version is restored and the same batch is processed again
//! on it, so the swap costs no record.
//!
//! A stage granted tables (`[stage.wasm.lookups]`) reports its lookups as the
//! `lookup` stage does: `lookup_hits`, `lookup_misses` and the loads join its
//! counters, and each output batch's lineage names, beside the component, the
//! generation of every table that answered during the call
//! (`<stage>.lookups.<table>` with digest `table:<sha256>`). A live swap to a
//! component that imports `lookup` is refused: the tables are built with the
//! plan, so such a change takes a restart.

mod config;
pub mod shadow;

pub use config::{OutputSpec, WasmStageSpec};

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::RecordBatch;

use crate::node::lineage::{StageLineage, params_hash};
use crate::node::swap::{StageChange, SwapApplied, SwapError, SwapReply, SwapRequest};
use crate::node::{Emitter, Meta, NodeError, Operator};
use crate::sandbox::{FeaturizerStage, Grants, Sandbox, StageFailure, StageLimits};

/// Runs each batch through a sandboxed featurizer.
///
/// Empty batches are not sent into the sandbox: they carry no rows to featurize,
/// and skipping them saves a crossing.
pub struct WasmOperator {
    stage: FeaturizerStage,
    lineage: StageLineage,
    probation: Option<Probation>,
    batches: u64,
    shadow: Option<shadow::Shadow>,
    /// The table generations that answered the last call's lookups.
    tables: BTreeMap<String, String>,
}

/// A swap applied but not yet confirmed by a successful batch.
struct Probation {
    previous: Previous,
    reply: SwapReply,
}

enum Previous {
    Params(String),
    Stage(Box<FeaturizerStage>),
}

impl WasmOperator {
    /// Wraps a ready stage.
    pub fn new(stage: FeaturizerStage) -> Self {
        let lineage = lineage_of(&stage);
        Self {
            stage,
            lineage,
            probation: None,
            batches: 0,
            shadow: None,
            tables: BTreeMap::new(),
        }
    }

    /// Runs `shadow`'s candidate beside this stage (see [`shadow`]).
    pub fn with_shadow(mut self, shadow: Option<shadow::Shadow>) -> Self {
        self.shadow = shadow;
        self
    }

    /// The stage inside.
    pub fn stage(&self) -> &FeaturizerStage {
        &self.stage
    }

    fn applied(&self, first_batch: Option<u64>) -> SwapApplied {
        SwapApplied {
            stage: self.stage.name().to_owned(),
            digest: self.stage.digest().to_owned(),
            params: self.stage.params().to_owned(),
            first_batch,
        }
    }

    /// Restores the version a failed swap replaced.
    fn restore(&mut self, previous: Previous) -> Result<(), NodeError> {
        match previous {
            Previous::Params(params) => self.stage.reconfigure(&params)?,
            Previous::Stage(stage) => self.stage = *stage,
        }
        self.lineage = lineage_of(&self.stage);
        Ok(())
    }

    fn call(
        &mut self,
        batch: &RecordBatch,
        out: &mut Emitter,
    ) -> Result<RecordBatch, StageFailure> {
        let traps_before = self.stage.stats().traps;
        let filtered_before = self.stage.stats().rows_filtered;
        let output = self.stage.process(batch);
        out.count("wasm:calls", 1);
        let log = self.stage.take_lookup_log();
        for (name, n) in &log.counters {
            out.count(name, *n);
        }
        self.tables = log.generations;
        if self.stage.stats().traps > traps_before {
            out.count("wasm:traps", 1);
        }
        if self.stage.is_filter() {
            // Rows a filter stage drops are counted, never lost silently.
            out.count(
                "filtered",
                self.stage.stats().rows_filtered - filtered_before,
            );
        }
        output
    }
}

fn lineage_of(stage: &FeaturizerStage) -> StageLineage {
    StageLineage {
        stage: stage.name().to_owned(),
        digest: stage.digest().to_owned(),
        params_hash: params_hash(stage.params()),
    }
}

impl Operator for WasmOperator {
    /// With declared `outputs`, the input merged with them (see
    /// [`crate::sandbox::output_schema`]); without, learned from the first batch.
    fn output_schema(
        &mut self,
        input: &arrow::datatypes::SchemaRef,
    ) -> Result<Option<arrow::datatypes::SchemaRef>, NodeError> {
        if self.stage.outputs().is_empty() {
            return Ok(None);
        }
        crate::sandbox::output_schema(
            input,
            self.stage.projection(),
            self.stage.outputs(),
            self.stage.is_filter(),
        )
        .map(Some)
        .map_err(|e| NodeError::config(format!("stage `{}`: {e}", self.stage.name())))
    }

    fn process(&mut self, batch: RecordBatch, out: &mut Emitter) -> Result<(), NodeError> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let index = self.batches;
        self.batches += 1;
        let started = std::time::Instant::now();
        let mut output = self.call(&batch, out);
        let active_time = started.elapsed();
        if let Some(probation) = self.probation.take() {
            match output {
                Ok(_) => probation.reply.send(Ok(self.applied(Some(index)))),
                Err(failure) => {
                    tracing::warn!(stage = %self.stage.name(), error = %failure, "swapped version failed its first batch; rolling back");
                    out.count("swap:rolled_back", 1);
                    let stage = self.stage.name().to_owned();
                    self.restore(probation.previous)?;
                    probation.reply.send(Err(SwapError::RolledBack {
                        stage,
                        error: Box::new(failure),
                    }));
                    output = self.call(&batch, out);
                }
            }
        }
        let output = output?;
        let verdict = self
            .shadow
            .as_mut()
            .map(|s| s.observe(&batch, &output, active_time, out));
        let input = out.input_meta().cloned().unwrap_or_default();
        let mut lineage = input.lineage.with_stage(&self.lineage);
        for (table, generation) in &self.tables {
            lineage = lineage.with_stage(&StageLineage {
                stage: format!("{}.lookups.{table}", self.lineage.stage),
                digest: generation.clone(),
                params_hash: self.lineage.params_hash.clone(),
            });
        }
        let meta = Meta {
            lineage: Arc::new(lineage),
            acks: input.acks,
        };
        out.push_with(output, meta);
        match verdict {
            Some(shadow::Verdict::Promote) => {
                if let Some(s) = self.shadow.take() {
                    self.stage = s.into_candidate();
                    self.lineage = lineage_of(&self.stage);
                }
            }
            Some(shadow::Verdict::Drop) => self.shadow = None,
            Some(shadow::Verdict::Keep) | None => {}
        }
        Ok(())
    }

    fn finish(&mut self, _out: &mut Emitter) -> Result<(), NodeError> {
        if let Some(probation) = self.probation.take() {
            probation.reply.send(Ok(self.applied(None)));
        }
        Ok(())
    }

    fn swap(&mut self, request: SwapRequest) {
        // A change queued right behind another, with no batch between them: the
        // earlier one is superseded and counts as applied.
        if let Some(earlier) = self.probation.take() {
            earlier.reply.send(Ok(self.applied(None)));
        }
        let SwapRequest { change, reply } = request;
        let previous = match change {
            StageChange::Params(params) => {
                let old = self.stage.params().to_owned();
                if let Err(failure) = self.stage.reconfigure(&params) {
                    let stage = self.stage.name().to_owned();
                    reply.send(Err(SwapError::Start {
                        stage,
                        error: Box::new(failure),
                    }));
                    return;
                }
                Previous::Params(old)
            }
            StageChange::Stage(new) => {
                let Ok(new) = new.downcast::<FeaturizerStage>() else {
                    reply.send(Err(SwapError::Refused(format!(
                        "stage `{}` is a WebAssembly stage and takes only a WebAssembly replacement",
                        self.stage.name()
                    ))));
                    return;
                };
                if new.name() != self.stage.name() {
                    reply.send(Err(SwapError::Refused(format!(
                        "a stage built as `{}` cannot replace stage `{}`",
                        new.name(),
                        self.stage.name()
                    ))));
                    return;
                }
                let mut new = *new;
                // The projection, the filter flag and the declared outputs belong to
                // the pipeline's wiring, not to the code.
                new.set_projection(self.stage.projection().map(<[String]>::to_vec));
                new.set_filter(self.stage.is_filter());
                new.set_outputs(self.stage.outputs().clone());
                Previous::Stage(Box::new(std::mem::replace(&mut self.stage, new)))
            }
        };
        tracing::info!(stage = %self.stage.name(), digest = %self.stage.digest(), "swap applied; on probation until its first batch");
        self.lineage = lineage_of(&self.stage);
        self.probation = Some(Probation { previous, reply });
    }

    fn component_digest(&self) -> Option<&str> {
        Some(self.stage.digest())
    }
}

/// Loads component `bytes` and instantiates it as stage `name` with `params`, off
/// the hot path, so that a swap to it can be queued only if it would start.
///
/// # Errors
/// [`SwapError::Load`] when the component fails validation; [`SwapError::Start`]
/// when instantiating or `init` fails.
pub fn prepare_stage(
    sandbox: &Sandbox,
    bytes: &[u8],
    name: &str,
    params: &str,
    limits: StageLimits,
    grants: Grants,
) -> Result<FeaturizerStage, SwapError> {
    let component = sandbox.load(bytes).map_err(|e| SwapError::Load {
        stage: name.to_owned(),
        error: Box::new(e),
    })?;
    FeaturizerStage::new(sandbox, &component, name, params, limits, grants).map_err(|e| {
        SwapError::Start {
            stage: name.to_owned(),
            error: Box::new(e),
        }
    })
}
