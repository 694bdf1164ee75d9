//! End-to-end tests: real components built for `wasm32-wasip2`, real pipelines.
//! One binary, a module per area.

mod backpressure;
mod clickstream;
mod enrich;
mod executor;
mod faults;
mod files;
mod lineage;
mod lookup;
mod online_store;
mod ops;
mod plugin;
mod policy;
mod quickstart;
mod sandbox;
mod shadow;
mod streaming;
mod swap;
