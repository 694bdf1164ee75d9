//! The composition root: from a checked spec to runnable nodes. The only module
//! that names every node kind.
//!
//! Components are loaded (built first when the spec names a crate), stages
//! instantiated and `init`ed, files opened, and every node's output schema
//! computed from its input's, as DataFusion's `ExecutionPlan::schema`. All of it
//! happens before the first record moves, so a bad component, bad parameters, a
//! missing file or a column an operator needs and its input lacks fail the run at
//! once, naming the node.

use std::path::PathBuf;

use arrow::datatypes::SchemaRef;

use crate::connectors::{JsonlSink, JsonlSource};
use crate::node::memory::RunMemory;
use crate::node::{AsyncSink, AsyncSource, NodeError, Operator, Sink, Source};
use crate::ops::wasm::WasmOperator;
use crate::sandbox::{BuildError, FeaturizerStage, LoadError, Sandbox, StageFailure, build_stage};
use crate::spec::{Dag, NodeKind, PipelineSpec, SpecError, StageSpec};

mod shadow;

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
    /// A node's input does not have what it needs (a column, a type), or the
    /// inputs of a fan-in differ.
    #[error("`{node}`: {error}")]
    Schema {
        /// The node.
        node: String,
        /// Why, naming the column.
        error: NodeError,
    },
}

/// A source ready to run.
pub enum SourceImpl {
    /// Called on the blocking pool.
    Sync(Box<dyn Source>),
    /// Polled on the runtime.
    Async(Box<dyn AsyncSource>),
}

/// A sink ready to run.
pub enum SinkImpl {
    /// Called on the blocking pool.
    Sync(Box<dyn Sink>),
    /// Polled on the runtime.
    Async(Box<dyn AsyncSink>),
}

/// A node ready to run.
pub enum NodeImpl {
    /// Produces batches.
    Source(SourceImpl),
    /// Transforms batches.
    Operator(Box<dyn Operator>),
    /// Consumes batches.
    Sink(SinkImpl),
}

impl NodeImpl {
    fn source(s: impl Source) -> Self {
        Self::Source(SourceImpl::Sync(Box::new(s)))
    }

    fn sink(s: impl Sink) -> Self {
        Self::Sink(SinkImpl::Sync(Box::new(s)))
    }
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
    /// Per DAG node, the schema of what it emits (`None` for sinks, and for a
    /// node whose output is learned from its first batch).
    pub schemas: Vec<Option<SchemaRef>>,
    /// The run's memory budget, spill directory and memory watch.
    pub memory: RunMemory,
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
        let memory = RunMemory::for_run(
            spec.settings.memory,
            spec.settings.memory_floor,
            &env.data_dir,
        )
        .map_err(|e| PlanError::Open {
            node: spec.name.clone(),
            message: format!("spill directory: {e}"),
        })?;
        for node in &dag.nodes {
            let built = match node.kind {
                NodeKind::Source => {
                    let s = &spec.sources[node.index];
                    match (&s.sequence, &s.jsonl) {
                        (Some(q), _) => NodeImpl::source(crate::connectors::SequenceSource::new(
                            q,
                            spec.settings.batch_rows,
                        )),
                        (None, Some(j)) => {
                            let src = JsonlSource::open(
                                j,
                                spec.resolve(&j.path),
                                spec.settings.batch_rows,
                            )
                            .map_err(|e| PlanError::Open {
                                node: s.name.clone(),
                                message: e.to_string(),
                            })?;
                            NodeImpl::source(src)
                        }
                        (None, None) => {
                            return Err(SpecError::invalid(
                                format!("source[{}]", node.index),
                                "needs one kind table",
                            )
                            .into());
                        }
                    }
                }
                NodeKind::Stage if is_stateful(&spec.stages[node.index]) => {
                    let s = &spec.stages[node.index];
                    NodeImpl::Operator(build_stateful(s, &memory, spec.settings.batch_rows.get())?)
                }
                NodeKind::Stage if crate::spec::is_builtin(&spec.stages[node.index]) => {
                    let s = &spec.stages[node.index];
                    let key = format!("stage[{}]", node.index);
                    let op = crate::spec::build_builtin(&key, s)?
                        .ok_or_else(|| SpecError::invalid(key, "is not a built-in operator"))?;
                    NodeImpl::Operator(op)
                }
                NodeKind::Stage => {
                    let s = &spec.stages[node.index];
                    let w = s.wasm.as_ref().ok_or_else(|| {
                        SpecError::invalid(format!("stage[{}]", node.index), "needs one kind table")
                    })?;
                    let path = match (&w.component, &w.krate) {
                        (Some(file), _) => spec.resolve(file),
                        (None, Some(dir)) => {
                            build_stage(&spec.resolve(dir)).map_err(|source| PlanError::Build {
                                node: s.name.clone(),
                                source,
                            })?
                        }
                        (None, None) => {
                            return Err(SpecError::invalid(
                                format!("stage[{}].wasm", node.index),
                                "set exactly one of `component` and `crate`",
                            )
                            .into());
                        }
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
                    let shadow = shadow::build(&spec, env, s, &component)?;
                    NodeImpl::Operator(Box::new(WasmOperator::new(stage).with_shadow(shadow)))
                }
                NodeKind::Sink => {
                    let s = &spec.sinks[node.index];
                    let open = |e: std::io::Error| PlanError::Open {
                        node: s.name.clone(),
                        message: e.to_string(),
                    };
                    match (&s.jsonl, &s.vectors, &s.http) {
                        (Some(j), _, _) => NodeImpl::sink(
                            JsonlSink::create(j, spec.resolve(&j.path)).map_err(open)?,
                        ),
                        (None, Some(v), _) => NodeImpl::sink(
                            crate::connectors::VectorsSink::create(v, spec.resolve(&v.path))
                                .map_err(open)?,
                        ),
                        (None, None, Some(h)) => NodeImpl::sink(crate::connectors::HttpSink::new(
                            &format!("sink[{}].http", node.index),
                            h,
                        )?),
                        (None, None, None) => {
                            return Err(SpecError::invalid(
                                format!("sink[{}]", node.index),
                                "needs one kind table",
                            )
                            .into());
                        }
                    }
                }
            };
            nodes.push(built);
        }
        let schemas = schemas(&dag, &nodes)?;
        Ok(Self {
            spec,
            dag,
            nodes,
            digests,
            schemas,
            memory,
        })
    }
}

/// Each node's output schema from its inputs', in topological order.
fn schemas(dag: &Dag, nodes: &[NodeImpl]) -> Result<Vec<Option<SchemaRef>>, PlanError> {
    let mut out: Vec<Option<SchemaRef>> = Vec::with_capacity(nodes.len());
    for (node, imp) in dag.nodes.iter().zip(nodes) {
        let schema_err = |error: NodeError| PlanError::Schema {
            node: node.name.clone(),
            error,
        };
        let mut input: Option<SchemaRef> = None;
        let mut known = true;
        for &i in &node.inputs {
            match (&out[i], &input) {
                (None, _) => known = false,
                (Some(s), None) => input = Some(s.clone()),
                (Some(s), Some(first)) => {
                    crate::node::schema::check(first, s).map_err(|e| {
                        schema_err(NodeError::config(format!(
                            "its inputs differ: `{}` gives {}",
                            dag.nodes[i].name, e
                        )))
                    })?;
                }
            }
        }
        let input = input.filter(|_| known);
        out.push(match imp {
            NodeImpl::Source(SourceImpl::Sync(s)) => Some(s.schema()),
            NodeImpl::Source(SourceImpl::Async(s)) => Some(s.schema()),
            NodeImpl::Operator(op) => match &input {
                Some(i) => op.output_schema(i).map_err(schema_err)?,
                None => None,
            },
            NodeImpl::Sink(_) => None,
        });
    }
    Ok(out)
}

/// Whether the stage is `sort`, `group` or `session`: operators that need the
/// run's memory budget and spill directory, which exist only once a run is
/// being prepared.
fn is_stateful(stage: &StageSpec) -> bool {
    stage.sort.is_some() || stage.group.is_some() || stage.session.is_some()
}

/// The running operator of a stateful stage, reserving from `memory`.
fn build_stateful(
    stage: &StageSpec,
    memory: &RunMemory,
    batch_rows: usize,
) -> Result<Box<dyn Operator>, PlanError> {
    Ok(if let Some(s) = &stage.sort {
        Box::new(crate::ops::sort::SortOperator::new(
            &stage.name,
            s.clone(),
            memory.clone(),
            batch_rows,
        ))
    } else if let Some(g) = &stage.group {
        Box::new(crate::ops::group::GroupOperator::new(
            &stage.name,
            g.clone(),
            memory.clone(),
            batch_rows,
        ))
    } else if let Some(s) = &stage.session {
        Box::new(crate::ops::session::SessionOperator::new(
            &stage.name,
            s.clone(),
            memory,
        ))
    } else {
        return Err(SpecError::invalid(&stage.name, "is not a stateful operator").into());
    })
}
