//! How the store lays out tenants, and how it reads a directory an older weir wrote.
//!
//! ```text
//!   <data dir>/
//!     owner.lock, owner.sock        the owner's lock and its socket (see `owner`)
//!     store/  (sled)
//!       meta                        "format" → u32 BE: the layout's version
//!       <tenant>/components, <tenant>/blobs, <tenant>/names, <tenant>/versions,
//!       <tenant>/active, <tenant>/lineage, <tenant>/checkpoints, <tenant>/kv.<space>
//!     artifacts/                    compiled components by digest: the engine's cache,
//!                                   shared, since code with one digest compiles once
//!     tenants/<tenant>/             a tenant's files: dead-letter exports, operator
//!                                   state, spill files, control sockets
//! ```
//!
//! Every tree and every path under the data directory that holds a tenant's data
//! carries its tenant, so no listing, lookup or path of one tenant can reach
//! another's. The compiled-artifact cache is the exception on purpose: it is keyed
//! by content digest, lists nothing, and holds no tenant's names.
//!
//! Format 1 (every weir before tenants) kept the trees unprefixed and the files at
//! the top of the data directory. Opening such a directory migrates it once, in
//! place, to tenant `default`: the entries are copied into the prefixed trees, the
//! old trees dropped, the files moved, and the format recorded last, so a migration
//! cut short is simply redone. A directory written by a newer weir is refused.

use std::path::Path;

use super::StoreError;

/// The layout this weir writes and reads.
pub const FORMAT: u32 = 2;

/// The tenant the CLI works as unless told otherwise, and the one a format-1
/// directory migrates into.
pub const DEFAULT_TENANT: &str = "default";

/// The trees a tenant has, as format 1 named them without a prefix.
const TENANT_TREES: [&str; 7] = [
    "components",
    "blobs",
    "names",
    "versions",
    "active",
    "lineage",
    "checkpoints",
];

/// The data-directory folders format 1 kept at the top and format 2 keeps per tenant.
const TENANT_DIRS: [&str; 3] = ["dead-letters", "state", "control"];

/// Refuses a tenant name that could not be a path segment and a key prefix both:
/// 1–63 characters of `a-z`, `0-9`, `_` and `-`, starting with a letter or digit.
///
/// # Errors
/// [`StoreError::BadTenant`] saying why.
pub fn check_tenant(name: &str) -> Result<(), StoreError> {
    let bad = |reason: &str| StoreError::BadTenant {
        tenant: name.to_owned(),
        reason: reason.to_owned(),
    };
    let first = name.bytes().next().ok_or_else(|| bad("it is empty"))?;
    if name.len() > 63 {
        return Err(bad("it is longer than 63 characters"));
    }
    if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
        return Err(bad("it starts with a lowercase letter or a digit"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_' || *c == '-'))
    {
        return Err(bad(&format!(
            "`{c}` is not allowed (use a-z, 0-9, `_` and `-`)"
        )));
    }
    Ok(())
}

/// The sled tree `tree` of `tenant`.
pub fn tree_name(tenant: &str, tree: &str) -> String {
    format!("{tenant}/{tree}")
}

/// A tenant's directory under the data directory.
pub fn tenant_dir(data_dir: &Path, tenant: &str) -> std::path::PathBuf {
    data_dir.join("tenants").join(tenant)
}

/// Brings an open store (and its data directory) to [`FORMAT`], or refuses it.
///
/// # Errors
/// [`StoreError::Format`] for a newer format; [`StoreError::Db`] when sled or a
/// file move fails.
pub fn migrate(
    db: &sled::Db,
    data_dir: &Path,
    db_err: impl Fn(String) -> StoreError,
) -> Result<(), StoreError> {
    let meta = db.open_tree("meta").map_err(|e| db_err(e.to_string()))?;
    let found = meta
        .get("format")
        .map_err(|e| db_err(e.to_string()))?
        .and_then(|v| v.as_ref().try_into().ok().map(u32::from_be_bytes));
    match found {
        Some(FORMAT) => return Ok(()),
        Some(newer) if newer > FORMAT => {
            return Err(StoreError::Format {
                found: newer,
                supported: FORMAT,
            });
        }
        _ => {}
    }
    let names: Vec<Vec<u8>> = db.tree_names().into_iter().map(|n| n.to_vec()).collect();
    for old in TENANT_TREES {
        if !names.iter().any(|n| n == old.as_bytes()) {
            continue;
        }
        let from = db.open_tree(old).map_err(|e| db_err(e.to_string()))?;
        let to = db
            .open_tree(tree_name(DEFAULT_TENANT, old))
            .map_err(|e| db_err(e.to_string()))?;
        let mut batch = sled::Batch::default();
        for item in from.iter() {
            let (k, v) = item.map_err(|e| db_err(e.to_string()))?;
            if old == "checkpoints" {
                batch.insert(
                    k,
                    rehome_state_files(&v, data_dir).unwrap_or_else(|| v.to_vec()),
                );
            } else {
                batch.insert(k, v);
            }
        }
        to.apply_batch(batch).map_err(|e| db_err(e.to_string()))?;
        db.drop_tree(old).map_err(|e| db_err(e.to_string()))?;
    }
    let tenant = tenant_dir(data_dir, DEFAULT_TENANT);
    for dir in TENANT_DIRS {
        let old = data_dir.join(dir);
        if old.is_dir() {
            let new = tenant.join(dir);
            std::fs::create_dir_all(&tenant).map_err(|e| db_err(e.to_string()))?;
            if new.exists() {
                // A migration cut short after this move: the new one is complete.
                continue;
            }
            std::fs::rename(&old, &new).map_err(|e| {
                db_err(format!(
                    "moving {} to {}: {e}",
                    old.display(),
                    new.display()
                ))
            })?;
        }
    }
    // The old spill directory held only temporary files of runs long gone.
    let _ = std::fs::remove_dir_all(data_dir.join("spill"));
    meta.insert("format", &FORMAT.to_be_bytes())
        .map_err(|e| db_err(e.to_string()))?;
    db.flush().map_err(|e| db_err(e.to_string()))?;
    if found.is_none()
        && names
            .iter()
            .any(|n| TENANT_TREES.iter().any(|t| n == t.as_bytes()))
    {
        tracing::info!(dir = %data_dir.display(), "data directory migrated to format {FORMAT}: its contents are tenant `default`'s");
    }
    Ok(())
}

/// A checkpoint names its operators' state files by path; those under the old
/// `<data dir>/state` move with it to the tenant's directory. `None`: nothing to
/// change (or not a checkpoint this code can read, kept as it was).
fn rehome_state_files(value: &[u8], data_dir: &Path) -> Option<Vec<u8>> {
    let mut checkpoint: serde_json::Value = serde_json::from_slice(value).ok()?;
    let operators = checkpoint.get_mut("operators")?.as_object_mut()?;
    let old = data_dir.join("state");
    let new = tenant_dir(data_dir, DEFAULT_TENANT).join("state");
    let mut changed = false;
    for file in operators.values_mut() {
        if let Some(rest) = file
            .as_str()
            .and_then(|f| Path::new(f).strip_prefix(&old).ok())
        {
            *file = serde_json::Value::String(new.join(rest).display().to_string());
            changed = true;
        }
    }
    changed
        .then(|| serde_json::to_vec(&checkpoint).ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_names_are_path_and_key_safe() {
        for good in ["default", "team-a", "a", "t_1", "0ops"] {
            check_tenant(good).unwrap();
        }
        let why = |n: &str| check_tenant(n).unwrap_err().to_string();
        assert_eq!(why(""), "tenant `` is not a tenant name: it is empty");
        assert_eq!(
            why("../x"),
            "tenant `../x` is not a tenant name: it starts with a lowercase letter or a digit"
        );
        assert_eq!(
            why("a/b"),
            "tenant `a/b` is not a tenant name: `/` is not allowed (use a-z, 0-9, `_` and `-`)"
        );
        assert_eq!(
            why("Team"),
            "tenant `Team` is not a tenant name: it starts with a lowercase letter or a digit"
        );
        assert!(why(&"a".repeat(64)).contains("longer than 63"));
    }
}
