//! `weir features get`: the vectors a `[sink.redis]` stored, as model serving
//! reads them; and `weir lineage --redis`: which code and input made one.

use anyhow::Context as _;
use clap::Subcommand;

use crate::cli::out::outln;
use weir::connectors::redis::{StoredVector, read_vectors};

#[derive(Subcommand)]
pub enum FeaturesCommand {
    /// Print the stored vector of each entity as one JSON line:
    /// `{"entity", "event_time_ms", "features", "lineage"}`, features typed back
    /// by the prefix's schema hash. An entity with no vector (never written,
    /// expired) prints `{"entity": …, "features": null}`.
    Get {
        /// The Redis server, `redis://host:port[/db]`.
        #[arg(long)]
        redis: String,
        /// The sink's `prefix`.
        #[arg(long)]
        prefix: String,
        /// The entities (the key suffixes).
        #[arg(required = true)]
        entities: Vec<String>,
    },
}

pub fn dispatch(cmd: FeaturesCommand) -> anyhow::Result<()> {
    match cmd {
        FeaturesCommand::Get {
            redis,
            prefix,
            entities,
        } => {
            let vectors = read(&redis, &prefix, &entities)?;
            for (entity, v) in entities.iter().zip(vectors) {
                let line = match v {
                    Some(v) => v.to_json(),
                    None => serde_json::json!({ "entity": entity, "features": null }),
                };
                outln!("{line}");
            }
            Ok(())
        }
    }
}

fn read(url: &str, prefix: &str, entities: &[String]) -> anyhow::Result<Vec<Option<StoredVector>>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting tokio")?;
    Ok(runtime.block_on(read_vectors(url, prefix, entities))?)
}

/// `weir lineage --redis URL --prefix P ENTITY`: the lineage stored with the
/// entity's vector.
pub fn lineage(url: &str, prefix: &str, entity: &str) -> anyhow::Result<()> {
    let v = read(url, prefix, &[entity.to_owned()])?
        .pop()
        .flatten()
        .with_context(|| format!("no vector is stored under {prefix}:{entity}"))?;
    let l = v.lineage.with_context(|| {
        format!("the vector under {prefix}:{entity} has no lineage (written with `lineage = false`, or not by weir)")
    })?;
    let version = l
        .version
        .map_or("run from a file".to_owned(), |v| format!("version {v}"));
    let at = v.event_time_ms.map_or("no event time".to_owned(), |ms| {
        format!("event time {ms} ms")
    });
    outln!("{prefix}:{entity}: pipeline {} {version}, {at}", l.pipeline);
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
    Ok(())
}
