//! The store: components by digest, pipeline versions, lineage logs, in sled.
//!
//! ```text
//!   <data dir>/store (sled)
//!     components   sha256 hex        → ComponentRecord (JSON)
//!     blobs        sha256 hex        → component bytes
//!     names        "name@0000000003" → sha256 hex      (versions sort numerically)
//!     versions     "pipeline\0" + u64 BE → PipelineVersion (JSON, immutable)
//!     active       pipeline name     → u64 BE
//!     lineage      "run\0" + u64 BE  → LineageRecord (JSON)
//!     checkpoints  pipeline name     → Checkpoint (JSON): positions and sink states to resume from
//! ```
//!
//! Components are content-addressed: pushing the same bytes twice under one name
//! returns the existing version. Compiled artifacts are not stored here; the
//! sandbox's artifact cache keeps them as files (`<data dir>/artifacts`) so they
//! can be mapped without copying.
//!
//! sled admits one process at a time. A running pipeline and the CLI both need the
//! store, so neither keeps it open: each operation opens it, does its few reads
//! and writes, and closes it, retrying for a few seconds while another process
//! holds it. Operations are small (a version, a component, a run's lineage), so
//! contention is brief.

mod pin;

pub use pin::{PinError, diff, pin};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::node::{BoxError, Checkpoint, CheckpointStore, LineageRecord};
use crate::sandbox::{StageLimits, World};
use crate::spec::PipelineSpec;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
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
        reason: &'static str,
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

/// Whether a stage's `component` value names a store entry rather than a file:
/// `sha256:<hex>`, `name@version` or a bare name, never ending in `.wasm`/`.wat`
/// and never containing `/`.
pub fn is_reference(component: &str) -> bool {
    !(component.ends_with(".wasm") || component.ends_with(".wat") || component.contains('/'))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A handle on the store in a data directory; cheap to clone, opens sled per
/// operation (see the module docs).
#[derive(Debug, Clone)]
pub struct Store {
    path: PathBuf,
}

/// One process-wide lock: sled's file lock also refuses a second handle in the
/// same process, so operations here take turns.
static IN_PROCESS: Mutex<()> = Mutex::new(());

/// How long an operation waits for another process to release the store.
const LOCK_PATIENCE: Duration = Duration::from_secs(10);

impl Store {
    /// The store in `<data_dir>/store`, created if absent.
    ///
    /// # Errors
    /// [`StoreError::Db`] when it cannot be created or opened.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let store = Self {
            path: data_dir.join("store"),
        };
        store.with(|_| Ok(()))?;
        Ok(store)
    }

    fn db_err(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Db {
            path: self.path.display().to_string(),
            message: e.to_string(),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&sled::Db) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let _turn = IN_PROCESS.lock().unwrap_or_else(|e| e.into_inner());
        let started = Instant::now();
        let db = loop {
            match sled::Config::new().path(&self.path).open() {
                Ok(db) => break db,
                Err(e) if e.to_string().contains("lock") && started.elapsed() < LOCK_PATIENCE => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(self.db_err(e)),
            }
        };
        let out = f(&db)?;
        db.flush().map_err(|e| self.db_err(e))?;
        Ok(out)
    }

    fn tree(&self, db: &sled::Db, name: &str) -> Result<sled::Tree, StoreError> {
        db.open_tree(name).map_err(|e| self.db_err(e))
    }

    fn decode<T: for<'de> Deserialize<'de>>(
        &self,
        key: &[u8],
        value: &[u8],
    ) -> Result<T, StoreError> {
        serde_json::from_slice(value).map_err(|e| StoreError::Corrupt {
            path: self.path.display().to_string(),
            key: String::from_utf8_lossy(key).into_owned(),
            message: e.to_string(),
        })
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
        let digest = crate::sandbox::digest(bytes);
        self.with(|db| {
            let names = self.tree(db, "names")?;
            let components = self.tree(db, "components")?;
            let mut last = 0;
            for item in names.scan_prefix(format!("{name}@")) {
                let (key, value) = item.map_err(|e| self.db_err(e))?;
                let version: u64 = String::from_utf8_lossy(&key[name.len() + 1..])
                    .parse()
                    .unwrap_or(0);
                if value.as_ref() == digest.as_bytes() {
                    let record = ComponentRecord {
                        name: name.to_owned(),
                        version,
                        ..self.decode(
                            &key,
                            &components
                                .get(&digest)
                                .map_err(|e| self.db_err(e))?
                                .unwrap_or_default(),
                        )?
                    };
                    return Ok(record);
                }
                last = last.max(version);
            }
            let record = ComponentRecord {
                name: name.to_owned(),
                version: last + 1,
                digest: digest.clone(),
                size: bytes.len() as u64,
                world,
                created_ms: now_ms(),
            };
            self.tree(db, "blobs")?
                .insert(&digest, bytes)
                .map_err(|e| self.db_err(e))?;
            components
                .insert(&digest, serde_json::to_vec(&record).expect("serializes"))
                .map_err(|e| self.db_err(e))?;
            names
                .insert(format!("{name}@{:010}", record.version), digest.as_bytes())
                .map_err(|e| self.db_err(e))?;
            Ok(record)
        })
    }

    /// Every `name@version`, by name then version.
    ///
    /// # Errors
    /// [`StoreError::Db`] or [`StoreError::Corrupt`].
    pub fn list_components(&self) -> Result<Vec<ComponentRecord>, StoreError> {
        self.with(|db| {
            let components = self.tree(db, "components")?;
            let mut out = Vec::new();
            for item in self.tree(db, "names")?.iter() {
                let (key, digest) = item.map_err(|e| self.db_err(e))?;
                let key_text = String::from_utf8_lossy(&key).into_owned();
                let (name, version) = key_text.rsplit_once('@').unwrap_or((&key_text, "0"));
                let meta = components
                    .get(&digest)
                    .map_err(|e| self.db_err(e))?
                    .unwrap_or_default();
                let base: ComponentRecord = self.decode(&key, &meta)?;
                out.push(ComponentRecord {
                    name: name.to_owned(),
                    version: version.parse().unwrap_or(0),
                    ..base
                });
            }
            Ok(out)
        })
    }

    /// The digest a reference names: `sha256:<hex>`, `name@version`, or `name`
    /// (its latest version).
    ///
    /// # Errors
    /// [`StoreError::UnknownComponent`] (listing the name's versions) or
    /// [`StoreError::BadReference`].
    pub fn resolve(&self, reference: &str) -> Result<String, StoreError> {
        let bad = |reason| StoreError::BadReference {
            reference: reference.to_owned(),
            reason,
        };
        self.with(|db| {
            if let Some(hex) = reference.strip_prefix("sha256:") {
                if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(bad("a digest is `sha256:` and 64 hex digits"));
                }
                let hex = hex.to_ascii_lowercase();
                if self
                    .tree(db, "blobs")?
                    .contains_key(&hex)
                    .map_err(|e| self.db_err(e))?
                {
                    return Ok(hex);
                }
                return Err(StoreError::UnknownComponent {
                    reference: reference.to_owned(),
                    hint: String::new(),
                });
            }
            let (name, version) = match reference.split_once('@') {
                Some((n, v)) => (
                    n,
                    Some(
                        v.parse::<u64>()
                            .map_err(|_| bad("the version after `@` is a number"))?,
                    ),
                ),
                None => (reference, None),
            };
            let names = self.tree(db, "names")?;
            let mut found: Vec<(u64, String)> = Vec::new();
            for item in names.scan_prefix(format!("{name}@")) {
                let (key, digest) = item.map_err(|e| self.db_err(e))?;
                let v: u64 = String::from_utf8_lossy(&key[name.len() + 1..])
                    .parse()
                    .unwrap_or(0);
                found.push((v, String::from_utf8_lossy(&digest).into_owned()));
            }
            let hit = match version {
                Some(v) => found.iter().find(|(fv, _)| *fv == v),
                None => found.last(),
            };
            hit.map(|(_, d)| d.clone())
                .ok_or_else(|| StoreError::UnknownComponent {
                    reference: reference.to_owned(),
                    hint: if found.is_empty() {
                        String::new()
                    } else {
                        let vs: Vec<String> =
                            found.iter().map(|(v, _)| format!("{name}@{v}")).collect();
                        format!(" (it has {})", vs.join(", "))
                    },
                })
        })
    }

    /// The bytes of the component with `digest`.
    ///
    /// # Errors
    /// [`StoreError::UnknownComponent`] or [`StoreError::Db`].
    pub fn component_bytes(&self, digest: &str) -> Result<Vec<u8>, StoreError> {
        self.with(|db| {
            self.tree(db, "blobs")?
                .get(digest)
                .map_err(|e| self.db_err(e))?
                .map(|v| v.to_vec())
                .ok_or_else(|| StoreError::UnknownComponent {
                    reference: format!("sha256:{digest}"),
                    hint: String::new(),
                })
        })
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
        self.with(|db| {
            let versions = self.tree(db, "versions")?;
            let prefix = version_key(&spec.name, 0);
            let prefix = &prefix[..prefix.len() - 8];
            let last = versions
                .scan_prefix(prefix)
                .keys()
                .filter_map(Result::ok)
                .filter_map(|k| k[prefix.len()..].try_into().ok().map(u64::from_be_bytes))
                .max()
                .unwrap_or(0);
            let version = PipelineVersion {
                pipeline: spec.name.clone(),
                version: last + 1,
                base_dir: spec.base_dir.clone(),
                spec,
                stages,
                tags,
                author: author.to_owned(),
                comment,
                created_ms: now_ms(),
            };
            versions
                .insert(
                    version_key(&version.pipeline, version.version),
                    serde_json::to_vec(&version).expect("serializes"),
                )
                .map_err(|e| self.db_err(e))?;
            self.tree(db, "active")?
                .insert(version.pipeline.as_bytes(), &version.version.to_be_bytes())
                .map_err(|e| self.db_err(e))?;
            Ok(version)
        })
    }

    /// Every version of `pipeline`, oldest first.
    ///
    /// # Errors
    /// [`StoreError::Db`] or [`StoreError::Corrupt`].
    pub fn history(&self, pipeline: &str) -> Result<Vec<PipelineVersion>, StoreError> {
        self.with(|db| {
            let key = version_key(pipeline, 0);
            let mut out = Vec::new();
            for item in self
                .tree(db, "versions")?
                .scan_prefix(&key[..key.len() - 8])
            {
                let (k, v) = item.map_err(|e| self.db_err(e))?;
                out.push(self.decode(&k, &v)?);
            }
            Ok(out)
        })
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
        self.with(|db| {
            Ok(self
                .tree(db, "active")?
                .get(pipeline)
                .map_err(|e| self.db_err(e))?
                .and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes)))
        })
    }

    /// Makes an existing version active (a rollback, or a roll forward).
    ///
    /// # Errors
    /// [`StoreError::UnknownVersion`].
    pub fn activate(&self, pipeline: &str, version: u64) -> Result<PipelineVersion, StoreError> {
        let v = self.version(pipeline, version)?;
        self.with(|db| {
            self.tree(db, "active")?
                .insert(pipeline.as_bytes(), &version.to_be_bytes())
                .map_err(|e| self.db_err(e))?;
            Ok(())
        })?;
        Ok(v)
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
        self.with(|db| self.append_lineage_in(db, run_id, records))
    }

    /// Appends after the run's last record, so a run's log can be written in
    /// pieces (with each checkpoint).
    fn append_lineage_in(
        &self,
        db: &sled::Db,
        run_id: &str,
        records: &[LineageRecord],
    ) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        let tree = self.tree(db, "lineage")?;
        let prefix = version_key(run_id, 0);
        let prefix = &prefix[..prefix.len() - 8];
        let next = match tree.scan_prefix(prefix).last() {
            Some(item) => {
                let (k, _) = item.map_err(|e| self.db_err(e))?;
                let mut n = [0u8; 8];
                n.copy_from_slice(&k[k.len() - 8..]);
                u64::from_be_bytes(n) + 1
            }
            None => 0,
        };
        let mut batch = sled::Batch::default();
        for (i, r) in records.iter().enumerate() {
            let value = serde_json::to_vec(r).map_err(|e| self.db_err(e))?;
            batch.insert(version_key(run_id, next + i as u64), value);
        }
        tree.apply_batch(batch).map_err(|e| self.db_err(e))
    }

    /// The pipeline's last checkpoint.
    ///
    /// # Errors
    /// [`StoreError::Db`] or [`StoreError::Corrupt`].
    pub fn checkpoint(&self, pipeline: &str) -> Result<Option<Checkpoint>, StoreError> {
        self.with(|db| {
            match self
                .tree(db, "checkpoints")?
                .get(pipeline.as_bytes())
                .map_err(|e| self.db_err(e))?
            {
                Some(v) => Ok(Some(self.decode(pipeline.as_bytes(), &v)?)),
                None => Ok(None),
            }
        })
    }

    /// Replaces the pipeline's checkpoint and appends lineage records of its run,
    /// in one open of the store.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub fn save_checkpoint(
        &self,
        checkpoint: &Checkpoint,
        lineage: &[LineageRecord],
    ) -> Result<(), StoreError> {
        self.with(|db| {
            self.append_lineage_in(db, &checkpoint.run, lineage)?;
            let value = serde_json::to_vec(checkpoint).map_err(|e| self.db_err(e))?;
            self.tree(db, "checkpoints")?
                .insert(checkpoint.pipeline.as_bytes(), value)
                .map_err(|e| self.db_err(e))?;
            Ok(())
        })
    }

    /// Forgets the pipeline's checkpoint.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub fn clear_checkpoint(&self, pipeline: &str) -> Result<(), StoreError> {
        self.with(|db| {
            self.tree(db, "checkpoints")?
                .remove(pipeline.as_bytes())
                .map_err(|e| self.db_err(e))?;
            Ok(())
        })
    }

    /// A run's lineage log, in order.
    ///
    /// # Errors
    /// [`StoreError::Db`] or [`StoreError::Corrupt`].
    pub fn lineage(&self, run_id: &str) -> Result<Vec<LineageRecord>, StoreError> {
        self.with(|db| {
            let key = version_key(run_id, 0);
            let mut out = Vec::new();
            for item in self.tree(db, "lineage")?.scan_prefix(&key[..key.len() - 8]) {
                let (k, v) = item.map_err(|e| self.db_err(e))?;
                out.push(self.decode(&k, &v)?);
            }
            Ok(out)
        })
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
