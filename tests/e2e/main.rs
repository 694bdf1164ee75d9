//! End-to-end tests: real components built for `wasm32-wasip2`, real pipelines.
//! One binary, a module per area.

mod executor;
mod quickstart;
mod sandbox;
