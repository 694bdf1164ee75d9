//! `weir component push|list`: the store's components, content-addressed and
//! versioned by name.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Subcommand;

use crate::cli::out::outln;

#[derive(Subcommand)]
pub enum ComponentCommand {
    /// Validate a component against the contract, precompile it, record it as
    /// `<name>@<next version>` (the same bytes again return the existing version).
    Push {
        /// The component file (`.wasm`).
        file: PathBuf,
        /// The name it is known by.
        #[arg(long)]
        name: String,
    },
    /// List every `name@version` with digest, size, world and when it was pushed.
    List,
}

pub fn dispatch(cmd: ComponentCommand, data_dir: &Path) -> anyhow::Result<()> {
    let tenant = super::open_tenant(data_dir)?;
    let store = tenant.store();
    match cmd {
        ComponentCommand::Push { file, name } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            // Loading validates (world, exports, imports) and precompiles into the
            // artifact cache, so the first run using it does not compile.
            let loaded = tenant.host().sandbox()?.load(&bytes)?;
            let record = store.push_component(&name, &bytes, loaded.world())?;
            outln!(
                "{} sha256:{} {} bytes {}",
                record.reference(),
                record.digest,
                record.size,
                record.world.name()
            );
            Ok(())
        }
        ComponentCommand::List => {
            outln!(
                "{:<28} {:<19} {:>10} {:<10} {}",
                "component",
                "digest",
                "bytes",
                "world",
                "pushed (unix ms)"
            );
            for c in store.list_components()? {
                outln!(
                    "{:<28} sha256:{:<12} {:>10} {:<10} {}",
                    c.reference(),
                    &c.digest[..12],
                    c.size,
                    c.world.name(),
                    c.created_ms
                );
            }
            Ok(())
        }
    }
}
