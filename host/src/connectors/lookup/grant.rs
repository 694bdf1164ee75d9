//! `[stage.wasm.lookups.<name>]`: a table granted to a WebAssembly stage, which
//! its featurizer reads through the `weir:stage/lookup` import.
//!
//! ```toml
//! [stage.wasm.lookups.segments]
//! key = "user_id"                         # the table's key column
//! table.csv = { path = "segments.csv" }   # as `[stage.lookup]`'s `table`
//! cache = { mode = "full", refresh = "5m" }
//! ```
//!
//! The table and its cache are the `lookup` stage's ([`LookupTable`]): the same
//! loading, background refresh, refusal of bad reloads and staleness rule, the
//! same counters in the run summary. What differs is who waits: the import runs
//! inside a stage call, under the call's deadline, so a future cut off there must
//! leave the cache whole. A full table does (a first load not finished is started
//! again by the next call); a lazy cache's fetch takes the cache out while it
//! waits, so `mode = "lazy"` is refused here at plan time. A table loaded whole
//! is loaded at the first call, which must fit in the stage's deadline.

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, RecordBatchOptions};
use arrow::datatypes::DataType;
use serde::{Deserialize, Serialize};

use super::stage::{CacheMode, CacheSpec, TableSpec, check_table};
use super::table::{Found, LookupTable, TableDef};
use crate::node::config::{BuildCx, SpecError};
use crate::node::retry::RetryPolicy;
use crate::node::{Emitter, NodeError};
use crate::sandbox::{Looked, LookupFailure, LookupFuture, TableLookup};

/// A table a WebAssembly stage may look keys up in. See the module docs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LookupGrant {
    /// The table's key column, which the keys the stage sends are matched
    /// against (cast to its type). Required.
    pub key: String,
    /// The table: `table.csv`, `table.jsonl`, `table.parquet` or
    /// `table.postgres`, as `[stage.lookup]`'s. Required.
    pub table: TableSpec,
    /// The table's columns a lookup returns, in this order. Default: every
    /// column but `key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub columns: Option<Vec<String>>,
    /// The cache, as `[stage.lookup]`'s, but `mode` must be `full` (the
    /// default): see the module docs.
    #[serde(default)]
    pub cache: CacheSpec,
    /// How a failed load is retried before values are served stale. Default:
    /// the default [`RetryPolicy`].
    #[serde(default)]
    pub retry: RetryPolicy,
}

impl LookupGrant {
    /// Checks the grant; `key` is its key path
    /// (`stage[1].wasm.lookups.segments`).
    ///
    /// # Errors
    /// [`SpecError::Invalid`] naming the offending key, as for `[stage.lookup]`,
    /// and for `cache.mode = "lazy"`.
    pub fn check(&self, key: &str) -> Result<(), SpecError> {
        if self.key.is_empty() {
            return Err(SpecError::invalid(format!("{key}.key"), "names no column"));
        }
        if self.cache.mode == CacheMode::Lazy {
            return Err(SpecError::invalid(
                format!("{key}.cache.mode"),
                "a WebAssembly stage's lookups are served from a table loaded whole (`full`): a \
                 lazy fetch cut off by the stage's deadline would take the cache with it",
            ));
        }
        check_table(key, &self.table, 1, &self.cache, &self.retry)
    }

    /// Describes the table (its schema) for stage `cx.name`'s table `name`;
    /// the data is read at the first lookup.
    ///
    /// # Errors
    /// As [`LookupTable::open`], naming the grant's key path.
    pub fn open(&self, name: &str, cx: &BuildCx) -> Result<Arc<dyn TableLookup>, NodeError> {
        let key = format!("{}.lookups.{name}", cx.key);
        let table_key = [self.key.clone()];
        let table = LookupTable::open(
            &TableDef {
                key: &key,
                table: &self.table,
                table_key: &table_key,
                columns: self.columns.as_deref(),
                defaults: &Default::default(),
                cache: &self.cache,
                retry: &self.retry,
                params: serde_json::to_string(self).unwrap_or_default(),
                space: format!("lookup/{}/{}/{name}", cx.pipeline, cx.name),
                consumer: format!("lookup `{name}` of stage `{}`", cx.name),
            },
            cx,
        )?;
        Ok(Arc::new(SharedTable {
            key_type: table.key_fields()[0].data_type().clone(),
            table: tokio::sync::Mutex::new(table),
        }))
    }
}

/// A granted table as the sandbox calls it: one lookup at a time.
struct SharedTable {
    key_type: DataType,
    table: tokio::sync::Mutex<LookupTable>,
}

impl TableLookup for SharedTable {
    fn lookup(&self, keys: ArrayRef) -> LookupFuture<'_> {
        Box::pin(async move {
            let keys = arrow::compute::cast(&keys, &self.key_type).map_err(|e| {
                LookupFailure::BadKeys(format!(
                    "keys of type {} cannot be read as the table's {}: {e}",
                    keys.data_type(),
                    self.key_type
                ))
            })?;
            let rows = keys.len();
            let mut table = self.table.lock().await;
            let mut out = Emitter::default();
            let Found { values, digest } = table
                .lookup(&[keys], rows, &mut out)
                .await
                .map_err(|e| failure(&table, e))?;
            let options = RecordBatchOptions::new().with_row_count(Some(rows));
            let values =
                RecordBatch::try_new_with_options(table.value_schema().clone(), values, &options)
                    .map_err(|e| LookupFailure::Failed(format!("{}: {e}", table.describe())))?;
            Ok(Looked {
                values,
                generation: digest,
                counters: out.counters().clone(),
            })
        })
    }
}

/// A table's error as the guest sees it: transient ones as `unavailable`, the
/// rest fail the call.
fn failure(table: &LookupTable, e: NodeError) -> LookupFailure {
    match e {
        NodeError::Service {
            transient: true, ..
        } => LookupFailure::Unavailable(e.to_string()),
        e => LookupFailure::Failed(format!("{}: {e}", table.describe())),
    }
}
