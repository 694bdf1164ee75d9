//! Building a stage's shadow candidate (`[stage.wasm.shadow]`) at plan time.

use super::{PlanError, RunEnv};
use crate::ops::wasm::shadow::Shadow;
use crate::sandbox::FeaturizerStage;
use crate::spec::{PipelineSpec, WasmStageSpec};

/// Builds the candidate for the stage `name` (configured by `w`) if it has
/// `[stage.wasm.shadow]`; `active` is the active component, used when the shadow
/// names none.
///
/// # Errors
/// [`PlanError`] naming the stage when the candidate's component cannot be read,
/// loaded or started.
pub fn build(
    spec: &PipelineSpec,
    env: &RunEnv,
    name: &str,
    w: &WasmStageSpec,
    active: &crate::sandbox::LoadedComponent,
) -> Result<Option<Shadow>, PlanError> {
    let Some(shadow) = w.shadow.as_ref() else {
        return Ok(None);
    };
    let open = |message: String| PlanError::Open {
        node: name.to_owned(),
        error: crate::node::NodeError::Config(format!("shadow: {message}")),
    };
    let loaded;
    let component = match shadow.component.as_deref() {
        None => active,
        Some(c) => {
            let text = c.to_str().unwrap_or_default();
            let result = if crate::store::is_reference(text) {
                let store = env.store.as_ref().ok_or_else(|| {
                    open(format!(
                        "component `{text}` names the store, but this run has none"
                    ))
                })?;
                let bytes = store
                    .resolve(text)
                    .and_then(|d| store.component_bytes(&d))
                    .map_err(|e| open(e.to_string()))?;
                env.sandbox.load(&bytes)
            } else {
                env.sandbox.load_file(&spec.resolve(c))
            };
            loaded = result.map_err(|e| open(e.to_string()))?;
            &loaded
        }
    };
    let params = shadow.params.as_ref().unwrap_or(&w.params).to_string();
    let mut candidate = FeaturizerStage::new(
        &env.sandbox,
        component,
        name,
        &params,
        w.limits,
        w.grants.clone(),
    )
    .map_err(|e| open(e.to_string()))?;
    // The wiring is the pipeline's, as for the active version.
    candidate.set_projection(w.columns.clone());
    candidate.set_filter(w.filter);
    candidate.set_outputs(w.declared_outputs().map_err(|e| open(e.to_string()))?);
    Ok(Some(Shadow::new(candidate, shadow)))
}
