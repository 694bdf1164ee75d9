//! `weir`: run and check pipelines, scaffold and build stages.
//!
//! Exit codes: 0 success, 1 the run or check failed, 2 the command line was wrong.

mod component_cmd;
mod dlq_cmd;
mod features_cmd;
mod live_cmd;
mod nats_cmd;
mod out;
mod pipeline_cmd;
mod stage_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::cli::out::{out, outln};
use weir::exec;
use weir::sandbox::{Sandbox, SandboxConfig};
use weir::spec::PipelineSpec;

/// weir runs feature pipelines: Arrow batches through sandboxed WebAssembly stages.
#[derive(Parser)]
#[command(name = "weir", version, about)]
struct Cli {
    /// Data directory (dead letters, compiled artifacts, store). Default: $WEIR_DATA_DIR or ./.weir
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// The tenant to work as: every component, pipeline, run and file is the
    /// tenant's own. Default: $WEIR_TENANT or `default`.
    #[arg(long, global = true)]
    tenant: Option<String>,
    /// What the tenant's dead-letter store may hold (`512MiB`, `2GiB`); a run
    /// that fills it pauses or stops as its pipeline says. Default:
    /// $WEIR_DEAD_LETTER_LIMIT or 1GiB.
    #[arg(long, global = true)]
    dead_letter_limit: Option<weir::units::ByteSize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a pipeline to the end (or until stopped: Ctrl-C, `weir pipeline stop`)
    /// and print a summary. While it runs, `weir pipeline swap|status|stop` reach it.
    Run {
        /// The pipeline file (TOML), or the name of a pipeline applied to the store
        /// (its active version runs).
        pipeline: PathBuf,
        /// Do not show the progress line.
        #[arg(long)]
        quiet: bool,
        /// Apply edits of the pipeline file to the running pipeline (stage
        /// components and parameters; other changes are refused and logged).
        #[arg(long)]
        watch: bool,
        /// Continue a stored pipeline from its last checkpoint: sinks restore
        /// their state, sources continue after their committed positions.
        #[arg(long)]
        resume: bool,
    },
    /// Check a pipeline file and print its DAG, without running anything.
    Validate {
        /// The pipeline file (TOML).
        pipeline: PathBuf,
    },
    /// Write and build stages.
    #[command(subcommand)]
    Stage(stage_cmd::StageCommand),
    /// Push and list components in the store.
    #[command(subcommand)]
    Component(component_cmd::ComponentCommand),
    /// Pipeline versions: apply, history, diff, rollback.
    #[command(subcommand)]
    Pipeline(pipeline_cmd::PipelineCommand),
    /// NATS JetStream: publish a JSON-lines file to a subject.
    #[command(subcommand)]
    Nats(nats_cmd::NatsCommand),
    /// Which code and which input made a run's output, or one output record.
    Lineage {
        /// A run id (printed in the run summary), or `<output.jsonl>:<line>` for a
        /// `[sink.jsonl]` written with `lineage = true`, or with `--redis` an
        /// entity whose vector a `[sink.redis]` stored.
        run: String,
        /// Read the lineage stored with an entity's vector on this Redis server
        /// (`redis://host:port[/db]`).
        #[arg(long, requires = "prefix")]
        redis: Option<String>,
        /// The `[sink.redis]` prefix (with `--redis`).
        #[arg(long, requires = "redis")]
        prefix: Option<String>,
    },
    /// Stored feature vectors, as model serving reads them.
    #[command(subcommand)]
    Features(features_cmd::FeaturesCommand),
    /// The dead-letter store: list, show, replay, purge and export the records
    /// runs could not deliver.
    #[command(subcommand)]
    Dlq(dlq_cmd::DlqCommand),
}

pub fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WEIR_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", render_error(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, each said once: a cause whose text the message
/// before it already holds (errors that print their source) is left out.
fn render_error(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// The host options of this command (set once, from its flags and environment).
static HOST_OPTIONS: std::sync::OnceLock<weir::host::HostOptions> = std::sync::OnceLock::new();

/// The tenant this command works as (set once, from `--tenant` or `$WEIR_TENANT`).
static TENANT: std::sync::OnceLock<String> = std::sync::OnceLock::new();

fn tenant_name() -> &'static str {
    TENANT
        .get()
        .map_or(weir::store::layout::DEFAULT_TENANT, String::as_str)
}

/// The command's tenant on the host of `data_dir`: this process owns the
/// directory if no other does, and talks to its owner otherwise.
fn open_tenant(data_dir: &std::path::Path) -> anyhow::Result<weir::host::Tenant> {
    let options = HOST_OPTIONS.get().cloned().unwrap_or_default();
    let host = weir::host::Host::open(data_dir, options)?;
    Ok(host.tenant(tenant_name())?)
}

/// The tenant's directory, where its runs serve their control sockets.
fn tenant_dir(data_dir: &std::path::Path) -> PathBuf {
    weir::store::layout::tenant_dir(data_dir, tenant_name())
}

fn dispatch(cli: Cli) -> anyhow::Result<()> {
    let data_dir = cli.data_dir.unwrap_or_else(exec::default_data_dir);
    // clap's `env` feature is off (it pulls more than this one lookup needs).
    let name = cli
        .tenant
        .or_else(|| std::env::var("WEIR_TENANT").ok().filter(|t| !t.is_empty()))
        .unwrap_or_else(|| weir::store::layout::DEFAULT_TENANT.to_owned());
    weir::store::layout::check_tenant(&name)?;
    let _ = TENANT.set(name);
    let dead_letter_limit = match cli.dead_letter_limit {
        Some(limit) => Some(limit),
        None => match std::env::var("WEIR_DEAD_LETTER_LIMIT") {
            Ok(text) if !text.is_empty() => Some(
                text.parse()
                    .map_err(|e: String| anyhow::anyhow!("WEIR_DEAD_LETTER_LIMIT: {e}"))?,
            ),
            _ => None,
        },
    };
    let _ = HOST_OPTIONS.set(weir::host::HostOptions {
        dead_letter_limit,
        ..weir::host::HostOptions::default()
    });
    match cli.command {
        Command::Run {
            pipeline,
            quiet,
            watch,
            resume,
        } => live_cmd::run(&pipeline, data_dir, !quiet, watch, resume),
        Command::Validate { pipeline } => {
            let spec = PipelineSpec::from_file(&pipeline)?;
            let dag = spec.validate()?;
            outln!("{} is valid: {} nodes", pipeline.display(), dag.nodes.len());
            out!("{}", dag.render());
            // The output schemas need the nodes themselves (components loaded,
            // files opened), as a run would prepare them.
            let env = open_tenant(&data_dir)?.env()?;
            let plan = weir::plan::Plan::build(spec, &env)?;
            outln!("output schemas:");
            for (node, schema) in plan.dag.nodes.iter().zip(&plan.schemas) {
                match (node.kind, schema) {
                    (weir::node::NodeKind::Sink, _) => {}
                    (_, Some(s)) => outln!("  {}: {}", node.name, weir::node::schema::render(s)),
                    (_, None) => outln!(
                        "  {}: learned from its first batch (declare `outputs` to fix it here)",
                        node.name
                    ),
                }
            }
            Ok(())
        }
        Command::Stage(cmd) => stage_cmd::dispatch(cmd, &data_dir),
        Command::Component(cmd) => component_cmd::dispatch(cmd, &data_dir),
        Command::Pipeline(cmd) => pipeline_cmd::dispatch(cmd, &data_dir),
        Command::Nats(cmd) => nats_cmd::dispatch(cmd),
        Command::Features(cmd) => features_cmd::dispatch(cmd),
        Command::Dlq(cmd) => dlq_cmd::dispatch(cmd, &data_dir),
        Command::Lineage {
            run,
            redis: Some(url),
            prefix: Some(prefix),
        } => features_cmd::lineage(&url, &prefix, &run),
        Command::Lineage { run, .. } => match run.rsplit_once(':') {
            Some((file, line)) if std::path::Path::new(file).is_file() => {
                let line = line
                    .parse()
                    .with_context(|| format!("`{run}`: the line after `:` is a number"))?;
                live_cmd::lineage_of_line(std::path::Path::new(file), line)
            }
            _ => pipeline_cmd::lineage(&run, &data_dir),
        },
    }
}

/// A sandbox caching compiled components in `<data dir>/artifacts`, for
/// commands that compile without a host (`weir stage build`).
fn sandbox(data_dir: &std::path::Path) -> anyhow::Result<Sandbox> {
    Ok(Sandbox::new(SandboxConfig {
        artifact_dir: Some(data_dir.join("artifacts")),
        ..Default::default()
    })?)
}

#[cfg(test)]
mod tests {
    #[test]
    fn each_cause_is_said_once() {
        let inner = std::io::Error::other("disk full");
        let e = anyhow::Error::new(inner).context("write `out.jsonl`: disk full");
        assert_eq!(super::render_error(&e), "write `out.jsonl`: disk full");
        let e = anyhow::anyhow!("disk full").context("write `out.jsonl`");
        assert_eq!(super::render_error(&e), "write `out.jsonl`: disk full");
    }
}
