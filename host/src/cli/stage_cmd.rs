//! `weir stage new|build`: a stage author's first featurizer in minutes.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::Subcommand;

use weir::sandbox::build_stage;

use crate::cli::out::outln;

#[derive(Subcommand)]
pub enum StageCommand {
    /// Scaffold a stage crate: a working featurizer, its Cargo.toml and a README.
    New {
        /// The stage's name (a Rust crate name: letters, digits, `-`, `_`).
        name: String,
        /// Where to create it. Default: ./<name>
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Path to the weir-guest SDK. Default: the SDK this weir was built from.
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
    /// Build a stage crate to a component and check it against the contract.
    Build {
        /// The stage crate's directory.
        dir: PathBuf,
    },
}

pub fn dispatch(cmd: StageCommand, data_dir: &Path) -> anyhow::Result<()> {
    match cmd {
        StageCommand::New { name, dir, sdk } => {
            let dir = dir.unwrap_or_else(|| PathBuf::from(&name));
            let sdk =
                sdk.unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-sdk"));
            scaffold(&name, &dir, &sdk)?;
            outln!("created stage `{name}` in {}", dir.display());
            outln!("build it with: weir stage build {}", dir.display());
            Ok(())
        }
        StageCommand::Build { dir } => {
            let wasm = build_stage(&dir)?;
            let sandbox = super::sandbox(data_dir)?;
            let loaded = sandbox.load_file(&wasm)?;
            outln!("built {}", wasm.display());
            outln!("  world:   {}", loaded.world().name());
            outln!("  digest:  sha256:{}", loaded.digest());
            outln!("  size:    {} bytes", loaded.size());
            outln!("  imports: {}", loaded.imports().join(", "));
            Ok(())
        }
    }
}

fn scaffold(name: &str, dir: &Path, sdk: &Path) -> anyhow::Result<()> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        bail!("`{name}` is not a valid crate name: use letters, digits, `-` and `_`");
    }
    if dir.exists()
        && dir
            .read_dir()
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        bail!("{} already exists and is not empty", dir.display());
    }
    let sdk = std::fs::canonicalize(sdk)
        .with_context(|| format!("the guest SDK is not at {}; pass --sdk", sdk.display()))?;
    let files = [
        (
            "Cargo.toml",
            CARGO_TOML
                .replace("{name}", name)
                .replace("{sdk}", &sdk.display().to_string()),
        ),
        (".cargo/config.toml", CARGO_CONFIG.to_owned()),
        ("src/lib.rs", LIB_RS.to_owned()),
        ("README.md", README.replace("{name}", name)),
        (".gitignore", "/target\n".to_owned()),
    ];
    for (file, text) in files {
        let path = dir.join(file);
        std::fs::create_dir_all(path.parent().expect("files have a parent"))?;
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

const CARGO_TOML: &str = r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"

[lib]
crate-type = ["cdylib"]

[dependencies]
weir-guest = { path = "{sdk}", features = ["params"] }
serde = { version = "1", features = ["derive"] }

[profile.release]
opt-level = 3
lto = true
codegen-units = 1
strip = true

# A stage is its own workspace.
[workspace]
"#;

const CARGO_CONFIG: &str = r#"[build]
target = "wasm32-wasip2"

[target.wasm32-wasip2]
rustflags = ["-C", "target-feature=+simd128"]
"#;

const LIB_RS: &str = r#"//! A featurizer: `output = input * factor + offset`, nulls stay null.

use serde::Deserialize;
use weir_guest::{Batch, Column, Featurizer, StageError};

/// The stage's parameters, from the pipeline file's `params` table.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    input: String,
    output: String,
    #[serde(default = "one")]
    factor: f64,
    #[serde(default)]
    offset: f64,
}

fn one() -> f64 {
    1.0
}

struct Scale(Params);

impl Featurizer for Scale {
    fn init(params: &str) -> Result<Self, String> {
        // Errors name the key: "bad parameters: `factor`: invalid type: ...".
        weir_guest::params::parse(params).map(Scale)
    }

    fn process(&mut self, input: Batch) -> Result<Batch, StageError> {
        let p = &self.0;
        let scaled = input.f64s_lossy(&p.input)?.map(|v| v.map(|x| x * p.factor + p.offset));
        input.with_column(Column::f64_opt(&p.output, scaled))
    }
}

weir_guest::export_featurizer!(Scale);
"#;

const README: &str = r#"# {name}

A weir featurizer stage. `output = input * factor + offset`; nulls stay null.

Build and check it against the weir contract:

    weir stage build .

Use it in a pipeline:

    [[stage]]
    name = "{name}"
    input = "events"
    [stage.wasm]
    crate = "path/to/{name}"
    params = { input = "price", output = "price_scaled", factor = 0.01 }
"#;
