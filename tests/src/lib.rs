//! Shared helpers for the end-to-end tests: building the real stage components
//! once per test process, one sandbox for all tests, and running pipelines.

pub mod clicks;
pub mod proxy;
pub mod services;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use weir::exec::{Plan, RunEnv, RunError, RunOptions, RunSummary};
use weir::sandbox::{Sandbox, SandboxConfig, build_stage};
use weir::spec::PipelineSpec;

/// The repository's root directory.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Builds the stage crate at `relative` (from the repo root) for `wasm32-wasip2`,
/// once per process, and returns the component's path.
pub fn component(relative: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let built = BUILT.get_or_init(Mutex::default);
    let mut built = built.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = built.get(relative) {
        return p.clone();
    }
    let path = build_stage(&repo_root().join(relative))
        .unwrap_or_else(|e| panic!("building {relative}: {e}"));
    built.insert(relative.to_owned(), path.clone());
    path
}

/// One sandbox per test process, as one host would have.
pub fn sandbox() -> Sandbox {
    static SANDBOX: OnceLock<Sandbox> = OnceLock::new();
    SANDBOX
        .get_or_init(|| Sandbox::new(SandboxConfig::default()).expect("sandbox"))
        .clone()
}

/// A run environment with its data directory in `dir`.
pub fn env(dir: &Path) -> RunEnv {
    RunEnv::standalone(sandbox(), dir.join("data"))
}

/// Parses, plans and runs a pipeline given as TOML text whose relative paths
/// resolve against `dir`.
///
/// # Errors
/// Whatever planning or running returns.
pub async fn run_toml(text: &str, dir: &Path) -> Result<RunSummary, RunError> {
    let mut spec = PipelineSpec::from_toml(text, "test.toml").expect("test pipeline parses");
    spec.base_dir = dir.to_path_buf();
    run_spec(spec, dir).await
}

/// Plans and runs a parsed pipeline with its data directory in `dir`.
///
/// # Errors
/// Whatever planning or running returns.
pub async fn run_spec(spec: PipelineSpec, dir: &Path) -> Result<RunSummary, RunError> {
    let env = env(dir);
    let plan = tokio::task::spawn_blocking({
        let env = env.clone();
        move || Plan::build(spec, &env)
    })
    .await
    .expect("planning does not panic")?;
    weir::exec::run(plan, &env, &RunOptions::default()).await
}

/// A TOML string literal for a path.
pub fn toml_path(p: &Path) -> String {
    toml_str(&p.display().to_string())
}

/// A TOML basic string.
pub fn toml_str(s: &str) -> String {
    serde_json::to_string(s).expect("strings serialize")
}

/// As [`run_spec`], with the checkpoints of a stored pipeline kept in a store
/// in `dir` (as `weir run NAME` keeps them): what a pipeline with session
/// windows on a broker's stream needs, since its state is checkpointed and the
/// stream acknowledged at each checkpoint.
///
/// # Errors
/// Whatever opening the store, planning or running returns.
pub async fn run_spec_checkpointed(spec: PipelineSpec, dir: &Path) -> Result<RunSummary, RunError> {
    let store = weir::store::Store::open(&dir.join("data")).map_err(|e| RunError::Checkpoint {
        pipeline: spec.name.clone(),
        error: Box::new(e),
    })?;
    let mut env = env(dir);
    env.store = Some(store.clone());
    let plan = tokio::task::spawn_blocking({
        let env = env.clone();
        move || Plan::build(spec, &env)
    })
    .await
    .expect("planning does not panic")?;
    let checkpoints: std::sync::Arc<dyn weir::node::CheckpointStore> = std::sync::Arc::new(store);
    let options = RunOptions {
        checkpoints: Some(checkpoints),
        ..RunOptions::default()
    };
    weir::exec::run(plan, &env, &options).await
}
