//! The host's bindings to the `weir:stage` WIT package: the one place they are
//! generated. Everything else in the host uses the re-exports below.

/// Bindings for the `featurizer` world (and the shared `types` and `host` interfaces).
#[allow(missing_docs)] // generated from the WIT, which documents it
pub mod featurizer {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "featurizer",
    });
}

/// Bindings for the `connector` world; its interfaces are shared with `featurizer`.
#[allow(missing_docs)] // generated from the WIT, which documents it
pub mod connector {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "connector",
        with: {
            "weir:stage/types": super::featurizer::weir::stage::types,
            "weir:stage/host": super::featurizer::weir::stage::host,
        },
    });
}

pub use connector::{Connector, ConnectorPre};
pub use featurizer::weir::stage::host::{Host as HostImports, Level};
pub use featurizer::weir::stage::types::{
    Batch as WitBatch, Column as WitColumn, ColumnValues, SourceBatch as WitSourceBatch,
    StageError as WitStageError, Utf8Values,
};
pub use featurizer::{Featurizer, FeaturizerPre};
