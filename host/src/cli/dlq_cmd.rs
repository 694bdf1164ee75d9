//! `weir dlq list|show|replay|purge|export`: the tenant's dead-letter store.
//! Every command reads the store through its owner when a run holds it, so
//! letters can be inspected while a pipeline keeps writing them.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand, ValueEnum};

use crate::cli::out::outln;
use weir::host::{ReplayRequest, replay::DEFAULT_MAX_REPLAYS};
use weir::node::Payload;
use weir::store::letters::{LetterFilter, StoredLetter};
use weir::units::{parse_time, rfc3339_ms};

#[derive(Subcommand)]
pub enum DlqCommand {
    /// List dead letters, oldest first within each pipeline, with the store's usage.
    List {
        #[command(flatten)]
        filter: FilterArgs,
        /// Show at most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Show one letter in full: where it came from, why, and its record readably.
    Show {
        /// The letter's id (`run-…/7`), as `list` prints it.
        id: String,
    },
    /// Send letters through the active (or a named) version of their pipeline:
    /// those that now pass are delivered and removed; those that fail again keep
    /// the new reason and a replay count.
    Replay {
        #[command(flatten)]
        filter: FilterArgs,
        /// Through this stored version instead of the active one.
        #[arg(long, conflicts_with = "file")]
        version: Option<u64>,
        /// Through this pipeline file instead of a stored version.
        #[arg(long)]
        file: Option<PathBuf>,
        /// Run them beside nothing: deliver nothing, change nothing, and report
        /// how many would pass and why the rest fail.
        #[arg(long)]
        dry_run: bool,
        /// Replay letters that failed `--max-replays` times already.
        #[arg(long)]
        force: bool,
        /// Failed replays after which a letter is only replayed with `--force`.
        #[arg(long, default_value_t = DEFAULT_MAX_REPLAYS)]
        max_replays: u32,
    },
    /// Remove letters for good. Needs a filter, or `--all`.
    Purge {
        #[command(flatten)]
        filter: FilterArgs,
        /// Every letter of the tenant.
        #[arg(long)]
        all: bool,
    },
    /// Write letters to a file: JSON lines (one letter per line, the record as
    /// text when it is, else its bytes in hex) or Parquet (the record's bytes
    /// in a binary column).
    Export {
        #[command(flatten)]
        filter: FilterArgs,
        /// The file to write.
        #[arg(long)]
        out: PathBuf,
        /// Its format. Default: from the file's extension (`.parquet`), else JSON lines.
        #[arg(long, value_enum)]
        format: Option<ExportFormat>,
    },
}

/// The formats `weir dlq export` writes.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// JSON lines.
    Jsonl,
    /// Apache Parquet.
    Parquet,
}

/// Which letters: every option given must match.
#[derive(Args, Default)]
pub struct FilterArgs {
    /// Of this pipeline.
    #[arg(long)]
    pipeline: Option<String>,
    /// From this node.
    #[arg(long)]
    node: Option<String>,
    /// With this reason code (`invalid_json`, `filter:price`, `trap`…).
    #[arg(long)]
    reason: Option<String>,
    /// Of this fault: data, stage, stage_trap, stage_transient, service, …
    #[arg(long)]
    fault: Option<String>,
    /// Of this run.
    #[arg(long)]
    run: Option<String>,
    /// Kept at or after: RFC 3339 in UTC, a date, or an age (`2h`, `7d`).
    #[arg(long)]
    since: Option<String>,
    /// Kept before: as `--since`.
    #[arg(long)]
    until: Option<String>,
    /// Only these ids (repeatable).
    #[arg(long = "id")]
    ids: Vec<String>,
}

impl FilterArgs {
    fn filter(&self) -> anyhow::Result<LetterFilter> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let time = |t: &Option<String>| -> anyhow::Result<Option<u64>> {
            t.as_deref()
                .map(|t| parse_time(t, now).map_err(anyhow::Error::msg))
                .transpose()
        };
        Ok(LetterFilter {
            pipeline: self.pipeline.clone(),
            node: self.node.clone(),
            reason: self.reason.clone(),
            fault: self.fault.clone(),
            run: self.run.clone(),
            since_ms: time(&self.since)?,
            until_ms: time(&self.until)?,
            ids: self.ids.clone(),
        })
    }

    fn is_empty(&self) -> bool {
        self.pipeline.is_none()
            && self.node.is_none()
            && self.reason.is_none()
            && self.fault.is_none()
            && self.run.is_none()
            && self.since.is_none()
            && self.until.is_none()
            && self.ids.is_empty()
    }
}

pub fn dispatch(cmd: DlqCommand, data_dir: &Path) -> anyhow::Result<()> {
    let tenant = super::open_tenant(data_dir)?;
    let store = tenant.store();
    match cmd {
        DlqCommand::List { filter, limit } => {
            let letters = store.letters(&filter.filter()?, limit.saturating_add(1))?;
            let usage = store.letter_usage()?;
            if letters.is_empty() {
                outln!("no dead letters match");
            } else {
                outln!(
                    "{:<26} {:<16} {:>4} {:<16} {:<16} {:<22} {:<24} {:>7}  MESSAGE",
                    "ID",
                    "PIPELINE",
                    "VER",
                    "NODE",
                    "FAULT",
                    "REASON",
                    "AT",
                    "REPLAYS"
                );
            }
            for l in letters.iter().take(limit) {
                let r = &l.record;
                outln!(
                    "{:<26} {:<16} {:>4} {:<16} {:<16} {:<22} {:<24} {:>7}  {}",
                    l.id,
                    r.pipeline,
                    r.version.map_or("-".to_owned(), |v| v.to_string()),
                    r.node,
                    r.fault.as_str(),
                    r.reason,
                    rfc3339_ms(r.at_ms),
                    l.replays,
                    one_line(&r.message, 80)
                );
            }
            if letters.len() > limit {
                outln!("… more match: raise --limit, or narrow the filter");
            }
            outln!(
                "the store of tenant `{}` holds {} letters, {} bytes",
                tenant.name(),
                usage.entries,
                usage.bytes
            );
            Ok(())
        }
        DlqCommand::Show { id } => {
            let filter = LetterFilter {
                ids: vec![id.clone()],
                ..LetterFilter::default()
            };
            let Some(l) = store.letters(&filter, 1)?.into_iter().next() else {
                bail!("no dead letter `{id}` (`weir dlq list` shows the ids)");
            };
            show(&l)
        }
        DlqCommand::Replay {
            filter,
            version,
            file,
            dry_run,
            force,
            max_replays,
        } => {
            let Some(pipeline) = filter.pipeline.clone() else {
                bail!("name the pipeline whose letters to replay: --pipeline <name>");
            };
            let request = ReplayRequest {
                pipeline,
                version,
                file,
                filter: filter.filter()?,
                dry_run,
                force,
                max_replays,
            };
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting tokio")?;
            let report = runtime.block_on(tenant.replay(&request))?;
            let through = match report.version {
                Some(v) => format!("version {v}"),
                None => "the pipeline file".to_owned(),
            };
            let verb = if dry_run { "would pass" } else { "passed" };
            outln!(
                "{} letters through {through}{}: {} {verb}, {} failed again, {} over the replay limit, {} cannot be replayed",
                report.selected,
                if dry_run {
                    " (dry run: nothing delivered, nothing changed)"
                } else {
                    ""
                },
                report.passed.len(),
                report.failed.len(),
                report.over_limit.len(),
                report.unreplayable.len()
            );
            for m in &report.failed {
                outln!(
                    "  failed  {}  at `{}`: {} ({})",
                    m.id,
                    m.node,
                    one_line(&m.message, 100),
                    m.reason
                );
            }
            for (id, why) in &report.unreplayable {
                outln!("  cannot  {id}: {why}");
            }
            if !report.over_limit.is_empty() {
                outln!(
                    "  {} letters failed {max_replays} replays already and were left alone (--force replays them)",
                    report.over_limit.len()
                );
            }
            if !dry_run {
                outln!("{} letters removed from the store", report.removed);
            }
            Ok(())
        }
        DlqCommand::Purge { filter, all } => {
            if filter.is_empty() && !all {
                bail!(
                    "purge removes letters for good: give a filter (--pipeline, --node, --reason, …) or --all"
                );
            }
            let n = store.remove_letters(&filter.filter()?)?;
            outln!("removed {n} letters");
            Ok(())
        }
        DlqCommand::Export {
            filter,
            out,
            format,
        } => {
            let letters = store.letters(&filter.filter()?, usize::MAX)?;
            let format = format.unwrap_or(if out.extension().is_some_and(|e| e == "parquet") {
                ExportFormat::Parquet
            } else {
                ExportFormat::Jsonl
            });
            match format {
                ExportFormat::Jsonl => weir::store::letters::export_jsonl(&letters, &out),
                ExportFormat::Parquet => weir::store::letters::export_parquet(&letters, &out),
            }
            .with_context(|| format!("writing {}", out.display()))?;
            outln!("wrote {} letters to {}", letters.len(), out.display());
            Ok(())
        }
    }
}

/// One letter in full.
fn show(l: &StoredLetter) -> anyhow::Result<()> {
    let r = &l.record;
    outln!("id         {}", l.id);
    outln!("tenant     {}", r.tenant);
    outln!(
        "pipeline   {}{}",
        r.pipeline,
        r.version.map_or(String::new(), |v| format!(" version {v}"))
    );
    outln!("run        {}", r.run);
    outln!("node       {}", r.node);
    if let Some(c) = &r.component {
        outln!("component  sha256:{c}");
    }
    outln!("fault      {}", r.fault.as_str());
    outln!("reason     {}", r.reason);
    outln!("message    {}", r.message);
    outln!("at         {}", rfc3339_ms(r.at_ms));
    outln!("position   {}", r.position);
    outln!("replays    {}", l.replays);
    if let Some(f) = &l.last_replay {
        outln!(
            "last replay {} through {}: `{}` refused it: {} ({})",
            rfc3339_ms(f.at_ms),
            f.version
                .map_or("a pipeline file".to_owned(), |v| format!("version {v}")),
            f.node,
            f.message,
            f.reason
        );
    }
    match &r.payload {
        Payload::Raw(bytes) => match std::str::from_utf8(bytes) {
            Ok(text) => outln!("record     ({} bytes, text)\n{text}", bytes.len()),
            Err(e) => {
                outln!(
                    "record     ({} bytes, not UTF-8: {e}); as hex, 32 bytes a line:",
                    bytes.len()
                );
                for chunk in bytes.chunks(32) {
                    outln!("{}", hex::encode(chunk));
                }
            }
        },
        Payload::ArrowIpc(bytes) => {
            let rows = weir::store::letters::rows_as_json(bytes)
                .context("reading the letter's rows (Arrow IPC)")?;
            outln!("rows       ({} bytes, Arrow IPC), as JSON:", bytes.len());
            for row in rows {
                outln!("{row}");
            }
        }
    }
    Ok(())
}

/// `text` on one line, cut to `max` characters.
fn one_line(text: &str, max: usize) -> String {
    let flat: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.chars().count() <= max {
        return flat;
    }
    let cut: String = flat.chars().take(max.saturating_sub(1)).collect();
    format!("{cut}…")
}
