//! Changing a running pipeline by giving it a new spec.
//!
//! ```text
//!   control socket ──┐  (params, component, stored version)
//!   file watcher  ───┼─► LiveRun::apply(new spec) ── per changed stage ──► RunControl::swap
//!   Rust caller   ───┘        │                                              (between batches)
//!                             └─ structure differs? refused, nothing changes
//! ```
//!
//! Every way of changing a running pipeline ends here, so they all follow one
//! rule: only a WebAssembly stage's component, parameters, limits and grants may
//! change while the pipeline runs. Anything else (a node added or removed, a
//! source, sink, built-in operator or setting changed) needs a restart and is
//! refused as a whole, naming what differs.
//!
//! Applying compares the new spec with the one running, stage by stage:
//! - same component, new parameters → [`StageChange::Params`] (a new `init` on a
//!   fresh instance of the same code);
//! - a new component (file, crate, store reference) or new limits or grants → the
//!   component is resolved, loaded and `init`ed off the hot path
//!   ([`prepare_stage`]) and queued as [`StageChange::Stage`]; one that fails to
//!   load or to start is refused before it reaches the run.
//!
//! Stages are swapped one after another; each outcome is reported separately and
//! only the applied ones update the running spec, so a later apply compares with
//! what really runs. [`LiveRun`] is used behind a mutex: changes are serialized.

pub mod socket;
pub mod watch;

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::exec::control::{RunControl, StageChange, SwapError};
use crate::ops::wasm::prepare_stage;
use crate::plan::{Plan, RunEnv};
use crate::spec::{PipelineSpec, SpecError, WasmStageSpec};
use crate::store::StoreError;

/// Why a new spec was not applied to a running pipeline. Nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    /// The new spec is invalid.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// The new spec changes more than WebAssembly stages: it needs a restart.
    #[error(
        "not applied to the running pipeline: {0} (only a WebAssembly stage's component, params, limits and grants change while it runs; restart to apply this)"
    )]
    Structural(String),
    /// A request named a stage that is not a WebAssembly stage of this pipeline.
    #[error("no WebAssembly stage `{stage}` in pipeline `{pipeline}` (stages: {known})")]
    NoSuchStage {
        /// The pipeline.
        pipeline: String,
        /// The name asked for.
        stage: String,
        /// The WebAssembly stages it has.
        known: String,
    },
    /// A stored version was asked for but could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored version was asked for, but this run has no store.
    #[error("this run has no store, so it cannot switch to stored version {0}")]
    NoStore(u64),
}

/// What happened to one stage when a new spec was applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageOutcome {
    /// The stage.
    pub stage: String,
    /// Whether the change took effect.
    pub applied: bool,
    /// The component digest running now (the new one if applied, else the old one).
    pub digest: String,
    /// The parameters in effect now.
    pub params: String,
    /// Index of the first batch the new version processed (applied only; `None`
    /// when the stream ended first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_batch: Option<u64>,
    /// Why it was refused or rolled back (not applied only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What runs now: the pipeline version and each WebAssembly stage's code and
/// parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveStatus {
    /// The pipeline.
    pub pipeline: String,
    /// The stored version stamped on batches read now (`None`: run from a file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// One entry per WebAssembly stage, in spec order.
    pub stages: Vec<StageStatus>,
}

/// One WebAssembly stage of [`LiveStatus`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageStatus {
    /// The stage.
    pub stage: String,
    /// sha256 of the component running.
    pub digest: String,
    /// Its parameters (JSON).
    pub params: String,
}

/// A running pipeline's spec and the handle to change it (see the module docs).
pub struct LiveRun {
    env: RunEnv,
    control: RunControl,
    spec: PipelineSpec,
    digests: HashMap<String, String>,
}

impl LiveRun {
    /// Tracks `plan`, which is about to run with `control`. Call before handing the
    /// plan to [`crate::exec::run_with`].
    pub fn new(plan: &Plan, env: RunEnv, control: RunControl) -> Self {
        Self {
            env,
            control,
            spec: plan.spec.clone(),
            digests: plan.digests.iter().cloned().collect(),
        }
    }

    /// The spec running now.
    pub fn spec(&self) -> &PipelineSpec {
        &self.spec
    }

    /// The handle on the run.
    pub fn control(&self) -> &RunControl {
        &self.control
    }

    /// What runs now.
    pub fn status(&self) -> LiveStatus {
        LiveStatus {
            pipeline: self.spec.name.clone(),
            version: self.control.version(),
            stages: self
                .spec
                .stages
                .iter()
                .filter_map(|s| {
                    let w = s.wasm()?;
                    Some(StageStatus {
                        stage: s.name.clone(),
                        digest: self.digests.get(&s.name).cloned().unwrap_or_default(),
                        params: w.params.to_string(),
                    })
                })
                .collect(),
        }
    }

    fn wasm_index(&self, stage: &str) -> Result<usize, LiveError> {
        self.spec
            .stages
            .iter()
            .position(|s| s.name == stage && s.wasm().is_some())
            .ok_or_else(|| LiveError::NoSuchStage {
                pipeline: self.spec.name.clone(),
                stage: stage.to_owned(),
                known: self
                    .spec
                    .stages
                    .iter()
                    .filter(|s| s.wasm().is_some())
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// The running spec with `stage`'s parameters replaced.
    ///
    /// # Errors
    /// [`LiveError::NoSuchStage`].
    pub fn with_params(
        &self,
        stage: &str,
        params: serde_json::Value,
    ) -> Result<PipelineSpec, LiveError> {
        let i = self.wasm_index(stage)?;
        let mut spec = self.spec.clone();
        spec.stages[i]
            .wasm_mut()
            .expect("a WebAssembly stage")
            .params = params;
        Ok(spec)
    }

    /// The running spec with `stage`'s component replaced: a store reference
    /// (`name@3`, `sha256:…`) or a file (relative paths resolve against the
    /// pipeline file's directory).
    ///
    /// # Errors
    /// [`LiveError::NoSuchStage`].
    pub fn with_component(
        &self,
        stage: &str,
        component: PathBuf,
    ) -> Result<PipelineSpec, LiveError> {
        let i = self.wasm_index(stage)?;
        let mut spec = self.spec.clone();
        let w = spec.stages[i].wasm_mut().expect("a WebAssembly stage");
        w.component = Some(component);
        w.krate = None;
        Ok(spec)
    }

    /// Stored version `version` of this pipeline, whole (`stage` = `None`), or only
    /// `stage` of it on top of the running spec.
    ///
    /// # Errors
    /// [`LiveError::NoStore`], [`LiveError::Store`] (no such version) or
    /// [`LiveError::NoSuchStage`].
    pub fn with_version(
        &self,
        version: u64,
        stage: Option<&str>,
    ) -> Result<PipelineSpec, LiveError> {
        let store = self.env.store.as_ref().ok_or(LiveError::NoStore(version))?;
        let stored = store.version(&self.spec.name, version)?.runnable_spec();
        let Some(stage) = stage else {
            return Ok(stored);
        };
        let i = self.wasm_index(stage)?;
        let wasm = stored
            .stages
            .iter()
            .find(|s| s.name == stage)
            .and_then(|s| s.wasm().cloned())
            .ok_or_else(|| {
                LiveError::Structural(format!(
                    "version {version} has no WebAssembly stage `{stage}`"
                ))
            })?;
        let mut spec = self.spec.clone();
        let w = spec.stages[i].wasm_mut().expect("a WebAssembly stage");
        // Pinned components are store references; keep the running base directory.
        *w = WasmStageSpec {
            shadow: w.shadow.take(),
            ..wasm
        };
        Ok(spec)
    }

    /// Applies `new` to the running pipeline (see the module docs) and, when every
    /// change took effect, stamps `version` on batches read from then on.
    ///
    /// # Errors
    /// [`LiveError`] when `new` is invalid or changes the pipeline's structure; then
    /// nothing was changed. Per-stage refusals are outcomes, not errors.
    pub async fn apply(
        &mut self,
        new: PipelineSpec,
        version: Option<u64>,
    ) -> Result<Vec<StageOutcome>, LiveError> {
        let mut new = new;
        new.inline_uses()?;
        new.validate()?;
        compare_structure(&self.spec, &new)?;
        let prepared = tokio::task::spawn_blocking({
            let (env, old, new, digests) = (
                self.env.clone(),
                self.spec.clone(),
                new.clone(),
                self.digests.clone(),
            );
            move || prepare_changes(&env, &old, &new, &digests)
        })
        .await
        .expect("preparing stages does not panic");
        let mut outcomes = Vec::new();
        for (index, change) in prepared {
            let stage = new.stages[index].name.clone();
            let result = match change {
                Ok(change) => self.control.swap(&stage, change).await,
                Err(e) => Err(e),
            };
            let outcome = match result {
                Ok(applied) => {
                    self.digests.insert(stage.clone(), applied.digest.clone());
                    self.spec.stages[index].kind = new.stages[index].kind.clone();
                    tracing::info!(stage = %stage, digest = %applied.digest, params = %applied.params, "stage swapped");
                    StageOutcome {
                        stage,
                        applied: true,
                        digest: applied.digest,
                        params: applied.params,
                        first_batch: applied.first_batch,
                        reason: None,
                    }
                }
                Err(e) => {
                    tracing::warn!(stage = %stage, error = %e, "swap not applied; the running version continues");
                    StageOutcome {
                        digest: self.digests.get(&stage).cloned().unwrap_or_default(),
                        params: self.spec.stages[index]
                            .wasm()
                            .map(|w| w.params.to_string())
                            .unwrap_or_default(),
                        stage,
                        applied: false,
                        first_batch: None,
                        reason: Some(e.to_string()),
                    }
                }
            };
            outcomes.push(outcome);
        }
        if outcomes.iter().all(|o| o.applied) && version.is_some() {
            self.control.set_version(version);
        }
        Ok(outcomes)
    }
}

/// The spec with everything a running pipeline may change blanked out.
fn structure(spec: &PipelineSpec) -> serde_json::Value {
    let mut s = spec.clone();
    s.description = None;
    s.base_dir = PathBuf::new();
    for st in &mut s.stages {
        if let Some(w) = st.wasm_mut() {
            *w = WasmStageSpec {
                component: None,
                krate: None,
                params: serde_json::Value::Null,
                limits: Default::default(),
                grants: Default::default(),
                shadow: w.shadow.take(),
                columns: w.columns.take(),
                // The tables are built with the plan: changing them restarts it.
                lookups: std::mem::take(&mut w.lookups),
                filter: w.filter,
                outputs: std::mem::take(&mut w.outputs),
            };
        }
    }
    serde_json::to_value(&s).expect("specs serialize")
}

/// Refuses `new` unless it differs from `old` only where a running pipeline may
/// change, naming the first difference.
fn compare_structure(old: &PipelineSpec, new: &PipelineSpec) -> Result<(), LiveError> {
    if old.name != new.name {
        return Err(LiveError::Structural(format!(
            "the pipeline's name changed (`{}` → `{}`)",
            old.name, new.name
        )));
    }
    let (a, b) = (structure(old), structure(new));
    if a == b {
        return Ok(());
    }
    let names = |s: &PipelineSpec| -> BTreeSet<String> {
        let sources = s.sources.iter().map(|n| n.name.clone());
        let stages = s.stages.iter().map(|n| n.name.clone());
        sources
            .chain(stages)
            .chain(s.sinks.iter().map(|n| n.name.clone()))
            .collect()
    };
    let (na, nb) = (names(old), names(new));
    let added: Vec<&str> = nb.difference(&na).map(String::as_str).collect();
    let removed: Vec<&str> = na.difference(&nb).map(String::as_str).collect();
    if !added.is_empty() || !removed.is_empty() {
        let mut parts = Vec::new();
        if !added.is_empty() {
            parts.push(format!("nodes added: {}", added.join(", ")));
        }
        if !removed.is_empty() {
            parts.push(format!("nodes removed: {}", removed.join(", ")));
        }
        return Err(LiveError::Structural(parts.join("; ")));
    }
    for key in ["source", "stage", "sink"] {
        let (xs, ys) = (&a[key], &b[key]);
        if let (Some(xs), Some(ys)) = (xs.as_array(), ys.as_array()) {
            for (x, y) in xs.iter().zip(ys) {
                if x != y {
                    let name = x["name"].as_str().unwrap_or("?");
                    return Err(LiveError::Structural(format!("{key} `{name}` changed")));
                }
            }
        }
    }
    Err(LiveError::Structural(
        "settings or node order changed".to_owned(),
    ))
}

/// For every WebAssembly stage whose configuration differs: the change to queue,
/// or why it cannot be made.
fn prepare_changes(
    env: &RunEnv,
    old: &PipelineSpec,
    new: &PipelineSpec,
    digests: &HashMap<String, String>,
) -> Vec<(usize, Result<StageChange, SwapError>)> {
    let mut out = Vec::new();
    for (index, (a, b)) in old.stages.iter().zip(&new.stages).enumerate() {
        let (Some(wa), Some(wb)) = (a.wasm(), b.wasm()) else {
            continue;
        };
        let same_code =
            wa.component == wb.component && wa.krate == wb.krate && old.base_dir == new.base_dir;
        let same_instance = wa.limits == wb.limits && wa.grants == wb.grants;
        if same_code && same_instance {
            if wa.params != wb.params {
                out.push((index, Ok(StageChange::Params(wb.params.to_string()))));
            }
            continue;
        }
        let change = component_bytes(env, new, &b.name, wb).and_then(|bytes| {
            let digest = crate::sandbox::digest(&bytes);
            if same_instance && digests.get(&b.name) == Some(&digest) {
                // The same code under another name: only the parameters may differ.
                return Ok(
                    (wa.params != wb.params).then(|| StageChange::Params(wb.params.to_string()))
                );
            }
            let stage = prepare_stage(
                &env.sandbox,
                &bytes,
                &b.name,
                &wb.params.to_string(),
                wb.limits,
                wb.grants.clone(),
            )?;
            Ok(Some(StageChange::Stage(Box::new(stage))))
        });
        match change {
            Ok(Some(c)) => out.push((index, Ok(c))),
            Ok(None) => {}
            Err(e) => out.push((index, Err(e))),
        }
    }
    out
}

/// The bytes of the component `w` names: a store reference, a file, or a crate
/// (built first).
fn component_bytes(
    env: &RunEnv,
    spec: &PipelineSpec,
    stage: &str,
    w: &WasmStageSpec,
) -> Result<Vec<u8>, SwapError> {
    let refused = |what: String| SwapError::Refused(format!("stage `{stage}`: {what}"));
    let index = spec
        .stages
        .iter()
        .position(|s| s.name == stage)
        .unwrap_or(0);
    let reference = w
        .reference(&format!("stage[{index}].wasm"))
        .map_err(|e| refused(e.to_string()))?;
    let store = env
        .store
        .as_ref()
        .map(|s| s as &dyn crate::node::services::ComponentSource);
    reference
        .resolve(&spec.base_dir, store)
        .and_then(crate::sandbox::Resolved::into_bytes)
        .map_err(|e| refused(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(text: &str) -> PipelineSpec {
        PipelineSpec::from_toml(text, "t.toml").unwrap()
    }

    const BASE: &str = r#"
name = "p"
[[source]]
name = "numbers"
[source.sequence]
count = 10
[[stage]]
name = "tag"
input = "numbers"
[stage.wasm]
component = "a.wasm"
params = { tag = 1 }
[[sink]]
name = "out"
input = "tag"
[sink.jsonl]
path = "out.jsonl"
"#;

    #[test]
    fn stage_code_and_params_may_change() {
        let new = BASE
            .replace("a.wasm", "b.wasm")
            .replace("tag = 1", "tag = 2");
        compare_structure(&spec(BASE), &spec(&new)).unwrap();
    }

    #[test]
    fn added_nodes_are_refused_by_name() {
        let new = format!(
            "{BASE}[[sink]]\nname = \"more\"\ninput = \"tag\"\n[sink.jsonl]\npath = \"more.jsonl\"\n"
        );
        let err = compare_structure(&spec(BASE), &spec(&new)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "not applied to the running pipeline: nodes added: more (only a WebAssembly stage's component, \
             params, limits and grants change while it runs; restart to apply this)"
        );
    }

    #[test]
    fn a_changed_sink_is_refused_by_name() {
        let new = BASE.replace("out.jsonl", "other.jsonl");
        let err = compare_structure(&spec(BASE), &spec(&new)).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("not applied to the running pipeline: sink `out` changed"),
            "{err}"
        );
    }
}
