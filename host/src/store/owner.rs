//! One owner per data directory.
//!
//! sled admits one process per store. Rather than open and close it for every
//! operation (slow on a large store: every open replays its log), the first weir
//! process that needs a data directory becomes its **owner**: it takes an advisory
//! lock (`flock`) on `<data dir>/owner.lock`, keeps sled open for its whole life, and serves
//! `<data dir>/owner.sock`. Every other process on that directory is a **client**:
//! it sends each store operation to the owner as one JSON line and reads one line
//! back, so `weir pipeline history` during a run prints what it prints alone.
//!
//! ```text
//!   weir run (owner) ── sled open ── owner.sock ◄── weir pipeline history (client)
//!                                        ▲
//!                                        └──────── weir run other.toml (client)
//! ```
//!
//! - **A second run on the same directory** runs in its own process, as a client:
//!   its checkpoints and lineage go through the owner. Only the store is shared;
//!   the run, its sandbox and its memory are its own.
//! - **A killed owner blocks nothing.** The kernel drops an `flock` with its
//!   process, so the lock is free at once; the socket file it leaves is removed by
//!   the next owner, which holds the lock and so knows no one serves it. A client
//!   whose owner went away takes the lock and becomes the owner itself.
//! - **A request cut off mid-way** is sent again only when running it twice is the
//!   same as once ([`Op::is_idempotent`]); otherwise the caller gets an error
//!   that says the outcome is unknown.
//!
//! Inside one process every [`super::Store`] handle on a directory shares one
//! [`Backend`], so a process never competes with itself.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::StoreError;
use super::ops::{Op, Reply};

/// How long a client waits for an owner that holds the lock but does not answer
/// yet (it is opening the store), before it gives up.
const OWNER_PATIENCE: Duration = Duration::from_secs(30);

/// How long the owner waits on a quiet connection before checking whether it is
/// shutting down.
const IDLE_TICK: Duration = Duration::from_millis(200);

/// Whether this process owns the data directory or talks to its owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// This process holds the store open and serves the others.
    Owner,
    /// Another process owns the directory; operations go through its socket.
    Client,
}

#[derive(Serialize, Deserialize)]
struct Request {
    tenant: String,
    #[serde(flatten)]
    op: Op,
}

/// The store of one data directory, as this process reaches it.
pub struct Backend {
    data_dir: PathBuf,
    path: String,
    state: Mutex<State>,
}

enum State {
    Owner(Owned),
    Client(Option<BufReader<UnixStream>>),
}

struct Owned {
    db: sled::Db,
    _lock: File,
    stop: Arc<AtomicBool>,
    /// Signals when the server and its connections have ended (and so dropped
    /// their handles on sled, which another open in this process would need).
    server_done: Option<std::sync::mpsc::Receiver<()>>,
    socket: PathBuf,
}

/// How long giving up ownership waits for the server's threads to end.
const SHUTDOWN_PATIENCE: Duration = Duration::from_secs(2);

impl Drop for Owned {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Bounded: a connection stuck in a write must not hang the process's
        // exit (or the tokio worker that drops the last handle).
        if let Some(done) = self.server_done.take()
            && done.recv_timeout(SHUTDOWN_PATIENCE).is_err()
        {
            tracing::warn!(socket = %self.socket.display(), "the store's server did not stop in time");
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

static BACKENDS: Mutex<Vec<(PathBuf, Weak<Backend>)>> = Mutex::new(Vec::new());

impl Backend {
    /// The backend of `data_dir` in this process: the existing one, or a new one
    /// that becomes the owner if no other process is, else a client of it.
    ///
    /// # Errors
    /// [`StoreError::Db`] when the directory cannot be created or the store not
    /// opened; [`StoreError::Format`] when a newer weir wrote it.
    pub fn get(data_dir: &Path) -> Result<Arc<Self>, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|e| StoreError::Db {
            path: data_dir.display().to_string(),
            message: e.to_string(),
        })?;
        let key = data_dir
            .canonicalize()
            .unwrap_or_else(|_| data_dir.to_path_buf());
        let mut all = BACKENDS.lock().unwrap_or_else(|e| e.into_inner());
        all.retain(|(_, w)| w.strong_count() > 0);
        if let Some(b) = all
            .iter()
            .find(|(p, _)| *p == key)
            .and_then(|(_, w)| w.upgrade())
        {
            return Ok(b);
        }
        let backend = Arc::new(Self {
            path: key.join("store").display().to_string(),
            data_dir: key.clone(),
            state: Mutex::new(State::Client(None)),
        });
        {
            let mut state = backend.lock();
            if let Some(owned) = backend.try_own()? {
                *state = State::Owner(owned);
            }
        }
        all.push((key, Arc::downgrade(&backend)));
        Ok(backend)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn err(&self, message: impl std::fmt::Display) -> StoreError {
        StoreError::Db {
            path: self.path.clone(),
            message: message.to_string(),
        }
    }

    /// Whether this process owns the directory now.
    pub fn role(&self) -> Role {
        match &*self.lock() {
            State::Owner(_) => Role::Owner,
            State::Client(_) => Role::Client,
        }
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Takes the lock and opens the store, if no other process holds it.
    /// Opens sled once this process holds `owner.lock`. sled's own lock on
    /// its file can then be held only by a handle of this process still being
    /// dropped (its flusher thread lets go a moment later), so a refusal is
    /// tried again for up to two seconds before it is an error.
    fn open_db(&self) -> Result<sled::Db, StoreError> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        loop {
            match sled::Config::new().path(&self.path).open() {
                Ok(db) => return Ok(db),
                // sled reports its lock as an `Other` error naming it.
                Err(sled::Error::Io(e))
                    if e.to_string().starts_with("could not acquire lock")
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => return Err(self.err(e)),
            }
        }
    }

    fn try_own(&self) -> Result<Option<Owned>, StoreError> {
        let lock_path = self.data_dir.join("owner.lock");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| self.err(format!("{}: {e}", lock_path.display())))?;
        if lock.try_lock().is_err() {
            return Ok(None);
        }
        let db = self.open_db()?;
        super::layout::migrate(&db, &self.data_dir, |m| self.err(m))?;
        let socket = self.data_dir.join("owner.sock");
        // We hold the lock: a socket file here was left by an owner that died.
        let _ = std::fs::remove_file(&socket);
        let stop = Arc::new(AtomicBool::new(false));
        let server_done = match crate::node::unix_socket::bind(&socket) {
            Ok(listener) => Some(serve(listener, db.clone(), self.path.clone(), stop.clone())),
            Err(e) => {
                // Other processes will wait, then fail, naming the cause here.
                tracing::warn!(socket = %socket.display(), error = %e, "cannot serve the data directory to other processes");
                None
            }
        };
        tracing::debug!(dir = %self.data_dir.display(), "owning the data directory");
        Ok(Some(Owned {
            db,
            _lock: lock,
            stop,
            server_done,
            socket,
        }))
    }

    /// Runs `op` for `tenant`: here if this process owns the store, through the
    /// owner otherwise; takes over when the owner has gone.
    ///
    /// # Errors
    /// The op's own error, or [`StoreError::Db`] when no owner answers.
    pub fn run(&self, tenant: &str, op: Op) -> Result<Reply, StoreError> {
        let started = Instant::now();
        let mut state = self.lock();
        loop {
            match &mut *state {
                State::Owner(owned) => return super::ops::run(&owned.db, &self.path, tenant, op),
                State::Client(conn) => {
                    if conn.is_none() {
                        match crate::node::unix_socket::connect(&self.data_dir.join("owner.sock")) {
                            Ok(s) => *conn = Some(BufReader::new(s)),
                            Err(e) => {
                                if let Some(owned) = self.try_own()? {
                                    *state = State::Owner(owned);
                                    continue;
                                }
                                if started.elapsed() > OWNER_PATIENCE {
                                    return Err(self.err(format!(
                                        "another process holds {} but does not answer on owner.sock: {e}",
                                        self.data_dir.display()
                                    )));
                                }
                                std::thread::sleep(Duration::from_millis(20));
                                continue;
                            }
                        }
                    }
                    let stream = conn.as_mut().expect("connected above");
                    match exchange(stream, tenant, &op) {
                        Ok(answer) => return answer,
                        Err(e) => {
                            *conn = None;
                            if !op.is_idempotent() {
                                return Err(self.err(format!(
                                    "the owning process went away during the request ({e}); it may or may not have been applied"
                                )));
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Sends one request and reads its answer.
fn exchange(
    stream: &mut BufReader<UnixStream>,
    tenant: &str,
    op: &Op,
) -> std::io::Result<Result<Reply, StoreError>> {
    let mut line = serde_json::to_vec(&Request {
        tenant: tenant.to_owned(),
        op: op.clone(),
    })
    .map_err(std::io::Error::other)?;
    line.push(b'\n');
    stream.get_mut().write_all(&line)?;
    let mut answer = String::new();
    if stream.read_line(&mut answer)? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    serde_json::from_str(&answer).map_err(std::io::Error::other)
}

/// The owner's accept loop: a thread per connection, each answering one line per
/// request until the client closes or the owner stops. The listener polls (every
/// [`ACCEPT_TICK`]) so that stopping needs no wake-up connection.
fn serve(
    listener: UnixListener,
    db: sled::Db,
    path: String,
    stop: Arc<AtomicBool>,
) -> std::sync::mpsc::Receiver<()> {
    let (done_tx, done) = std::sync::mpsc::channel();
    let _ = listener.set_nonblocking(true);
    let spawned = std::thread::Builder::new()
        .name("weir-store-owner".into())
        .spawn(move || {
            let mut connections: Vec<JoinHandle<()>> = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let _ = stream.set_nonblocking(false);
                        let (db, path, stop) = (db.clone(), path.clone(), stop.clone());
                        connections.retain(|c| !c.is_finished());
                        connections.push(std::thread::spawn(move || {
                            answer(stream, &db, &path, &stop)
                        }));
                    }
                    Err(_) => std::thread::sleep(ACCEPT_TICK),
                }
            }
            drop(listener);
            for c in connections {
                let _ = c.join();
            }
            drop(db);
            let _ = done_tx.send(());
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the store's server");
    }
    done
}

/// How often the owner's listener looks for a new connection.
const ACCEPT_TICK: Duration = Duration::from_millis(5);

fn answer(stream: UnixStream, db: &sled::Db, path: &str, stop: &AtomicBool) {
    let _ = stream.set_read_timeout(Some(IDLE_TICK));
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        match reader.read_until(b'\n', &mut line) {
            Ok(0) => return,
            Ok(_) if line.ends_with(b"\n") => {
                let reply = match serde_json::from_slice::<Request>(&line) {
                    Ok(r) => match super::layout::check_tenant(&r.tenant) {
                        Ok(()) => super::ops::run(db, path, &r.tenant, r.op),
                        Err(e) => Err(e),
                    },
                    Err(e) => Err(StoreError::Db {
                        path: path.to_owned(),
                        message: format!("unreadable request: {e}"),
                    }),
                };
                line.clear();
                let mut out = serde_json::to_vec(&reply).unwrap_or_default();
                out.push(b'\n');
                if writer.write_all(&out).is_err() {
                    return;
                }
            }
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}
