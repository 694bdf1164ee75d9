//! Files that appear whole or not at all: written under a temporary name beside
//! their target, synced, and renamed into place.
//!
//! ```text
//!   create ─► out.jsonl.weir-inprogress ─► write … ─► fsync file ─► rename ─► fsync dir
//!                                                                    out.jsonl
//! ```
//!
//! A reader of the target sees the previous version or the complete new one,
//! never a half-written file, and after the directory's `fsync` the rename
//! survives a power cut. The temporary name sits in the target's own directory
//! so the rename never crosses a file system. Every file sink (JSON lines, CSV,
//! vectors, Parquet, partitioned Parquet) publishes through here; a sink that
//! resumes from a checkpoint reopens its in-progress file with [`reopen_at`].

use std::ffi::OsStr;
use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// The suffix of a file (or directory) being written before it is published.
pub const IN_PROGRESS: &str = ".weir-inprogress";

/// `path` with `suffix` appended to its last component (`out.csv` →
/// `out.csv.weir-inprogress`): the same directory, so a rename stays on one
/// file system.
pub fn beside(path: &Path, suffix: impl AsRef<OsStr>) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

/// The in-progress name of `path`.
pub fn in_progress(path: &Path) -> PathBuf {
    beside(path, IN_PROGRESS)
}

/// Publishes `file`, written at `tmp`, as `path`: fsync the file, rename it
/// over `path`, fsync the directory.
///
/// # Errors
/// The sync or the rename failed; `path` is then unchanged.
pub fn publish(file: File, tmp: &Path, path: &Path) -> std::io::Result<()> {
    file.sync_all()?;
    drop(file);
    std::fs::rename(tmp, path)?;
    sync_parent(path)
}

/// Writes `bytes` as `path` whole: through a temporary name of this process's
/// own (two processes writing the same file at once each publish a complete
/// one), synced and renamed.
///
/// # Errors
/// Creating, writing, syncing or renaming failed; `path` is then unchanged.
pub fn write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = beside(path, format!("{IN_PROGRESS}-{}", std::process::id()));
    let written = File::create(&tmp).and_then(|mut f| {
        std::io::Write::write_all(&mut f, bytes)?;
        publish(f, &tmp, path)
    });
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Publishes directory `tmp` (its files already synced) as `path`, replacing
/// whatever `path` was: the old tree is renamed aside, the new one renamed in,
/// the old one deleted, the parent synced. Between the two renames a reader
/// finds no `path`, never a mix of both trees.
///
/// # Errors
/// A rename or removal failed.
pub fn publish_dir(tmp: &Path, path: &Path) -> std::io::Result<()> {
    sync_dir(tmp)?;
    let old = beside(path, ".weir-old");
    remove_any(&old)?;
    if path.exists() {
        std::fs::rename(path, &old)?;
    }
    std::fs::rename(tmp, path)?;
    remove_any(&old)?;
    sync_parent(path)
}

/// Opens `tmp` to continue at `bytes` (a checkpoint's length): the in-progress
/// file if it holds that much, else a copy of the published `path` (the run
/// that wrote the checkpoint had published before it stopped). Truncated to
/// `bytes` and synced, so what follows is written after exactly what the
/// checkpoint covers.
///
/// # Errors
/// Neither file holds `bytes` bytes, or the copy or truncation failed.
pub fn reopen_at(tmp: &Path, path: &Path, bytes: u64) -> std::io::Result<BufWriter<File>> {
    let long_enough = |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.len() >= bytes);
    if !long_enough(tmp) {
        if !long_enough(path) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!(
                    "neither {} nor {} holds the {bytes} bytes the checkpoint names",
                    tmp.display(),
                    path.display()
                ),
            ));
        }
        std::fs::copy(path, tmp)?;
    }
    let file = std::fs::OpenOptions::new().write(true).open(tmp)?;
    file.set_len(bytes)?;
    file.sync_all()?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    out.seek(SeekFrom::Start(bytes))?;
    Ok(out)
}

/// Removes a file or a directory tree; nothing there is not an error.
///
/// # Errors
/// The removal failed.
pub fn remove_any(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Syncs directory `dir`, making the renames in it durable. Directories
/// cannot be opened for syncing on every platform; where they cannot, this
/// does nothing.
///
/// # Errors
/// The sync itself failed.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    match File::open(dir) {
        Ok(d) => d.sync_all().or(Ok(())),
        Err(_) => Ok(()),
    }
}

fn sync_parent(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => sync_dir(p),
        _ => sync_dir(Path::new(".")),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn a_file_is_published_whole_and_replaces_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.csv");
        std::fs::write(&path, "old\n").unwrap();
        let tmp = in_progress(&path);
        assert_eq!(tmp, dir.path().join("out.csv.weir-inprogress"));
        let mut f = File::create(&tmp).unwrap();
        f.write_all(b"new\n").unwrap();
        // Until published, the target is the old version.
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "old\n");
        publish(f, &tmp, &path).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new\n");
        assert!(!tmp.exists());
    }

    #[test]
    fn bytes_are_written_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.bin");
        write(&path, b"one").unwrap();
        write(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "no temporary file left");
    }

    #[test]
    fn a_directory_is_published_in_place_of_the_old_tree() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        std::fs::create_dir_all(path.join("k=1")).unwrap();
        std::fs::write(path.join("k=1/part-0.parquet"), "old").unwrap();
        let tmp = in_progress(&path);
        std::fs::create_dir_all(tmp.join("k=2")).unwrap();
        std::fs::write(tmp.join("k=2/part-0.parquet"), "new").unwrap();
        publish_dir(&tmp, &path).unwrap();
        assert!(!path.join("k=1").exists());
        assert_eq!(
            std::fs::read_to_string(path.join("k=2/part-0.parquet")).unwrap(),
            "new"
        );
        assert!(!tmp.exists() && !beside(&path, ".weir-old").exists());
    }

    #[test]
    fn reopening_continues_at_the_checkpoints_length() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let tmp = in_progress(&path);
        std::fs::write(&tmp, "a\nb\nc-partial").unwrap();
        let mut out = reopen_at(&tmp, &path, 4).unwrap();
        out.write_all(b"c\n").unwrap();
        drop(out);
        assert_eq!(std::fs::read_to_string(&tmp).unwrap(), "a\nb\nc\n");
        // No in-progress file (the run had published): a copy of the target.
        std::fs::remove_file(&tmp).unwrap();
        std::fs::write(&path, "a\nb\nc\n").unwrap();
        drop(reopen_at(&tmp, &path, 2).unwrap());
        assert_eq!(std::fs::read_to_string(&tmp).unwrap(), "a\n");
        let e = reopen_at(&tmp, &path, 100).unwrap_err();
        assert!(e.to_string().contains("the 100 bytes"), "{e}");
    }
}
