//! The lookup stage's spec, its table loaders and the running operator.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::{Field, Schema, SchemaRef};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::cache::{Cache, Probe, Ttl, null_keys};
use crate::node::Meta;
use crate::node::config::{
    BuildCx, OperatorConfig, OperatorNode, SourceConfig, SourceNode, SpecError,
};
use crate::node::lineage::StageLineage;
use crate::node::memory::{MemorySource, Reservation, RunMemory};
use crate::node::retry::{GaveUp, RetryPolicy, node_transience};
use crate::node::services::{Clock, NodeStateStore, Services};
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
    fn name(&self) -> &'static str {
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

    fn config(&self) -> &dyn SourceConfig {
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
        let table_key = format!("{key}.table.{}", self.table.name());
        self.table.config().check(&table_key)?;
        #[cfg(feature = "postgres")]
        if let TableSpec::Postgres(p) = &self.table
            && p.incremental.is_some()
        {
            return Err(SpecError::invalid(
                format!("{table_key}.incremental"),
                "a lookup table is read whole or by key, not incrementally",
            ));
        }
        let c = &self.cache;
        if c.mode == CacheMode::Lazy {
            #[cfg(feature = "postgres")]
            let postgres = matches!(self.table, TableSpec::Postgres(_));
            #[cfg(not(feature = "postgres"))]
            let postgres = false;
            if !postgres {
                return Err(SpecError::invalid(
                    format!("{key}.cache.mode"),
                    "`lazy` fetches keys from PostgreSQL; a file table is loaded whole (`full`)",
                ));
            }
            if self.key.len() != 1 {
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
        self.retry
            .check()
            .map_err(|e| SpecError::invalid(format!("{key}.retry"), e))
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
        let table_key = format!("{}.table.{}", cx.key, self.table.name());
        let table = Table::open(&self.table, cx, &table_key)?;
        let schema = table.schema();
        let table_key_cols: Vec<usize> = self
            .table_key()
            .iter()
            .map(|k| {
                schema.index_of(k).map_err(|_| {
                    NodeError::config(format!(
                        "`{}.table_key`: the table has no column `{k}` (it has {})",
                        cx.key,
                        names(&schema)
                    ))
                })
            })
            .collect::<Result<_, _>>()?;
        let columns: Vec<String> = match &self.columns {
            Some(c) => c.clone(),
            None => schema
                .fields()
                .iter()
                .enumerate()
                .filter(|(i, _)| !table_key_cols.contains(i))
                .map(|(_, f)| f.name().clone())
                .collect(),
        };
        let value_cols: Vec<usize> = columns
            .iter()
            .map(|c| {
                schema.index_of(c).map_err(|_| {
                    NodeError::config(format!(
                        "`{}.columns`: the table has no column `{c}` (it has {})",
                        cx.key,
                        names(&schema)
                    ))
                })
            })
            .collect::<Result<_, _>>()?;
        let value_schema = Arc::new(Schema::new(
            value_cols
                .iter()
                .map(|&i| schema.field(i).clone().with_nullable(true))
                .collect::<Vec<_>>(),
        ));
        for name in self.defaults.keys() {
            if !columns.contains(name) {
                return Err(NodeError::config(format!(
                    "`{}.defaults.{name}`: `{name}` is not a looked-up column (they are {})",
                    cx.key,
                    columns
                        .iter()
                        .map(|c| format!("`{c}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
        let defaults = defaults_row(&value_schema, &self.defaults)
            .map_err(|e| NodeError::config(format!("`{}.defaults`: {e}", cx.key)))?;
        let key_fields: Vec<Field> = table_key_cols
            .iter()
            .map(|&i| schema.field(i).clone())
            .collect();
        #[cfg(feature = "postgres")]
        if self.cache.mode == CacheMode::Lazy
            && let Table::Postgres(t) = &table
        {
            t.keyable(&self.table_key()[0])
                .map_err(|e| NodeError::config(format!("`{}.table_key`: {e}", cx.key)))?;
        }
        let params = serde_json::to_string(self).unwrap_or_default();
        Ok(OperatorNode::Async(Box::new(LookupStage {
            key: cx.key.to_owned(),
            input_key: self.key.clone(),
            table_key: self.table_key().to_vec(),
            table: Arc::new(table),
            table_key_cols,
            value_cols,
            key_fields,
            value_schema,
            defaults,
            spec: self.cache.clone(),
            retry: self.retry.clone(),
            clock: cx.clock.clone(),
            store: cx.services.get::<dyn NodeStateStore>(),
            space: format!("lookup/{}/{}", cx.pipeline, cx.name),
            params_hash: hex::encode(Sha256::digest(params.as_bytes())),
            stage_name: cx.name.to_owned(),
            reservation: cx.memory.pool.reservation(format!("lookup `{}`", cx.name)),
            generation: None,
            reload: None,
            failing_since: None,
            last_attempt_ms: 0,
            saved_ms: 0,
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

fn names(schema: &Schema) -> String {
    schema
        .fields()
        .iter()
        .map(|f| format!("`{}`", f.name()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One row of `schema` holding `defaults` (nulls elsewhere), parsed as a
/// JSON line by Arrow's reader, so a default of the wrong type is refused
/// the same way a record would be.
fn defaults_row(
    schema: &SchemaRef,
    defaults: &BTreeMap<String, serde_json::Value>,
) -> Result<RecordBatch, String> {
    let line = serde_json::to_string(defaults).map_err(|e| e.to_string())?;
    let mut reader = arrow::json::ReaderBuilder::new(schema.clone())
        .build(std::io::Cursor::new(line.into_bytes()))
        .map_err(|e| e.to_string())?;
    match reader.next() {
        Some(Ok(b)) if b.num_rows() == 1 => Ok(b),
        Some(Err(e)) => Err(e.to_string()),
        _ => Err("cannot be read as one row".into()),
    }
}

/// Where the rows come from.
enum Table {
    #[cfg(feature = "postgres")]
    Postgres(crate::connectors::postgres::source::PgTable),
    /// A file source, built again for each load.
    File {
        spec: TableSpec,
        key: String,
        schema: SchemaRef,
        owned: OwnedCx,
    },
}

/// What building a file source needs, kept past the plan's build.
struct OwnedCx {
    name: String,
    pipeline: String,
    base_dir: std::path::PathBuf,
    data_dir: std::path::PathBuf,
    tenant: String,
    batch_rows: std::num::NonZeroUsize,
    memory: RunMemory,
    clock: Arc<dyn Clock>,
}

impl OwnedCx {
    fn build(&self, spec: &TableSpec, key: &str) -> Result<SourceNode, NodeError> {
        let services = Services::new();
        spec.config().build(&BuildCx {
            key,
            name: &self.name,
            pipeline: &self.pipeline,
            base_dir: &self.base_dir,
            batch_rows: self.batch_rows,
            memory: &self.memory,
            data_dir: &self.data_dir,
            tenant: &self.tenant,
            services: &services,
            clock: &self.clock,
        })
    }
}

impl Table {
    fn open(spec: &TableSpec, cx: &BuildCx, key: &str) -> Result<Self, NodeError> {
        #[cfg(feature = "postgres")]
        if let TableSpec::Postgres(p) = spec {
            return Ok(Self::Postgres(p.lookup_table(key, cx.batch_rows.get())?));
        }
        let scratch = tempfile::tempdir_in(cx.memory.spill.path())
            .or_else(|_| tempfile::tempdir())
            .map_err(|e| NodeError::Io {
                path: "a scratch directory for a lookup table".into(),
                error: e,
            })?;
        let owned = OwnedCx {
            name: cx.name.to_owned(),
            pipeline: cx.pipeline.to_owned(),
            base_dir: cx.base_dir.to_owned(),
            data_dir: cx.data_dir.to_owned(),
            tenant: cx.tenant.to_owned(),
            batch_rows: cx.batch_rows,
            // File sources reserve nothing; the table's bytes are charged to
            // the run's pool by the stage.
            memory: RunMemory::for_run(
                ByteSize(u64::MAX / 2),
                ByteSize(0),
                &scratch.keep(),
                None,
                &MemorySource::System,
            )
            .map_err(|e| NodeError::Io {
                path: "a lookup table's scratch directory".into(),
                error: e,
            })?,
            clock: cx.clock.clone(),
        };
        let schema = match owned.build(spec, key)? {
            SourceNode::Sync(s) => s.schema(),
            SourceNode::Async(s) => s.schema(),
        };
        Ok(Self::File {
            spec: spec.clone(),
            key: key.to_owned(),
            schema,
            owned,
        })
    }

    fn schema(&self) -> SchemaRef {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres(t) => t.schema(),
            Self::File { schema, .. } => schema.clone(),
        }
    }

    fn describe(&self) -> String {
        match self {
            #[cfg(feature = "postgres")]
            Self::Postgres(t) => t.describe().to_owned(),
            Self::File { key, .. } => format!("the table of `{key}`"),
        }
    }

    /// Every row of the table; a file's corrupt records are counted, not kept.
    async fn read_all(self: &Arc<Self>) -> Result<(Vec<RecordBatch>, u64), NodeError> {
        match &**self {
            #[cfg(feature = "postgres")]
            Self::Postgres(t) => Ok((t.read_all().await?, 0)),
            Self::File { .. } => {
                let me = self.clone();
                tokio::task::spawn_blocking(move || me.read_file())
                    .await
                    .map_err(|e| NodeError::Bug(format!("a table load panicked: {e}")))?
            }
        }
    }

    fn read_file(&self) -> Result<(Vec<RecordBatch>, u64), NodeError> {
        let (spec, key, owned) = match self {
            Self::File {
                spec, key, owned, ..
            } => (spec, key, owned),
            #[cfg(feature = "postgres")]
            Self::Postgres(_) => {
                return Err(NodeError::Bug(
                    "read_file on a table that is no file".into(),
                ));
            }
        };
        let SourceNode::Sync(mut source) = owned.build(spec, key)? else {
            return Err(NodeError::Bug("a file table built an async source".into()));
        };
        let mut batches = Vec::new();
        let mut rejected = 0u64;
        loop {
            let mut out = Emitter::default();
            let more = source.next_batch(&mut out)?;
            rejected += out.dead_letters.len() as u64;
            batches.extend(out.take_output().into_iter().map(|(b, ..)| b));
            if !more {
                return Ok((batches, rejected));
            }
        }
    }
}

/// A loaded table: the cache and what identifies it.
struct Generation {
    cache: Cache,
    /// `table:<sha256>` (full) or empty (lazy: per batch).
    digest: String,
    rows: usize,
    loaded_ms: u64,
}

/// A reload in flight.
type Reload = tokio::task::JoinHandle<Result<(Vec<RecordBatch>, u64), NodeError>>;

/// The running stage.
#[cfg_attr(
    not(feature = "postgres"),
    allow(
        dead_code,
        reason = "the table's key names serve the lazy PostgreSQL cache"
    )
)]
struct LookupStage {
    key: String,
    input_key: Vec<String>,
    table_key: Vec<String>,
    table: Arc<Table>,
    table_key_cols: Vec<usize>,
    value_cols: Vec<usize>,
    key_fields: Vec<Field>,
    value_schema: SchemaRef,
    defaults: RecordBatch,
    spec: CacheSpec,
    retry: RetryPolicy,
    clock: Arc<dyn Clock>,
    store: Option<Arc<dyn NodeStateStore>>,
    space: String,
    params_hash: String,
    stage_name: String,
    reservation: Reservation,
    generation: Option<Generation>,
    reload: Option<Reload>,
    /// Since when the table could not be read (a failed or refused reload, a
    /// failed fetch), in ms since 1970.
    failing_since: Option<u64>,
    /// When a reload was last started.
    last_attempt_ms: u64,
    /// When a lazy cache was last kept in the store.
    saved_ms: u64,
}

const STORE_KEY: &[u8] = b"cache";

impl LookupStage {
    /// The table's rows as a new generation (keys, values, digest), checked
    /// against the cap.
    fn generation_of(&self, batches: &[RecordBatch], now: u64) -> Result<Generation, NodeError> {
        let schema = self.table.schema();
        let all = arrow::compute::concat_batches(&schema, batches)?;
        let keys: Vec<ArrayRef> = self
            .table_key_cols
            .iter()
            .map(|&i| all.column(i).clone())
            .collect();
        let values: Vec<ArrayRef> = self
            .value_cols
            .iter()
            .map(|&i| all.column(i).clone())
            .collect();
        let mut cache = Cache::new(&self.key_fields, self.value_schema.clone(), &self.defaults)?;
        cache.insert_rows(&keys, &values, now)?;
        if cache.len() > self.spec.max_entries
            || self
                .spec
                .max_bytes
                .is_some_and(|m| cache.bytes() as u64 > m.0)
        {
            return Err(NodeError::config(format!(
                "`{}`: the table holds {} entries ({} bytes), past the cache's cap \
                 (max_entries {}, max_bytes {})",
                self.key,
                cache.len(),
                cache.bytes(),
                self.spec.max_entries,
                self.spec
                    .max_bytes
                    .map_or("none".into(), |b| b.0.to_string())
            )));
        }
        let mut h = Sha256::new();
        let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut h, &schema)?;
        w.write(&all)?;
        w.finish()?;
        drop(w);
        Ok(Generation {
            cache,
            digest: format!("table:{}", hex::encode(h.finalize())),
            rows: all.num_rows(),
            loaded_ms: now,
        })
    }

    /// Charges the generation's bytes to the run's pool (replacing the
    /// previous charge).
    fn charge(&mut self, bytes: usize) -> Result<(), NodeError> {
        let held = self.reservation.size();
        if bytes > held {
            self.reservation
                .try_grow(bytes - held)
                .map_err(|e| NodeError::Resource {
                    resource: crate::node::Resource::Memory,
                    error: Box::new(e),
                })?;
        } else {
            self.reservation.shrink(held - bytes);
        }
        Ok(())
    }

    /// The first batch: the table from the store (warm) or loaded now.
    async fn start(&mut self, out: &mut Emitter) -> Result<(), NodeError> {
        let now = self.clock.now_ms();
        if let Some(g) = self.restore(now)? {
            out.count("warm_starts", 1);
            self.charge(g.cache.bytes())?;
            self.last_attempt_ms = g.loaded_ms;
            self.generation = Some(g);
            return Ok(());
        }
        if self.spec.mode == CacheMode::Lazy {
            let cache = Cache::new(&self.key_fields, self.value_schema.clone(), &self.defaults)?;
            self.generation = Some(Generation {
                cache,
                digest: String::new(),
                rows: 0,
                loaded_ms: now,
            });
            return Ok(());
        }
        let table = self.table.clone();
        let mut retries = 0u64;
        let r = self
            .retry
            .run(&self.table.describe(), &node_transience, |attempt| {
                if attempt.get() > 1 {
                    retries += 1;
                }
                let t = table.clone();
                async move { t.read_all().await }
            })
            .await;
        if retries > 0 {
            out.count("retries", retries);
        }
        let (batches, rejected) = r.map_err(GaveUp::into_node_error)?;
        if rejected > 0 {
            out.count("table_rows_rejected", rejected);
        }
        let g = self.generation_of(&batches, now)?;
        self.charge(g.cache.bytes())?;
        out.count("reloads", 1);
        self.last_attempt_ms = now;
        self.save(&g, &batches)?;
        self.generation = Some(g);
        Ok(())
    }

    /// Keeps a full generation in the store (as the table's rows).
    fn save(&self, g: &Generation, batches: &[RecordBatch]) -> Result<(), NodeError> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        let schema = self.table.schema();
        let mut buf = Vec::new();
        let header = serde_json::json!({
            "params": self.params_hash, "digest": g.digest, "loaded_ms": g.loaded_ms, "mode": "full"
        })
        .to_string();
        buf.extend((header.len() as u32).to_be_bytes());
        buf.extend(header.as_bytes());
        let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut buf, &schema)?;
        for b in batches {
            w.write(b)?;
        }
        w.finish()?;
        drop(w);
        store.put(&self.space, STORE_KEY, &buf)
    }

    /// Keeps a lazy cache's entries in the store.
    fn save_lazy(&mut self) -> Result<(), NodeError> {
        let (Some(store), Some(g)) = (&self.store, &self.generation) else {
            return Ok(());
        };
        let super::cache::Exported {
            keys,
            values,
            times,
            present,
        } = g.cache.export()?;
        let mut fields: Vec<Field> = self.key_fields.clone();
        fields.extend(
            self.value_schema
                .fields()
                .iter()
                .map(|f| f.as_ref().clone()),
        );
        fields.push(Field::new(
            "_fetched_ms",
            arrow::datatypes::DataType::UInt64,
            false,
        ));
        fields.push(Field::new(
            "_present",
            arrow::datatypes::DataType::Boolean,
            false,
        ));
        let schema = Arc::new(Schema::new(fields));
        let mut columns = keys;
        columns.extend(values);
        columns.push(Arc::new(arrow::array::UInt64Array::from(times)));
        columns.push(Arc::new(arrow::array::BooleanArray::from(present)));
        let batch = RecordBatch::try_new(schema.clone(), columns)?;
        let header = serde_json::json!({ "params": self.params_hash, "mode": "lazy" }).to_string();
        let mut buf = Vec::new();
        buf.extend((header.len() as u32).to_be_bytes());
        buf.extend(header.as_bytes());
        let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut buf, &schema)?;
        w.write(&batch)?;
        w.finish()?;
        drop(w);
        store.put(&self.space, STORE_KEY, &buf)?;
        self.saved_ms = self.clock.now_ms();
        Ok(())
    }

    /// The generation the store keeps for these same parameters, if any.
    fn restore(&self, now: u64) -> Result<Option<Generation>, NodeError> {
        let Some(store) = &self.store else {
            return Ok(None);
        };
        let Some(bytes) = store.get(&self.space, STORE_KEY)? else {
            return Ok(None);
        };
        let Some((header, body)) = bytes
            .get(..4)
            .map(|n| u32::from_be_bytes([n[0], n[1], n[2], n[3]]) as usize)
            .and_then(|n| Some((bytes.get(4..4 + n)?, bytes.get(4 + n..)?)))
        else {
            return Ok(None);
        };
        let header: serde_json::Value = serde_json::from_slice(header).unwrap_or_default();
        if header["params"] != self.params_hash.as_str() {
            return Ok(None);
        }
        let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(body), None)?;
        let batches: Vec<RecordBatch> = reader.collect::<Result<_, _>>()?;
        if header["mode"] == "full" {
            let loaded = header["loaded_ms"].as_u64().unwrap_or(0);
            let mut g = self.generation_of(&batches, loaded)?;
            g.loaded_ms = loaded;
            return Ok(Some(g));
        }
        let mut cache = Cache::new(&self.key_fields, self.value_schema.clone(), &self.defaults)?;
        let k = self.key_fields.len();
        let v = self.value_schema.fields().len();
        for b in &batches {
            let keys: Vec<ArrayRef> = b.columns()[..k].to_vec();
            let values: Vec<ArrayRef> = b.columns()[k..k + v].to_vec();
            let times = b
                .column(k + v)
                .as_any()
                .downcast_ref::<arrow::array::UInt64Array>();
            let present = b
                .column(k + v + 1)
                .as_any()
                .downcast_ref::<arrow::array::BooleanArray>();
            let (Some(times), Some(present)) = (times, present) else {
                return Ok(None);
            };
            let key_rows = cache.encode_keys(&keys)?;
            let value_rows = {
                let conv = arrow::row::RowConverter::new(
                    self.value_schema
                        .fields()
                        .iter()
                        .map(|f| arrow::row::SortField::new(f.data_type().clone()))
                        .collect(),
                )?;
                conv.convert_columns(&values)?
            };
            for i in 0..b.num_rows() {
                let value = present.value(i).then(|| value_rows.row(i).as_ref().into());
                cache.put(key_rows.row(i).as_ref().into(), value, times.value(i));
            }
        }
        let _ = now;
        Ok(Some(Generation {
            cache,
            digest: String::new(),
            rows: 0,
            loaded_ms: now,
        }))
    }

    /// Full mode: takes a finished reload in (or refuses it), and starts the
    /// next when it is due.
    fn tend_reload(&mut self, out: &mut Emitter) -> Result<(), NodeError> {
        let Some(every) = self.spec.refresh else {
            return Ok(());
        };
        let now = self.clock.now_ms();
        if self
            .reload
            .as_ref()
            .is_some_and(tokio::task::JoinHandle::is_finished)
        {
            let result = self
                .reload
                .take()
                .and_then(futures_util::FutureExt::now_or_never)
                .map(|joined| {
                    joined.map_err(|e| NodeError::Bug(format!("a reload panicked: {e}")))
                });
            let outcome = match result {
                Some(Ok(Ok((batches, _rejected)))) => self.accept(&batches, now),
                Some(Ok(Err(e)) | Err(e)) => Err(format!("the reload failed: {e}")),
                None => Err("a finished reload was not ready".to_owned()),
            };
            match outcome {
                Ok(()) => {
                    out.count("reloads", 1);
                    self.failing_since = None;
                }
                Err(why) => {
                    out.count("reloads_refused", 1);
                    tracing::warn!(stage = %self.stage_name, "{}: {why}; the previous generation keeps serving", self.table.describe());
                    self.failing_since.get_or_insert(now);
                }
            }
        }
        if self.reload.is_none()
            && now.saturating_sub(self.last_attempt_ms) >= every.0.as_millis() as u64
        {
            self.last_attempt_ms = now;
            let table = self.table.clone();
            self.reload = Some(tokio::spawn(async move { table.read_all().await }));
        }
        Ok(())
    }

    /// A reload's rows become the generation, unless they would change the
    /// columns or shrink the table past `max_shrink`.
    fn accept(&mut self, batches: &[RecordBatch], now: u64) -> Result<(), String> {
        let schema = self.table.schema();
        if let Some(b) = batches
            .iter()
            .find(|b| b.schema().fields() != schema.fields())
        {
            return Err(format!("its columns changed (now {})", names(&b.schema())));
        }
        let g = self
            .generation_of(batches, now)
            .map_err(|e| e.to_string())?;
        let old = self.generation.as_ref().map_or(0, |g| g.rows);
        if (g.rows as f64) < old as f64 * (1.0 - self.spec.max_shrink) {
            return Err(format!(
                "it would shrink the table from {old} to {} rows, more than max_shrink {}",
                g.rows, self.spec.max_shrink
            ));
        }
        self.charge(g.cache.bytes()).map_err(|e| e.to_string())?;
        self.save(&g, batches).map_err(|e| e.to_string())?;
        self.generation = Some(g);
        Ok(())
    }

    /// Fails once values have been stale for longer than `staleness`.
    fn check_staleness(&self, now: u64) -> Result<bool, NodeError> {
        let Some(since) = self.failing_since else {
            return Ok(false);
        };
        let stale_for = now.saturating_sub(since);
        if stale_for > self.spec.staleness.0.as_millis() as u64 {
            return Err(NodeError::Service {
                service: self.table.describe(),
                transient: true,
                message: format!(
                    "`{}`: {} could not be read for {} s, longer than `staleness` ({}): the \
                     values it would serve are too old",
                    self.key,
                    self.table.describe(),
                    stale_for / 1000,
                    self.spec.staleness
                ),
            });
        }
        Ok(true)
    }

    /// Lazy mode: fetches the distinct keys of `probes` the cache cannot
    /// answer, in one query; returns whether expired entries were served
    /// instead because the fetch failed.
    async fn fetch_missing(
        &mut self,
        keys: &arrow::row::Rows,
        probes: &[Probe],
        out: &mut Emitter,
    ) -> Result<bool, NodeError> {
        let Some(mut g) = self.generation.take() else {
            return Ok(false);
        };
        let r = self.fetch_into(&mut g, keys, probes, out).await;
        self.generation = Some(g);
        let bytes = self.generation.as_ref().map_or(0, |g| g.cache.bytes());
        if r.as_ref().is_ok_and(|stale| !stale) {
            self.charge(bytes)?;
        }
        r
    }

    #[cfg(feature = "postgres")]
    async fn fetch_into(
        &mut self,
        g: &mut Generation,
        keys: &arrow::row::Rows,
        probes: &[Probe],
        out: &mut Emitter,
    ) -> Result<bool, NodeError> {
        let mut wanted: Vec<&[u8]> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (i, p) in probes.iter().enumerate() {
            if *p == Probe::Unknown && seen.insert(keys.row(i).data()) {
                wanted.push(keys.row(i).data());
            }
        }
        if wanted.is_empty() {
            return Ok(false);
        }
        let table = self.table.clone();
        let Table::Postgres(pg) = &*table else {
            return Err(NodeError::Bug("a lazy lookup on a file table".into()));
        };
        let key_array = g.cache.decode_keys(wanted.iter().copied())?.remove(0);
        let column = &self.table_key[0];
        let mut retries = 0u64;
        let counter = &mut retries;
        let key_ref = &key_array;
        let r = self
            .retry
            .run(pg.describe(), &node_transience, move |attempt| {
                if attempt.get() > 1 {
                    *counter += 1;
                }
                pg.read_keys(column, key_ref)
            })
            .await;
        if retries > 0 {
            out.count("retries", retries);
        }
        out.count("lookup_queries", 1 + retries);
        let now = self.clock.now_ms();
        match r {
            Ok(batches) => {
                for b in &batches {
                    let ks: Vec<ArrayRef> = self
                        .table_key_cols
                        .iter()
                        .map(|&i| b.column(i).clone())
                        .collect();
                    let vs: Vec<ArrayRef> = self
                        .value_cols
                        .iter()
                        .map(|&i| b.column(i).clone())
                        .collect();
                    g.cache.insert_rows(&ks, &vs, now)?;
                }
                // Keys the table lacks are remembered as absent.
                for k in wanted {
                    let fresh = g.cache.get(k).is_some_and(|s| s.fetched_ms == now);
                    if !fresh {
                        g.cache.put(k.into(), None, now);
                    }
                }
                let dropped = g.cache.evict_to(
                    self.spec.max_entries,
                    self.spec.max_bytes.map_or(usize::MAX, ByteSize::as_usize),
                );
                if dropped > 0 {
                    out.count("evicted", dropped as u64);
                }
                self.failing_since = None;
                Ok(false)
            }
            Err(gave_up) => {
                let error = gave_up.into_node_error();
                // Serve what the cache holds, expired, within `staleness`.
                let limit = self.spec.staleness.0.as_millis() as u64;
                let ttl = self.spec.ttl.0.as_millis() as u64;
                let servable = wanted.iter().all(|k| {
                    g.cache
                        .get(k)
                        .is_some_and(|s| now.saturating_sub(s.fetched_ms) <= ttl + limit)
                });
                if !servable {
                    return Err(error);
                }
                self.failing_since.get_or_insert(now);
                tracing::warn!(stage = %self.stage_name, "{error}; serving cached values past their TTL");
                Ok(true)
            }
        }
    }

    #[cfg(not(feature = "postgres"))]
    async fn fetch_into(
        &mut self,
        _g: &mut Generation,
        _keys: &arrow::row::Rows,
        _probes: &[Probe],
        _out: &mut Emitter,
    ) -> Result<bool, NodeError> {
        Ok(false)
    }

    async fn process_batch(
        &mut self,
        batch: RecordBatch,
        out: &mut Emitter,
    ) -> Result<(), NodeError> {
        if self.generation.is_none() {
            self.start(out).await?;
        }
        let now = self.clock.now_ms();
        if self.spec.mode == CacheMode::Full {
            self.tend_reload(out)?;
        }
        let mut stale = self.check_staleness(now)?;
        // The input's keys, of the table's key types.
        let keys: Vec<ArrayRef> = self
            .input_key
            .iter()
            .zip(&self.key_fields)
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
        let nulls = null_keys(&keys, batch.num_rows());
        let ttl = match self.spec.mode {
            CacheMode::Full => Ttl::FOREVER,
            CacheMode::Lazy => Ttl {
                present: self.spec.ttl.0.as_millis() as u64,
                absent: self.spec.negative_ttl.0.as_millis() as u64,
            },
        };
        let g = self
            .generation
            .as_ref()
            .ok_or_else(|| NodeError::Bug("no generation".into()))?;
        let rows = g.cache.encode_keys(&keys)?;
        let mut probes = g.cache.probe(&rows, &nulls, now, ttl);
        if self.spec.mode == CacheMode::Lazy {
            let hits_before = probes
                .iter()
                .filter(|p| matches!(p, Probe::Hit { .. }))
                .count();
            out.count("lookup_hits", hits_before as u64);
            stale |= self.fetch_missing(&rows, &probes, out).await?;
            let g = self
                .generation
                .as_ref()
                .ok_or_else(|| NodeError::Bug("no generation".into()))?;
            probes = g.cache.probe(&rows, &nulls, now, Ttl::FOREVER);
            let fetched = probes.len() - hits_before - nulls.iter().filter(|n| **n).count();
            out.count("lookup_misses", fetched as u64);
        } else {
            let hits = probes
                .iter()
                .filter(|p| matches!(p, Probe::Hit { present: true, .. }))
                .count();
            out.count("lookup_hits", hits as u64);
            out.count("lookup_misses", (probes.len() - hits) as u64);
        }
        if stale {
            out.count("stale_served", batch.num_rows() as u64);
        }
        let g = self
            .generation
            .as_ref()
            .ok_or_else(|| NodeError::Bug("no generation".into()))?;
        let values = g.cache.output(&rows, &nulls)?;
        let digest = match self.spec.mode {
            CacheMode::Full => g.digest.clone(),
            CacheMode::Lazy => {
                let oldest = probes
                    .iter()
                    .filter_map(|p| match p {
                        Probe::Hit { fetched_ms, .. } => Some(*fetched_ms),
                        _ => None,
                    })
                    .min();
                oldest.map_or_else(|| "fetched:none".to_owned(), |t| format!("fetched:{t}"))
            }
        };
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
        if self.spec.mode == CacheMode::Lazy && now.saturating_sub(self.saved_ms) > 60_000 {
            self.save_lazy()?;
        }
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
        Box::pin(async move {
            if let Some(g) = &self.generation {
                out.set_state("entries", &g.cache.len().to_string());
            }
            if self.spec.mode == CacheMode::Lazy {
                self.save_lazy()?;
            }
            if let Some(h) = self.reload.take() {
                h.abort();
            }
            Ok(())
        })
    }
}
