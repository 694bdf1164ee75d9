//! Metrics through the host.
//!
//! The host keeps one series per stage and name, labels it with the pipeline and the
//! stage, and exports it with its own metrics (Prometheus at `/metrics`). Update
//! metrics once per batch with the batch's totals rather than once per row: every call
//! crosses the boundary.
//!
//! Off wasm (a stage's native unit tests) both functions do nothing.

#[cfg(target_arch = "wasm32")]
use crate::bindings::weir::stage::host;

/// Adds `delta` to the stage's counter `name`, for things that only go up: rows
/// rejected, lookups missed.
pub fn counter_add(name: &str, delta: u64) {
    #[cfg(target_arch = "wasm32")]
    host::counter_add(name, delta);
    #[cfg(not(target_arch = "wasm32"))]
    let _ = (name, delta);
}

/// Sets the stage's gauge `name` to `value`, for a level that goes up and down: a
/// cache's size, the last batch's null ratio.
pub fn gauge_set(name: &str, value: f64) {
    #[cfg(target_arch = "wasm32")]
    host::gauge_set(name, value);
    #[cfg(not(target_arch = "wasm32"))]
    let _ = (name, value);
}
