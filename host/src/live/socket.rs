//! The control socket: a running pipeline takes swaps, stops and status requests
//! from other processes (`weir pipeline swap|stop|status`).
//!
//! ```text
//!   weir pipeline swap ──► <data dir>/control/<pipeline>.sock ──► LiveRun::apply ──► RunControl
//!        ◄── one JSON line: ok, per-stage outcomes ◄──┘
//! ```
//!
//! The protocol is JSON lines over a Unix domain socket: one [`Request`] per line,
//! one [`Response`] line back, in order, on as many lines as the client sends. A
//! Unix socket needs no port and is guarded by the file system's permissions: only
//! users who can write to the data directory can change the run.
//!
//! The socket file exists exactly while the run serves it: [`ControlSocket`]
//! removes it when dropped, whether the run ended, failed or was interrupted. A
//! file left by a process that died is detected (nobody answers) and replaced; a
//! live one means the same pipeline already runs with this data directory, and
//! this run is refused a socket rather than stealing the other's.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::Mutex;

use super::{LiveRun, LiveStatus, StageOutcome};

/// Where pipeline `pipeline`'s control socket lives in `data_dir`.
pub fn socket_path(data_dir: &Path, pipeline: &str) -> PathBuf {
    data_dir.join("control").join(format!("{pipeline}.sock"))
}

/// One request line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Swap a stage, or the whole pipeline to a stored version. Exactly one of
    /// `params`, `component` and `version` is set; `stage` is required with the
    /// first two and optional with `version` (then only that stage changes).
    Swap {
        /// The stage.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stage: Option<String>,
        /// New parameters.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        params: Option<serde_json::Value>,
        /// A new component: a store reference or an absolute file path.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        component: Option<String>,
        /// A stored version of the pipeline.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version: Option<u64>,
    },
    /// Stop the run: sources stop reading, everything read flows to the sinks.
    Stop,
    /// What runs now.
    Status,
}

/// One response line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// Whether the request fully succeeded (for a swap: every change applied).
    pub ok: bool,
    /// Why the request failed as a whole (bad request, structural change).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// A swap's outcome per stage.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<StageOutcome>,
    /// What runs now (after a swap, or for `status`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<LiveStatus>,
}

impl Response {
    fn failed(error: impl std::fmt::Display) -> Self {
        Self {
            ok: false,
            error: Some(error.to_string()),
            changes: Vec::new(),
            status: None,
        }
    }
}

/// Why the control socket could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No run serves the socket.
    #[error(
        "no running pipeline answers at {path} (is `weir run` running with this data directory?): {source}"
    )]
    NotRunning {
        /// The socket.
        path: String,
        /// Why connecting failed.
        source: std::io::Error,
    },
    /// The conversation failed midway.
    #[error("control socket {path}: {source}")]
    Io {
        /// The socket.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The run answered something that is not a response.
    #[error("control socket {path}: unreadable response `{line}`: {message}")]
    BadResponse {
        /// The socket.
        path: String,
        /// What came back.
        line: String,
        /// Why it did not parse.
        message: String,
    },
}

/// Sends one request to the run serving `path` and waits for its response, at
/// most `timeout` (a swap is answered after the new version's first batch).
///
/// # Errors
/// [`ClientError`].
pub fn request(path: &Path, request: &Request, timeout: Duration) -> Result<Response, ClientError> {
    let shown = path.display().to_string();
    let io = |source| ClientError::Io {
        path: shown.clone(),
        source,
    };
    let mut stream =
        crate::node::unix_socket::connect(path).map_err(|source| ClientError::NotRunning {
            path: shown.clone(),
            source,
        })?;
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    let mut line = serde_json::to_string(request).expect("requests serialize");
    line.push('\n');
    stream.write_all(line.as_bytes()).map_err(io)?;
    let mut answer = String::new();
    BufReader::new(&stream).read_line(&mut answer).map_err(io)?;
    serde_json::from_str(&answer).map_err(|e| ClientError::BadResponse {
        path: shown.clone(),
        line: answer.trim_end().to_owned(),
        message: e.to_string(),
    })
}

/// A served control socket; dropping it stops serving and removes the file.
pub struct ControlSocket {
    path: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl ControlSocket {
    /// The socket file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Why a control socket could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Another run of the same pipeline serves it.
    #[error("{path} is served by another running instance of this pipeline")]
    InUse {
        /// The socket.
        path: String,
    },
    /// Binding failed.
    #[error("cannot serve {path}: {source}")]
    Io {
        /// The socket.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

/// Serves `path` for `live` until the returned handle is dropped. Must be called
/// within a tokio runtime.
///
/// # Errors
/// [`ServeError`].
pub fn serve(path: PathBuf, live: Arc<Mutex<LiveRun>>) -> Result<ControlSocket, ServeError> {
    let io = |source| ServeError::Io {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    if path.exists() {
        if crate::node::unix_socket::connect(&path).is_ok() {
            return Err(ServeError::InUse {
                path: path.display().to_string(),
            });
        }
        // Left by a run that died: nobody answers.
        std::fs::remove_file(&path).map_err(io)?;
    }
    let listener = crate::node::unix_socket::bind(&path)
        .and_then(|l| {
            l.set_nonblocking(true)?;
            tokio::net::UnixListener::from_std(l)
        })
        .map_err(io)?;
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(converse(stream, live.clone()));
        }
    });
    Ok(ControlSocket { path, task })
}

async fn converse(stream: tokio::net::UnixStream, live: Arc<Mutex<LiveRun>>) {
    let (read, mut write) = stream.into_split();
    let mut lines = tokio::io::BufReader::new(read).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let response = match serde_json::from_str::<Request>(&line) {
            Ok(request) => handle(request, &live).await,
            Err(e) => Response::failed(format!("bad request: {e}")),
        };
        let mut text = serde_json::to_string(&response).expect("responses serialize");
        text.push('\n');
        if write.write_all(text.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// Answers one request against the run.
pub async fn handle(request: Request, live: &Mutex<LiveRun>) -> Response {
    match request {
        Request::Stop => {
            let live = live.lock().await;
            live.control().stop();
            Response {
                ok: true,
                error: None,
                changes: Vec::new(),
                status: Some(live.status()),
            }
        }
        Request::Status => {
            let live = live.lock().await;
            Response {
                ok: true,
                error: None,
                changes: Vec::new(),
                status: Some(live.status()),
            }
        }
        Request::Swap {
            stage,
            params,
            component,
            version,
        } => {
            let mut live = live.lock().await;
            let target = match (stage.as_deref(), params, component, version) {
                (Some(s), Some(p), None, None) => live.with_params(s, p).map(|spec| (spec, None)),
                (Some(s), None, Some(c), None) => {
                    live.with_component(s, c.into()).map(|spec| (spec, None))
                }
                (s, None, None, Some(v)) => live
                    .with_version(v, s)
                    .map(|spec| (spec, s.is_none().then_some(v))),
                _ => {
                    return Response::failed(
                        "a swap sets exactly one of `params`, `component` (both with `stage`) and `version`",
                    );
                }
            };
            let result = match target {
                Ok((spec, version)) => live.apply(spec, version).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(changes) => Response {
                    ok: changes.iter().all(|c| c.applied),
                    error: None,
                    changes,
                    status: Some(live.status()),
                },
                Err(e) => Response::failed(e),
            }
        }
    }
}
