//! `weir pipeline apply|history|diff|rollback`: immutable pipeline versions in the
//! store, and `weir lineage <run>`: where a run's output came from.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::Subcommand;

use crate::cli::out::outln;
use weir::spec::PipelineSpec;
use weir::store;

#[derive(Subcommand)]
pub enum PipelineCommand {
    /// Store a new immutable version of a pipeline (every stage's component
    /// pinned by digest) and make it active.
    Apply {
        /// The pipeline file (TOML).
        file: PathBuf,
        /// Tags, `key=value` (repeatable), e.g. `--tag model=ctr@7`.
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// Why this change.
        #[arg(long)]
        comment: Option<String>,
    },
    /// List the versions of a pipeline with tags, author and comment.
    History {
        /// The pipeline's name.
        name: String,
    },
    /// Show what changed between two versions.
    Diff {
        /// The pipeline's name.
        name: String,
        /// The older version.
        v1: u64,
        /// The newer version.
        v2: u64,
    },
    /// Swap a stage of the running pipeline (`weir run`) between two batches: new
    /// parameters, a new component, or a stored version's.
    #[command(group(clap::ArgGroup::new("change").required(true).args(["params", "component", "to_version"])))]
    Swap {
        /// The pipeline's name.
        name: String,
        /// The stage (required with --params and --component; with --to-version,
        /// only that stage changes, else the whole version is applied).
        #[arg(long)]
        stage: Option<String>,
        /// New parameters (JSON), `init`ed on a fresh instance.
        #[arg(long)]
        params: Option<String>,
        /// A new component: `name@3`, `sha256:…` or a `.wasm` file.
        #[arg(long)]
        component: Option<String>,
        /// A stored version of the pipeline to switch to.
        #[arg(long)]
        to_version: Option<u64>,
    },
    /// Show what the running pipeline runs: version, stage digests, parameters.
    Status {
        /// The pipeline's name.
        name: String,
    },
    /// Stop the running pipeline; what was read goes through to the sinks.
    Stop {
        /// The pipeline's name.
        name: String,
    },
    /// Print the pipeline's last checkpoint as JSON: the run that wrote it,
    /// each source's position, each sink's state, each stateful operator's state
    /// file, and whether the run was complete; what `weir run NAME --resume`
    /// continues from.
    Checkpoint {
        /// The pipeline's name.
        name: String,
    },
    /// Make an earlier version active again.
    Rollback {
        /// The pipeline's name.
        name: String,
        /// The version to activate.
        #[arg(long)]
        to: u64,
    },
}

pub fn dispatch(cmd: PipelineCommand, data_dir: &Path) -> anyhow::Result<()> {
    // These talk to the running pipeline, not to the store.
    let cmd = match cmd {
        PipelineCommand::Swap {
            name,
            stage,
            params,
            component,
            to_version,
        } => {
            return super::live_cmd::swap(data_dir, &name, stage, params, component, to_version);
        }
        PipelineCommand::Status { name } => return super::live_cmd::status(data_dir, &name),
        PipelineCommand::Stop { name } => return super::live_cmd::stop(data_dir, &name),
        other => other,
    };
    let tenant = super::open_tenant(data_dir)?;
    let store = tenant.store().clone();
    match cmd {
        PipelineCommand::Apply {
            file,
            tags,
            comment,
        } => {
            let spec = PipelineSpec::from_file(&file)?;
            let mut tag_map = BTreeMap::new();
            for t in tags {
                let Some((k, v)) = t.split_once('=') else {
                    bail!("--tag `{t}`: expected key=value")
                };
                tag_map.insert(k.to_owned(), v.to_owned());
            }
            let (pinned, stages) = store::pin(&spec, &store, &tenant.host().sandbox()?)?;
            let author = std::env::var("USER").unwrap_or_else(|_| "unknown".to_owned());
            let v = store.add_version(pinned, stages, tag_map, &author, comment)?;
            outln!("{} version {} is active", v.pipeline, v.version);
            for s in &v.stages {
                outln!(
                    "  stage {:<20} sha256:{} params {}",
                    s.stage,
                    &s.digest[..12],
                    s.params
                );
            }
            Ok(())
        }
        PipelineCommand::History { name } => {
            let active = store.active(&name)?;
            for v in store.history(&name)? {
                let mark = if Some(v.version) == active { "*" } else { " " };
                let tags: Vec<String> = v.tags.iter().map(|(k, x)| format!("{k}={x}")).collect();
                outln!(
                    "{mark} v{:<4} {} by {:<10} [{}] {}",
                    v.version,
                    v.created_ms,
                    v.author,
                    tags.join(" "),
                    v.comment.as_deref().unwrap_or("")
                );
            }
            Ok(())
        }
        PipelineCommand::Diff { name, v1, v2 } => {
            let (a, b) = (store.version(&name, v1)?, store.version(&name, v2)?);
            let lines = store::diff(&a, &b);
            if lines.is_empty() {
                outln!("v{v1} and v{v2} are the same");
            }
            for l in lines {
                outln!("{l}");
            }
            Ok(())
        }
        PipelineCommand::Swap { .. }
        | PipelineCommand::Status { .. }
        | PipelineCommand::Stop { .. } => {
            unreachable!("handled above")
        }
        PipelineCommand::Checkpoint { name } => {
            let Some(c) = store.checkpoint(&name)? else {
                bail!(
                    "pipeline `{name}` has no checkpoint (it was never run by name, or its store was reset)"
                );
            };
            outln!("{}", serde_json::to_string_pretty(&c)?);
            Ok(())
        }
        PipelineCommand::Rollback { name, to } => {
            store
                .activate(&name, to)
                .with_context(|| format!("rolling back {name}"))?;
            outln!("{name} version {to} is active");
            Ok(())
        }
    }
}

/// `weir lineage <run>`: the run's output rows by sink, with the pipeline
/// version, each stage's digest and parameters hash, and the source positions.
pub fn lineage(run: &str, data_dir: &Path) -> anyhow::Result<()> {
    let records = super::open_tenant(data_dir)?.store().lineage(run)?;
    if records.is_empty() {
        bail!("no lineage recorded for run `{run}`");
    }
    for r in records {
        let l = &r.lineage;
        let version = l.version.map_or("file".to_owned(), |v| format!("v{v}"));
        let sources: Vec<String> = l
            .sources
            .iter()
            .map(|s| {
                format!(
                    "{}[{}..{}]",
                    s.source,
                    s.from.as_deref().unwrap_or("start"),
                    s.to.as_deref().unwrap_or("?")
                )
            })
            .collect();
        let stages: Vec<String> = l
            .stages
            .iter()
            .map(|s| {
                format!(
                    "{}=sha256:{}/params:{}",
                    s.stage,
                    &s.digest[..12],
                    &s.params_hash[..8]
                )
            })
            .collect();
        outln!(
            "{} rows {}..{}: {} {} · {} · {}",
            r.sink,
            r.first_row,
            r.first_row + r.rows,
            l.pipeline,
            version,
            stages.join(" "),
            sources.join(" ")
        );
    }
    Ok(())
}
