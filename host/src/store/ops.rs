//! Store operations as values: what a [`super::Store`] method asks for, and what it
//! gets back. The owner of a data directory runs them against its open sled
//! ([`run`]); any other process sends them to the owner as JSON lines and reads the
//! reply (see `owner`). One definition serves both, so a command prints the same
//! whichever process holds the store.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::layout::tree_name;
use super::letters::{self, LetterFilter, LetterUsage, StoredLetter};
use super::{ComponentRecord, PipelineVersion, StageVersion, StoreError, now_ms, version_key};
use crate::node::{Checkpoint, LineageRecord};
use crate::sandbox::World;
use crate::spec::PipelineSpec;

/// Bytes on the wire, as hex (components, node state).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bytes(pub Vec<u8>);

impl Serialize for Bytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        hex::decode(text)
            .map(Bytes)
            .map_err(serde::de::Error::custom)
    }
}

/// One store operation, of one tenant.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// [`super::Store::push_component`].
    PushComponent {
        /// Name.
        name: String,
        /// The component.
        bytes: Bytes,
        /// Its contract.
        world: World,
    },
    /// [`super::Store::list_components`].
    ListComponents,
    /// [`super::Store::resolve`].
    Resolve {
        /// `name`, `name@3` or `sha256:…`.
        reference: String,
    },
    /// [`super::Store::component_bytes`].
    ComponentBytes {
        /// sha256 hex.
        digest: String,
    },
    /// [`super::Store::add_version`].
    AddVersion {
        /// The pinned spec.
        spec: Box<PipelineSpec>,
        /// Its WebAssembly stages.
        stages: Vec<StageVersion>,
        /// Tags.
        tags: BTreeMap<String, String>,
        /// Who.
        author: String,
        /// Why.
        comment: Option<String>,
    },
    /// [`super::Store::history`].
    History {
        /// The pipeline.
        pipeline: String,
    },
    /// [`super::Store::active`].
    Active {
        /// The pipeline.
        pipeline: String,
    },
    /// [`super::Store::activate`].
    Activate {
        /// The pipeline.
        pipeline: String,
        /// The version to make active.
        version: u64,
    },
    /// [`super::Store::append_lineage`].
    AppendLineage {
        /// The run.
        run: String,
        /// Its records.
        records: Vec<LineageRecord>,
    },
    /// [`super::Store::lineage`].
    Lineage {
        /// The run.
        run: String,
    },
    /// [`super::Store::checkpoint`].
    Checkpoint {
        /// The pipeline.
        pipeline: String,
    },
    /// [`super::Store::save_checkpoint`].
    SaveCheckpoint {
        /// The checkpoint.
        checkpoint: Box<Checkpoint>,
        /// Lineage of the run since the last one.
        lineage: Vec<LineageRecord>,
    },
    /// [`super::Store::clear_checkpoint`].
    ClearCheckpoint {
        /// The pipeline.
        pipeline: String,
    },
    /// [`super::Store::kv_put`].
    KvPut {
        /// The key space.
        space: String,
        /// Key.
        key: Bytes,
        /// Value.
        value: Bytes,
    },
    /// [`super::Store::kv_get`].
    KvGet {
        /// The key space.
        space: String,
        /// Key.
        key: Bytes,
    },
    /// [`super::Store::kv_remove`].
    KvRemove {
        /// The key space.
        space: String,
        /// Key.
        key: Bytes,
    },
    /// [`super::Store::kv_scan`].
    KvScan {
        /// The key space.
        space: String,
        /// Keys that start with this.
        prefix: Bytes,
        /// At most this many entries.
        limit: usize,
    },
    /// [`super::Store::append_letters`].
    AppendLetters {
        /// The letters, their keys chosen by the writer.
        letters: Vec<StoredLetter>,
        /// The tenant's capacity in bytes, if it has one.
        limit: Option<u64>,
    },
    /// [`super::Store::letters`].
    Letters {
        /// Which.
        filter: LetterFilter,
        /// At most this many.
        limit: usize,
    },
    /// [`super::Store::update_letters`].
    UpdateLetters {
        /// The letters as they are now (a replay count raised).
        letters: Vec<StoredLetter>,
    },
    /// [`super::Store::remove_letters`].
    RemoveLetters {
        /// Which.
        filter: LetterFilter,
    },
    /// [`super::Store::letter_usage`].
    LetterUsage,
}

impl Op {
    /// Whether running it twice is the same as once, so a client may send it again
    /// when the owner went away before answering.
    pub fn is_idempotent(&self) -> bool {
        // Letters are keyed by their writer, so appending them again stores
        // them once; a removal of what is already gone removes nothing.
        !matches!(self, Op::AddVersion { .. } | Op::AppendLineage { .. })
    }

    fn writes(&self) -> bool {
        matches!(
            self,
            Op::PushComponent { .. }
                | Op::AddVersion { .. }
                | Op::Activate { .. }
                | Op::AppendLineage { .. }
                | Op::SaveCheckpoint { .. }
                | Op::ClearCheckpoint { .. }
                | Op::KvPut { .. }
                | Op::KvRemove { .. }
                | Op::AppendLetters { .. }
                | Op::UpdateLetters { .. }
                | Op::RemoveLetters { .. }
        )
    }
}

/// What an [`Op`] returns.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "reply", content = "value", rename_all = "snake_case")]
pub enum Reply {
    /// Nothing to return.
    Done,
    /// A component.
    Component(ComponentRecord),
    /// Components.
    Components(Vec<ComponentRecord>),
    /// A digest.
    Digest(String),
    /// Bytes, if there were any.
    Bytes(Option<Bytes>),
    /// A pipeline version.
    Version(Box<PipelineVersion>),
    /// Pipeline versions.
    Versions(Vec<PipelineVersion>),
    /// A version number, if any.
    Number(Option<u64>),
    /// A checkpoint, if any.
    Checkpoint(Option<Box<Checkpoint>>),
    /// Lineage records.
    Lineage(Vec<LineageRecord>),
    /// Key-value entries.
    Entries(Vec<(Bytes, Bytes)>),
    /// Dead letters.
    Letters(Vec<StoredLetter>),
    /// A tenant's dead-letter usage.
    Usage(LetterUsage),
}

/// Runs `op` for `tenant` against the open store, flushing after a write so that
/// what it returns is durable.
///
/// # Errors
/// As the [`super::Store`] method the op stands for.
pub fn run(db: &sled::Db, path: &str, tenant: &str, op: Op) -> Result<Reply, StoreError> {
    let exec = Exec { db, path, tenant };
    let writes = op.writes();
    let reply = exec.op(op)?;
    if writes {
        db.flush().map_err(|e| exec.err(e))?;
    }
    Ok(reply)
}

struct Exec<'a> {
    db: &'a sled::Db,
    path: &'a str,
    tenant: &'a str,
}

impl Exec<'_> {
    fn err(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Db {
            path: self.path.to_owned(),
            message: e.to_string(),
        }
    }

    fn tree(&self, name: &str) -> Result<sled::Tree, StoreError> {
        self.db
            .open_tree(tree_name(self.tenant, name))
            .map_err(|e| self.err(e))
    }

    fn decode<T: for<'de> Deserialize<'de>>(
        &self,
        key: &[u8],
        value: &[u8],
    ) -> Result<T, StoreError> {
        serde_json::from_slice(value).map_err(|e| StoreError::Corrupt {
            path: self.path.to_owned(),
            key: String::from_utf8_lossy(key).into_owned(),
            message: e.to_string(),
        })
    }

    fn op(&self, op: Op) -> Result<Reply, StoreError> {
        Ok(match op {
            Op::PushComponent { name, bytes, world } => {
                Reply::Component(self.push_component(&name, &bytes.0, world)?)
            }
            Op::ListComponents => Reply::Components(self.list_components()?),
            Op::Resolve { reference } => Reply::Digest(self.resolve(&reference)?),
            Op::ComponentBytes { digest } => Reply::Bytes(
                self.tree("blobs")?
                    .get(&digest)
                    .map_err(|e| self.err(e))?
                    .map(|v| Bytes(v.to_vec())),
            ),
            Op::AddVersion {
                spec,
                stages,
                tags,
                author,
                comment,
            } => Reply::Version(Box::new(
                self.add_version(*spec, stages, tags, author, comment)?,
            )),
            Op::History { pipeline } => Reply::Versions(self.history(&pipeline)?),
            Op::Active { pipeline } => Reply::Number(self.active(&pipeline)?),
            Op::Activate { pipeline, version } => {
                let v = self
                    .history(&pipeline)?
                    .into_iter()
                    .find(|v| v.version == version);
                if v.is_some() {
                    self.tree("active")?
                        .insert(pipeline.as_bytes(), &version.to_be_bytes())
                        .map_err(|e| self.err(e))?;
                }
                Reply::Number(v.map(|v| v.version))
            }
            Op::AppendLineage { run, records } => {
                self.append_lineage(&run, &records)?;
                Reply::Done
            }
            Op::Lineage { run } => {
                let key = version_key(&run, 0);
                let mut out = Vec::new();
                for item in self.tree("lineage")?.scan_prefix(&key[..key.len() - 8]) {
                    let (k, v) = item.map_err(|e| self.err(e))?;
                    out.push(self.decode(&k, &v)?);
                }
                Reply::Lineage(out)
            }
            Op::Checkpoint { pipeline } => Reply::Checkpoint(
                match self
                    .tree("checkpoints")?
                    .get(pipeline.as_bytes())
                    .map_err(|e| self.err(e))?
                {
                    Some(v) => Some(Box::new(self.decode(pipeline.as_bytes(), &v)?)),
                    None => None,
                },
            ),
            Op::SaveCheckpoint {
                checkpoint,
                lineage,
            } => {
                self.append_lineage(&checkpoint.run, &lineage)?;
                let value = serde_json::to_vec(&checkpoint).map_err(|e| self.err(e))?;
                self.tree("checkpoints")?
                    .insert(checkpoint.pipeline.as_bytes(), value)
                    .map_err(|e| self.err(e))?;
                Reply::Done
            }
            Op::ClearCheckpoint { pipeline } => {
                self.tree("checkpoints")?
                    .remove(pipeline.as_bytes())
                    .map_err(|e| self.err(e))?;
                Reply::Done
            }
            Op::KvPut { space, key, value } => {
                self.kv(&space)?
                    .insert(key.0, value.0)
                    .map_err(|e| self.err(e))?;
                Reply::Done
            }
            Op::KvGet { space, key } => Reply::Bytes(
                self.kv(&space)?
                    .get(key.0)
                    .map_err(|e| self.err(e))?
                    .map(|v| Bytes(v.to_vec())),
            ),
            Op::KvRemove { space, key } => {
                self.kv(&space)?.remove(key.0).map_err(|e| self.err(e))?;
                Reply::Done
            }
            Op::KvScan {
                space,
                prefix,
                limit,
            } => {
                let mut out = Vec::new();
                for item in self.kv(&space)?.scan_prefix(prefix.0).take(limit) {
                    let (k, v) = item.map_err(|e| self.err(e))?;
                    out.push((Bytes(k.to_vec()), Bytes(v.to_vec())));
                }
                Reply::Entries(out)
            }
            Op::AppendLetters { letters, limit } => {
                self.put_letters(&letters, limit)?;
                Reply::Done
            }
            Op::UpdateLetters { letters } => {
                self.put_letters(&letters, None)?;
                Reply::Done
            }
            Op::Letters { filter, limit } => Reply::Letters(self.letters(&filter, limit)?),
            Op::RemoveLetters { filter } => {
                let tree = self.tree(letters::TREE)?;
                let (mut entries, mut bytes) = (0u64, 0u64);
                for item in tree.scan_prefix(filter.prefix()) {
                    let (k, v) = item.map_err(|e| self.err(e))?;
                    let letter = self.letter(&k, &v)?;
                    if filter.matches(&letter)
                        && tree.remove(&k).map_err(|e| self.err(e))?.is_some()
                    {
                        entries += 1;
                        bytes += (k.len() + v.len()) as u64;
                    }
                }
                self.add_usage(-(entries as i64), -(bytes as i64))?;
                Reply::Number(Some(entries))
            }
            Op::LetterUsage => Reply::Usage(self.usage()?),
        })
    }

    fn letters(
        &self,
        filter: &LetterFilter,
        limit: usize,
    ) -> Result<Vec<StoredLetter>, StoreError> {
        let mut out = Vec::new();
        for item in self.tree(letters::TREE)?.scan_prefix(filter.prefix()) {
            if out.len() >= limit {
                break;
            }
            let (k, v) = item.map_err(|e| self.err(e))?;
            let letter = self.letter(&k, &v)?;
            if filter.matches(&letter) {
                out.push(letter);
            }
        }
        Ok(out)
    }

    /// A letter as kept under `key`.
    fn letter(&self, key: &[u8], value: &[u8]) -> Result<StoredLetter, StoreError> {
        StoredLetter::decode(value).map_err(|message| StoreError::Corrupt {
            path: self.path.to_owned(),
            key: String::from_utf8_lossy(key).into_owned(),
            message,
        })
    }

    /// Writes `letters` under their keys, refusing the whole batch when it would
    /// take the tenant past `limit`; counts only what is new or grew.
    ///
    /// A run's letters have keys no letter had before, in order, so one range
    /// probe over the batch's keys usually shows them all new; only when it
    /// finds one (a client appending again after the owner went away, a
    /// replay rewriting its letters) is each key looked up.
    fn put_letters(&self, batch: &[StoredLetter], limit: Option<u64>) -> Result<(), StoreError> {
        let tree = self.tree(letters::TREE)?;
        let encoded: Vec<(Vec<u8>, Vec<u8>)> =
            batch.iter().map(|l| (l.key(), l.encode())).collect();
        let mut entries = 0i64;
        let mut bytes = 0i64;
        let (lowest, highest) = (
            encoded.iter().map(|(k, _)| k).min(),
            encoded.iter().map(|(k, _)| k).max(),
        );
        let any_kept = match (lowest, highest) {
            (Some(lo), Some(hi)) => tree
                .range(lo.as_slice()..=hi.as_slice())
                .next()
                .transpose()
                .map_err(|e| self.err(e))?
                .is_some(),
            _ => false,
        };
        for (k, v) in &encoded {
            let old = if any_kept {
                tree.get(k).map_err(|e| self.err(e))?
            } else {
                None
            };
            match old {
                Some(old) => bytes += v.len() as i64 - old.len() as i64,
                None => {
                    entries += 1;
                    bytes += (k.len() + v.len()) as i64;
                }
            }
        }
        if let Some(limit) = limit {
            let used = self.usage()?;
            let after = used.bytes.saturating_add_signed(bytes);
            if bytes > 0 && after > limit {
                return Err(StoreError::DeadLettersFull {
                    tenant: self.tenant.to_owned(),
                    used: used.bytes,
                    adding: bytes as u64,
                    limit,
                });
            }
        }
        let mut write = sled::Batch::default();
        for (k, v) in encoded {
            write.insert(k, v);
        }
        tree.apply_batch(write).map_err(|e| self.err(e))?;
        self.add_usage(entries, bytes)
    }

    fn usage(&self) -> Result<LetterUsage, StoreError> {
        let tree = self.tree(letters::USAGE_TREE)?;
        let read = |key: &str| -> Result<u64, StoreError> {
            Ok(tree
                .get(key)
                .map_err(|e| self.err(e))?
                .and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes))
                .unwrap_or(0))
        };
        Ok(LetterUsage {
            entries: read("entries")?,
            bytes: read("bytes")?,
        })
    }

    /// Moves the usage counters by `entries` and `bytes`, each atomically.
    fn add_usage(&self, entries: i64, bytes: i64) -> Result<(), StoreError> {
        let tree = self.tree(letters::USAGE_TREE)?;
        for (key, delta) in [("entries", entries), ("bytes", bytes)] {
            if delta == 0 {
                continue;
            }
            tree.fetch_and_update(key, |old| {
                let old = old
                    .and_then(|v| v.try_into().ok().map(u64::from_be_bytes))
                    .unwrap_or(0);
                Some(old.saturating_add_signed(delta).to_be_bytes().to_vec())
            })
            .map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    fn kv(&self, space: &str) -> Result<sled::Tree, StoreError> {
        self.tree(&format!("kv.{space}"))
    }

    fn push_component(
        &self,
        name: &str,
        bytes: &[u8],
        world: World,
    ) -> Result<ComponentRecord, StoreError> {
        let digest = crate::sandbox::digest(bytes);
        let names = self.tree("names")?;
        let components = self.tree("components")?;
        let mut last = 0;
        for item in names.scan_prefix(format!("{name}@")) {
            let (key, value) = item.map_err(|e| self.err(e))?;
            let version: u64 = String::from_utf8_lossy(&key[name.len() + 1..])
                .parse()
                .unwrap_or(0);
            if value.as_ref() == digest.as_bytes() {
                let stored = components
                    .get(&digest)
                    .map_err(|e| self.err(e))?
                    .unwrap_or_default();
                return Ok(ComponentRecord {
                    name: name.to_owned(),
                    version,
                    ..self.decode(&key, &stored)?
                });
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
        self.tree("blobs")?
            .insert(&digest, bytes)
            .map_err(|e| self.err(e))?;
        components
            .insert(&digest, serde_json::to_vec(&record).expect("serializes"))
            .map_err(|e| self.err(e))?;
        names
            .insert(format!("{name}@{:010}", record.version), digest.as_bytes())
            .map_err(|e| self.err(e))?;
        Ok(record)
    }

    fn list_components(&self) -> Result<Vec<ComponentRecord>, StoreError> {
        let components = self.tree("components")?;
        let mut out = Vec::new();
        for item in self.tree("names")?.iter() {
            let (key, digest) = item.map_err(|e| self.err(e))?;
            let key_text = String::from_utf8_lossy(&key).into_owned();
            let (name, version) = key_text.rsplit_once('@').unwrap_or((&key_text, "0"));
            let meta = components
                .get(&digest)
                .map_err(|e| self.err(e))?
                .unwrap_or_default();
            let base: ComponentRecord = self.decode(&key, &meta)?;
            out.push(ComponentRecord {
                name: name.to_owned(),
                version: version.parse().unwrap_or(0),
                ..base
            });
        }
        Ok(out)
    }

    fn resolve(&self, reference: &str) -> Result<String, StoreError> {
        let bad = |reason: &str| StoreError::BadReference {
            reference: reference.to_owned(),
            reason: reason.to_owned(),
        };
        if let Some(hex) = reference.strip_prefix("sha256:") {
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad("a digest is `sha256:` and 64 hex digits"));
            }
            let hex = hex.to_ascii_lowercase();
            if self
                .tree("blobs")?
                .contains_key(&hex)
                .map_err(|e| self.err(e))?
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
        let mut found: Vec<(u64, String)> = Vec::new();
        for item in self.tree("names")?.scan_prefix(format!("{name}@")) {
            let (key, digest) = item.map_err(|e| self.err(e))?;
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
    }

    fn add_version(
        &self,
        spec: PipelineSpec,
        stages: Vec<StageVersion>,
        tags: BTreeMap<String, String>,
        author: String,
        comment: Option<String>,
    ) -> Result<PipelineVersion, StoreError> {
        let versions = self.tree("versions")?;
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
            author,
            comment,
            created_ms: now_ms(),
        };
        versions
            .insert(
                version_key(&version.pipeline, version.version),
                serde_json::to_vec(&version).expect("serializes"),
            )
            .map_err(|e| self.err(e))?;
        self.tree("active")?
            .insert(version.pipeline.as_bytes(), &version.version.to_be_bytes())
            .map_err(|e| self.err(e))?;
        Ok(version)
    }

    fn history(&self, pipeline: &str) -> Result<Vec<PipelineVersion>, StoreError> {
        let key = version_key(pipeline, 0);
        let mut out = Vec::new();
        for item in self.tree("versions")?.scan_prefix(&key[..key.len() - 8]) {
            let (k, v) = item.map_err(|e| self.err(e))?;
            out.push(self.decode(&k, &v)?);
        }
        Ok(out)
    }

    fn active(&self, pipeline: &str) -> Result<Option<u64>, StoreError> {
        Ok(self
            .tree("active")?
            .get(pipeline)
            .map_err(|e| self.err(e))?
            .and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes)))
    }

    /// Appends after the run's last record, so a run's log can be written in
    /// pieces (with each checkpoint).
    fn append_lineage(&self, run: &str, records: &[LineageRecord]) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        let tree = self.tree("lineage")?;
        let prefix = version_key(run, 0);
        let prefix = &prefix[..prefix.len() - 8];
        let next = match tree.scan_prefix(prefix).last() {
            Some(item) => {
                let (k, _) = item.map_err(|e| self.err(e))?;
                let mut n = [0u8; 8];
                n.copy_from_slice(&k[k.len() - 8..]);
                u64::from_be_bytes(n) + 1
            }
            None => 0,
        };
        let mut batch = sled::Batch::default();
        for (i, r) in records.iter().enumerate() {
            let value = serde_json::to_vec(r).map_err(|e| self.err(e))?;
            batch.insert(version_key(run, next + i as u64), value);
        }
        tree.apply_batch(batch).map_err(|e| self.err(e))
    }
}
