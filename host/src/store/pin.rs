//! Turning a pipeline file into an immutable version: every WebAssembly stage's
//! component is validated, recorded in the store and pinned by digest, so that
//! activating the version later runs exactly the same code, whatever happened to
//! the files or names since.

use std::collections::BTreeMap;

use super::{StageVersion, Store, StoreError, is_reference};
use crate::node::lineage::params_hash;
use crate::sandbox::{BuildError, LoadError, Sandbox, build_stage};
use crate::spec::{PipelineSpec, SpecError};

/// Why a pipeline could not be pinned.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    /// The spec is invalid.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// The store failed or a reference names nothing.
    #[error("stage `{stage}`: {source}")]
    Store {
        /// The stage.
        stage: String,
        /// Why.
        source: StoreError,
    },
    /// A component file could not be read.
    #[error("stage `{stage}`: cannot read {path}: {source}")]
    Read {
        /// The stage.
        stage: String,
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A stage crate did not build.
    #[error("stage `{stage}`: {source}")]
    Build {
        /// The stage.
        stage: String,
        /// Why.
        source: BuildError,
    },
    /// The component failed validation.
    #[error("stage `{stage}`: {source}")]
    Load {
        /// The stage.
        stage: String,
        /// Why.
        source: LoadError,
    },
}

/// Validates `spec`, records each WebAssembly stage's component in `store` and
/// returns the spec with components pinned to `sha256:<digest>`, plus the resolved
/// stages.
///
/// # Errors
/// [`PinError`], naming the stage.
pub fn pin(
    spec: &PipelineSpec,
    store: &Store,
    sandbox: &Sandbox,
) -> Result<(PipelineSpec, Vec<StageVersion>), PinError> {
    spec.validate()?;
    let mut pinned = spec.clone();
    let mut stages = Vec::new();
    for stage in &mut pinned.stages {
        let name = stage.name.clone();
        let Some(w) = stage.wasm_mut() else {
            continue;
        };
        let (source, bytes, label) = match (&w.component, &w.krate) {
            (Some(c), _) if c.to_str().is_some_and(is_reference) => {
                let r = c.to_str().expect("checked").to_owned();
                let digest = store.resolve(&r).map_err(|source| PinError::Store {
                    stage: name.clone(),
                    source,
                })?;
                let bytes = store
                    .component_bytes(&digest)
                    .map_err(|source| PinError::Store {
                        stage: name.clone(),
                        source,
                    })?;
                let label = r.split('@').next().unwrap_or(&r).to_owned();
                (r, bytes, label)
            }
            (Some(file), _) => {
                let path = spec.resolve(file);
                let bytes = std::fs::read(&path).map_err(|source| PinError::Read {
                    stage: name.clone(),
                    path: path.display().to_string(),
                    source,
                })?;
                let label = path
                    .file_stem()
                    .map_or(name.clone(), |s| s.to_string_lossy().into_owned());
                (file.display().to_string(), bytes, label)
            }
            (None, Some(dir)) => {
                let path = build_stage(&spec.resolve(dir)).map_err(|source| PinError::Build {
                    stage: name.clone(),
                    source,
                })?;
                let bytes = std::fs::read(&path).map_err(|source| PinError::Read {
                    stage: name.clone(),
                    path: path.display().to_string(),
                    source,
                })?;
                let label = dir
                    .file_name()
                    .map_or(name.clone(), |s| s.to_string_lossy().into_owned());
                (dir.display().to_string(), bytes, label)
            }
            (None, None) => unreachable!("validated: component or crate"),
        };
        let loaded = sandbox.load(&bytes).map_err(|source| PinError::Load {
            stage: name.clone(),
            source,
        })?;
        let record = store
            .push_component(&label, &bytes, loaded.world())
            .map_err(|source| PinError::Store {
                stage: name.clone(),
                source,
            })?;
        w.component = Some(format!("sha256:{}", record.digest).into());
        w.krate = None;
        stages.push(StageVersion {
            stage: name,
            source,
            digest: record.digest,
            params_hash: params_hash(&w.params.to_string()),
            params: w.params.clone(),
            limits: w.limits,
        });
    }
    Ok((pinned, stages))
}

/// What changed between two versions, one line per difference: stages added or
/// removed, digests, parameters, limits, and other parts of the spec.
pub fn diff(a: &super::PipelineVersion, b: &super::PipelineVersion) -> Vec<String> {
    let mut out = Vec::new();
    let by_name = |v: &super::PipelineVersion| -> BTreeMap<String, StageVersion> {
        v.stages
            .iter()
            .map(|s| (s.stage.clone(), s.clone()))
            .collect()
    };
    let (sa, sb) = (by_name(a), by_name(b));
    for (name, x) in &sa {
        match sb.get(name) {
            None => out.push(format!("- stage {name} (sha256:{})", short(&x.digest))),
            Some(y) => {
                if x.digest != y.digest {
                    out.push(format!(
                        "~ stage {name}: component sha256:{} → sha256:{} ({} → {})",
                        short(&x.digest),
                        short(&y.digest),
                        x.source,
                        y.source
                    ));
                }
                if x.params != y.params {
                    out.push(format!(
                        "~ stage {name}: params {} → {}",
                        x.params, y.params
                    ));
                }
                if x.limits != y.limits {
                    out.push(format!(
                        "~ stage {name}: limits {:?} → {:?}",
                        x.limits, y.limits
                    ));
                }
            }
        }
    }
    for (name, y) in &sb {
        if !sa.contains_key(name) {
            out.push(format!("+ stage {name} (sha256:{})", short(&y.digest)));
        }
    }
    // Everything but the WebAssembly stages' tables, compared above.
    let strip = |v: &super::PipelineVersion| {
        let mut s = serde_json::to_value(&v.spec).expect("serializes");
        for st in s["stage"].as_array_mut().into_iter().flatten() {
            if let Some(st) = st.as_object_mut() {
                st.remove("wasm");
            }
        }
        s
    };
    if strip(a) != strip(b) {
        out.push("~ sources, sinks, settings or graph changed".to_owned());
    }
    if a.tags != b.tags {
        out.push(format!("~ tags {:?} → {:?}", a.tags, b.tags));
    }
    out
}

fn short(digest: &str) -> &str {
    &digest[..digest.len().min(12)]
}
