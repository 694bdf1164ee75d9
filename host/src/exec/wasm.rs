//! A WebAssembly featurizer as an [`Operator`].

use arrow::array::RecordBatch;

use super::node::{Emitter, NodeError, Operator};
use crate::sandbox::FeaturizerStage;

/// Runs each batch through a sandboxed featurizer.
///
/// Empty batches are not sent into the sandbox: they carry no rows to featurize,
/// and skipping them saves a crossing.
pub struct WasmOperator {
    stage: FeaturizerStage,
}

impl WasmOperator {
    /// Wraps a ready stage.
    pub fn new(stage: FeaturizerStage) -> Self {
        Self { stage }
    }

    /// The stage inside.
    pub fn stage(&self) -> &FeaturizerStage {
        &self.stage
    }
}

impl Operator for WasmOperator {
    fn process(&mut self, batch: RecordBatch, out: &mut Emitter) -> Result<(), NodeError> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let traps_before = self.stage.stats().traps;
        let output = self.stage.process(&batch);
        out.count("wasm:calls", 1);
        if self.stage.stats().traps > traps_before {
            out.count("wasm:traps", 1);
        }
        out.push(output?);
        Ok(())
    }
}
