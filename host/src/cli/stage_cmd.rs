//! `weir stage new|build`: a stage author's first featurizer (or, with
//! `--connector`, source plugin) in minutes.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::Subcommand;

use weir::sandbox::build_stage;

use crate::cli::out::outln;

#[derive(Subcommand)]
pub enum StageCommand {
    /// Scaffold a stage crate: a working featurizer (or, with `--connector`, a
    /// source plugin), its Cargo.toml and a README.
    New {
        /// The stage's name (a Rust crate name: letters, digits, `-`, `_`).
        name: String,
        /// Scaffold a connector (a `[source.plugin]`: reads a file's lines, with
        /// a byte-offset checkpoint) instead of a featurizer.
        #[arg(long)]
        connector: bool,
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
        StageCommand::New {
            name,
            connector,
            dir,
            sdk,
        } => {
            let dir = dir.unwrap_or_else(|| PathBuf::from(&name));
            let sdk =
                sdk.unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-sdk"));
            let role = if connector {
                Role::Connector
            } else {
                Role::Featurizer
            };
            scaffold(&name, &dir, &sdk, role)?;
            outln!("created {} `{name}` in {}", role.noun(), dir.display());
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

/// What a scaffolded crate is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Featurizer,
    Connector,
}

impl Role {
    fn noun(self) -> &'static str {
        match self {
            Self::Featurizer => "stage",
            Self::Connector => "connector",
        }
    }
}

fn scaffold(name: &str, dir: &Path, sdk: &Path, role: Role) -> anyhow::Result<()> {
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
    let (features, lib_rs, readme) = match role {
        Role::Featurizer => (r#"features = ["params"]"#, LIB_RS, README),
        Role::Connector => (
            r#"default-features = false, features = ["connector", "params"]"#,
            CONNECTOR_LIB_RS,
            CONNECTOR_README,
        ),
    };
    let files = [
        (
            "Cargo.toml",
            CARGO_TOML
                .replace("{name}", name)
                .replace("{features}", features)
                .replace("{sdk}", &sdk.display().to_string()),
        ),
        (".cargo/config.toml", CARGO_CONFIG.to_owned()),
        ("src/lib.rs", lib_rs.to_owned()),
        ("README.md", readme.replace("{name}", name)),
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
weir-guest = { path = "{sdk}", {features} }
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

const CONNECTOR_LIB_RS: &str = r#"//! A connector (a source plugin): the lines of a text file, one row each, with
//! the byte offset after the last line of a batch as its checkpoint.

use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};

use serde::Deserialize;
use weir_guest::{Batch, Column, Connector, StageError};

/// The source's configuration, from the pipeline file's `config` table.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// The file, as the plugin sees it: under a directory in `grants.read`.
    path: String,
}

struct Lines {
    reader: BufReader<File>,
    /// Byte offset of the next unread line: the checkpoint.
    offset: u64,
}

impl Connector for Lines {
    fn open(config: &str, checkpoint: Option<String>) -> Result<Self, String> {
        // Errors name the key: "bad parameters: `path`: invalid type: ...".
        let config: Config = weir_guest::params::parse(config)?;
        let mut file =
            File::open(&config.path).map_err(|e| format!("cannot open {}: {e}", config.path))?;
        let offset = match checkpoint {
            Some(c) => c.parse().map_err(|_| format!("bad checkpoint {c:?}"))?,
            None => 0,
        };
        file.seek(SeekFrom::Start(offset)).map_err(|e| e.to_string())?;
        Ok(Lines { reader: BufReader::new(file), offset })
    }

    fn next_batch(&mut self, max_rows: u32) -> Result<Option<(Batch, String)>, StageError> {
        let mut lines = Vec::new();
        let mut line = String::new();
        while lines.len() < max_rows as usize {
            line.clear();
            let n = self
                .reader
                .read_line(&mut line)
                .map_err(|e| StageError::new(format!("read failed: {e}")))?;
            if n == 0 {
                break;
            }
            self.offset += n as u64;
            lines.push(line.trim_end_matches(['\n', '\r']).to_owned());
        }
        if lines.is_empty() {
            return Ok(None); // the end of the file: the source is done
        }
        let batch = Batch::new(vec![Column::utf8("line", &lines)])?;
        Ok(Some((batch, self.offset.to_string())))
    }
}

weir_guest::export_connector!(Lines);
"#;

const CONNECTOR_README: &str = r#"# {name}

A weir connector (a source plugin): each line of a text file becomes a row with one
`utf8` column, `line`. Its checkpoint is the byte offset after a batch's last line, so
a resumed run continues where the last committed batch ended.

Build and check it against the weir contract:

    weir stage build .

Use it in a pipeline, granting it the directory it reads (nothing is granted by
default):

    [[source]]
    name = "{name}"
    [source.plugin]
    crate = "path/to/{name}"
    config = { path = "input.txt" }
    grants = { read = ["."] }
    schema = [{ name = "line", type = "utf8" }]
"#;
