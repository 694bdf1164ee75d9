//! The `[stage.wasm]` table and how a WebAssembly stage builds itself: its
//! component resolved ([`ComponentRef`]), loaded into the host's sandbox, and
//! instantiated and `init`ed, with its shadow candidate if it has one. The
//! sandbox and the component store come from the host's services
//! ([`BuildCx::services`]), as any node's services do.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::WasmOperator;
use super::shadow::Shadow;
use crate::connectors::lookup::LookupGrant;
use crate::node::config::{BuildCx, FieldType, OperatorConfig, SpecError};
use crate::node::services::ComponentSource;
use crate::node::{NodeError, Operator};
use crate::sandbox::{
    ComponentRef, DeclaredOutputs, FeaturizerStage, Grants, LoadedComponent, Lookups, OutputColumn,
    OutputSchemaError, ResolveError, Sandbox, StageLimits, TableLookup,
};

/// A WebAssembly featurizer stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WasmStageSpec {
    /// A component file (`.wasm`), relative to the pipeline file, or a component
    /// in the store: `name@version`, `name` (its latest version) or
    /// `sha256:<hex>`. A value ending in `.wasm`/`.wat` or containing `/` is a
    /// file. Exactly one of `component` and `crate` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component: Option<PathBuf>,
    /// A stage crate to build with `cargo build --target wasm32-wasip2` first.
    #[serde(default, rename = "crate", skip_serializing_if = "Option::is_none")]
    pub krate: Option<PathBuf>,
    /// Parameters handed to the stage's `init` as JSON. Default: `{}`.
    #[serde(default = "empty_params")]
    pub params: serde_json::Value,
    /// Send only these columns into the stage and merge what it returns back into
    /// the full batch (it must then keep every row). Default: send every column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub columns: Option<Vec<String>>,
    /// Per-call limits; every key has a default.
    #[serde(default)]
    pub limits: StageLimits,
    /// Capabilities; all denied by default.
    #[serde(default)]
    pub grants: Grants,
    /// A candidate version run beside this one on the same batches, its output
    /// compared and discarded (`[stage.wasm.shadow]`). Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<super::shadow::ShadowSpec>,
    /// The stage drops rows. A filter returns every row plus a boolean column
    /// `_keep`: the host keeps the rows where it is true, drops those where it is
    /// false or null (counted as `filtered` in the run summary) and removes the
    /// column. Default: false, a featurizer, which must return exactly one row per
    /// input row.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub filter: bool,
    /// The columns the stage returns, with their types:
    /// `outputs = [{ name = "price_bucket", type = "int32" }]`. The stage's output
    /// is then its input's columns with each declared one replacing the same-named
    /// column or appended ([`crate::sandbox::output_schema`]), and every batch it
    /// returns is checked against that: a declared column missing or of another
    /// type, or a column outside it, fails the run naming the column. Default:
    /// none, and the output is not checked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<OutputSpec>,
    /// Tables the stage may look keys up in through the `weir:stage/lookup`
    /// import, by the name it passes (`[stage.wasm.lookups.segments]`): each
    /// a table and cache as `[stage.lookup]` has, served from the same cache
    /// code. A component importing `lookup` is refused at load unless at least
    /// one table is granted. Default: none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub lookups: BTreeMap<String, LookupGrant>,
}

/// One column a WebAssembly stage declares it returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    /// The column's name.
    pub name: String,
    /// Its type.
    #[serde(rename = "type")]
    pub data_type: FieldType,
}

impl WasmStageSpec {
    /// The declared [`outputs`](Self::outputs), checked, as the sandbox takes them.
    ///
    /// # Errors
    /// [`OutputSchemaError`] for a column declared twice or named `_keep`.
    pub fn declared_outputs(&self) -> Result<DeclaredOutputs, OutputSchemaError> {
        DeclaredOutputs::new(
            self.outputs
                .iter()
                .map(|o| OutputColumn {
                    name: o.name.clone(),
                    data_type: o.data_type.arrow(),
                })
                .collect(),
        )
    }

    /// Where the stage's code comes from, read from `component` and `crate`;
    /// `key` is the stage's table, which the error names.
    ///
    /// # Errors
    /// [`SpecError::Invalid`] when neither or both are set.
    pub fn reference(&self, key: &str) -> Result<ComponentRef, SpecError> {
        ComponentRef::parse(self.component.as_deref(), self.krate.as_deref(), key)
    }

    /// The stage `name` on `component`, with `params`, wired as this table says
    /// (projection, filter, declared outputs).
    fn stage(
        &self,
        sandbox: &Sandbox,
        component: &LoadedComponent,
        name: &str,
        params: &str,
        lookups: &Lookups,
    ) -> Result<FeaturizerStage, NodeError> {
        component.check_grants(lookups).map_err(stage_code)?;
        let mut stage = FeaturizerStage::with_lookups(
            sandbox,
            component,
            name,
            params,
            self.limits,
            self.grants.clone(),
            lookups.clone(),
        )?;
        stage.set_projection(self.columns.clone());
        stage.set_filter(self.filter);
        stage.set_outputs(
            self.declared_outputs()
                .map_err(|e| NodeError::config(e.to_string()))?,
        );
        Ok(stage)
    }

    /// The shadow candidate, if `[stage.wasm.shadow]` is set; `active` is the
    /// active component, used when the shadow names none.
    fn shadow(
        &self,
        cx: &BuildCx,
        sandbox: &Sandbox,
        components: Option<&dyn ComponentSource>,
        active: &LoadedComponent,
        lookups: &Lookups,
    ) -> Result<Option<Shadow>, NodeError> {
        let Some(shadow) = self.shadow.as_ref() else {
            return Ok(None);
        };
        let failed = |message: String| NodeError::config(format!("shadow: {message}"));
        let loaded;
        let component = match shadow.component.as_deref() {
            None => active,
            Some(c) => {
                loaded = ComponentRef::component(c)
                    .resolve(cx.base_dir, components)
                    .map_err(|e| failed(e.to_string()))?
                    .load(sandbox)
                    .map_err(|e| failed(e.to_string()))?;
                &loaded
            }
        };
        let params = shadow.params.as_ref().unwrap_or(&self.params).to_string();
        // The wiring is the pipeline's, as for the active version.
        let candidate = self
            .stage(sandbox, component, cx.name, &params, lookups)
            .map_err(|e| failed(e.to_string()))?;
        Ok(Some(Shadow::new(candidate, shadow)))
    }
}

impl WasmStageSpec {
    /// The granted tables, described (their data is read at the first lookup).
    fn lookups(&self, cx: &BuildCx) -> Result<Lookups, NodeError> {
        let tables = self
            .lookups
            .iter()
            .map(|(name, grant)| Ok((name.clone(), grant.open(name, cx)?)))
            .collect::<Result<BTreeMap<String, Arc<dyn TableLookup>>, NodeError>>()?;
        Ok(Lookups::new(tables))
    }
}

/// A resolution failure as the node's: a store refusal keeps its own kind; a
/// crate that does not build is the stage's code failing, kept typed (the plan
/// reports it as [`crate::sandbox::BuildError`]).
fn resolve_error(e: ResolveError) -> NodeError {
    match e {
        ResolveError::Store(e) => e,
        ResolveError::Build(e) => stage_code(e),
        other => NodeError::config(other.to_string()),
    }
}

/// The stage's code refused (it does not build, or the sandbox will not load
/// it): a fault of the stage, with its typed cause kept for the plan.
fn stage_code(error: impl std::error::Error + Send + Sync + 'static) -> NodeError {
    NodeError::Stage {
        row: None,
        transient: false,
        trap: false,
        error: Box::new(error),
    }
}

/// A WebAssembly stage builds itself like any kind: the sandbox and the
/// component store come from [`BuildCx::services`].
impl OperatorConfig for WasmStageSpec {
    /// Each batch is processed on its own: a failed call can be made again on
    /// part of it.
    fn row_local(&self) -> bool {
        true
    }

    fn check(&self, key: &str) -> Result<(), SpecError> {
        self.reference(key)?;
        for (name, grant) in &self.lookups {
            grant.check(&format!("{key}.lookups.{name}"))?;
        }
        if self.limits.fuel == 0 {
            return Err(SpecError::invalid(
                format!("{key}.limits.fuel"),
                "must be greater than 0",
            ));
        }
        if self.limits.deadline.0.is_zero() {
            return Err(SpecError::invalid(
                format!("{key}.limits.deadline"),
                "must be greater than 0",
            ));
        }
        Ok(())
    }

    /// Resolves the component (building a crate, reading the store), loads it
    /// into the sandbox, and instantiates and `init`s the stage and its shadow.
    fn build(&self, cx: &BuildCx) -> Result<Box<dyn Operator>, NodeError> {
        let sandbox: Arc<Sandbox> = cx.services.require(cx.key)?;
        let components = cx.services.get::<dyn ComponentSource>();
        let component = self
            .reference(cx.key)?
            .resolve(cx.base_dir, components.as_deref())
            .map_err(resolve_error)?
            .load(&sandbox)
            .map_err(stage_code)?;
        let lookups = self.lookups(cx)?;
        let stage = self.stage(
            &sandbox,
            &component,
            cx.name,
            &self.params.to_string(),
            &lookups,
        )?;
        let shadow = self.shadow(cx, &sandbox, components.as_deref(), &component, &lookups)?;
        Ok(Box::new(WasmOperator::new(stage).with_shadow(shadow)))
    }
}

fn empty_params() -> serde_json::Value {
    serde_json::Value::Object(serde_json::Map::new())
}
