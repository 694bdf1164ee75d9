//! The host's bindings to the `weir:stage` WIT package: the one place they are
//! generated. Everything else in the host uses the re-exports below.

/// Bindings for the `featurizer` world (and the shared `types` and `host`
/// interfaces, and `lookup`).
#[allow(missing_docs)] // generated from the WIT, which documents it
pub mod featurizer {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "featurizer",
        // A lookup waits on its table under the call's deadline, and past it
        // traps as guest code past it does.
        imports: { "weir:stage/lookup.lookup": trappable },
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

/// The contract's `batch` as a stage *receives* it, borrowing the host's buffers:
/// lowering it into the guest copies each list once, straight from the Arrow
/// arrays, where the generated (owned) [`WitBatch`] would need an owned copy of
/// every buffer first. Field and case names are the WIT's; a call checks this
/// type against the component's `process` before using it (`typed`), so a
/// mismatch with the WIT is an error at instantiation, never a bad lowering.
///
/// Hand-written because bindgen's `ownership: Borrowing` cannot yet generate
/// these types for this package (its unused `source-batch` record comes out
/// with an undeclared lifetime).
#[derive(wasmtime::component::ComponentType, wasmtime::component::Lower, Clone, Copy, Debug)]
#[component(record)]
pub struct BatchRef<'a> {
    /// Rows in every column.
    #[component(name = "num-rows")]
    pub num_rows: u32,
    /// The columns.
    pub columns: &'a [ColumnRef<'a>],
}

/// One named column of a [`BatchRef`].
#[derive(wasmtime::component::ComponentType, wasmtime::component::Lower, Clone, Copy, Debug)]
#[component(record)]
pub struct ColumnRef<'a> {
    /// The column's name.
    pub name: &'a str,
    /// Its values.
    pub values: ColumnValuesRef<'a>,
    /// Set bit = valid; `None`: no nulls.
    pub validity: Option<&'a [u8]>,
}

/// The values of a [`ColumnRef`], one case per type, as in the WIT.
#[derive(wasmtime::component::ComponentType, wasmtime::component::Lower, Clone, Copy, Debug)]
#[component(variant)]
pub enum ColumnValuesRef<'a> {
    /// Bit-packed booleans, least significant bit first.
    #[component(name = "boolean")]
    Boolean(&'a [u8]),
    /// 32-bit integers.
    #[component(name = "int32")]
    Int32(&'a [i32]),
    /// 64-bit integers.
    #[component(name = "int64")]
    Int64(&'a [i64]),
    /// 32-bit floats.
    #[component(name = "float32")]
    Float32(&'a [f32]),
    /// 64-bit floats.
    #[component(name = "float64")]
    Float64(&'a [f64]),
    /// Strings as one byte buffer plus offsets.
    #[component(name = "utf8")]
    Utf8(Utf8ValuesRef<'a>),
    /// Milliseconds since the Unix epoch.
    #[component(name = "timestamp-ms")]
    TimestampMs(&'a [i64]),
}

/// The strings of a column: row `i` is `data[offsets[i]..offsets[i + 1]]`.
#[derive(wasmtime::component::ComponentType, wasmtime::component::Lower, Clone, Copy, Debug)]
#[component(record)]
pub struct Utf8ValuesRef<'a> {
    /// One more than the rows, starting at 0.
    pub offsets: &'a [i32],
    /// The bytes.
    pub data: &'a [u8],
}

pub use connector::{Connector, ConnectorPre};
pub use featurizer::weir::stage::host::{Host as HostImports, Level};
pub use featurizer::weir::stage::lookup::LookupError as WitLookupError;
pub use featurizer::weir::stage::types::{
    Batch as WitBatch, Column as WitColumn, ColumnValues, SourceBatch as WitSourceBatch,
    StageError as WitStageError, Utf8Values,
};
pub use featurizer::{Featurizer, FeaturizerPre};
