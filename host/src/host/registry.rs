//! The runs of a host: which pipeline of which tenant, in what state, with the
//! live counters of every node while it goes. A reader polls
//! [`RunRegistry::list`] or waits on [`RunEntry::control`]'s
//! [`crate::exec::RunControl::subscribe`]; a server streams the same to a page.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::exec::{NodeStats, RunControl};

/// Where a run is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunState {
    /// Preparing or running.
    Running,
    /// Ended: its sources were exhausted or it was stopped.
    Finished {
        /// The run id the summary printed.
        run_id: String,
    },
    /// Failed, with the error's message.
    Failed(String),
}

/// One run of the host.
#[derive(Clone)]
pub struct RunEntry {
    /// Its number on this host, from 1.
    pub id: u64,
    /// The tenant it runs for.
    pub tenant: String,
    /// The pipeline.
    pub pipeline: String,
    /// The stored version it runs; `None` for a file.
    pub version: Option<u64>,
    /// Its state.
    pub state: RunState,
    /// When it started, in milliseconds since the Unix epoch.
    pub started_ms: u64,
    /// Its control: stop it, swap its stages, read its live counters.
    pub control: RunControl,
}

impl RunEntry {
    /// Every node's counters as last published.
    pub fn nodes(&self) -> Vec<NodeStats> {
        self.control.live_nodes()
    }
}

impl std::fmt::Debug for RunEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunEntry")
            .field("id", &self.id)
            .field("tenant", &self.tenant)
            .field("pipeline", &self.pipeline)
            .field("version", &self.version)
            .field("state", &self.state)
            .finish()
    }
}

/// The runs of a host, current and past (for the life of the process).
#[derive(Default)]
pub struct RunRegistry {
    next: AtomicU64,
    runs: Mutex<BTreeMap<u64, RunEntry>>,
}

impl RunRegistry {
    /// Records a run starting; returns its id.
    pub(crate) fn start(
        &self,
        tenant: &str,
        pipeline: &str,
        version: Option<u64>,
        control: RunControl,
    ) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let entry = RunEntry {
            id,
            tenant: tenant.to_owned(),
            pipeline: pipeline.to_owned(),
            version,
            state: RunState::Running,
            started_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            control,
        };
        self.lock().insert(id, entry);
        id
    }

    pub(crate) fn end(&self, id: u64, state: RunState) {
        if let Some(e) = self.lock().get_mut(&id) {
            e.state = state;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, RunEntry>> {
        self.runs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every run of `tenant`, oldest first.
    pub fn list(&self, tenant: &str) -> Vec<RunEntry> {
        self.lock()
            .values()
            .filter(|e| e.tenant == tenant)
            .cloned()
            .collect()
    }

    /// Run `id`, if it is `tenant`'s.
    pub fn get(&self, tenant: &str, id: u64) -> Option<RunEntry> {
        self.lock().get(&id).filter(|e| e.tenant == tenant).cloned()
    }
}
