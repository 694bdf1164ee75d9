//! Turning a pipeline file into an immutable version: every WebAssembly stage's
//! and source plugin's component is validated, recorded in the store and pinned
//! by digest, so that activating the version later runs exactly the same code,
//! whatever happened to the files or names since.

use std::collections::BTreeMap;

use super::{StageVersion, Store, StoreError};
use crate::node::lineage::params_hash;
use crate::sandbox::{LoadError, ResolveError, Sandbox};
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
    /// The component could not be had: the store refused its reference, its file
    /// could not be read, or its crate did not build.
    #[error("stage `{stage}`: {source}")]
    Resolve {
        /// The stage.
        stage: String,
        /// Why.
        source: ResolveError,
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
    for (index, stage) in pinned.stages.iter_mut().enumerate() {
        let name = stage.name.clone();
        let Some(w) = stage.wasm_mut() else {
            continue;
        };
        let reference = w.reference(&format!("stage[{index}].wasm"))?;
        let bytes = reference
            .resolve(&spec.base_dir, Some(store))
            .and_then(crate::sandbox::Resolved::into_bytes)
            .map_err(|source| PinError::Resolve {
                stage: name.clone(),
                source,
            })?;
        let label = reference.label().unwrap_or_else(|| name.clone());
        let source = reference.to_string();
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
    for (index, source) in pinned.sources.iter_mut().enumerate() {
        let name = source.name.clone();
        let Some(p) = source.plugin_mut() else {
            continue;
        };
        let reference = p.reference(&format!("source[{index}].plugin"))?;
        let bytes = reference
            .resolve(&spec.base_dir, Some(store))
            .and_then(crate::sandbox::Resolved::into_bytes)
            .map_err(|source| PinError::Resolve {
                stage: name.clone(),
                source,
            })?;
        let label = reference.label().unwrap_or_else(|| name.clone());
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
        p.component = Some(format!("sha256:{}", record.digest).into());
        p.krate = None;
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
