//! Write weir stages in Rust and compile them to WebAssembly components.
//!
//! A featurizer turns one [`Batch`] into another. This one appends
//! `dwell_log = ln(1 + dwell_ms)`:
//!
// The example needs the `featurizer` feature; a `connector` build only skips it.
#![cfg_attr(feature = "featurizer", doc = "```no_run")]
#![cfg_attr(not(feature = "featurizer"), doc = "```ignore")]
//! use weir_guest::{Batch, Column, Featurizer, StageError};
//!
//! /// Appends `dwell_log` = ln(1 + `dwell_ms`); a null `dwell_ms` gives a null.
//! struct DwellLog;
//!
//! impl Featurizer for DwellLog {
//!     fn init(params: &str) -> Result<Self, String> {
//!         // Stages with parameters parse this JSON with serde_json.
//!         match params.trim() {
//!             "" | "{}" => Ok(DwellLog),
//!             other => Err(format!("dwell-log takes no parameters, got {other}")),
//!         }
//!     }
//!
//!     fn process(&mut self, input: Batch) -> Result<Batch, StageError> {
//!         // Any numeric column will do: int32, int64, float32 or float64.
//!         let dwell = input.f64s_lossy("dwell_ms")?;
//!         let logs = dwell.map(|ms| ms.map(f64::ln_1p));
//!         input.with_column(Column::f64_opt("dwell_log", logs))
//!     }
//! }
//!
//! weir_guest::export_featurizer!(DwellLog);
//! ```
//!
//! with this `Cargo.toml`:
//!
//! ```toml
//! [package]
//! name = "dwell-log"
//! edition = "2024"
//!
//! [lib]
//! crate-type = ["cdylib"]
//!
//! [dependencies]
//! weir-guest = "0.1"
//! ```
//!
//! `cargo build --release --target wasm32-wasip2` then writes the component to
//! `target/wasm32-wasip2/release/dwell_log.wasm`, ready for `weir component push`.
//! Add `-C target-feature=+simd128` to the target's rustflags for vectorized stages.
//!
//! # What crosses the boundary
//!
//! A batch crosses once per call, laid out as Arrow lays it out: one typed vector per
//! column, strings as one byte buffer plus offsets, nulls as a validity bitmap
//! (least significant bit first). [`Batch`] owns exactly those vectors, so neither
//! reading the input nor returning the output copies anything inside the guest.
//!
//! Read a batch through column views for vectorized code ([`Batch::f64s`],
//! [`Batch::strs`], [`Batch::f64s_lossy`], …) or row by row for simple per-record
//! logic ([`Batch::rows`], [`Batch::map_rows`]); either way the loop runs inside the
//! guest.
//!
//! # Roles
//!
//! A component plays one role, chosen by a Cargo feature: `featurizer` (the default:
//! `Featurizer`, `export_featurizer!`) or `connector` (a source plugin:
//! `Connector`, `export_connector!`), with `default-features = false`. The two
//! cannot be combined in one build; within one Cargo workspace, feature unification
//! would combine them, so keep featurizers and connectors in separate workspaces.
//!
//! # Host services
//!
//! [`log`] and [`metrics`] go through the host (`weir:stage/host`), which attributes
//! them to the stage. A featurizer may also look keys up in the tables its pipeline
//! grants it with `lookup::lookup` (`weir:stage/lookup`, contract `0.1.1`): a
//! component imports that interface only if it calls it, and the host loads such a
//! component only into a stage granted a table. The SDK imports nothing else. Rust's standard library adds the
//! few WASI interfaces its runtime needs (`wasi:cli` stdio, environment and exit, and
//! `wasi:io` streams, used to print a panic message); a stage's own code pulls in more
//! only if it uses them (a `HashMap`'s random seed needs `wasi:random`, `SystemTime`
//! needs `wasi:clocks`), and the host grants such capabilities only when the pipeline
//! spec says so. [`hash::stable_hash`] is the hash the host's own operators use, so
//! stages and host agree on buckets.
//!
//! # Testing a stage
//!
//! `Featurizer` is plain Rust: build a [`Batch`] from literal columns and call
//! `init` and `process` natively in `cargo test`. Off wasm, [`log`] writes to stderr
//! and [`metrics`] does nothing.

#![deny(missing_docs)]

#[cfg(all(feature = "featurizer", feature = "connector"))]
compile_error!(
    "weir-guest: enable exactly one of the `featurizer` and `connector` features \
     (a component plays one role; for a connector use `default-features = false, \
     features = [\"connector\"]`)"
);

#[cfg(not(any(feature = "featurizer", feature = "connector")))]
compile_error!("weir-guest: enable one of the `featurizer` (default) and `connector` features");

// Lets the generated code name this crate by its public name (`runtime_path` below),
// which is also how it is named from the stage crates the export macros expand in.
extern crate self as weir_guest;

mod batch;
mod bitmap;
pub mod bucket;
mod cell;
mod column;
mod error;
mod view;
#[cfg(any(feature = "featurizer", feature = "connector"))]
mod wit;

#[cfg(test)]
mod tests;

#[cfg(all(feature = "connector", not(feature = "featurizer")))]
mod connector;
#[cfg(feature = "featurizer")]
mod featurizer;

pub mod hash;
pub mod log;
#[cfg(feature = "featurizer")]
pub mod lookup;
pub mod metrics;
#[cfg(feature = "params")]
pub mod params;

pub use batch::{Batch, Row};
pub use column::{Column, DataType};
#[cfg(all(feature = "connector", not(feature = "featurizer")))]
pub use connector::Connector;
pub use error::StageError;
#[cfg(feature = "featurizer")]
pub use featurizer::Featurizer;
pub use view::{BoolView, NumericView, PrimitiveView, StrView};

/// The generated bindings. Both worlds share `weir:stage/types` and `weir:stage/host`,
/// so the rest of the crate names `bindings::weir::stage::{types, host}` whichever world
/// is built.
#[cfg(feature = "featurizer")]
mod bindings {
    wit_bindgen::generate!({
        world: "featurizer",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "export_featurizer_world",
        default_bindings_module: "weir_guest::__private",
        runtime_path: "weir_guest::__private::wit_bindgen::rt",
    });
}

/// The generated bindings; see the featurizer variant above.
#[cfg(all(feature = "connector", not(feature = "featurizer")))]
mod bindings {
    wit_bindgen::generate!({
        world: "connector",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "export_connector_world",
        default_bindings_module: "weir_guest::__private",
        runtime_path: "weir_guest::__private::wit_bindgen::rt",
    });
}

/// What the export macros expand to needs these paths; nothing here is public API and
/// any of it may change in any release.
#[doc(hidden)]
pub mod __private {
    pub use crate::cell::StageCell;
    pub use wit_bindgen;

    #[cfg(feature = "featurizer")]
    pub use crate::bindings::{
        __export_world_featurizer_cabi, __post_return_init, __post_return_process,
        _export_init_cabi, _export_process_cabi, export_featurizer_world,
    };
    #[cfg(feature = "featurizer")]
    pub use crate::featurizer::FeaturizerExport;

    #[cfg(all(feature = "connector", not(feature = "featurizer")))]
    pub use crate::bindings::{
        __export_world_connector_cabi, __post_return_next_batch, __post_return_open_source,
        _export_next_batch_cabi, _export_open_source_cabi, export_connector_world,
    };
    #[cfg(all(feature = "connector", not(feature = "featurizer")))]
    pub use crate::connector::ConnectorExport;
}
