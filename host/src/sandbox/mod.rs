//! The sandbox: where user stages run, and what they cannot do.
//!
//! ```text
//!   bytes ──`\0asm`?──sha256──► ArtifactCache ──► Component ──check imports/exports──► LoadedComponent
//!                      (memory, disk)                                         │ InstancePre
//!                                                                             ▼
//!   FeaturizerStage ── per call: set_fuel, set_epoch_deadline ──► Store + instance
//!        │                    trap? drop the Store; the next call instantiates anew
//!   ConnectorStage  ── the same per call; trap? drop the Store, the source fails
//!                      and the run resumes from its last committed checkpoint
//! ```
//!
//! One [`Sandbox`] holds the host's single wasmtime `Engine` (pooling allocator,
//! fuel, epoch interruption) and the linker every stage is linked against. Bytes
//! are WebAssembly only if they begin with the `\0asm` magic; only a file named
//! `*.wat` is read as text, so a stray file gets one short message instead of a
//! text parser's complaint about its content. What a
//! stage may import is an allow-list checked before linking, so a component asking
//! for something the host does not grant is refused with its name, not discovered
//! at run time. Inside that list, WASI is wired to a context that grants nothing
//! unless the pipeline says so: no directories, frozen clocks, no sockets, no
//! environment, stdout discarded, stderr captured to recover panic messages.
//!
//! Per call a stage has a fuel budget (deterministic CPU cap), a wall-clock
//! deadline (epoch interruption in guest code; a timeout in every host call that
//! can wait, see `deadline.rs`), a linear-memory cap enforced by a
//! [`wasmtime::ResourceLimiter`], and a cap on bytes crossing the boundary in each
//! direction. A trap of any kind poisons the instance: its `Store` is dropped and
//! the next call starts a fresh one from the `InstancePre`. What a stage returns is
//! held to its output contract (`outputs.rs`): one row per input row unless it is a
//! filter, and the columns it declares.

/// The host's WIT bindings (generated once, in [`crate::wit`]).
pub use crate::wit as bindings;
mod build;
mod cache;
mod connector;
mod console;
mod crossing;
mod deadline;
mod engine;
mod error;
mod fault;
mod limits;
mod lookup;
mod outputs;
mod reference;
mod stage;
mod state;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{HasSelf, InstancePre, Linker};

pub use build::{BuildError, build_stage};
pub use connector::ConnectorStage;
pub use engine::EngineConfig;
pub use error::{LoadError, StageFailure};
pub use limits::{
    Grants, StageLimits, default_deadline, default_fuel, default_max_crossing, default_memory,
};
pub use lookup::{
    LOOKUP_IMPORT, Looked, LookupFailure, LookupFuture, LookupLog, Lookups, TableLookup,
};
pub use outputs::{DeclaredOutputs, FILTER_COLUMN, OutputColumn, OutputSchemaError, output_schema};
pub use reference::{ComponentRef, ResolveError, Resolved, is_reference};
pub use stage::{FeaturizerStage, StageStats};
pub use state::GuestMetrics;
pub(crate) use state::StageState;

use bindings::{Featurizer, FeaturizerPre};
use cache::ArtifactCache;

/// Interfaces a stage may import, by prefix. Rust's standard library on
/// `wasm32-wasip2` imports the WASI CLI, I/O, clocks, random and filesystem
/// interfaces even when unused; they are linked to a context that grants nothing.
/// Sockets and HTTP are absent: a component importing them is refused at load.
/// Each `weir:stage` prefix admits every `0.1.z`, which the linker serves with
/// its `0.1.1` definitions. `weir:stage/lookup` is admitted here and granted per
/// stage ([`LoadedComponent::check_grants`]).
const GRANTED_IMPORTS: &[&str] = &[
    "weir:stage/host@0.1.",
    "weir:stage/types@0.1.",
    lookup::LOOKUP_PREFIX,
    "wasi:cli/",
    "wasi:io/",
    "wasi:clocks/",
    "wasi:random/",
    "wasi:filesystem/",
];

/// How to set up a [`Sandbox`].
#[derive(Debug, Clone, Default)]
pub struct SandboxConfig {
    /// Engine sizing.
    pub engine: EngineConfig,
    /// Where precompiled artifacts are cached; `None` keeps them in memory only.
    pub artifact_dir: Option<PathBuf>,
}

/// The host's sandbox: one engine, one linker, one artifact cache.
///
/// Cheap to clone (it is an `Arc`); every pipeline on a host shares one.
#[derive(Clone)]
pub struct Sandbox {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    epoch_tick: std::time::Duration,
    linker: Linker<StageState>,
    cache: ArtifactCache,
}

/// Which contract a component implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum World {
    /// `weir:stage/featurizer`: `init` and `process`.
    Featurizer,
    /// `weir:stage/connector`: `open-source` and `next-batch`.
    Connector,
}

impl World {
    /// The world's WIT name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Featurizer => "featurizer",
            Self::Connector => "connector",
        }
    }
}

/// A component admitted into the sandbox: compiled, checked, linked.
pub struct LoadedComponent {
    digest: String,
    world: World,
    size: usize,
    imports: Vec<String>,
    pre: InstancePre<StageState>,
}

impl LoadedComponent {
    /// sha256 of the component's bytes, in hex: its identity everywhere in weir.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The contract it implements.
    pub fn world(&self) -> World {
        self.world
    }

    /// Size of the component in bytes.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The interfaces it imports.
    pub fn imports(&self) -> &[String] {
        &self.imports
    }

    /// Whether it imports `weir:stage/lookup`.
    pub fn imports_lookup(&self) -> bool {
        self.lookup_import().is_some()
    }

    fn lookup_import(&self) -> Option<&str> {
        self.imports
            .iter()
            .map(String::as_str)
            .find(|i| i.starts_with(lookup::LOOKUP_PREFIX))
    }

    /// Checks the imports granted per stage against what the stage is given: a
    /// component importing `weir:stage/lookup` needs at least one table.
    ///
    /// # Errors
    /// [`LoadError::ImportNotGranted`] naming the import.
    pub fn check_grants(&self, lookups: &Lookups) -> Result<(), LoadError> {
        match self.lookup_import() {
            Some(import) if lookups.is_empty() => Err(LoadError::ImportNotGranted {
                digest: self.digest.clone(),
                import: import.to_owned(),
                granted: format!(
                    "{}; `{}` only to a stage whose spec grants it tables, `[stage.wasm.lookups.<name>]`",
                    GRANTED_IMPORTS
                        .iter()
                        .filter(|g| **g != lookup::LOOKUP_PREFIX)
                        .copied()
                        .collect::<Vec<_>>()
                        .join(", "),
                    lookup::LOOKUP_PREFIX
                ),
            }),
            _ => Ok(()),
        }
    }

    pub(crate) fn featurizer_pre(&self) -> Result<FeaturizerPre<StageState>, LoadError> {
        FeaturizerPre::new(self.pre.clone()).map_err(|e| LoadError::WrongWorld {
            digest: self.digest.clone(),
            world: "featurizer",
            message: format!("{e:#}"),
        })
    }
}

impl std::fmt::Debug for LoadedComponent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedComponent")
            .field("digest", &self.digest)
            .field("world", &self.world)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// The sha256 digest of `bytes`, in lowercase hex.
pub fn digest(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl Sandbox {
    /// Sets up the engine, the linker and the artifact cache, and starts the epoch
    /// thread.
    ///
    /// # Errors
    /// [`LoadError::Setup`] when the engine cannot be built (for example, the pool
    /// cannot reserve its address space) or the cache directory cannot be created.
    pub fn new(config: SandboxConfig) -> Result<Self, LoadError> {
        let engine = engine::build(&config.engine)?;
        engine::spawn_epoch_ticker(&engine, config.engine.epoch_tick);
        let mut linker = Linker::new(&engine);
        let setup = |e: wasmtime::Error| LoadError::Setup(format!("{e:#}"));
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(setup)?;
        deadline::bound_waiting_calls(&mut linker).map_err(setup)?;
        Featurizer::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s).map_err(setup)?;
        let cache = ArtifactCache::new(&engine, config.artifact_dir)?;
        let epoch_tick = config.engine.epoch_tick;
        Ok(Self {
            inner: Arc::new(Inner {
                engine,
                epoch_tick,
                linker,
                cache,
            }),
        })
    }

    pub(crate) fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// The engine's epoch tick: the granularity of deadlines.
    pub fn epoch_tick(&self) -> std::time::Duration {
        self.inner.epoch_tick
    }

    /// Reads, compiles (or loads from cache), checks and links a component file.
    ///
    /// A file named `*.wat` may hold WebAssembly text; any other must be binary.
    ///
    /// # Errors
    /// See [`Sandbox::load`], with [`LoadError::NotWasm`] and
    /// [`LoadError::Truncated`] naming the file; also [`LoadError::Read`].
    pub fn load_file(&self, path: &Path) -> Result<LoadedComponent, LoadError> {
        let bytes = std::fs::read(path).map_err(|error| LoadError::Read {
            path: path.display().to_string(),
            error,
        })?;
        let text_allowed = path.extension().is_some_and(|e| e == "wat");
        check_binary(&bytes, text_allowed, || path.display().to_string())?;
        self.admit(&bytes)
    }

    /// Compiles (or loads from cache), checks and links component bytes.
    ///
    /// The checks, in order: the bytes are a binary component (the `\0asm` magic,
    /// sections complete); every import is granted; the exports are those of the
    /// featurizer or the connector world, with the contract's types.
    ///
    /// # Errors
    /// [`LoadError::NotWasm`] or [`LoadError::Truncated`] naming `sha256:<digest>`;
    /// [`LoadError::Invalid`], [`LoadError::ImportNotGranted`] or
    /// [`LoadError::WrongWorld`], each naming the component's digest.
    pub fn load(&self, bytes: &[u8]) -> Result<LoadedComponent, LoadError> {
        check_binary(bytes, false, || format!("sha256:{}", digest(bytes)))?;
        self.admit(bytes)
    }

    /// Compiles (or loads from cache), checks and links bytes that passed
    /// [`check_binary`].
    fn admit(&self, bytes: &[u8]) -> Result<LoadedComponent, LoadError> {
        let digest = digest(bytes);
        let engine = &self.inner.engine;
        let component = self.inner.cache.get_or_compile(engine, &digest, bytes)?;
        let ty = component.component_type();

        let imports: Vec<String> = ty
            .imports(engine)
            .map(|(name, _)| name.to_owned())
            .collect();
        if let Some(bad) = imports
            .iter()
            .find(|i| !GRANTED_IMPORTS.iter().any(|g| i.starts_with(g)))
        {
            return Err(LoadError::ImportNotGranted {
                digest,
                import: bad.clone(),
                granted: GRANTED_IMPORTS.join(", "),
            });
        }

        let exports: Vec<(String, bool)> = ty
            .exports(engine)
            .map(|(name, item)| {
                (
                    name.to_owned(),
                    matches!(item.ty, ComponentItem::ComponentFunc(_)),
                )
            })
            .collect();
        let has = |name: &str| exports.iter().any(|(n, is_func)| n == name && *is_func);
        let world = if has("process") || has("init") {
            World::Featurizer
        } else if has("next-batch") || has("open-source") {
            World::Connector
        } else {
            let found: Vec<&str> = exports.iter().map(|(n, _)| n.as_str()).collect();
            return Err(LoadError::WrongWorld {
                digest,
                world: "featurizer or connector",
                message: format!(
                    "it exports [{}]; a featurizer exports `init` and `process`, a connector `open-source` and `next-batch`",
                    found.join(", ")
                ),
            });
        };

        let pre =
            self.inner
                .linker
                .instantiate_pre(&component)
                .map_err(|e| LoadError::WrongWorld {
                    digest: digest.clone(),
                    world: world.name(),
                    message: format!("{e:#}"),
                })?;
        let loaded = LoadedComponent {
            digest,
            world,
            size: bytes.len(),
            imports,
            pre,
        };
        // Type-check the exports against the contract now, not at the first call.
        match world {
            World::Featurizer => {
                loaded.featurizer_pre()?;
            }
            World::Connector => {
                bindings::ConnectorPre::new(loaded.pre.clone()).map_err(|e| {
                    LoadError::WrongWorld {
                        digest: loaded.digest.clone(),
                        world: "connector",
                        message: format!("{e:#}"),
                    }
                })?;
            }
        }
        Ok(loaded)
    }
}

/// The first bytes of every WebAssembly binary.
const WASM_MAGIC: &[u8; 4] = b"\0asm";

/// Refuses bytes that are not a complete WebAssembly binary before any parser sees
/// them: without the magic (unless `text_allowed`, for a `*.wat` file) they are
/// something else, and a parser would echo them back; with it, a top-level section
/// running past the end means the file was cut short. `name` names them in the
/// error.
fn check_binary(
    bytes: &[u8],
    text_allowed: bool,
    name: impl FnOnce() -> String,
) -> Result<(), LoadError> {
    if !bytes.starts_with(WASM_MAGIC) {
        return if text_allowed {
            Ok(())
        } else {
            Err(LoadError::NotWasm { name: name() })
        };
    }
    if sections_complete(bytes) {
        Ok(())
    } else {
        Err(LoadError::Truncated {
            name: name(),
            size: bytes.len(),
        })
    }
}

/// Whether the header and every top-level section (an id byte, a LEB128 `u32`
/// size, the payload) of a binary lie within `bytes`. A malformed size is left for
/// the validator to explain.
fn sections_complete(bytes: &[u8]) -> bool {
    // Magic, then a 4-byte version (and layer, for a component).
    const HEADER: usize = 8;
    if bytes.len() < HEADER {
        return false;
    }
    let mut pos = HEADER;
    while pos < bytes.len() {
        pos += 1; // the section id
        let mut size: u64 = 0;
        let mut shift = 0;
        loop {
            let Some(&byte) = bytes.get(pos) else {
                return false;
            };
            pos += 1;
            size |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                break;
            }
            shift += 7;
            if shift > 28 {
                return true;
            }
        }
        match pos.checked_add(size as usize) {
            Some(end) if end <= bytes.len() => pos = end,
            _ => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A component with one empty custom section named `x`.
    const TINY: &[u8] = b"\0asm\x0d\x00\x01\x00\x00\x02\x01x";

    #[test]
    fn binaries_are_recognised_by_their_magic_and_complete_sections() {
        let name = || "f".to_owned();
        assert!(check_binary(TINY, false, name).is_ok());
        assert!(check_binary(&TINY[..8], false, name).is_ok());
        for cut in [4, 7, 9, 10, TINY.len() - 1] {
            let err = check_binary(&TINY[..cut], false, name).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("f is a truncated WebAssembly component: it ends after {cut} bytes")
            );
        }
        let err = check_binary(b"(component)", false, name).unwrap_err();
        assert!(matches!(err, LoadError::NotWasm { .. }), "{err}");
        assert!(check_binary(b"(component)", true, name).is_ok());
        assert!(matches!(
            check_binary(&[], false, name),
            Err(LoadError::NotWasm { .. })
        ));
    }
}
