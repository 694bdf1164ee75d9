//! The composition root: from a checked spec to runnable nodes. Each node's kind
//! builds itself ([`crate::node::config::SourceConfig::build`] and its siblings),
//! every one the same way: given a [`BuildCx`] with its place in the file, the
//! run's settings and memory, its tenant, the host's [`Services`] (the sandbox,
//! the component store, node state, client pools) and the clock. The plan names
//! no kind.
//!
//! Components are loaded (built first when the spec names a crate), stages
//! instantiated and `init`ed, files opened, and every node's output schema
//! computed from its input's, as DataFusion's `ExecutionPlan::schema`. All of it
//! happens before the first record moves, so a bad component, bad parameters, a
//! missing file or a column an operator needs and its input lacks fail the run at
//! once, naming the node.

use std::path::PathBuf;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;

use crate::node::NodeError;
use crate::node::config::BuildCx;
use crate::node::memory::{MemoryPool, MemorySource, RunMemory};
use crate::node::services::{
    Clock, ComponentSource, DEFAULT_TENANT, NodeStateStore, Services, SystemClock,
};
use crate::sandbox::{BuildError, LoadError, Sandbox, StageFailure};
use crate::spec::{Dag, NodeKind, PipelineSpec, SpecError};

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
    /// What the host offers nodes besides the sandbox, the store and the clock,
    /// which [`RunEnv::services`] adds (the client pools, on a host; a test's
    /// fixed clock, which replaces the machine's).
    pub services: Services,
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
            services: Services::new(),
        }
    }

    /// What the run's nodes are offered ([`BuildCx::services`]): the sandbox;
    /// with a store, the component store and node state (the store's tenant's);
    /// the machine's clock; and whatever [`RunEnv::services`](Self::services)
    /// holds, which wins.
    pub fn services(&self) -> Services {
        let mut services = Services::new()
            .with(Arc::new(self.sandbox.clone()))
            .with::<dyn Clock>(Arc::new(SystemClock));
        if let Some(store) = &self.store {
            let store = Arc::new(store.clone());
            services.insert::<dyn ComponentSource>(store.clone());
            services.insert::<dyn NodeStateStore>(store);
        }
        services.extend(&self.services);
        services
    }

    /// The tenant the run belongs to: its store's, or the default one.
    pub fn tenant(&self) -> &str {
        self.store
            .as_ref()
            .map_or(DEFAULT_TENANT, crate::store::Store::tenant)
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

pub use crate::node::config::{OperatorNode, SinkNode, SourceNode};

/// A node ready to run.
pub enum NodeImpl {
    /// Produces batches.
    Source(SourceNode),
    /// Transforms batches.
    Operator(OperatorNode),
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
        let services = env.services();
        let clock: Arc<dyn Clock> = services
            .get::<dyn Clock>()
            .unwrap_or_else(|| Arc::new(SystemClock));
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
                tenant: env.tenant(),
                services: &services,
                clock: &clock,
            };
            let open = |e: NodeError| plan_error(name, e);
            let built = match node.kind {
                NodeKind::Source => {
                    NodeImpl::Source(spec.sources[i].kind.config().build(&cx).map_err(open)?)
                }
                NodeKind::Stage => {
                    let stage = &spec.stages[i];
                    let mut op = stage.kind.config().build_node(&cx).map_err(open)?;
                    if let OperatorNode::Sync(op) = &op
                        && let Some(digest) = op.component_digest()
                    {
                        digests.push((name.clone(), digest.to_owned()));
                    }
                    if stage.kind.config().row_local()
                        && let OperatorNode::Sync(inner) = op
                    {
                        // Every row-local operator fails, skips, retries and
                        // falls back the same way: through the executor's guard.
                        let p = &stage.policy;
                        op = OperatorNode::Sync(Box::new(crate::ops::guard::GuardedOperator::new(
                            inner,
                            &format!("stage[{i}]"),
                            p.effective(true),
                            p.fallback.clone(),
                            p.breaker.unwrap_or_default(),
                            clock.clone(),
                        )));
                    }
                    NodeImpl::Operator(op)
                }
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

/// A node that failed to build, as the plan reports it: a stage's code that did
/// not build, load or start keeps its typed cause ([`PlanError::Build`],
/// [`PlanError::Load`], [`PlanError::Start`]); any other error names the node.
fn plan_error(node: &str, e: NodeError) -> PlanError {
    let NodeError::Stage {
        row,
        transient,
        trap,
        error,
    } = e
    else {
        return PlanError::Open {
            node: node.to_owned(),
            error: e,
        };
    };
    let error = match error.downcast::<StageFailure>() {
        Ok(failure) => return PlanError::Start(*failure),
        Err(other) => other,
    };
    let error = match error.downcast::<LoadError>() {
        Ok(source) => {
            return PlanError::Load {
                node: node.to_owned(),
                source: *source,
            };
        }
        Err(other) => other,
    };
    match error.downcast::<BuildError>() {
        Ok(source) => PlanError::Build {
            node: node.to_owned(),
            source: *source,
        },
        Err(error) => PlanError::Open {
            node: node.to_owned(),
            error: NodeError::Stage {
                row,
                transient,
                trap,
                error,
            },
        },
    }
}

/// Each node's output schema from its inputs', in topological order. Each
/// operator whose input is known binds to it ([`crate::node::Operator::output_schema`]); each
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
