//! What the tests that drive the real `weir` binary through crashes share:
//! running a command against a test directory's data directory, starting a
//! run and killing it once its output has grown to a kill point, and reading
//! an output file's lines in order.

#![allow(dead_code, reason = "each test file uses the part it needs")]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `weir ARGS --data-dir DIR/data` in `dir`: whether it succeeded, its
/// stdout and its stderr.
pub fn weir(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(args)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .current_dir(dir)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Starts `weir ARGS --data-dir DIR/data` in `dir` and waits until the file
/// `progress` (relative to `dir`: a sink's in-progress output) holds `bytes`.
/// Panics if the run ends first, or makes no progress for two minutes.
pub fn start_and_wait(dir: &Path, args: &[&str], progress: &str, bytes: u64) -> Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(args)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let progress = dir.join(progress);
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the run ended ({status}) before it was interrupted; make the input larger");
        }
        if std::fs::metadata(&progress).is_ok_and(|m| m.len() >= bytes) {
            return child;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "no progress");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Two kill points in `total` bytes of output that differ from run to run:
/// one at 20–45% of it, the other at 55–80%.
pub fn kill_points(total: u64) -> [u64; 2] {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    [
        total * (20 + nanos % 25) / 100,
        total * (55 + (nanos / 7) % 25) / 100,
    ]
}

/// Runs the stored pipeline `name` in `dir` (with `--resume` when `resume`),
/// kills it with SIGKILL once `progress` holds `at` bytes (see
/// [`start_and_wait`]), and returns the checkpoint it left in the store,
/// which must be there and not mark the run complete.
pub fn kill_at(
    dir: &Path,
    name: &str,
    resume: bool,
    progress: &str,
    at: u64,
) -> weir::node::Checkpoint {
    let mut args = vec!["run", name, "--quiet"];
    if resume {
        args.push("--resume");
    }
    let mut child = start_and_wait(dir, &args, progress, at);
    // SIGKILL: nothing runs on the way out.
    child.kill().unwrap();
    child.wait().unwrap();
    let store = weir::store::Store::open(&dir.join("data")).unwrap();
    let checkpoint = store
        .checkpoint(name)
        .unwrap()
        .expect("a checkpoint in the store");
    assert!(!checkpoint.complete, "{checkpoint:?}");
    checkpoint
}

/// The lines of `path`, sorted.
pub fn sorted_lines(path: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    v.sort();
    v
}
