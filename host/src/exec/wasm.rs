//! A WebAssembly featurizer as an [`Operator`], swappable while it runs.
//!
//! A swap ([`Operator::swap`], see [`super::control`]) is applied between two
//! batches. The version it replaced is kept until the new one has processed one
//! batch: if that first batch fails (a trap, or an error the old version did not
//! have), the previous version is restored and the same batch is processed again
//! on it, so the swap costs no record.

use arrow::array::RecordBatch;

use super::control::{StageChange, SwapApplied, SwapError, SwapReply, SwapRequest};
use super::lineage::{Lineage, StageLineage, params_hash};
use super::node::{Emitter, NodeError, Operator};
use crate::sandbox::FeaturizerStage;

/// Runs each batch through a sandboxed featurizer.
///
/// Empty batches are not sent into the sandbox: they carry no rows to featurize,
/// and skipping them saves a crossing.
pub struct WasmOperator {
    stage: FeaturizerStage,
    lineage: StageLineage,
    probation: Option<Probation>,
    batches: u64,
    shadow: Option<super::shadow::Shadow>,
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
        }
    }

    /// Runs `shadow`'s candidate beside this stage (see [`super::shadow`]).
    pub fn with_shadow(mut self, shadow: Option<super::shadow::Shadow>) -> Self {
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

    fn call(&mut self, batch: &RecordBatch, out: &mut Emitter) -> Result<RecordBatch, NodeError> {
        let traps_before = self.stage.stats().traps;
        let filtered_before = self.stage.stats().rows_filtered;
        let output = self.stage.process(batch);
        out.count("wasm:calls", 1);
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
        Ok(output?)
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
                Err(NodeError::Stage(failure)) => {
                    tracing::warn!(stage = %self.stage.name(), error = %failure, "swapped version failed its first batch; rolling back");
                    out.count("swap:rolled_back", 1);
                    let stage = self.stage.name().to_owned();
                    self.restore(probation.previous)?;
                    probation.reply.send(Err(SwapError::RolledBack {
                        stage,
                        source: failure,
                    }));
                    output = self.call(&batch, out);
                }
                Err(other) => {
                    probation.reply.send(Ok(self.applied(Some(index))));
                    return Err(other);
                }
            }
        }
        let output = output?;
        let mut lineage = Lineage::of(&batch).unwrap_or_default();
        lineage.stages.push(self.lineage.clone());
        let verdict = self
            .shadow
            .as_mut()
            .map(|s| s.observe(&batch, &output, active_time, out));
        out.push(lineage.stamp(output));
        match verdict {
            Some(super::shadow::Verdict::Promote) => {
                self.stage = self.shadow.take().expect("observed").into_candidate();
                self.lineage = lineage_of(&self.stage);
            }
            Some(super::shadow::Verdict::Drop) => self.shadow = None,
            Some(super::shadow::Verdict::Keep) | None => {}
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
                if let Err(source) = self.stage.reconfigure(&params) {
                    let stage = self.stage.name().to_owned();
                    reply.send(Err(SwapError::Start { stage, source }));
                    return;
                }
                Previous::Params(old)
            }
            StageChange::Stage(new) => {
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
}
