//! Assembling and running one pipeline on a host: what `weir run` does, as a
//! library. A [`RunRequest`] names a file or a stored pipeline; the tenant
//! [prepares](Tenant::prepare) it (reads the spec, builds the plan: components
//! loaded, files opened, schemas checked, all before the first record moves);
//! [`PreparedRun::run`] serves its control socket, watches its file if asked,
//! takes checkpoints for a stored pipeline, saves the lineage of a file run, and
//! keeps the host's registry up to date.

use std::path::PathBuf;
use std::sync::Arc;

use super::registry::RunState;
use super::{HostError, Tenant};
use crate::exec::{self, RunControl, RunOptions, RunSummary};
use crate::live::LiveRun;
use crate::live::socket;
use crate::plan::{Plan, RunEnv};
use crate::spec::PipelineSpec;

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunTarget {
    /// A pipeline file; its run keeps no checkpoint.
    File(PathBuf),
    /// The active version of a pipeline applied to the store; its run keeps
    /// checkpoints and can be resumed.
    Stored(String),
}

impl RunTarget {
    /// A file if `arg` names one, else the stored pipeline of that name: how the
    /// CLI reads `weir run <arg>`.
    pub fn from_arg(arg: &std::path::Path) -> Self {
        if arg.exists() {
            Self::File(arg.to_path_buf())
        } else {
            Self::Stored(arg.display().to_string())
        }
    }
}

/// A run to prepare.
#[derive(Debug, Clone)]
pub struct RunRequest {
    /// What to run.
    pub target: RunTarget,
    /// Apply edits of the file to the running pipeline (files only).
    pub watch: bool,
    /// Continue a stored pipeline from its last checkpoint.
    pub resume: bool,
    /// Print a progress line on a terminal.
    pub progress: bool,
}

impl RunRequest {
    /// A run of `target` with no watch, no resume, no progress line.
    pub fn new(target: RunTarget) -> Self {
        Self {
            target,
            watch: false,
            resume: false,
            progress: false,
        }
    }
}

/// A pipeline planned and ready to run; [`PreparedRun::control`] stops it or
/// swaps its stages once it runs.
pub struct PreparedRun {
    tenant: Tenant,
    env: RunEnv,
    plan: Plan,
    request: RunRequest,
    version: Option<u64>,
    control: RunControl,
}

impl Tenant {
    /// Reads and plans what `request` names.
    ///
    /// # Errors
    /// [`HostError::Request`] when the target fits neither form or an option does
    /// not fit the target; otherwise what reading the store, the spec or
    /// planning returns.
    pub fn prepare(&self, request: RunRequest) -> Result<PreparedRun, HostError> {
        let (spec, version) = match &request.target {
            RunTarget::File(path) => {
                if request.resume {
                    return Err(HostError::Request(format!(
                        "--resume continues a stored pipeline from its checkpoint; {} is a file (apply it with `weir pipeline apply` first)",
                        path.display()
                    )));
                }
                (PipelineSpec::from_file(path)?, None)
            }
            RunTarget::Stored(name) => {
                let Some(active) = self.store().active(name)? else {
                    return Err(HostError::Request(format!(
                        "{name} is neither a pipeline file nor a pipeline applied to the store"
                    )));
                };
                if request.watch {
                    return Err(HostError::Request(format!(
                        "--watch needs a pipeline file; `{name}` is a stored pipeline"
                    )));
                }
                (
                    self.store().version(name, active)?.runnable_spec(),
                    Some(active),
                )
            }
        };
        let env = self.env()?;
        let plan = Plan::build(spec, &env)?;
        let control = RunControl::new();
        control.set_version(version);
        Ok(PreparedRun {
            tenant: self.clone(),
            env,
            plan,
            request,
            version,
            control,
        })
    }
}

impl PreparedRun {
    /// The run's control: stop it, swap its stages, read its live counters.
    pub fn control(&self) -> &RunControl {
        &self.control
    }

    /// The plan (its spec, DAG and schemas).
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Runs to the end (or until stopped), on the current tokio runtime.
    ///
    /// # Errors
    /// [`HostError::Run`] when a node fails; [`HostError::Store`] when the lineage
    /// of a file run cannot be saved.
    pub async fn run(self) -> Result<RunSummary, HostError> {
        let Self {
            tenant,
            env,
            plan,
            request,
            version,
            control,
        } = self;
        let host = tenant.host().clone();
        let id = host
            .runs()
            .start(tenant.name(), &plan.spec.name, version, control.clone());
        let live = Arc::new(tokio::sync::Mutex::new(LiveRun::new(
            &plan,
            env.clone(),
            control.clone(),
        )));
        // Dropped when this function returns, however it ends: the socket file goes too.
        let _socket = match socket::serve(
            socket::socket_path(&env.data_dir, &plan.spec.name),
            live.clone(),
        ) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "no control socket for this run");
                None
            }
        };
        let watcher = match (&request.target, request.watch) {
            (RunTarget::File(path), true) => Some(crate::live::watch::watch(
                path.clone(),
                live.clone(),
                crate::live::watch::DEFAULT_WATCH_INTERVAL,
            )),
            _ => None,
        };
        let checkpoints = version.map(|_| {
            let s: Arc<dyn crate::node::CheckpointStore> = Arc::new(tenant.store().clone());
            s
        });
        // Every run of the host keeps its letters in the tenant's store, where
        // `weir dlq` lists, exports, replays and purges them.
        let letters: Arc<dyn crate::node::DeadLetterStore> =
            Arc::new(crate::store::letters::StoreLetters::new(
                tenant.store().clone(),
                Some(host.dead_letter_limit().0),
                plan.spec.settings.dead_letters_when_full,
            ));
        let options = RunOptions {
            progress: request.progress,
            checkpoints,
            resume: request.resume,
            dead_letters: Some(letters),
            tenant: Some(tenant.name().to_owned()),
            ..RunOptions::default()
        };
        let result = exec::run_with(plan, &env, &options, control.clone()).await;
        if let Some(w) = watcher {
            w.abort();
        }
        let result = result.map_err(HostError::from).and_then(|summary| {
            // A checkpointed run saved its lineage with its checkpoints.
            if version.is_none() {
                tenant
                    .store()
                    .append_lineage(&summary.run_id, &control.lineage_log())?;
            }
            Ok(summary)
        });
        host.runs().end(
            id,
            match &result {
                Ok(s) => RunState::Finished {
                    run_id: s.run_id.clone(),
                },
                Err(e) => RunState::Failed(e.to_string()),
            },
        );
        result
    }
}
