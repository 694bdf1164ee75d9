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
    /// The component store: stages may name components in it (`bucketize@3`,
    /// `sha256:…`). `None`: only files and crates.
    pub store: Option<crate::store::Store>,
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
        let mut spec = spec;
        spec.inline_uses()?;
        let dag = spec.validate()?;
        let mut nodes = Vec::with_capacity(dag.nodes.len());
        let mut digests = Vec::new();
        let memory =
            super::memory::RunMemory::for_run(&spec.settings, &env.data_dir).map_err(|e| {
                PlanError::Open {
                    node: spec.name.clone(),
                    message: format!("spill directory: {e}"),
                }
            })?;
        for node in &dag.nodes {
            let built = match node.kind {
                NodeKind::Source => {
                    let s = &spec.sources[node.index];
                    if let Some(q) = &s.sequence {
                        let src =
                            crate::connectors::SequenceSource::new(q, spec.settings.batch_rows);
                        nodes.push(NodeImpl::Source(memory.watched(Box::new(src))));
                        continue;
                    }
                    let j = s.jsonl.as_ref().expect("validated: one kind");
                    let src = JsonlSource::open(&spec, j).map_err(|e| PlanError::Open {
                        node: s.name.clone(),
                        message: e.to_string(),
                    })?;
                    NodeImpl::Source(memory.watched(Box::new(src)))
                }
                NodeKind::Stage if crate::ops::stateful::is_stateful(&spec.stages[node.index]) => {
                    let s = &spec.stages[node.index];
                    NodeImpl::Operator(crate::ops::stateful::build(
                        s,
                        &memory,
                        spec.settings.batch_rows.get(),
                    ))
                }
                NodeKind::Stage if crate::ops::is_builtin(&spec.stages[node.index]) => {
                    let s = &spec.stages[node.index];
                    let op =
                        crate::ops::build(&format!("stage[{}]", node.index), s)?.expect("built-in");
                    NodeImpl::Operator(op)
                }
                NodeKind::Stage => {
                    let s = &spec.stages[node.index];
                    let w = s.wasm.as_ref().expect("validated: one kind");
                    let path = match (&w.component, &w.krate) {
                        (Some(file), _) => spec.resolve(file),
                        (None, Some(dir)) => {
                            build_stage(&spec.resolve(dir)).map_err(|source| PlanError::Build {
                                node: s.name.clone(),
                                source,
                            })?
                        }
                        (None, None) => unreachable!("validated: component or crate"),
                    };
                    let loaded = match w.component.as_deref().and_then(std::path::Path::to_str) {
                        Some(r) if crate::store::is_reference(r) => {
                            let store = env.store.as_ref().ok_or_else(|| PlanError::Open {
                                node: s.name.clone(),
                                message: format!(
                                    "component `{r}` names the store, but this run has none"
                                ),
                            })?;
                            let bytes = store
                                .resolve(r)
                                .and_then(|d| store.component_bytes(&d))
                                .map_err(|e| PlanError::Open {
                                    node: s.name.clone(),
                                    message: e.to_string(),
                                })?;
                            env.sandbox.load(&bytes)
                        }
                        _ => env.sandbox.load_file(&path),
                    };
                    let component = loaded.map_err(|source| PlanError::Load {
                        node: s.name.clone(),
                        source,
                    })?;
                    let params = w.params.to_string();
                    let mut stage = FeaturizerStage::new(
                        &env.sandbox,
                        &component,
                        &s.name,
                        &params,
                        w.limits,
                        w.grants.clone(),
                    )?;
                    stage.set_projection(w.columns.clone());
                    stage.set_filter(w.filter);
                    stage.set_outputs(w.declared_outputs().map_err(|e| PlanError::Open {
                        node: s.name.clone(),
                        message: e.to_string(),
                    })?);
                    digests.push((s.name.clone(), component.digest().to_owned()));
                    let shadow = super::shadow::build(&spec, env, s, &component)?;
                    NodeImpl::Operator(Box::new(WasmOperator::new(stage).with_shadow(shadow)))
                }
                NodeKind::Sink if spec.sinks[node.index].vectors.is_some() => {
                    let s = &spec.sinks[node.index];
                    let v = s.vectors.as_ref().expect("checked");
                    let sink = crate::connectors::VectorsSink::create(&spec, v).map_err(|e| {
                        PlanError::Open {
                            node: s.name.clone(),
                            message: e.to_string(),
                        }
                    })?;
                    NodeImpl::Sink(Box::new(sink))
                }
                NodeKind::Sink if spec.sinks[node.index].http.is_some() => {
                    let s = &spec.sinks[node.index];
                    let h = s.http.as_ref().expect("checked");
                    let sink =
                        crate::connectors::HttpSink::new(&format!("sink[{}].http", node.index), h)?;
                    NodeImpl::Sink(Box::new(sink))
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
        Ok(Self {
            spec,
            dag,
            nodes,
            digests,
        })
    }
}
