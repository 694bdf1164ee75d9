//! # weir
//!
//! A runtime that feeds batch and streaming features to production ML models.
//! Pipelines are DAGs of sources, built-in operators, user stages and sinks; user
//! stages are WebAssembly components run in a sandbox with fuel, memory and
//! wall-clock caps. Inside the host data moves as Arrow record batches.
//!
//! | module | concern |
//! | --- | --- |
//! | [`batch`] | Arrow ⇄ WIT batch conversion, JSON rendering |
//! | [`sandbox`] | engine, limits, component cache, stage instances |
//! | [`spec`] | pipeline files, validation |
//! | [`exec`] | scheduler, channels, backpressure, run summary |
//! | [`ops`] | built-in operators: map, filter, batch, sample, split |
//! | [`connectors`] | sources and sinks |
//! | [`store`] | components, pipeline versions, lineage (sled) |
//! | [`units`] | byte sizes and durations in pipeline files |
//!
//! Running a pipeline from Rust:
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use weir::exec::{Plan, RunEnv, RunOptions};
//! use weir::sandbox::{Sandbox, SandboxConfig};
//! use weir::spec::PipelineSpec;
//!
//! let env = RunEnv { sandbox: Sandbox::new(SandboxConfig::default())?, data_dir: ".weir".into(), store: None };
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
pub mod ops;
pub mod sandbox;
pub mod spec;
pub mod store;
pub mod units;
