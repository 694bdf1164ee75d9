//! The store: components by digest, pipeline versions, lineage logs, checkpoints
//! and key spaces for node state, per tenant, in sled.
//!
//! ```text
//!   <data dir>/store (sled), every tree prefixed by its tenant (`default/names`)
//!     components   sha256 hex        → ComponentRecord (JSON)
//!     blobs        sha256 hex        → component bytes
//!     names        "name@0000000003" → sha256 hex      (versions sort numerically)
//!     versions     "pipeline\0" + u64 BE → PipelineVersion (JSON, immutable)
//!     active       pipeline name     → u64 BE
//!     lineage      "run\0" + u64 BE  → LineageRecord (JSON)
//!     checkpoints  pipeline name     → Checkpoint (JSON): positions and sink states to resume from
//!     kv.<space>   bytes             → bytes: node state, caches
//!     dead_letters pipeline \0 run \0 seq → StoredLetter (JSON): see [`letters`]
//! ```
//!
//! Components are content-addressed: pushing the same bytes twice under one name
//! returns the existing version. Compiled artifacts are not stored here; the
//! sandbox's artifact cache keeps them as files (`<data dir>/artifacts`) so they
//! can be mapped without copying.
//!
//! One process owns a data directory and keeps the store open for its life; the
//! others reach it through the owner's socket ([`owner`]). Tenants and the on-disk
//! format, with the migration from the layout before tenants, are in [`layout`].

pub mod layout;
pub mod letters;
pub mod ops;
pub mod owner;
mod pin;
mod services;

pub use owner::Role;
pub use pin::{PinError, diff, pin};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ops::{Op, Reply};

use serde::{Deserialize, Serialize};

use crate::node::{BoxError, Checkpoint, CheckpointStore, LineageRecord};
use crate::sandbox::{StageLimits, World};
use crate::spec::PipelineSpec;

/// Why a store operation failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "error", rename_all = "snake_case")]
pub enum StoreError {
    /// sled failed (I/O, corruption), or another process held the store too long.
    #[error("store {path}: {message}")]
    Db {
        /// The store's directory.
        path: String,
        /// What sled said.
        message: String,
    },
    /// A component reference names nothing in the store.
    #[error("no component `{reference}` in the store{hint}")]
    UnknownComponent {
        /// The reference (`name@3`, `name`, `sha256:…`).
        reference: String,
        /// The versions that exist under that name, if any.
        hint: String,
    },
    /// A component reference is malformed.
    #[error("`{reference}` is not a component reference: {reason}")]
    BadReference {
        /// The reference.
        reference: String,
        /// Why.
        reason: String,
    },
    /// A tenant name that could not be a key prefix and a path segment.
    #[error("tenant `{tenant}` is not a tenant name: {reason}")]
    BadTenant {
        /// The name.
        tenant: String,
        /// Why.
        reason: String,
    },
    /// The data directory was written by a newer weir.
    #[error(
        "the data directory has store format {found}, and this weir reads format {supported} and older: \
         run a weir at least as new as the one that wrote it, or use another --data-dir"
    )]
    Format {
        /// The format found.
        found: u32,
        /// The newest this weir reads.
        supported: u32,
    },
    /// No such pipeline, or no such version of it.
    #[error("pipeline `{pipeline}` has no version {version}{hint}")]
    UnknownVersion {
        /// The pipeline.
        pipeline: String,
        /// The version asked for (`active` when asking for the active one).
        version: String,
        /// The versions that exist.
        hint: String,
    },
    /// The tenant's dead-letter store is at its capacity: replay or purge
    /// letters (`weir dlq`), or raise the limit.
    #[error(
        "the dead-letter store of tenant `{tenant}` is full: it holds {used} bytes, these letters need {adding} more, and its limit is {limit} bytes (replay or purge letters with `weir dlq`, or raise --dead-letter-limit)"
    )]
    DeadLettersFull {
        /// The tenant.
        tenant: String,
        /// Bytes held.
        used: u64,
        /// Bytes the refused letters need.
        adding: u64,
        /// The limit.
        limit: u64,
    },
    /// A stored record could not be decoded (written by an incompatible weir).
    #[error("store {path}: record `{key}` is unreadable: {message}")]
    Corrupt {
        /// The store's directory.
        path: String,
        /// The record's key.
        key: String,
        /// Why.
        message: String,
    },
}

/// A key and its value in a key space ([`Store::kv_scan`]).
pub type KvEntry = (Vec<u8>, Vec<u8>);

/// A component as the store knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentRecord {
    /// The name it was pushed under.
    pub name: String,
    /// Its version under that name, from 1.
    pub version: u64,
    /// sha256 of its bytes, in hex.
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
    /// The contract it implements.
    pub world: World,
    /// When it was pushed, in milliseconds since the Unix epoch.
    pub created_ms: u64,
}

impl ComponentRecord {
    /// `name@version`.
    pub fn reference(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }
}

/// One WebAssembly stage of a pipeline version, resolved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageVersion {
    /// The stage's name.
    pub stage: String,
    /// The component as the spec named it (a file, a crate, `name@3`).
    pub source: String,
    /// The component it resolved to.
    pub digest: String,
    /// Its parameters.
    pub params: serde_json::Value,
    /// sha256 of the parameters' JSON text, as lineage records it.
    pub params_hash: String,
    /// Its limits.
    pub limits: StageLimits,
}

/// An immutable version of a pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PipelineVersion {
    /// The pipeline.
    pub pipeline: String,
    /// The version, from 1.
    pub version: u64,
    /// The spec, with every WebAssembly stage pinned to `sha256:<digest>`.
    pub spec: PipelineSpec,
    /// The directory the spec's relative paths resolve against.
    pub base_dir: PathBuf,
    /// Every WebAssembly stage, resolved.
    pub stages: Vec<StageVersion>,
    /// Tags, such as the model version it feeds (`model=ctr@7`).
    pub tags: BTreeMap<String, String>,
    /// Who applied it.
    pub author: String,
    /// Why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// When, in milliseconds since the Unix epoch.
    pub created_ms: u64,
}

impl PipelineVersion {
    /// The spec ready to plan: pinned components, relative paths resolving where
    /// the original file was.
    pub fn runnable_spec(&self) -> PipelineSpec {
        let mut spec = self.spec.clone();
        spec.base_dir = self.base_dir.clone();
        spec
    }
}

/// Whether a stage's `component` value names a store entry rather than a file
/// (one rule, beside [`crate::sandbox::ComponentRef`]).
pub use crate::sandbox::is_reference;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A handle on the store of a data directory, as one tenant sees it. Cheap to
/// clone; every handle on a directory in a process shares one [`owner::Backend`]
/// (see the module docs).
#[derive(Clone)]
pub struct Store {
    backend: Arc<owner::Backend>,
    tenant: Arc<str>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("data_dir", &self.backend.data_dir())
            .field("tenant", &self.tenant)
            .finish()
    }
}

impl Store {
    /// The store of `data_dir` as tenant [`layout::DEFAULT_TENANT`], created if
    /// absent: this process owns it if no other does, and talks to its owner
    /// otherwise.
    ///
    /// # Errors
    /// [`StoreError::Db`] when it cannot be created or opened;
    /// [`StoreError::Format`] when a newer weir wrote it.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        Ok(Self {
            backend: owner::Backend::get(data_dir)?,
            tenant: Arc::from(layout::DEFAULT_TENANT),
        })
    }

    /// The same store as `tenant` sees it.
    ///
    /// # Errors
    /// [`StoreError::BadTenant`] when the name could not be a key prefix and a path.
    pub fn for_tenant(&self, tenant: &str) -> Result<Self, StoreError> {
        layout::check_tenant(tenant)?;
        Ok(Self {
            backend: self.backend.clone(),
            tenant: Arc::from(tenant),
        })
    }

    /// The tenant this handle reads and writes as.
    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// Whether this process owns the data directory or is a client of its owner.
    pub fn role(&self) -> Role {
        self.backend.role()
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        self.backend.data_dir()
    }

    fn run(&self, op: Op) -> Result<Reply, StoreError> {
        self.backend.run(&self.tenant, op)
    }

    fn unexpected(&self, reply: Reply) -> StoreError {
        StoreError::Db {
            path: self.data_dir().join("store").display().to_string(),
            message: format!("the owner answered with an unexpected reply: {reply:?}"),
        }
    }

    /// Records a component already validated by the sandbox under `name`; the
    /// same bytes pushed again under the same name return the existing version.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub fn push_component(
        &self,
        name: &str,
        bytes: &[u8],
        world: World,
    ) -> Result<ComponentRecord, StoreError> {
        match self.run(Op::PushComponent {
            name: name.to_owned(),
            bytes: ops::Bytes(bytes.to_vec()),
            world,
        })? {
            Reply::Component(c) => Ok(c),
            r => Err(self.unexpected(r)),
        }
    }

    /// Every `name@version`, by name then version.
    ///
    /// # Errors
    /// [`StoreError::Db`] or [`StoreError::Corrupt`].
    pub fn list_components(&self) -> Result<Vec<ComponentRecord>, StoreError> {
        match self.run(Op::ListComponents)? {
            Reply::Components(c) => Ok(c),
            r => Err(self.unexpected(r)),
        }
    }

    /// The digest a reference names: `sha256:<hex>`, `name@version`, or `name`
    /// (its latest version).
    ///
    /// # Errors
    /// [`StoreError::UnknownComponent`] (listing the name's versions) or
    /// [`StoreError::BadReference`].
    pub fn resolve(&self, reference: &str) -> Result<String, StoreError> {
        match self.run(Op::Resolve {
            reference: reference.to_owned(),
        })? {
            Reply::Digest(d) => Ok(d),
            r => Err(self.unexpected(r)),
        }
    }

    /// The bytes of the component with `digest`.
    ///
    /// # Errors
    /// [`StoreError::UnknownComponent`] or [`StoreError::Db`].
    pub fn component_bytes(&self, digest: &str) -> Result<Vec<u8>, StoreError> {
        match self.run(Op::ComponentBytes {
            digest: digest.to_owned(),
        })? {
            Reply::Bytes(Some(b)) => Ok(b.0),
            Reply::Bytes(None) => Err(StoreError::UnknownComponent {
                reference: format!("sha256:{digest}"),
                hint: String::new(),
            }),
            r => Err(self.unexpected(r)),
        }
    }

    /// Stores a new immutable version of `spec.name` (numbered after the last) and
    /// makes it active. `spec` must already be pinned (see [`PipelineVersion::spec`]).
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub fn add_version(
        &self,
        spec: PipelineSpec,
        stages: Vec<StageVersion>,
        tags: BTreeMap<String, String>,
        author: &str,
        comment: Option<String>,
    ) -> Result<PipelineVersion, StoreError> {
        match self.run(Op::AddVersion {
            spec: Box::new(spec),
            stages,
            tags,
            author: author.to_owned(),
            comment,
        })? {
            Reply::Version(v) => Ok(*v),
            r => Err(self.unexpected(r)),
        }
    }

    /// Every version of `pipeline`, oldest first.
    ///
    /// # Errors
    /// [`StoreError::Db`] or [`StoreError::Corrupt`].
    pub fn history(&self, pipeline: &str) -> Result<Vec<PipelineVersion>, StoreError> {
        match self.run(Op::History {
            pipeline: pipeline.to_owned(),
        })? {
            Reply::Versions(v) => Ok(v),
            r => Err(self.unexpected(r)),
        }
    }

    /// Version `version` of `pipeline`.
    ///
    /// # Errors
    /// [`StoreError::UnknownVersion`] listing the versions that exist.
    pub fn version(&self, pipeline: &str, version: u64) -> Result<PipelineVersion, StoreError> {
        let history = self.history(pipeline)?;
        let known: Vec<String> = history.iter().map(|v| v.version.to_string()).collect();
        history
            .into_iter()
            .find(|v| v.version == version)
            .ok_or_else(|| StoreError::UnknownVersion {
                pipeline: pipeline.to_owned(),
                version: version.to_string(),
                hint: if known.is_empty() {
                    " (it has none)".to_owned()
                } else {
                    format!(" (it has {})", known.join(", "))
                },
            })
    }

    /// The active version's number of `pipeline`, if any was applied.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub fn active(&self, pipeline: &str) -> Result<Option<u64>, StoreError> {
        match self.run(Op::Active {
            pipeline: pipeline.to_owned(),
        })? {
            Reply::Number(n) => Ok(n),
            r => Err(self.unexpected(r)),
        }
    }

    /// Makes an existing version active (a rollback, or a roll forward).
    ///
    /// # Errors
    /// [`StoreError::UnknownVersion`].
    pub fn activate(&self, pipeline: &str, version: u64) -> Result<PipelineVersion, StoreError> {
        match self.run(Op::Activate {
            pipeline: pipeline.to_owned(),
            version,
        })? {
            Reply::Number(_) => self.version(pipeline, version),
            r => Err(self.unexpected(r)),
        }
    }

    /// Appends a run's lineage log (see [`crate::exec::RunControl::lineage_log`]).
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub fn append_lineage(
        &self,
        run_id: &str,
        records: &[LineageRecord],
    ) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        self.run(Op::AppendLineage {
            run: run_id.to_owned(),
            records: records.to_vec(),
        })
        .map(drop)
    }

    /// The pipeline's last checkpoint.
    ///
    /// # Errors
    /// [`StoreError::Db`] or [`StoreError::Corrupt`].
    pub fn checkpoint(&self, pipeline: &str) -> Result<Option<Checkpoint>, StoreError> {
        match self.run(Op::Checkpoint {
            pipeline: pipeline.to_owned(),
        })? {
            Reply::Checkpoint(c) => Ok(c.map(|c| *c)),
            r => Err(self.unexpected(r)),
        }
    }

    /// Replaces the pipeline's checkpoint and appends lineage records of its run,
    /// in one operation.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub fn save_checkpoint(
        &self,
        checkpoint: &Checkpoint,
        lineage: &[LineageRecord],
    ) -> Result<(), StoreError> {
        self.run(Op::SaveCheckpoint {
            checkpoint: Box::new(checkpoint.clone()),
            lineage: lineage.to_vec(),
        })
        .map(drop)
    }

    /// Forgets the pipeline's checkpoint.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub fn clear_checkpoint(&self, pipeline: &str) -> Result<(), StoreError> {
        self.run(Op::ClearCheckpoint {
            pipeline: pipeline.to_owned(),
        })
        .map(drop)
    }

    /// A run's lineage log, in order.
    ///
    /// # Errors
    /// [`StoreError::Db`] or [`StoreError::Corrupt`].
    pub fn lineage(&self, run_id: &str) -> Result<Vec<LineageRecord>, StoreError> {
        match self.run(Op::Lineage {
            run: run_id.to_owned(),
        })? {
            Reply::Lineage(l) => Ok(l),
            r => Err(self.unexpected(r)),
        }
    }

    /// Stores `value` under `key` in the tenant's key space `space` (node state,
    /// caches, dead letters): durable when this returns.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub fn kv_put(&self, space: &str, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.run(Op::KvPut {
            space: space.to_owned(),
            key: ops::Bytes(key.to_vec()),
            value: ops::Bytes(value.to_vec()),
        })
        .map(drop)
    }

    /// The value under `key` in `space`, if any.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub fn kv_get(&self, space: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self.run(Op::KvGet {
            space: space.to_owned(),
            key: ops::Bytes(key.to_vec()),
        })? {
            Reply::Bytes(b) => Ok(b.map(|b| b.0)),
            r => Err(self.unexpected(r)),
        }
    }

    /// Removes `key` from `space`.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub fn kv_remove(&self, space: &str, key: &[u8]) -> Result<(), StoreError> {
        self.run(Op::KvRemove {
            space: space.to_owned(),
            key: ops::Bytes(key.to_vec()),
        })
        .map(drop)
    }

    /// Up to `limit` entries of `space` whose keys start with `prefix`, in key order.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub fn kv_scan(
        &self,
        space: &str,
        prefix: &[u8],
        limit: usize,
    ) -> Result<Vec<KvEntry>, StoreError> {
        match self.run(Op::KvScan {
            space: space.to_owned(),
            prefix: ops::Bytes(prefix.to_vec()),
            limit,
        })? {
            Reply::Entries(e) => Ok(e.into_iter().map(|(k, v)| (k.0, v.0)).collect()),
            r => Err(self.unexpected(r)),
        }
    }
}

/// The dead-letter store ([`letters`]).
impl Store {
    /// Keeps `letters`, refusing all of them when they would take the tenant
    /// past `limit` bytes. Appending letters already kept keeps them once.
    ///
    /// # Errors
    /// [`StoreError::DeadLettersFull`], [`StoreError::Db`].
    pub fn append_letters(
        &self,
        letters: Vec<letters::StoredLetter>,
        limit: Option<u64>,
    ) -> Result<(), StoreError> {
        if letters.is_empty() {
            return Ok(());
        }
        self.run(Op::AppendLetters { letters, limit }).map(drop)
    }

    /// Up to `limit` letters that `filter` takes, by pipeline, run and order.
    ///
    /// # Errors
    /// [`StoreError::Db`] or [`StoreError::Corrupt`].
    pub fn letters(
        &self,
        filter: &letters::LetterFilter,
        limit: usize,
    ) -> Result<Vec<letters::StoredLetter>, StoreError> {
        match self.run(Op::Letters {
            filter: filter.clone(),
            limit,
        })? {
            Reply::Letters(l) => Ok(l),
            r => Err(self.unexpected(r)),
        }
    }

    /// Rewrites letters already kept (a replay raised their count).
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub fn update_letters(&self, letters: Vec<letters::StoredLetter>) -> Result<(), StoreError> {
        if letters.is_empty() {
            return Ok(());
        }
        self.run(Op::UpdateLetters { letters }).map(drop)
    }

    /// Removes the letters `filter` takes; returns how many.
    ///
    /// # Errors
    /// [`StoreError::Db`] or [`StoreError::Corrupt`].
    pub fn remove_letters(&self, filter: &letters::LetterFilter) -> Result<u64, StoreError> {
        match self.run(Op::RemoveLetters {
            filter: filter.clone(),
        })? {
            Reply::Number(n) => Ok(n.unwrap_or(0)),
            r => Err(self.unexpected(r)),
        }
    }

    /// How much of the dead-letter store the tenant uses.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub fn letter_usage(&self) -> Result<letters::LetterUsage, StoreError> {
        match self.run(Op::LetterUsage)? {
            Reply::Usage(u) => Ok(u),
            r => Err(self.unexpected(r)),
        }
    }
}

impl CheckpointStore for Store {
    fn load(&self, pipeline: &str) -> Result<Option<Checkpoint>, BoxError> {
        Ok(self.checkpoint(pipeline)?)
    }

    fn save(&self, checkpoint: &Checkpoint, lineage: &[LineageRecord]) -> Result<(), BoxError> {
        Ok(self.save_checkpoint(checkpoint, lineage)?)
    }

    fn clear(&self, pipeline: &str) -> Result<(), BoxError> {
        Ok(self.clear_checkpoint(pipeline)?)
    }
}

/// `name \0 version (u64, big-endian)`: versions of one name sort numerically.
fn version_key(name: &str, version: u64) -> Vec<u8> {
    let mut key = name.as_bytes().to_vec();
    key.push(0);
    key.extend_from_slice(&version.to_be_bytes());
    key
}

#[cfg(test)]
mod tests;
