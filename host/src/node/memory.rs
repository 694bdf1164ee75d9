//! The memory budget: pools that nest host → tenant → run, reservations that
//! operators take *before* they buffer data, and the run's spill directory.
//!
//! ```text
//!   host pool (the host's; by default ¾ of the container's limit or the machine's memory)
//!      ▲ every grow is charged to each pool above it
//!   tenant pool (one per tenant on the host)
//!      ▲
//!   run pool (`settings.memory`, default 256 MiB)
//!      ▲            ▲             ▲
//!   sort        group        session      ← one Reservation each, named
//! ```
//!
//! Modelled on DataFusion's `memory_pool`: a [`Reservation`] is an RAII handle; it
//! grows with [`Reservation::try_grow`], which refuses (naming the consumer, what
//! it asked for and what the pool holds) instead of letting the process grow past
//! the budget, and it gives its bytes back when shrunk or dropped. An operator that
//! is refused spills to Arrow IPC files in the run's [`SpillDir`]; an operator that
//! cannot spill says so in its docs and fails with the refusal.
//!
//! The pool accounts for what operators *hold*; batches travelling in channels are
//! bounded separately by the channels (`settings.channel_bytes`). [`MemoryWatch`]
//! covers what neither sees: when the memory still available falls under
//! `settings.memory_floor`, sources wait until it recovers, and the time they
//! waited is a run-summary counter (`memory_paused_ms`). "Available" is the
//! container's (its cgroup limit less its use, see [`super::cgroup`]) when it sets
//! a limit, since that is what the kernel kills at, and the machine's otherwise
//! ([`MemorySource`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::units::ByteSize;

/// A reservation was refused: the budget is exhausted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "memory budget exhausted: `{consumer}` asked for {requested} more (holding {held}); \
     the {pool} pool has {used} of {limit} in use"
)]
pub struct MemoryError {
    /// Who asked.
    pub consumer: String,
    /// Which pool refused: `run`, `tenant` or `host`.
    pub pool: &'static str,
    /// What it asked for.
    pub requested: ByteSize,
    /// What it already held.
    pub held: ByteSize,
    /// What the pool had in use.
    pub used: ByteSize,
    /// The pool's limit.
    pub limit: ByteSize,
}

#[derive(Debug)]
struct PoolInner {
    kind: &'static str,
    limit: usize,
    used: AtomicUsize,
    peak: AtomicUsize,
    parent: Option<MemoryPool>,
}

/// A memory budget shared by reservations. Cheap to clone (one `Arc`).
#[derive(Debug, Clone)]
pub struct MemoryPool(Arc<PoolInner>);

impl MemoryPool {
    /// A host-wide pool: every run pool created with it as parent is charged here too.
    pub fn host(limit: ByteSize) -> Self {
        Self::with(limit, "host", None)
    }

    /// A tenant's pool of `limit` bytes on a host: every run of the tenant is
    /// charged to it, and it to the host's.
    pub fn tenant(limit: ByteSize, host: MemoryPool) -> Self {
        Self::with(limit, "tenant", Some(host))
    }

    /// A run's pool of `limit` bytes, charged also to `parent` (its tenant's or
    /// the host's pool) when given.
    pub fn run(limit: ByteSize, parent: Option<MemoryPool>) -> Self {
        Self::with(limit, "run", parent)
    }

    fn with(limit: ByteSize, kind: &'static str, parent: Option<MemoryPool>) -> Self {
        Self(Arc::new(PoolInner {
            kind,
            limit: limit.as_usize(),
            used: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            parent,
        }))
    }

    /// A new, empty reservation for `consumer` (named in refusals and metrics).
    pub fn reservation(&self, consumer: impl Into<String>) -> Reservation {
        Reservation {
            pool: self.clone(),
            consumer: consumer.into(),
            size: 0,
        }
    }

    /// Bytes currently reserved.
    pub fn used(&self) -> ByteSize {
        ByteSize(self.0.used.load(Ordering::Relaxed) as u64)
    }

    /// The most ever reserved at once.
    pub fn peak(&self) -> ByteSize {
        ByteSize(self.0.peak.load(Ordering::Relaxed) as u64)
    }

    /// The budget.
    pub fn limit(&self) -> ByteSize {
        ByteSize(self.0.limit as u64)
    }

    fn try_take(&self, n: usize, consumer: &str, held: usize) -> Result<(), MemoryError> {
        let p = &self.0;
        let mut cur = p.used.load(Ordering::Relaxed);
        loop {
            let next = cur.saturating_add(n);
            if next > p.limit {
                return Err(MemoryError {
                    consumer: consumer.to_owned(),
                    pool: p.kind,
                    requested: ByteSize(n as u64),
                    held: ByteSize(held as u64),
                    used: ByteSize(cur as u64),
                    limit: ByteSize(p.limit as u64),
                });
            }
            match p
                .used
                .compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(actual) => cur = actual,
            }
        }
        if let Some(parent) = &p.parent
            && let Err(e) = parent.try_take(n, consumer, held)
        {
            p.used.fetch_sub(n, Ordering::AcqRel);
            return Err(e);
        }
        p.peak.fetch_max(cur + n, Ordering::Relaxed);
        Ok(())
    }

    fn give_back(&self, n: usize) {
        self.0.used.fetch_sub(n, Ordering::AcqRel);
        if let Some(parent) = &self.0.parent {
            parent.give_back(n);
        }
    }
}

/// Bytes held from a [`MemoryPool`] by one consumer; given back on drop.
#[derive(Debug)]
pub struct Reservation {
    pool: MemoryPool,
    consumer: String,
    size: usize,
}

impl Reservation {
    /// Bytes held.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The consumer's name.
    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    /// Holds `n` more bytes, or refuses without changing anything.
    ///
    /// # Errors
    /// [`MemoryError`] naming this consumer when the run's (or the host's) pool
    /// cannot give `n` more bytes.
    pub fn try_grow(&mut self, n: usize) -> Result<(), MemoryError> {
        self.pool.try_take(n, &self.consumer, self.size)?;
        self.size += n;
        Ok(())
    }

    /// Grows or shrinks to exactly `n` bytes.
    ///
    /// # Errors
    /// As [`Reservation::try_grow`] when growing.
    pub fn try_resize(&mut self, n: usize) -> Result<(), MemoryError> {
        if n > self.size {
            self.try_grow(n - self.size)
        } else {
            self.shrink(self.size - n);
            Ok(())
        }
    }

    /// Gives back `n` bytes (at most what is held).
    pub fn shrink(&mut self, n: usize) {
        let n = n.min(self.size);
        self.pool.give_back(n);
        self.size -= n;
    }

    /// Gives back everything.
    pub fn free(&mut self) {
        self.shrink(self.size);
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.free();
    }
}

/// A run's spill directory: a fresh temporary directory under the data directory,
/// removed (with every file in it) when the last handle drops, which happens when
/// the run ends, whether it succeeded or failed.
#[derive(Debug, Clone)]
pub struct SpillDir(Arc<SpillInner>);

#[derive(Debug)]
struct SpillInner {
    dir: tempfile::TempDir,
    next: AtomicU64,
    files: AtomicU64,
    bytes: AtomicU64,
}

impl SpillDir {
    /// Creates `<parent>/weir-spill-XXXX` (and `parent`).
    ///
    /// # Errors
    /// The directory cannot be created.
    pub fn new(parent: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(parent)?;
        let dir = tempfile::Builder::new()
            .prefix("weir-spill-")
            .tempdir_in(parent)?;
        Ok(Self(Arc::new(SpillInner {
            dir,
            next: AtomicU64::new(0),
            files: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
        })))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        self.0.dir.path()
    }

    /// A fresh file name for `consumer` (`sort-3.arrow`); the caller creates it.
    pub fn new_file(&self, consumer: &str) -> PathBuf {
        let n = self.0.next.fetch_add(1, Ordering::Relaxed);
        let safe: String = consumer
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        self.0.files.fetch_add(1, Ordering::Relaxed);
        self.path().join(format!("{safe}-{n}.arrow"))
    }

    /// Counts bytes written to spill files.
    pub fn add_bytes(&self, n: u64) {
        self.0.bytes.fetch_add(n, Ordering::Relaxed);
    }

    /// Files created so far.
    pub fn files(&self) -> u64 {
        self.0.files.load(Ordering::Relaxed)
    }

    /// Bytes spilled so far.
    pub fn bytes(&self) -> u64 {
        self.0.bytes.load(Ordering::Relaxed)
    }
}

/// Where the memory still available is read: the container's cgroup when it
/// sets a limit, the machine otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemorySource {
    /// The cgroup's limit less its use.
    Cgroup(super::cgroup::CgroupMemory),
    /// The machine's available memory (`sysinfo`).
    System,
}

impl MemorySource {
    /// The cgroup if it sets a limit, else the machine.
    pub fn detect() -> Self {
        super::cgroup::CgroupMemory::detect().map_or(Self::System, Self::Cgroup)
    }

    /// The memory the process may use in all: the cgroup's limit, or the
    /// machine's total (`None` when the platform gives no figure).
    pub fn total(&self) -> Option<ByteSize> {
        match self {
            Self::Cgroup(c) => Some(ByteSize(c.limit)),
            Self::System => {
                let mut system = sysinfo::System::new().ok()?;
                system.refresh_memory();
                Some(ByteSize(system.total_memory())).filter(|t| t.0 > 0)
            }
        }
    }

    /// The host pool's default size: three quarters of [`MemorySource::total`],
    /// leaving a quarter for what pools do not count (channels, the sandbox's
    /// linear memories, the allocator's slack); 1 GiB when the total is unknown.
    pub fn default_host_pool(&self) -> ByteSize {
        self.total()
            .map_or(ByteSize(1 << 30), |t| ByteSize(t.0 / 4 * 3))
    }
}

/// Watches the memory still available ([`MemorySource`]); sources ask it before
/// each read.
#[derive(Debug, Clone)]
pub struct MemoryWatch(Arc<WatchInner>);

#[derive(Debug)]
struct WatchInner {
    floor: u64,
    /// `None` when off (no floor) or when the platform gives no memory figures.
    reader: Option<Mutex<(Reader, Instant, u64)>>,
}

#[derive(Debug)]
enum Reader {
    Cgroup(super::cgroup::CgroupMemory),
    System(Box<sysinfo::System>),
}

impl Reader {
    fn available(&mut self) -> u64 {
        match self {
            Self::Cgroup(c) => c.available().unwrap_or(u64::MAX),
            Self::System(s) => {
                s.refresh_memory();
                s.available_memory()
            }
        }
    }
}

/// How often the watch re-reads the node's memory, at most.
const WATCH_REFRESH: Duration = Duration::from_millis(100);

impl MemoryWatch {
    /// A watch that holds sources while the memory `source` says is available
    /// is under `floor` (0 disables it).
    pub fn new(floor: ByteSize, source: &MemorySource) -> Self {
        let reader = (floor.0 > 0)
            .then(|| match source {
                MemorySource::Cgroup(c) => Some(Reader::Cgroup(c.clone())),
                MemorySource::System => sysinfo::System::new()
                    .ok()
                    .map(|s| Reader::System(Box::new(s))),
            })
            .flatten()
            .map(|mut reader| {
                let available = reader.available();
                Mutex::new((reader, Instant::now(), available))
            });
        Self(Arc::new(WatchInner {
            floor: floor.0,
            reader,
        }))
    }

    /// The memory available, refreshed at most every 100 ms (`u64::MAX` when
    /// unknown).
    pub fn available(&self) -> ByteSize {
        let Some(reader) = &self.0.reader else {
            return ByteSize(u64::MAX);
        };
        let mut guard = reader.lock().unwrap_or_else(|e| e.into_inner());
        let (reader, at, available) = &mut *guard;
        if at.elapsed() >= WATCH_REFRESH {
            *available = reader.available();
            *at = Instant::now();
        }
        ByteSize(*available)
    }

    /// Whether available memory is under the floor.
    pub fn is_low(&self) -> bool {
        self.0.floor > 0 && self.available().0 < self.0.floor
    }

    /// Blocks (the caller is on the blocking pool) while memory is low; returns how
    /// long it waited.
    pub fn wait_while_low(&self) -> Duration {
        if !self.is_low() {
            return Duration::ZERO;
        }
        let started = Instant::now();
        let mut warned = false;
        while self.is_low() {
            if !warned {
                tracing::warn!(
                    available = %self.available(),
                    floor = %ByteSize(self.0.floor),
                    "available memory under the floor; pausing sources"
                );
                warned = true;
            }
            std::thread::sleep(WATCH_REFRESH);
        }
        started.elapsed()
    }
}

/// What a run's operators share: the budget, the spill directory, the watch.
#[derive(Debug, Clone)]
pub struct RunMemory {
    /// The run's pool.
    pub pool: MemoryPool,
    /// Where operators spill.
    pub spill: SpillDir,
    /// The node's memory watch.
    pub watch: MemoryWatch,
}

impl RunMemory {
    /// The budget, spill directory and watch of a run with `budget` and `floor`,
    /// spilling under `<dir>/spill`, its pool charged to `parent` (the tenant's
    /// pool on a host), its floor read from `source`.
    ///
    /// # Errors
    /// The spill directory cannot be created.
    pub fn for_run(
        budget: ByteSize,
        floor: ByteSize,
        dir: &Path,
        parent: Option<MemoryPool>,
        source: &MemorySource,
    ) -> std::io::Result<Self> {
        Ok(Self {
            pool: MemoryPool::run(budget, parent),
            spill: SpillDir::new(&dir.join("spill"))?,
            watch: MemoryWatch::new(floor, source),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_are_refused_past_the_limit_and_freed_on_drop() {
        let pool = MemoryPool::run(ByteSize(100), None);
        let mut a = pool.reservation("sort `s`");
        a.try_grow(60).unwrap();
        let mut b = pool.reservation("group `g`");
        let err = b.try_grow(50).unwrap_err();
        assert_eq!(
            err.to_string(),
            "memory budget exhausted: `group `g`` asked for 50B more (holding 0B); the run pool has 60B of 100B in use"
        );
        b.try_grow(40).unwrap();
        assert_eq!(pool.used(), ByteSize(100));
        drop(a);
        assert_eq!(pool.used(), ByteSize(40));
        b.shrink(10);
        assert_eq!(pool.used(), ByteSize(30));
        assert_eq!(pool.peak(), ByteSize(100));
    }

    #[test]
    fn the_host_pool_bounds_all_runs_together() {
        let host = MemoryPool::host(ByteSize(100));
        let r1 = MemoryPool::run(ByteSize(80), Some(host.clone()));
        let r2 = MemoryPool::run(ByteSize(80), Some(host.clone()));
        let mut a = r1.reservation("a");
        a.try_grow(70).unwrap();
        let mut b = r2.reservation("b");
        let err = b.try_grow(40).unwrap_err();
        assert_eq!(err.pool, "host");
        // The refusal left the run pool untouched.
        assert_eq!(r2.used(), ByteSize(0));
        b.try_grow(30).unwrap();
        drop(a);
        assert_eq!(host.used(), ByteSize(30));
    }

    #[test]
    fn pools_nest_host_tenant_run() {
        let host = MemoryPool::host(ByteSize(1000));
        let team = MemoryPool::tenant(ByteSize(100), host.clone());
        let other = MemoryPool::tenant(ByteSize(900), host.clone());
        let run = MemoryPool::run(ByteSize(500), Some(team.clone()));
        let mut a = run.reservation("sort `s`");
        a.try_grow(80).unwrap();
        // The run has room, its tenant does not: the tenant pool refuses.
        let err = a.try_grow(30).unwrap_err();
        assert_eq!(err.pool, "tenant");
        assert_eq!(
            (run.used(), team.used(), host.used()),
            (ByteSize(80), ByteSize(80), ByteSize(80))
        );
        // Another tenant is charged to the same host, not to this tenant.
        let mut b = MemoryPool::run(ByteSize(1000), Some(other.clone())).reservation("group `g`");
        b.try_grow(900).unwrap();
        assert_eq!(b.try_grow(1).unwrap_err().pool, "tenant");
        drop(a);
        assert_eq!((team.used(), host.used()), (ByteSize(0), ByteSize(900)));
    }

    #[test]
    fn the_floor_follows_the_cgroup_limit() {
        let t = tempfile::tempdir().unwrap();
        let cg = t.path().join("cg");
        std::fs::create_dir_all(&cg).unwrap();
        std::fs::write(t.path().join("proc"), "0::/\n").unwrap();
        std::fs::write(cg.join("memory.max"), "1000000\n").unwrap();
        std::fs::write(cg.join("memory.current"), "900000\n").unwrap();
        let cgroup = crate::node::cgroup::CgroupMemory::read(&t.path().join("proc"), &cg).unwrap();
        let source = MemorySource::Cgroup(cgroup);
        assert_eq!(source.total(), Some(ByteSize(1_000_000)));
        assert_eq!(source.default_host_pool(), ByteSize(750_000));
        // 100 kB left in the container: under a 200 kB floor, sources pause.
        let watch = MemoryWatch::new(ByteSize(200_000), &source);
        assert_eq!(watch.available(), ByteSize(100_000));
        assert!(watch.is_low());
        // The group frees memory; the next read (after the refresh interval) resumes.
        std::fs::write(cg.join("memory.current"), "100000\n").unwrap();
        std::thread::sleep(WATCH_REFRESH);
        assert_eq!(watch.wait_while_low(), Duration::ZERO);
        assert!(!watch.is_low());
        // Without a floor the watch is off, whatever the group holds.
        assert!(!MemoryWatch::new(ByteSize(0), &source).is_low());
    }

    #[test]
    fn the_spill_directory_is_removed_with_its_last_handle() {
        let parent = tempfile::tempdir().unwrap();
        let spill = SpillDir::new(parent.path()).unwrap();
        let file = spill.new_file("sort `by ts`");
        std::fs::write(&file, b"x").unwrap();
        assert!(
            file.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("sort__by_ts_-0")
        );
        let path = spill.path().to_path_buf();
        let clone = spill.clone();
        drop(spill);
        assert!(path.exists());
        drop(clone);
        assert!(!path.exists());
    }
}
