//! `weir run` with its control socket and file watcher, and `weir pipeline
//! swap|stop|status`, which talk to a running pipeline through that socket.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::cli::out::{out, outln};
use weir::host::{RunRequest, RunTarget};
use weir::live::socket::{self, Request, Response};

/// How long `weir pipeline swap` waits for the run's answer: a swap is answered
/// after the new version's first batch, and a crate may have to build first.
const SWAP_PATIENCE: Duration = Duration::from_secs(300);

/// `weir run <file | stored pipeline name> [--watch] [--resume]`: a host
/// embedded in this process runs it (see [`weir::host`]).
///
/// A stored pipeline keeps a checkpoint in the store as it runs; `--resume`
/// continues from it (a run without `--resume` starts over and replaces it).
pub fn run(
    pipeline: &Path,
    data_dir: PathBuf,
    progress: bool,
    watch: bool,
    resume: bool,
) -> anyhow::Result<()> {
    let tenant = super::open_tenant(&data_dir)?;
    let prepared = tenant.prepare(RunRequest {
        target: RunTarget::from_arg(pipeline),
        watch,
        resume,
        progress,
    })?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting tokio")?;
    let summary = runtime.block_on(async {
        let interrupt = tokio::spawn({
            let control = prepared.control().clone();
            async move {
                if tokio::signal::ctrl_c().await.is_ok() {
                    eprintln!("\nstopping: the batches already read go through to the sinks");
                    control.stop();
                }
            }
        });
        let result = prepared.run().await;
        interrupt.abort();
        result
    })?;
    out!("{summary}");
    Ok(())
}

fn ask(
    data_dir: &Path,
    pipeline: &str,
    request: &Request,
    patience: Duration,
) -> anyhow::Result<Response> {
    let path = socket::socket_path(&super::tenant_dir(data_dir), pipeline);
    Ok(socket::request(&path, request, patience)?)
}

/// `weir pipeline swap <name> --stage S (--params JSON | --component REF | --to-version V)`.
pub fn swap(
    data_dir: &Path,
    pipeline: &str,
    stage: Option<String>,
    params: Option<String>,
    component: Option<String>,
    version: Option<u64>,
) -> anyhow::Result<()> {
    let params = params
        .map(|p| {
            serde_json::from_str::<serde_json::Value>(&p)
                .with_context(|| format!("--params `{p}` is not JSON"))
        })
        .transpose()?;
    // A file is named for the running process, which may have another directory.
    let component = component
        .map(|c| {
            if weir::store::is_reference(&c) {
                Ok(c)
            } else {
                std::fs::canonicalize(&c)
                    .map(|p| p.display().to_string())
                    .with_context(|| format!("--component {c}"))
            }
        })
        .transpose()?;
    let response = ask(
        data_dir,
        pipeline,
        &Request::Swap {
            stage,
            params,
            component,
            version,
        },
        SWAP_PATIENCE,
    )?;
    if let Some(e) = &response.error {
        bail!("{e}");
    }
    for c in &response.changes {
        if c.applied {
            let from = c
                .first_batch
                .map_or("at the end of the stream".to_owned(), |b| {
                    format!("from batch {b}")
                });
            outln!(
                "stage {}: applied {from}: sha256:{} params {}",
                c.stage,
                short(&c.digest),
                c.params
            );
        } else {
            outln!(
                "stage {}: refused: {} (still running sha256:{} params {})",
                c.stage,
                c.reason.as_deref().unwrap_or("?"),
                short(&c.digest),
                c.params
            );
        }
    }
    if response.changes.is_empty() {
        outln!("nothing to change: the running pipeline already matches");
    }
    if !response.ok {
        bail!("not every change was applied");
    }
    Ok(())
}

/// `weir pipeline stop <name>`.
pub fn stop(data_dir: &Path, pipeline: &str) -> anyhow::Result<()> {
    ask(data_dir, pipeline, &Request::Stop, Duration::from_secs(10))?;
    outln!("{pipeline} is stopping: the batches already read go through to the sinks");
    Ok(())
}

/// `weir pipeline status <name>`.
pub fn status(data_dir: &Path, pipeline: &str) -> anyhow::Result<()> {
    let response = ask(
        data_dir,
        pipeline,
        &Request::Status,
        Duration::from_secs(10),
    )?;
    let status = response.status.context("the run sent no status")?;
    let version = status
        .version
        .map_or("from a file".to_owned(), |v| format!("version {v}"));
    outln!("{} running ({version})", status.pipeline);
    for s in status.stages {
        outln!(
            "  stage {:<20} sha256:{} params {}",
            s.stage,
            short(&s.digest),
            s.params
        );
    }
    Ok(())
}

/// `weir lineage <file>:<line>`: the lineage of one output record, from the
/// output's side file.
pub fn lineage_of_line(output: &Path, line: u64) -> anyhow::Result<()> {
    let side = weir::connectors::lineage_path(output);
    let entry = weir::connectors::lineage_of_line(output, line)
        .with_context(|| {
            format!(
                "reading {} (written by a `[sink.jsonl]` with `lineage = true`)",
                side.display()
            )
        })?
        .with_context(|| format!("{} records no line {line}", side.display()))?;
    let l = &entry.lineage;
    let version = l
        .version
        .map_or("run from a file".to_owned(), |v| format!("version {v}"));
    outln!(
        "{}:{line}: pipeline {} {version}",
        output.display(),
        l.pipeline
    );
    for s in &l.stages {
        outln!(
            "  stage {} sha256:{} params sha256:{}",
            s.stage,
            s.digest,
            s.params_hash
        );
    }
    for s in &l.sources {
        outln!(
            "  source {} positions {}..{}",
            s.source,
            s.from.as_deref().unwrap_or("start"),
            s.to.as_deref().unwrap_or("?")
        );
    }
    outln!(
        "  batch: output lines {}..{}",
        entry.first_line,
        entry.first_line + entry.lines - 1
    );
    Ok(())
}

fn short(digest: &str) -> &str {
    &digest[..digest.len().min(12)]
}
