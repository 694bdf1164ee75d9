//! The lookup stage's spec (and the table and cache specs it shares with
//! `[stage.wasm.lookups]`) and the running operator; the table itself is
//! `table.rs`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::{Field, Schema, SchemaRef};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::table::{Found, LookupTable, TableDef, names};
use crate::node::Meta;
use crate::node::config::{BuildCx, OperatorConfig, OperatorNode, SourceConfig, SpecError};
use crate::node::lineage::StageLineage;
use crate::node::retry::RetryPolicy;
use crate::node::{AsyncOperator, BoxFuture, Emitter, NodeError};
use crate::units::{ByteSize, Millis};

/// Where the table lives: one source kind's table, read whole (or, for
/// PostgreSQL, by keys).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum TableSpec {
    /// A PostgreSQL query or table (`table.postgres = { … }`, the keys of
    /// `[source.postgres]` but `incremental`).
    #[cfg(feature = "postgres")]
    Postgres(crate::connectors::postgres::PostgresSourceSpec),
    /// A JSON-lines file (`table.jsonl = { path, schema }`).
    Jsonl(crate::connectors::JsonlSourceSpec),
    /// A CSV file (`table.csv = { path, schema }`).
    #[cfg(feature = "csv")]
    Csv(crate::connectors::CsvSourceSpec),
    /// Parquet files (`table.parquet = { path }`).
    #[cfg(feature = "parquet")]
    Parquet(crate::connectors::ParquetSourceSpec),
}

impl TableSpec {
    pub(crate) fn name(&self) -> &'static str {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres(_) => "postgres",
            Self::Jsonl(_) => "jsonl",
            #[cfg(feature = "csv")]
            Self::Csv(_) => "csv",
            #[cfg(feature = "parquet")]
            Self::Parquet(_) => "parquet",
        }
    }

    pub(crate) fn config(&self) -> &dyn SourceConfig {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres(s) => s,
            Self::Jsonl(s) => s,
            #[cfg(feature = "csv")]
            Self::Csv(s) => s,
            #[cfg(feature = "parquet")]
            Self::Parquet(s) => s,
        }
    }
}

/// How the table is cached: loaded whole, or fetched per key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheMode {
    /// The whole table, loaded when the first batch arrives and again every
    /// `refresh`.
    #[default]
    Full,
    /// Keys fetched as batches lack them, one query per batch (PostgreSQL,
    /// one key column).
    Lazy,
}

/// `cache = { … }`: see the module docs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSpec {
    /// `full` (default) or `lazy`.
    #[serde(default)]
    pub mode: CacheMode,
    /// Most entries held. Default: 10,000,000.
    #[serde(default = "default_max_entries")]
    pub max_entries: usize,
    /// Most bytes held (also charged to the run's memory pool). Default: none
    /// beyond the pool's own limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<ByteSize>,
    /// Lazy: how long a fetched value is served. Default: 10 min.
    #[serde(default = "default_ttl")]
    pub ttl: Millis,
    /// Lazy: how long a key the table lacks is not asked for again. Default: 1 min.
    #[serde(default = "default_negative_ttl")]
    pub negative_ttl: Millis,
    /// Full: reload the table this often, in the background. Default: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh: Option<Millis>,
    /// Full: refuse a reload that has fewer rows than this fraction below the
    /// current generation's (0.5: refuse losing more than half). Default: 0.5.
    #[serde(default = "default_max_shrink")]
    pub max_shrink: f64,
    /// How long past due values may still be served when the table cannot be
    /// read (a refused or failed reload, a failed fetch). Default: 1 h.
    #[serde(default = "default_staleness")]
    pub staleness: Millis,
}

fn default_max_entries() -> usize {
    10_000_000
}
fn default_ttl() -> Millis {
    Millis(Duration::from_secs(600))
}
fn default_negative_ttl() -> Millis {
    Millis(Duration::from_secs(60))
}
fn default_max_shrink() -> f64 {
    0.5
}
fn default_staleness() -> Millis {
    Millis(Duration::from_secs(3600))
}

impl Default for CacheSpec {
    fn default() -> Self {
        Self {
            mode: CacheMode::default(),
            max_entries: default_max_entries(),
            max_bytes: None,
            ttl: default_ttl(),
            negative_ttl: default_negative_ttl(),
            refresh: None,
            max_shrink: default_max_shrink(),
            staleness: default_staleness(),
        }
    }
}

/// `[stage.lookup]`: see the module docs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LookupSpec {
    /// The input's key columns.
    pub key: Vec<String>,
    /// The table's key columns, in the same order. Default: `key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table_key: Option<Vec<String>>,
    /// The table.
    pub table: TableSpec,
    /// The table's columns added to each row. Default: every column but the
    /// keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub columns: Option<Vec<String>>,
    /// Values for a row whose key the table lacks (or whose key is null), by
    /// column; a column without one is null.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub defaults: BTreeMap<String, serde_json::Value>,
    /// The cache.
    #[serde(default)]
    pub cache: CacheSpec,
    /// How a failed load or fetch is retried before values are served stale.
    #[serde(default)]
    pub retry: RetryPolicy,
}

impl LookupSpec {
    fn table_key(&self) -> &[String] {
        self.table_key.as_deref().unwrap_or(&self.key)
    }
}

/// Checks a table, its cache and its retry policy as a lookup reads them:
/// `key` is the key path of their table (`stage[1].lookup`), `key_columns` how
/// many columns key it.
///
/// # Errors
/// [`SpecError::Invalid`] naming the offending key.
pub(crate) fn check_table(
    key: &str,
    table: &TableSpec,
    key_columns: usize,
    cache: &CacheSpec,
    retry: &RetryPolicy,
) -> Result<(), SpecError> {
    let table_key = format!("{key}.table.{}", table.name());
    table.config().check(&table_key)?;
    #[cfg(feature = "postgres")]
    if let TableSpec::Postgres(p) = table
        && p.incremental.is_some()
    {
        return Err(SpecError::invalid(
            format!("{table_key}.incremental"),
            "a lookup table is read whole or by key, not incrementally",
        ));
    }
    let c = cache;
    if c.mode == CacheMode::Lazy {
        #[cfg(feature = "postgres")]
        let postgres = matches!(table, TableSpec::Postgres(_));
        #[cfg(not(feature = "postgres"))]
        let postgres = false;
        if !postgres {
            return Err(SpecError::invalid(
                format!("{key}.cache.mode"),
                "`lazy` fetches keys from PostgreSQL; a file table is loaded whole (`full`)",
            ));
        }
        if key_columns != 1 {
            return Err(SpecError::invalid(
                format!("{key}.cache.mode"),
                "`lazy` keys on one column",
            ));
        }
        if c.refresh.is_some() {
            return Err(SpecError::invalid(
                format!("{key}.cache.refresh"),
                "applies to `full`; a lazy cache's entries expire after `ttl`",
            ));
        }
    }
    if !(0.0..=1.0).contains(&c.max_shrink) {
        return Err(SpecError::invalid(
            format!("{key}.cache.max_shrink"),
            "must be a fraction from 0 to 1",
        ));
    }
    if c.max_entries == 0 {
        return Err(SpecError::invalid(
            format!("{key}.cache.max_entries"),
            "must be at least 1",
        ));
    }
    retry
        .check()
        .map_err(|e| SpecError::invalid(format!("{key}.retry"), e))
}

impl OperatorConfig for LookupSpec {
    fn check(&self, key: &str) -> Result<(), SpecError> {
        if self.key.is_empty() {
            return Err(SpecError::invalid(format!("{key}.key"), "names no column"));
        }
        if self.table_key().len() != self.key.len() {
            return Err(SpecError::invalid(
                format!("{key}.table_key"),
                format!(
                    "names {} columns for {} in `key`",
                    self.table_key().len(),
                    self.key.len()
                ),
            ));
        }
        check_table(key, &self.table, self.key.len(), &self.cache, &self.retry)
    }

    fn build(&self, cx: &BuildCx) -> Result<Box<dyn crate::node::Operator>, NodeError> {
        Err(NodeError::Bug(format!(
            "`{}` is an async operator, built with build_node",
            cx.key
        )))
    }

    /// Describes the table (its schema, so the plan knows the output); the
    /// data is read when the first batch arrives.
    fn build_node(&self, cx: &BuildCx) -> Result<OperatorNode, NodeError> {
        let params = serde_json::to_string(self).unwrap_or_default();
        let table = LookupTable::open(
            &TableDef {
                key: cx.key,
                table: &self.table,
                table_key: self.table_key(),
                columns: self.columns.as_deref(),
                defaults: &self.defaults,
                cache: &self.cache,
                retry: &self.retry,
                params: params.clone(),
                space: format!("lookup/{}/{}", cx.pipeline, cx.name),
                consumer: format!("lookup `{}`", cx.name),
            },
            cx,
        )?;
        Ok(OperatorNode::Async(Box::new(LookupStage {
            key: cx.key.to_owned(),
            input_key: self.key.clone(),
            value_schema: table.value_schema().clone(),
            table,
            params_hash: hex::encode(Sha256::digest(params.as_bytes())),
            stage_name: cx.name.to_owned(),
        })))
    }

    fn row_local(&self) -> bool {
        false
    }

    fn unguarded_because(&self) -> &'static str {
        "fails only when its table cannot be read past the cache's `staleness`, which no row \
         caused; the table's own `retry` says how an outage is retried"
    }
}

/// The running stage: its input's key columns, and the table.
struct LookupStage {
    key: String,
    input_key: Vec<String>,
    value_schema: SchemaRef,
    table: LookupTable,
    params_hash: String,
    stage_name: String,
}

impl LookupStage {
    async fn process_batch(
        &mut self,
        batch: RecordBatch,
        out: &mut Emitter,
    ) -> Result<(), NodeError> {
        // The input's keys, of the table's key types.
        let keys: Vec<ArrayRef> = self
            .input_key
            .iter()
            .zip(self.table.key_fields())
            .map(|(name, field)| {
                let c = batch.column_by_name(name).ok_or_else(|| {
                    NodeError::config(format!(
                        "`{}.key`: the input has no column `{name}`",
                        self.key
                    ))
                })?;
                arrow::compute::cast(c, field.data_type()).map_err(|e| {
                    NodeError::data(format!(
                        "`{}`: key column `{name}` cannot be read as the table's {}: {e}",
                        self.key,
                        field.data_type()
                    ))
                })
            })
            .collect::<Result<_, _>>()?;
        let Found { values, digest } = self.table.lookup(&keys, batch.num_rows(), out).await?;
        let mut fields: Vec<Field> = batch
            .schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.extend(
            self.value_schema
                .fields()
                .iter()
                .map(|f| f.as_ref().clone()),
        );
        let mut columns = batch.columns().to_vec();
        columns.extend(values);
        let output = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?;
        let input = out.input_meta().cloned().unwrap_or_default();
        let entry = StageLineage {
            stage: self.stage_name.clone(),
            digest,
            params_hash: self.params_hash.clone(),
        };
        out.push_with(
            output,
            Meta {
                lineage: Arc::new(input.lineage.with_stage(&entry)),
                acks: input.acks,
            },
        );
        Ok(())
    }
}

impl AsyncOperator for LookupStage {
    fn output_schema(&mut self, input: &SchemaRef) -> Result<Option<SchemaRef>, NodeError> {
        for name in &self.input_key {
            if input.index_of(name).is_err() {
                return Err(NodeError::config(format!(
                    "`{}.key`: the input has no column `{name}` (it has {})",
                    self.key,
                    names(input)
                )));
            }
        }
        let mut fields: Vec<Field> = input.fields().iter().map(|f| f.as_ref().clone()).collect();
        for f in self.value_schema.fields() {
            if input.index_of(f.name()).is_ok() {
                return Err(NodeError::config(format!(
                    "`{}.columns`: the input already has a column `{}`; leave it out of \
                     `columns` or rename it in the table's query",
                    self.key,
                    f.name()
                )));
            }
            fields.push(f.as_ref().clone());
        }
        Ok(Some(Arc::new(Schema::new(fields))))
    }

    fn process<'a>(
        &'a mut self,
        batch: RecordBatch,
        out: &'a mut Emitter,
    ) -> BoxFuture<'a, Result<(), NodeError>> {
        Box::pin(self.process_batch(batch, out))
    }

    fn finish<'a>(&'a mut self, out: &'a mut Emitter) -> BoxFuture<'a, Result<(), NodeError>> {
        Box::pin(async move { self.table.finish(out) })
    }
}
