//! The host: the runtime as a library. A [`Host`] owns one data directory for the
//! life of the process and holds what every run on it shares.
//!
//! ```text
//!   Host ── the store (one handle; this process owns the directory or is a client of its owner)
//!    │   ── the sandbox: one wasmtime engine, the compiled-component cache (made on first use)
//!    │   ── the host memory pool ◄── tenant pools ◄── run pools
//!    │   ── client pools, one per service address
//!    │   ── the registry of runs, with live per-node counters
//!    └── Tenant "default", Tenant "team-a", …  (each: its store view, pool, directory)
//!          └── prepare(RunRequest) → PreparedRun → run() → RunSummary
//! ```
//!
//! `weir run` is a host embedded in the command's process; a server is the same
//! host behind HTTP; a test or an embedding program opens one the same way. Run
//! assembly (store, spec, plan, control socket, watcher, checkpoints, lineage,
//! registry) lives here, once ([`run`]).
//!
//! Every tenant sees its own components, versions, lineage, checkpoints and files
//! only: the store scopes every key by tenant and the tenant's directory is
//! `<data dir>/tenants/<tenant>` (see [`crate::store::layout`]).

mod clients;
mod registry;
pub mod replay;
pub mod run;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

pub use clients::ClientPools;
pub use registry::{RunEntry, RunRegistry, RunState};
pub use replay::{ReplayMiss, ReplayReport, ReplayRequest};
pub use run::{PreparedRun, RunRequest, RunTarget};

use crate::node::memory::{MemoryPool, MemorySource};
use crate::plan::RunEnv;
use crate::sandbox::{LoadError, Sandbox, SandboxConfig};
use crate::store::{Store, StoreError, layout};
use crate::units::ByteSize;

/// How a host is set up. The defaults suit `weir run` on a workstation or in a
/// container.
#[derive(Debug, Clone, Default)]
pub struct HostOptions {
    /// The sandbox's configuration; its artifact directory defaults to
    /// `<data dir>/artifacts`.
    pub sandbox: SandboxConfig,
    /// The host memory pool. Default: ¾ of the container's memory limit when it
    /// has one, else of the machine's memory ([`MemorySource::default_host_pool`]).
    pub memory: Option<ByteSize>,
    /// Each tenant's pool. Default: the host pool's size (a tenant alone may use
    /// the whole host; quotas come with the server).
    pub tenant_memory: Option<ByteSize>,
    /// What each tenant's dead-letter store may hold (keys and values). Default:
    /// [`DEFAULT_DEAD_LETTER_LIMIT`]. When it is full, a run pauses or stops as
    /// its pipeline says (`settings.dead_letters_when_full`); no letter is dropped.
    pub dead_letter_limit: Option<ByteSize>,
}

/// A tenant's dead-letter store holds 1 GiB unless told otherwise: room for
/// millions of rejected records, small enough that a pipeline rejecting
/// everything is noticed (it pauses) long before the disk fills.
pub const DEFAULT_DEAD_LETTER_LIMIT: ByteSize = ByteSize(1 << 30);

/// Why the host or a run on it failed.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The sandbox could not start.
    #[error("the sandbox: {0}")]
    Sandbox(#[from] LoadError),
    /// The pipeline could not be prepared.
    #[error(transparent)]
    Plan(#[from] crate::plan::PlanError),
    /// The run failed.
    #[error(transparent)]
    Run(#[from] crate::exec::RunError),
    /// The spec file could not be read or is invalid.
    #[error(transparent)]
    Spec(#[from] crate::spec::SpecError),
    /// The request does not fit what it names (`--watch` on a stored pipeline,
    /// `--resume` on a file, a name that is neither).
    #[error("{0}")]
    Request(String),
    /// A tenant directory could not be created.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

struct Inner {
    dir: PathBuf,
    store: Store,
    sandbox_config: SandboxConfig,
    sandbox: OnceLock<Sandbox>,
    pool: MemoryPool,
    memory_source: MemorySource,
    tenant_memory: ByteSize,
    dead_letter_limit: ByteSize,
    tenants: Mutex<HashMap<String, MemoryPool>>,
    clients: ClientPools,
    runs: RunRegistry,
}

/// The runtime of one data directory. Cheap to clone.
#[derive(Clone)]
pub struct Host {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("dir", &self.inner.dir)
            .field("role", &self.inner.store.role())
            .finish()
    }
}

impl Host {
    /// Opens `dir` (creating it): takes ownership of its store, or becomes a
    /// client of the process that owns it; migrates a directory an older weir
    /// wrote. The sandbox starts on first use, so commands that only read the
    /// store stay quick.
    ///
    /// # Errors
    /// [`HostError::Store`], e.g. [`StoreError::Format`] for a directory a newer
    /// weir wrote.
    pub fn open(dir: &Path, options: HostOptions) -> Result<Self, HostError> {
        let store = Store::open(dir)?;
        let dir = store.data_dir().to_path_buf();
        let memory_source = MemorySource::detect();
        let host_bytes = options
            .memory
            .unwrap_or_else(|| memory_source.default_host_pool());
        let mut sandbox_config = options.sandbox;
        if sandbox_config.artifact_dir.is_none() {
            sandbox_config.artifact_dir = Some(dir.join("artifacts"));
        }
        Ok(Self {
            inner: Arc::new(Inner {
                store,
                sandbox_config,
                sandbox: OnceLock::new(),
                pool: MemoryPool::host(host_bytes),
                memory_source,
                tenant_memory: options.tenant_memory.unwrap_or(host_bytes),
                dead_letter_limit: options
                    .dead_letter_limit
                    .unwrap_or(DEFAULT_DEAD_LETTER_LIMIT),
                tenants: Mutex::default(),
                clients: ClientPools::default(),
                runs: RunRegistry::default(),
                dir,
            }),
        })
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// What each tenant's dead-letter store may hold.
    pub fn dead_letter_limit(&self) -> ByteSize {
        self.inner.dead_letter_limit
    }

    /// `tenant`'s view of the host.
    ///
    /// # Errors
    /// [`StoreError::BadTenant`] for a name that could not be a key prefix and a path.
    pub fn tenant(&self, tenant: &str) -> Result<Tenant, HostError> {
        let store = self.inner.store.for_tenant(tenant)?;
        let pool = self
            .inner
            .tenants
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(tenant.to_owned())
            .or_insert_with(|| {
                MemoryPool::tenant(self.inner.tenant_memory, self.inner.pool.clone())
            })
            .clone();
        Ok(Tenant {
            host: self.clone(),
            dir: layout::tenant_dir(&self.inner.dir, tenant),
            store,
            pool,
        })
    }

    /// The sandbox: one engine and compiled-component cache for every run of the
    /// host, started on first use.
    ///
    /// # Errors
    /// [`LoadError`] when the engine cannot start.
    pub fn sandbox(&self) -> Result<Sandbox, HostError> {
        if let Some(s) = self.inner.sandbox.get() {
            return Ok(s.clone());
        }
        let made = Sandbox::new(self.inner.sandbox_config.clone())?;
        Ok(self.inner.sandbox.get_or_init(|| made).clone())
    }

    /// The host memory pool, which every tenant's pool is charged to.
    pub fn pool(&self) -> &MemoryPool {
        &self.inner.pool
    }

    /// Where the memory floor reads what is still available.
    pub fn memory_source(&self) -> &MemorySource {
        &self.inner.memory_source
    }

    /// Shared clients, one per service address.
    pub fn clients(&self) -> &ClientPools {
        &self.inner.clients
    }

    /// The runs of this host, with their state and live counters.
    pub fn runs(&self) -> &RunRegistry {
        &self.inner.runs
    }

    /// Whether this process owns the data directory.
    pub fn role(&self) -> crate::store::Role {
        self.inner.store.role()
    }
}

/// One tenant's view of a [`Host`]: its store, its memory pool, its directory.
#[derive(Clone, Debug)]
pub struct Tenant {
    host: Host,
    store: Store,
    pool: MemoryPool,
    dir: PathBuf,
}

impl Tenant {
    /// The tenant's name.
    pub fn name(&self) -> &str {
        self.store.tenant()
    }

    /// The store as this tenant sees it.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The tenant's memory pool: each of its runs is charged to it.
    pub fn pool(&self) -> &MemoryPool {
        &self.pool
    }

    /// The tenant's directory (`<data dir>/tenants/<tenant>`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The host.
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// What a run of this tenant needs: the host's sandbox, the tenant's store,
    /// directory and pool.
    ///
    /// # Errors
    /// The sandbox cannot start, or the directory cannot be created.
    pub fn env(&self) -> Result<RunEnv, HostError> {
        std::fs::create_dir_all(&self.dir).map_err(|source| HostError::Io {
            path: self.dir.display().to_string(),
            source,
        })?;
        Ok(RunEnv {
            sandbox: self.host.sandbox()?,
            data_dir: self.dir.clone(),
            store: Some(self.store.clone()),
            memory: Some(self.pool.clone()),
            memory_source: self.host.memory_source().clone(),
            services: crate::node::services::Services::new()
                .with(std::sync::Arc::new(self.host.clients().clone())),
        })
    }
}
