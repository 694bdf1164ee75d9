//! Structured logging through the host.
//!
//! A stage has no stdout worth reading and no files: its log lines go to the host,
//! which attributes them to the stage (pipeline, stage name, tenant) and routes them
//! with its own logs, so an operator reads them where everything else is.
//!
//! Log per batch, not per row: every call crosses the boundary. Per-record detail
//! belongs at [`trace`], which the host usually filters out.
//!
//! Off wasm (a stage's native unit tests) the lines go to stderr instead, so stage
//! logic that logs can be tested without a host.

#[cfg(target_arch = "wasm32")]
use crate::bindings::weir::stage::host::{self, Level};

/// Per-record detail, normally filtered out by the host.
pub fn trace(message: &str) {
    #[cfg(target_arch = "wasm32")]
    host::log(Level::Trace, message);
    #[cfg(not(target_arch = "wasm32"))]
    native("TRACE", message);
}

/// Detail useful while developing a stage.
pub fn debug(message: &str) {
    #[cfg(target_arch = "wasm32")]
    host::log(Level::Debug, message);
    #[cfg(not(target_arch = "wasm32"))]
    native("DEBUG", message);
}

/// Lifecycle: parameters accepted, a table loaded.
pub fn info(message: &str) {
    #[cfg(target_arch = "wasm32")]
    host::log(Level::Info, message);
    #[cfg(not(target_arch = "wasm32"))]
    native("INFO", message);
}

/// Something odd the stage worked around, such as a value it replaced by a default.
pub fn warn(message: &str) {
    #[cfg(target_arch = "wasm32")]
    host::log(Level::Warn, message);
    #[cfg(not(target_arch = "wasm32"))]
    native("WARN", message);
}

/// Something failed; prefer returning a [`StageError`](crate::StageError), which the
/// host's error policy acts on, and log only what it cannot carry.
pub fn error(message: &str) {
    #[cfg(target_arch = "wasm32")]
    host::log(Level::Error, message);
    #[cfg(not(target_arch = "wasm32"))]
    native("ERROR", message);
}

#[cfg(not(target_arch = "wasm32"))]
fn native(level: &str, message: &str) {
    eprintln!("[weir-guest {level}] {message}");
}
