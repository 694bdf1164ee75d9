//! From a checked spec to runnable nodes: components are loaded (built first when
//! the spec names a crate), stages instantiated and `init`ed, files opened. All of
//! it happens before the first record moves, so a bad component, bad parameters or
//! a missing file fail the run at once, naming the node.

use std::path::PathBuf;

use super::node::{Operator, Sink, Source};
use super::wasm::WasmOperator;
use crate::connectors::{JsonlSink, JsonlSource};
use crate::sandbox::{BuildError, FeaturizerStage, LoadError, Sandbox, StageFailure, build_stage};
use crate::spec::{Dag, NodeKind, PipelineSpec, SpecError};

/// What a run needs from its host.
#[derive(Clone)]
pub struct RunEnv {
    /// The sandbox stages run in.
    pub sandbox: Sandbox,
    /// The data directory (dead letters, artifacts, store).
    pub data_dir: PathBuf,
}

/// Why a pipeline could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The spec is invalid.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// A stage crate did not build.
    #[error("stage `{node}`: {source}")]
    Build {
        /// The node.
        node: String,
        /// Why.
        source: BuildError,
    },
    /// A component was refused by the sandbox.
    #[error("stage `{node}`: {source}")]
    Load {
        /// The node.
        node: String,
        /// Why.
        source: LoadError,
    },
    /// A stage failed to start (`init` refused its parameters, or trapped).
    #[error(transparent)]
    Start(#[from] StageFailure),
    /// A source or sink could not be opened.
    #[error("`{node}`: {message}")]
    Open {
        /// The node.
        node: String,
        /// Why.
        message: String,
    },
}

/// A node ready to run.
pub enum NodeImpl {
    /// Produces batches.
    Source(Box<dyn Source>),
    /// Transforms batches.
    Operator(Box<dyn Operator>),
    /// Consumes batches.
    Sink(Box<dyn Sink>),
}

/// A pipeline ready to run: its spec, its DAG, and one implementation per node
/// (in the DAG's order).
pub struct Plan {
    /// The spec it was built from.
    pub spec: PipelineSpec,
    /// The checked graph.
    pub dag: Dag,
    /// One per DAG node, same order.
    pub nodes: Vec<NodeImpl>,
    /// Component digest per WebAssembly stage, by stage name.
    pub digests: Vec<(String, String)>,
}

impl Plan {
    /// Validates `spec` and prepares every node.
    ///
    /// # Errors
    /// See [`PlanError`]; every variant names the node.
    pub fn build(spec: PipelineSpec, env: &RunEnv) -> Result<Self, PlanError> {
        let dag = spec.validate()?;
        let mut nodes = Vec::with_capacity(dag.nodes.len());
        let mut digests = Vec::new();
        for node in &dag.nodes {
            let built = match node.kind {
                NodeKind::Source => {
                    let s = &spec.sources[node.index];
                    let j = s.jsonl.as_ref().expect("validated: one kind");
                    let src = JsonlSource::open(&spec, s, j).map_err(|e| PlanError::Open {
                        node: s.name.clone(),
                        message: e.to_string(),
                    })?;
                    NodeImpl::Source(Box::new(src))
                }
                NodeKind::Stage => {
                    let s = &spec.stages[node.index];
                    let w = s.wasm.as_ref().expect("validated: one kind");
                    let path = match (&w.component, &w.krate) {
                        (Some(file), _) => spec.resolve(file),
                        (None, Some(dir)) => build_stage(&spec.resolve(dir))
                            .map_err(|source| PlanError::Build { node: s.name.clone(), source })?,
                        (None, None) => unreachable!("validated: component or crate"),
                    };
                    let component = env
                        .sandbox
                        .load_file(&path)
                        .map_err(|source| PlanError::Load { node: s.name.clone(), source })?;
                    let params = w.params.to_string();
                    let stage = FeaturizerStage::new(
                        &env.sandbox,
                        &component,
                        &s.name,
                        &params,
                        w.limits,
                        w.grants.clone(),
                    )?;
                    digests.push((s.name.clone(), component.digest().to_owned()));
                    NodeImpl::Operator(Box::new(WasmOperator::new(stage)))
                }
                NodeKind::Sink => {
                    let s = &spec.sinks[node.index];
                    let j = s.jsonl.as_ref().expect("validated: one kind");
                    let sink = JsonlSink::create(&spec, j).map_err(|e| PlanError::Open {
                        node: s.name.clone(),
                        message: e.to_string(),
                    })?;
                    NodeImpl::Sink(Box::new(sink))
                }
            };
            nodes.push(built);
        }
        Ok(Self { spec, dag, nodes, digests })
    }
}
