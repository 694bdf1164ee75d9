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

/// The seed of a crash test's kill points: `$WEIR_CRASH_SEED` when set (to
/// replay a failure), else taken from the clock. Printed either way, so a
/// failing run names the seed that replays it.
pub fn crash_seed(test: &str) -> u64 {
    let seed = std::env::var("WEIR_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    println!("{test}: WEIR_CRASH_SEED={seed}");
    seed
}

/// splitmix64: the kill points' generator, reproducible from the seed.
pub fn next_random(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `kills` increasing kill points among `lines` input lines, one in each of
/// `kills` equal slices of 10–80% of the input, placed by `seed`.
pub fn kill_lines(seed: u64, lines: u64, kills: u64) -> Vec<u64> {
    let mut state = seed;
    let span = 70 / kills;
    (0..kills)
        .map(|k| {
            let pct = 10 + k * span + next_random(&mut state) % span;
            lines * pct / 100
        })
        .collect()
}

/// The input line after which the stored pipeline `name`'s checkpoint
/// continues its source `source` (a JSON-lines position, `line:offset`), as
/// `weir pipeline checkpoint` prints it; `None` before the first checkpoint.
pub fn checkpoint_line(dir: &Path, name: &str, source: &str) -> Option<u64> {
    let (ok, out, _) = weir(dir, &["pipeline", "checkpoint", name]);
    if !ok {
        return None;
    }
    let c: serde_json::Value = serde_json::from_str(&out).ok()?;
    c["sources"][source]
        .as_str()?
        .split(':')
        .next()?
        .parse()
        .ok()
}

/// Runs the stored pipeline `name` (resumed when `resume`) and kills it with
/// SIGKILL as soon as its checkpoint has passed line `line` of its source
/// `source`: a kill driven by the source's committed progress, not by the
/// sink's output (which stays empty behind a sort). Returns the line the
/// last checkpoint before the kill continues after. Panics if the run ends
/// first: a checkpoint that never advances is a failure of its own.
pub fn kill_after_checkpoint(dir: &Path, name: &str, resume: bool, source: &str, line: u64) -> u64 {
    let mut args = vec!["run", name, "--quiet"];
    if resume {
        args.push("--resume");
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(&args)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            panic!(
                "`{name}` ended ({status}) before a checkpoint passed line {line} \
                 (last: {:?}); {err}",
                checkpoint_line(dir, name, source)
            );
        }
        if let Some(at) = checkpoint_line(dir, name, source).filter(|&at| at >= line) {
            child.kill().unwrap();
            child.wait().unwrap();
            return at;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no checkpoint past line {line} in two minutes"
        );
    }
}
