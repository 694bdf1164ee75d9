//! A TCP proxy a test owns and cuts, to take a service away from weir
//! mid-run without touching the shared server.
//!
//! ```text
//!   weir ──► 127.0.0.1:<port> (Proxy) ──► the service
//!             cut(): every connection reset, new ones refused
//!             restore(): listening again on the same port
//! ```
//!
//! [`Proxy::cut`] drops every open connection (the peer sees a reset or an
//! end of stream) and stops listening, so a reconnect is refused, which is
//! what a restarted server looks like from the client. [`Proxy::restore`]
//! listens on the same port again. [`Proxy::bytes`] counts what passed both
//! ways, so a test can cut once a run is under way.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio::task::JoinSet;

/// A proxy from a local port to `upstream`; see the module docs.
pub struct Proxy {
    port: u16,
    upstream: String,
    bytes_seen: Arc<AtomicU64>,
    cuts: AtomicU64,
    /// The accept loop and every connection's copy, all ended by a cut.
    tasks: Mutex<Option<JoinSet<()>>>,
}

impl Proxy {
    /// Listens on a free local port, forwarding to `upstream` (`host:port`).
    ///
    /// # Panics
    /// When no local port can be bound.
    pub async fn start(upstream: &str) -> Arc<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a port");
        let port = listener.local_addr().expect("local address").port();
        let proxy = Arc::new(Self {
            port,
            upstream: upstream.to_owned(),
            bytes_seen: Arc::new(AtomicU64::new(0)),
            cuts: AtomicU64::new(0),
            tasks: Mutex::new(None),
        });
        proxy.serve(listener).await;
        proxy
    }

    /// The address weir should use instead of the service's.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Bytes that passed through the proxy so far, both ways.
    pub fn bytes(&self) -> u64 {
        self.bytes_seen.load(Ordering::Relaxed)
    }

    /// How many times the proxy was cut.
    pub fn cuts(&self) -> u64 {
        self.cuts.load(Ordering::Relaxed)
    }

    async fn serve(&self, listener: TcpListener) {
        let mut tasks = JoinSet::new();
        let upstream = self.upstream.clone();
        let bytes_seen = self.bytes_seen.clone();
        tasks.spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let upstream = upstream.clone();
                let bytes_seen = bytes_seen.clone();
                conns.spawn(async move {
                    let Ok(server) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    pipe(client, server, bytes_seen).await;
                });
            }
        });
        *self.tasks.lock().await = Some(tasks);
    }

    /// Resets every connection and stops listening.
    pub async fn cut(&self) {
        if let Some(mut tasks) = self.tasks.lock().await.take() {
            // Aborting the accept loop drops the listener and the set of
            // connections, which aborts each copy and closes its sockets.
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
        }
        self.cuts.fetch_add(1, Ordering::Relaxed);
    }

    /// Listens on the same port again.
    ///
    /// # Panics
    /// When the port cannot be bound again within five seconds.
    pub async fn restore(&self) {
        let addr = self.addr();
        let started = std::time::Instant::now();
        let listener = loop {
            match TcpListener::bind(addr).await {
                Ok(l) => break l,
                Err(e) if started.elapsed() < std::time::Duration::from_secs(5) => {
                    let _ = e;
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                Err(e) => panic!("cannot listen on {addr} again: {e}"),
            }
        };
        self.serve(listener).await;
    }

    /// Cuts once [`Proxy::bytes`] has passed `after`, waits `down`, and restores:
    /// a service gone for `down` in the middle of a run. Returns when
    /// restored, or without cutting once `give_up` passed with too little
    /// traffic.
    pub async fn outage_after(
        &self,
        after: u64,
        down: std::time::Duration,
        give_up: std::time::Duration,
    ) {
        let started = std::time::Instant::now();
        while self.bytes() < after {
            if started.elapsed() > give_up {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        self.cut().await;
        tokio::time::sleep(down).await;
        self.restore().await;
    }
}

/// Copies both ways until either side ends, counting the bytes.
async fn pipe(client: TcpStream, server: TcpStream, bytes_seen: Arc<AtomicU64>) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let up = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match cr.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if sw.write_all(&buf[..n]).await.is_err() {
                return;
            }
            bytes_seen.fetch_add(n as u64, Ordering::Relaxed);
        }
    };
    let down = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match sr.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if cw.write_all(&buf[..n]).await.is_err() {
                return;
            }
            bytes_seen.fetch_add(n as u64, Ordering::Relaxed);
        }
    };
    tokio::select! {
        () = up => {},
        () = down => {},
    }
}
