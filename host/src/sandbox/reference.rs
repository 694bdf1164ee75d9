//! Where a WebAssembly stage's code comes from: one reference type, read once
//! from a stage's `component`/`crate` keys, and one [`ComponentRef::resolve`]
//! that every user shares (the stage building itself, a live change, pinning a
//! version). It lives with the sandbox, below the operators and the store that
//! both resolve references.
//!
//! ```text
//!   component = "bucketize.wasm" | "out/x"  ──► File     ──resolve──► Resolved::File(path)
//!   crate     = "../stages/bucketize"       ──► Crate    ──build────► Resolved::File(built .wasm)
//!   component = "bucketize@3" | "sha256:…"  ──► Stored   ──store────► Resolved::Stored { digest, bytes }
//! ```

use std::path::{Path, PathBuf};

use super::{BuildError, LoadError, LoadedComponent, Sandbox, build_stage};
use crate::node::NodeError;
use crate::node::config::SpecError;
use crate::node::services::ComponentSource;

/// A stage's component, as its spec names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ComponentRef {
    /// A component file (`.wasm`, or `.wat` text), relative to the pipeline file.
    File(PathBuf),
    /// A stage crate, built with `cargo build --target wasm32-wasip2` first.
    Crate(PathBuf),
    /// A component in the store: `name@version`, `name` (its latest version) or
    /// `sha256:<hex>`.
    Stored(String),
}

/// A resolved component: a file to load, or bytes read from the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    /// The file to load (a component file, or the one a crate built to).
    File(PathBuf),
    /// Bytes from the store, with their digest (hex sha256).
    Stored {
        /// The component's digest.
        digest: String,
        /// Its bytes.
        bytes: Vec<u8>,
    },
}

/// Why a component reference could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// A store reference, but the caller has no store.
    #[error("component `{0}` names the store, but this run has none")]
    NoStore(String),
    /// The store refused the reference or failed.
    #[error(transparent)]
    Store(NodeError),
    /// The stage crate did not build.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// The component file could not be read.
    #[error("cannot read {path}: {error}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        error: std::io::Error,
    },
}

/// Whether a `component` value names the store rather than a file: a file ends
/// in `.wasm` or `.wat` or contains `/`.
pub fn is_reference(component: &str) -> bool {
    !(component.ends_with(".wasm") || component.ends_with(".wat") || component.contains('/'))
}

impl ComponentRef {
    /// The reference a stage's `component` and `crate` keys make; `key` is the
    /// stage's table (`stage[0].wasm`), which the error names.
    ///
    /// # Errors
    /// [`SpecError::Invalid`] when neither or both are set.
    pub fn parse(
        component: Option<&Path>,
        krate: Option<&Path>,
        key: &str,
    ) -> Result<Self, SpecError> {
        match (component, krate) {
            (Some(c), None) => Ok(Self::component(c)),
            (None, Some(dir)) => Ok(Self::Crate(dir.to_path_buf())),
            _ => Err(SpecError::invalid(
                key,
                "set exactly one of `component` (a .wasm file or a stored component) and `crate` (a stage crate to build)",
            )),
        }
    }

    /// The reference a `component` value makes on its own (a shadow's, a swap's):
    /// a store reference or a file.
    pub fn component(component: &Path) -> Self {
        match component.to_str() {
            Some(r) if is_reference(r) => Self::Stored(r.to_owned()),
            _ => Self::File(component.to_path_buf()),
        }
    }

    /// A short name for the component when it is pushed to the store: the
    /// reference's name, the file's stem or the crate's directory name; `None`
    /// when the path has none.
    pub fn label(&self) -> Option<String> {
        match self {
            Self::Stored(r) => Some(r.split('@').next().unwrap_or(r).to_owned()),
            Self::File(p) => p.file_stem().map(|s| s.to_string_lossy().into_owned()),
            Self::Crate(p) => p.file_name().map(|s| s.to_string_lossy().into_owned()),
        }
    }

    /// Resolves the reference: a file against `base` (the pipeline file's
    /// directory), a crate built there, a store reference through `store`.
    ///
    /// # Errors
    /// [`ResolveError`]: no store for a store reference, the store refusing it,
    /// or the crate failing to build.
    pub fn resolve(
        &self,
        base: &Path,
        store: Option<&dyn ComponentSource>,
    ) -> Result<Resolved, ResolveError> {
        let at = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };
        match self {
            Self::File(p) => Ok(Resolved::File(at(p))),
            Self::Crate(dir) => Ok(Resolved::File(build_stage(&at(dir))?)),
            Self::Stored(r) => {
                let store = store.ok_or_else(|| ResolveError::NoStore(r.clone()))?;
                let (digest, bytes) = store.component(r).map_err(ResolveError::Store)?;
                Ok(Resolved::Stored { digest, bytes })
            }
        }
    }
}

impl std::fmt::Display for ComponentRef {
    /// As the spec wrote it: the reference, the file or the crate's directory.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Stored(r) => f.write_str(r),
            Self::File(p) | Self::Crate(p) => write!(f, "{}", p.display()),
        }
    }
}

impl Resolved {
    /// The component's bytes (a file is read).
    ///
    /// # Errors
    /// [`ResolveError::Read`] when the file cannot be read.
    pub fn into_bytes(self) -> Result<Vec<u8>, ResolveError> {
        match self {
            Self::Stored { bytes, .. } => Ok(bytes),
            Self::File(path) => std::fs::read(&path).map_err(|error| ResolveError::Read {
                path: path.display().to_string(),
                error,
            }),
        }
    }

    /// The component loaded into `sandbox` (a `.wat` file as text).
    ///
    /// # Errors
    /// [`LoadError`] when the sandbox refuses it.
    pub fn load(&self, sandbox: &Sandbox) -> Result<LoadedComponent, LoadError> {
        match self {
            Self::File(path) => sandbox.load_file(path),
            Self::Stored { bytes, .. } => sandbox.load(bytes),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct OneComponent;

    impl ComponentSource for OneComponent {
        fn component(&self, reference: &str) -> Result<(String, Vec<u8>), NodeError> {
            match reference {
                "bucketize@3" => Ok(("ab12".into(), vec![1, 2, 3])),
                other => Err(NodeError::config(format!("no component `{other}`"))),
            }
        }
    }

    #[test]
    fn a_reference_is_read_once_from_component_or_crate() {
        let p = |s: &str| PathBuf::from(s);
        let parse = |c: Option<&str>, k: Option<&str>| {
            ComponentRef::parse(c.map(Path::new), k.map(Path::new), "stage[1].wasm")
        };
        assert_eq!(
            parse(Some("a.wasm"), None).unwrap(),
            ComponentRef::File(p("a.wasm"))
        );
        assert_eq!(
            parse(Some("out/x"), None).unwrap(),
            ComponentRef::File(p("out/x"))
        );
        assert_eq!(
            parse(Some("bucketize@3"), None).unwrap(),
            ComponentRef::Stored("bucketize@3".into())
        );
        assert_eq!(
            parse(None, Some("stages/b")).unwrap(),
            ComponentRef::Crate(p("stages/b"))
        );
        for bad in [parse(None, None), parse(Some("a.wasm"), Some("stages/b"))] {
            let SpecError::Invalid { key, message } = bad.unwrap_err() else {
                panic!("not invalid");
            };
            assert_eq!(key, "stage[1].wasm");
            assert!(
                message.starts_with("set exactly one of `component`"),
                "{message}"
            );
        }
    }

    #[test]
    fn resolving_reads_the_store_or_names_the_file() {
        let base = Path::new("/pipelines");
        let stored = ComponentRef::Stored("bucketize@3".into());
        assert_eq!(
            stored.resolve(base, Some(&OneComponent)).unwrap(),
            Resolved::Stored {
                digest: "ab12".into(),
                bytes: vec![1, 2, 3]
            }
        );
        assert_eq!(
            stored.resolve(base, None).unwrap_err().to_string(),
            "component `bucketize@3` names the store, but this run has none"
        );
        assert_eq!(
            ComponentRef::Stored("other".into())
                .resolve(base, Some(&OneComponent))
                .unwrap_err()
                .to_string(),
            "no component `other`"
        );
        assert_eq!(
            ComponentRef::File("a.wasm".into())
                .resolve(base, None)
                .unwrap(),
            Resolved::File("/pipelines/a.wasm".into())
        );
        assert_eq!(stored.label().as_deref(), Some("bucketize"));
        assert_eq!(
            ComponentRef::File("x/a.wasm".into()).label().as_deref(),
            Some("a")
        );
    }
}
