//! # weir
//!
//! A runtime that feeds batch and streaming features to production ML models.
//! Pipelines are DAGs of sources, built-in operators, user stages and sinks; user
//! stages are WebAssembly components run in a sandbox with fuel, memory and
//! wall-clock caps. Inside the host data moves as Arrow record batches.
//!
//! Modules, bottom to top; a module imports only modules below it (a test,
//! `host/tests/layering.rs`, checks every import against this table):
//!
//! | module | concern |
//! | --- | --- |
//! | [`units`] | byte sizes and durations in pipeline files |
//! | [`node`] | the contract between nodes: traits, envelopes, faults, dead letters, lineage, checkpoints, the memory pool |
//! | [`wit`] | the host's bindings to the WIT package, generated once |
//! | [`batch`] | Arrow ⇄ WIT batch conversion, JSON rendering |
//! | [`sandbox`] | engine, limits, component cache, stage instances |
//! | [`ops`] | built-in operators (map, filter, batch, sample, split, sort, group, session) and the WebAssembly operator |
//! | [`connectors`] | sources and sinks |
//! | [`spec`] | pipeline files: the shape, validation, sub-pipelines |
//! | [`store`] | components, pipeline versions, lineage, checkpoints (sled) |
//! | [`plan`] | the composition root: a spec becomes nodes |
//! | [`exec`] | the scheduler: tasks, channels, backpressure, acknowledgements, checkpoints, the run summary |
//! | [`live`] | a running pipeline's control: socket, file watch, swaps |
//! | [`host`] | the runtime that owns a data directory: the store, the sandbox, memory pools host → tenant → run, client pools, the registry of runs, tenants; assembles runs |
//!
//! Running a pipeline from Rust:
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use weir::exec::RunOptions;
//! use weir::plan::{Plan, RunEnv};
//! use weir::sandbox::{Sandbox, SandboxConfig};
//! use weir::spec::PipelineSpec;
//!
//! let env = RunEnv::standalone(Sandbox::new(SandboxConfig::default())?, ".weir");
//! let spec = PipelineSpec::from_file("examples/quickstart/pipeline.toml".as_ref())?;
//! let plan = Plan::build(spec, &env)?;
//! let summary = weir::exec::run(plan, &env, &RunOptions::default()).await?;
//! println!("{summary}");
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod batch;
pub mod connectors;
pub mod exec;
pub mod host;
pub mod live;
pub mod node;
pub mod ops;
pub mod plan;
pub mod sandbox;
pub mod spec;
pub mod store;
pub mod units;
pub mod wit;
