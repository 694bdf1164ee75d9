//! The composition root: from a checked spec to runnable nodes. Each node's kind
//! builds itself ([`crate::node::config::SourceConfig::build`] and its siblings,
//! given a [`BuildCx`]); only WebAssembly stages are built here, with the sandbox
//! and the component store.
//!
//! Components are loaded (built first when the spec names a crate), stages
//! instantiated and `init`ed, files opened, and every node's output schema
//! computed from its input's, as DataFusion's `ExecutionPlan::schema`. All of it
//! happens before the first record moves, so a bad component, bad parameters, a
//! missing file or a column an operator needs and its input lacks fail the run at
//! once, naming the node.

use std::path::PathBuf;

use arrow::datatypes::SchemaRef;

use crate::node::config::BuildCx;
use crate::node::memory::{MemoryPool, MemorySource, RunMemory};
use crate::node::{NodeError, Operator};
use crate::ops::wasm::WasmOperator;
use crate::sandbox::{BuildError, FeaturizerStage, LoadError, Sandbox, StageFailure, build_stage};
use crate::spec::{Dag, NodeKind, PipelineSpec, SpecError, StageKind, WasmStageSpec};

mod shadow;

/// What a run needs from its host. A [`crate::host::Tenant`] makes one for each
/// run ([`crate::host::Tenant::env`]); a test or an embedding program without a
/// host makes one with [`RunEnv::standalone`].
#[derive(Clone)]
pub struct RunEnv {
    /// The sandbox stages run in.
    pub sandbox: Sandbox,
    /// The run's directory for its files: dead-letter exports, operator state,
    /// spill files, control sockets. On a host, the tenant's directory
    /// (`<data dir>/tenants/<tenant>`).
    pub data_dir: PathBuf,
    /// The component store, as the run's tenant sees it: stages may name
    /// components in it (`bucketize@3`, `sha256:…`). `None`: only files and crates.
    pub store: Option<crate::store::Store>,
    /// The pool the run's pool is charged to (the tenant's, on a host); `None`:
    /// the run's budget alone bounds it.
    pub memory: Option<MemoryPool>,
    /// Where the memory floor reads what is available.
    pub memory_source: MemorySource,
}

impl RunEnv {
    /// A run with no host: its files under `data_dir`, no store, no pool above
    /// its own, the floor read from the container or the machine.
    pub fn standalone(sandbox: Sandbox, data_dir: impl Into<PathBuf>) -> Self {
        Self {
            sandbox,
            data_dir: data_dir.into(),
            store: None,
            memory: None,
            memory_source: MemorySource::detect(),
        }
    }
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
    /// A node could not be built or opened (a file, a component in the store,
    /// the spill directory).
    #[error("`{node}`: {error}")]
    Open {
        /// The node (the pipeline, for what the run as a whole needs).
        node: String,
        /// Why, with whose fault it is ([`NodeError::fault`]).
        #[source]
        error: NodeError,
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

impl PlanError {
    /// Whose fault it is: the spec's, a stage's for a component refused or
    /// failing at `init`, or the node's own for one not opened
    /// ([`NodeError::fault`]).
    pub fn fault(&self) -> crate::node::Fault {
        use crate::node::Fault;
        match self {
            Self::Spec(_) | Self::Build { .. } => Fault::Config,
            Self::Load { .. } | Self::Start(_) => Fault::Stage {
                transient: false,
                trap: false,
            },
            Self::Open { error, .. } | Self::Schema { error, .. } => error.fault(),
        }
    }
}

pub use crate::node::config::{SinkNode, SourceNode};

/// A node ready to run.
pub enum NodeImpl {
    /// Produces batches.
    Source(SourceNode),
    /// Transforms batches.
    Operator(Box<dyn Operator>),
    /// Consumes batches.
    Sink(SinkNode),
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
            env.memory.clone(),
            &env.memory_source,
        )
        .map_err(|e| PlanError::Open {
            node: spec.name.clone(),
            error: NodeError::io(
                format!("spill directory under {}", env.data_dir.display()),
                e,
            ),
        })?;
        for node in &dag.nodes {
            let i = node.index;
            let (name, table) = match node.kind {
                NodeKind::Source => (&spec.sources[i].name, spec.sources[i].kind.table()),
                NodeKind::Stage => (&spec.stages[i].name, spec.stages[i].kind.table()),
                NodeKind::Sink => (&spec.sinks[i].name, spec.sinks[i].kind.table()),
            };
            let key = format!("{}[{i}].{table}", node.kind.as_str());
            let cx = BuildCx {
                key: &key,
                name,
                pipeline: &spec.name,
                base_dir: &spec.base_dir,
                batch_rows: spec.settings.batch_rows,
                memory: &memory,
                data_dir: &env.data_dir,
            };
            let open = |error: NodeError| PlanError::Open {
                node: name.clone(),
                error,
            };
            let built = match node.kind {
                NodeKind::Source => {
                    NodeImpl::Source(spec.sources[i].kind.config().build(&cx).map_err(open)?)
                }
                NodeKind::Stage => match &spec.stages[i].kind {
                    StageKind::Wasm(w) => {
                        let (op, digest) = build_wasm(&spec, env, &cx, w)?;
                        digests.push((name.clone(), digest));
                        NodeImpl::Operator(op)
                    }
                    kind => NodeImpl::Operator(kind.config().build(&cx).map_err(open)?),
                },
                NodeKind::Sink => {
                    NodeImpl::Sink(spec.sinks[i].kind.config().build(&cx).map_err(open)?)
                }
            };
            nodes.push(built);
        }
        let schemas = schemas(&spec, &dag, &mut nodes)?;
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

/// Each node's output schema from its inputs', in topological order. Each
/// operator whose input is known binds to it ([`Operator::output_schema`]); each
/// sink whose input is known checks the columns its table names
/// ([`crate::node::config::SinkConfig::check_input`]).
fn schemas(
    spec: &PipelineSpec,
    dag: &Dag,
    nodes: &mut [NodeImpl],
) -> Result<Vec<Option<SchemaRef>>, PlanError> {
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
            NodeImpl::Source(SourceNode::Sync(s)) => Some(s.schema()),
            NodeImpl::Source(SourceNode::Async(s)) => Some(s.schema()),
            NodeImpl::Operator(op) => match &input {
                Some(i) => op.output_schema(i).map_err(schema_err)?,
                None => None,
            },
            NodeImpl::Sink(_) => {
                if let Some(i) = &input {
                    let sink = &spec.sinks[node.index];
                    let key = format!("sink[{}].{}", node.index, sink.kind.table());
                    sink.kind
                        .config()
                        .check_input(&key, i)
                        .map_err(schema_err)?;
                }
                None
            }
        });
    }
    Ok(out)
}

/// A WebAssembly stage: its component loaded (built first when the spec names a
/// crate, read from the store when it names a reference), instantiated and
/// `init`ed, with its shadow candidate if it has one; and the component's digest.
fn build_wasm(
    spec: &PipelineSpec,
    env: &RunEnv,
    cx: &BuildCx,
    w: &WasmStageSpec,
) -> Result<(Box<dyn Operator>, String), PlanError> {
    let name = cx.name;
    let path = match (&w.component, &w.krate) {
        (Some(file), _) => spec.resolve(file),
        (None, Some(dir)) => {
            build_stage(&spec.resolve(dir)).map_err(|source| PlanError::Build {
                node: name.to_owned(),
                source,
            })?
        }
        (None, None) => {
            return Err(
                SpecError::invalid(cx.key, "set exactly one of `component` and `crate`").into(),
            );
        }
    };
    let open = |message: String| PlanError::Open {
        node: name.to_owned(),
        error: NodeError::Config(message),
    };
    let loaded = match w.component.as_deref().and_then(std::path::Path::to_str) {
        Some(r) if crate::store::is_reference(r) => {
            let store = env.store.as_ref().ok_or_else(|| {
                open(format!(
                    "component `{r}` names the store, but this run has none"
                ))
            })?;
            let bytes = store
                .resolve(r)
                .and_then(|d| store.component_bytes(&d))
                .map_err(|e| open(e.to_string()))?;
            env.sandbox.load(&bytes)
        }
        _ => env.sandbox.load_file(&path),
    };
    let component = loaded.map_err(|source| PlanError::Load {
        node: name.to_owned(),
        source,
    })?;
    let params = w.params.to_string();
    let mut stage = FeaturizerStage::new(
        &env.sandbox,
        &component,
        name,
        &params,
        w.limits,
        w.grants.clone(),
    )?;
    stage.set_projection(w.columns.clone());
    stage.set_filter(w.filter);
    stage.set_outputs(w.declared_outputs().map_err(|e| open(e.to_string()))?);
    let shadow = shadow::build(spec, env, name, w, &component)?;
    let op = Box::new(WasmOperator::new(stage).with_shadow(shadow));
    Ok((op, component.digest().to_owned()))
}

#[cfg(test)]
mod tests;
