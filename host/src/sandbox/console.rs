//! A stage's stdout and stderr: bounded per call, and read back to explain a
//! trap.
//!
//! ```text
//!   guest println!/eprintln! ─► Console (per stream) ─► tail of this call's bytes
//!                                   │ more than `max_output` bytes in one call
//!                                   └─► the write traps ─► StageFailure::OutputCap
//! ```
//!
//! A stage cannot print without bound: each stream takes at most the stage's
//! `max_output` bytes per call, and the write that would pass it traps, so a
//! stage flooding stdout fails at once with its own cause (`output_cap`)
//! instead of running into its fuel or deadline with a bare backtrace. The
//! count starts again at every call ([`Console::begin_call`]), so a stage that
//! logs a line per batch never reaches it however long it runs. What a call
//! printed last is kept ([`TAIL`] bytes per stream): a Rust guest prints its
//! panic message on stderr just before it traps, which is how a panic's trap
//! names its message. Nothing is forwarded to the host's own streams: a
//! tenant's stage does not write into the host's logs.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};

/// Bytes of a call's output kept per stream, the last ones.
pub(super) const TAIL: usize = 16 * 1024;

/// One of a stage's output streams; clones share it.
#[derive(Debug, Clone)]
pub(crate) struct Console {
    name: &'static str,
    state: Arc<Mutex<State>>,
}

#[derive(Debug)]
struct State {
    /// Bytes one call may write.
    cap: usize,
    /// Bytes written in the current call.
    written: usize,
    /// The last [`TAIL`] bytes of the current call.
    tail: VecDeque<u8>,
    /// A write of the current call was refused at the cap.
    exceeded: bool,
}

impl Console {
    /// A stream called `name` (`stdout`, `stderr`) taking `cap` bytes per call.
    pub(super) fn new(name: &'static str, cap: usize) -> Self {
        Self {
            name,
            state: Arc::new(Mutex::new(State {
                cap,
                written: 0,
                tail: VecDeque::new(),
                exceeded: false,
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The stream's name.
    pub(super) fn name(&self) -> &'static str {
        self.name
    }

    /// Starts a call: its bytes are counted, and kept, from zero.
    pub(super) fn begin_call(&self) {
        let mut s = self.lock();
        s.written = 0;
        s.tail.clear();
        s.exceeded = false;
    }

    /// Whether the current call tried to write past the cap.
    pub(super) fn exceeded(&self) -> bool {
        self.lock().exceeded
    }

    /// The cap per call, in bytes.
    pub(super) fn cap(&self) -> usize {
        self.lock().cap
    }

    /// The last bytes the current call wrote, as text.
    pub(super) fn tail(&self) -> String {
        let s = self.lock();
        let (a, b) = s.tail.as_slices();
        let mut bytes = Vec::with_capacity(a.len() + b.len());
        bytes.extend_from_slice(a);
        bytes.extend_from_slice(b);
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Takes `bytes` into the current call's output, or refuses them (and
    /// notes it) when they would pass the cap.
    fn take(&self, bytes: &[u8]) -> StreamResult<usize> {
        let mut s = self.lock();
        if bytes.len() > s.cap - s.written {
            s.exceeded = true;
            return Err(StreamError::trap(&format!(
                "{} exceeded its cap of {} bytes per call",
                self.name, s.cap
            )));
        }
        s.written += bytes.len();
        let keep = bytes.len().min(TAIL);
        let overflow = (s.tail.len() + keep).saturating_sub(TAIL);
        s.tail.drain(..overflow);
        s.tail.extend(&bytes[bytes.len() - keep..]);
        Ok(bytes.len())
    }

    /// Bytes the current call may still write; a trap once there are none.
    fn room(&self) -> StreamResult<usize> {
        let mut s = self.lock();
        if s.written >= s.cap {
            s.exceeded = true;
            return Err(StreamError::trap(&format!(
                "{} exceeded its cap of {} bytes per call",
                self.name, s.cap
            )));
        }
        Ok(s.cap - s.written)
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for Console {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.take(&bytes).map(drop)
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        self.room()
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for Console {
    async fn ready(&mut self) {}
}

/// The async form wasmtime-wasi asks for (WASI 0.3 streams): the same cap;
/// a write past it fails.
impl AsyncWrite for Console {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(
            self.take(buf)
                .map_err(|e| std::io::Error::other(e.to_string())),
        )
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl IsTerminal for Console {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Console {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_writes_up_to_its_cap_and_keeps_its_tail() {
        let mut c = Console::new("stdout", 10);
        assert_eq!(c.check_write().unwrap(), 10);
        c.write(Bytes::from_static(b"hello ")).unwrap();
        c.write(Bytes::from_static(b"you")).unwrap();
        assert_eq!(c.tail(), "hello you");
        assert!(!c.exceeded());
        let e = c.write(Bytes::from_static(b"!!")).unwrap_err();
        assert!(matches!(e, StreamError::Trap(_)));
        assert!(c.exceeded());
        assert_eq!(c.tail(), "hello you");
        c.write(Bytes::from_static(b"!")).unwrap();
        assert!(matches!(c.check_write(), Err(StreamError::Trap(_))));
        // The next call starts from zero.
        c.begin_call();
        assert!(!c.exceeded());
        assert_eq!(c.tail(), "");
        assert_eq!(c.check_write().unwrap(), 10);
    }

    #[test]
    fn the_tail_is_the_last_bytes() {
        let mut c = Console::new("stderr", 1 << 20);
        let chunk = vec![b'a'; TAIL];
        c.write(Bytes::from(chunk)).unwrap();
        c.write(Bytes::from_static(b"panicked at x")).unwrap();
        let tail = c.tail();
        assert_eq!(tail.len(), TAIL);
        assert!(tail.ends_with("apanicked at x"));
    }
}
