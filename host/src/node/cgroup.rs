//! The container's memory limit, read from the cgroup filesystem.
//!
//! In a container (a GPU node's pod, a Docker limit) the kernel kills a process
//! that passes its cgroup's limit, however much memory the machine has free. So
//! the host pool's default size and the memory floor's "available" come from the
//! cgroup when it sets a limit, and from the machine otherwise.
//!
//! - cgroup v2: `/proc/self/cgroup` has one line `0::/<path>`; the limit is
//!   `memory.max` (`max` for none) and the use `memory.current`, under
//!   `/sys/fs/cgroup/<path>`.
//! - cgroup v1: the line `<n>:memory:/<path>` (the controller may share its line:
//!   `<n>:cpu,memory:/…`); the limit is `memory.limit_in_bytes` (a huge number for
//!   none) and the use `memory.usage_in_bytes`, under `/sys/fs/cgroup/memory/<path>`.
//!
//! The effective limit is the smallest along the path from the process's group
//! up to the root, as the kernel enforces it. In a cgroup namespace the path is
//! `/` and the files sit at the mount's top, which the same walk reads.

use std::path::{Path, PathBuf};

/// A v1 limit at or above this means "no limit" (the kernel writes
/// `PAGE_COUNTER_MAX` pages, about 2^63).
const V1_UNLIMITED: u64 = 1 << 60;

/// Where the process's memory limit is read, and what it was when read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupMemory {
    /// The file holding the effective (smallest) limit.
    pub limit_file: PathBuf,
    /// The file holding the group's current use.
    pub usage_file: PathBuf,
    /// The effective limit in bytes.
    pub limit: u64,
}

impl CgroupMemory {
    /// The limit of this process's cgroup, if one is set: reads
    /// `/proc/self/cgroup` and `/sys/fs/cgroup`.
    pub fn detect() -> Option<Self> {
        Self::read(Path::new("/proc/self/cgroup"), Path::new("/sys/fs/cgroup"))
    }

    /// The limit from `own` (a `/proc/<pid>/cgroup` file) and `root` (the cgroup
    /// mount), so tests can point both at a fixture tree. `None` when neither
    /// version sets a limit.
    pub fn read(own: &Path, root: &Path) -> Option<Self> {
        let text = std::fs::read_to_string(own).ok()?;
        let mut v1 = None;
        let mut v2 = None;
        for line in text.lines() {
            let mut parts = line.splitn(3, ':');
            let (Some(id), Some(controllers), Some(path)) =
                (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            if id == "0" && controllers.is_empty() {
                v2 = Some(path.trim_start_matches('/').to_owned());
            } else if controllers.split(',').any(|c| c == "memory") {
                v1 = Some(path.trim_start_matches('/').to_owned());
            }
        }
        if let Some(path) = v1 {
            let found = smallest(
                &root.join("memory"),
                &path,
                "memory.limit_in_bytes",
                "memory.usage_in_bytes",
            );
            if found.is_some() {
                return found;
            }
        }
        smallest(root, &v2?, "memory.max", "memory.current")
    }

    /// Bytes the group may still take before the kernel reclaims or kills: the
    /// limit less the current use (0 when over).
    pub fn available(&self) -> Option<u64> {
        let used: u64 = std::fs::read_to_string(&self.usage_file)
            .ok()?
            .trim()
            .parse()
            .ok()?;
        Some(self.limit.saturating_sub(used))
    }
}

/// The smallest limit along `base/path` and its ancestors up to `base`, with the
/// use of the process's own group.
fn smallest(base: &Path, path: &str, limit_name: &str, usage_name: &str) -> Option<CgroupMemory> {
    let own = base.join(path);
    let mut dir = own.clone();
    let mut best: Option<(u64, PathBuf)> = None;
    loop {
        let file = dir.join(limit_name);
        if let Ok(text) = std::fs::read_to_string(&file) {
            let limit = match text.trim() {
                "max" => None,
                n => n.parse::<u64>().ok().filter(|&n| n < V1_UNLIMITED),
            };
            if let Some(limit) = limit
                && best.as_ref().is_none_or(|(b, _)| limit < *b)
            {
                best = Some((limit, file));
            }
        }
        if dir == base || !dir.pop() || !dir.starts_with(base) {
            break;
        }
    }
    let (limit, limit_file) = best?;
    // The use is the process's own group's, or, if that has no file (v2's root),
    // the group that set the limit.
    let usage_file = [own.join(usage_name), limit_file.with_file_name(usage_name)]
        .into_iter()
        .find(|f| f.exists())?;
    Some(CgroupMemory {
        limit_file,
        usage_file,
        limit,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, file: &str, text: &str) {
        let path = root.join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn v2_takes_the_smallest_limit_on_the_path() {
        let t = tempfile::tempdir().unwrap();
        write(t.path(), "proc", "0::/kubepods/pod1/ctr\n");
        write(t.path(), "cg/kubepods/memory.max", "max\n");
        write(t.path(), "cg/kubepods/pod1/memory.max", "2147483648\n");
        write(t.path(), "cg/kubepods/pod1/ctr/memory.max", "4294967296\n");
        write(
            t.path(),
            "cg/kubepods/pod1/ctr/memory.current",
            "536870912\n",
        );
        let m = CgroupMemory::read(&t.path().join("proc"), &t.path().join("cg")).unwrap();
        assert_eq!(m.limit, 2 << 30);
        assert_eq!(m.limit_file, t.path().join("cg/kubepods/pod1/memory.max"));
        assert_eq!(m.available(), Some((2 << 30) - (512 << 20)));
    }

    #[test]
    fn v2_without_a_limit_is_none() {
        let t = tempfile::tempdir().unwrap();
        write(t.path(), "proc", "0::/\n");
        write(t.path(), "cg/memory.max", "max\n");
        write(t.path(), "cg/memory.current", "1\n");
        assert_eq!(
            CgroupMemory::read(&t.path().join("proc"), &t.path().join("cg")),
            None
        );
    }

    #[test]
    fn v1_reads_the_memory_controller_line() {
        let t = tempfile::tempdir().unwrap();
        write(
            t.path(),
            "proc",
            "12:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n0::/\n",
        );
        write(
            t.path(),
            "cg/memory/memory.limit_in_bytes",
            "9223372036854771712\n",
        );
        write(
            t.path(),
            "cg/memory/docker/abc/memory.limit_in_bytes",
            "1073741824\n",
        );
        write(
            t.path(),
            "cg/memory/docker/abc/memory.usage_in_bytes",
            "1000\n",
        );
        let m = CgroupMemory::read(&t.path().join("proc"), &t.path().join("cg")).unwrap();
        assert_eq!(m.limit, 1 << 30);
        assert_eq!(m.available(), Some((1 << 30) - 1000));
    }

    #[test]
    fn v1_unlimited_is_none() {
        let t = tempfile::tempdir().unwrap();
        write(t.path(), "proc", "4:memory:/\n");
        write(
            t.path(),
            "cg/memory/memory.limit_in_bytes",
            "9223372036854771712\n",
        );
        write(t.path(), "cg/memory/memory.usage_in_bytes", "1000\n");
        assert_eq!(
            CgroupMemory::read(&t.path().join("proc"), &t.path().join("cg")),
            None
        );
    }
}
