//! Building a stage crate into a component: what `weir stage build` and a pipeline's
//! `crate = "..."` stage run.
//!
//! It is `cargo build --release --target wasm32-wasip2`, run in the crate's
//! directory (so the crate's `.cargo/config.toml`, e.g. `+simd128`, applies), with
//! the artifact's path read from cargo's JSON messages rather than guessed, so it
//! honours `CARGO_TARGET_DIR` and workspace layouts.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The Rust target stages compile to.
pub const STAGE_TARGET: &str = "wasm32-wasip2";

/// A stage crate could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The directory has no `Cargo.toml`.
    #[error("{0} is not a stage crate: it has no Cargo.toml")]
    NotACrate(String),
    /// cargo could not be started.
    #[error("cannot run cargo: {0}")]
    Spawn(std::io::Error),
    /// cargo reported a failure; its diagnostics were printed to stderr.
    #[error(
        "cargo build failed for {dir} (is the target installed? `rustup target add {STAGE_TARGET}`)"
    )]
    Failed {
        /// The crate directory.
        dir: String,
    },
    /// The build succeeded but produced no `.wasm` (not a `cdylib`?).
    #[error("{0} built no .wasm component: set `crate-type = [\"cdylib\"]` in its [lib] section")]
    NoArtifact(String),
}

/// Builds the stage crate in `dir` and returns the path of its component.
///
/// Compiler diagnostics go to this process's stderr.
///
/// # Errors
/// See [`BuildError`].
pub fn build_stage(dir: &Path) -> Result<PathBuf, BuildError> {
    let manifest = dir.join("Cargo.toml");
    if !manifest.is_file() {
        return Err(BuildError::NotACrate(dir.display().to_string()));
    }
    // cargo runs inside `dir`, so every path handed to it must be absolute.
    let dir = &std::fs::canonicalize(dir).map_err(BuildError::Spawn)?;
    let manifest = dir.join("Cargo.toml");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .current_dir(dir)
        .args(["build", "--release", "--target", STAGE_TARGET])
        .args([
            "--message-format",
            "json-render-diagnostics",
            "--manifest-path",
        ])
        .arg(&manifest)
        // A stage build inside a test or a build script must not inherit the outer
        // build's target-specific settings.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output()
        .map_err(BuildError::Spawn)?;
    if !output.status.success() {
        return Err(BuildError::Failed {
            dir: dir.display().to_string(),
        });
    }
    let mut found = None;
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        let from_this_crate = msg["manifest_path"]
            .as_str()
            .is_some_and(|p| Path::new(p) == manifest);
        if !from_this_crate {
            continue;
        }
        let wasm = msg["filenames"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| f.as_str())
            .find(|f| f.ends_with(".wasm"));
        if let Some(wasm) = wasm {
            found = Some(PathBuf::from(wasm));
        }
    }
    found.ok_or_else(|| BuildError::NoArtifact(dir.display().to_string()))
}
