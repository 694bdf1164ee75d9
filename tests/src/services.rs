//! Where the tests that need a service (Redis, NATS JetStream, PostgreSQL)
//! find it, and when they may skip instead.
//!
//! A test asks for its services with [`url`] or [`urls`]. The address comes
//! from the service's variable (`WEIR_TEST_REDIS_URL`, `WEIR_TEST_NATS_URL`,
//! `WEIR_TEST_PG_URL`) or, when that is unset or empty, from the standard
//! local address, the one `.ci/run` sets: `redis://127.0.0.1:6379`,
//! `nats://127.0.0.1:4222`, `postgres://postgres@127.0.0.1:5432/test`. The
//! service must answer there: a test whose service does not accept a TCP
//! connection fails, naming the address and how to skip. A plain
//! `cargo test --workspace` therefore tests the services or fails; it never
//! passes having tested nothing.
//!
//! Skipping is asked for explicitly with `WEIR_TEST_SKIP_SERVICES`: `1` (or
//! `all`) skips every service test; a list such as `redis,nats` skips the
//! tests that need any service it names. A skipped test writes one line,
//! `skipped: <test path> (<services>)`, straight to the process's stderr (not
//! through `eprintln!`, which the test harness captures), then passes. Count
//! the skipped tests of a run with
//!
//! ```text
//! WEIR_TEST_SKIP_SERVICES=1 cargo test --workspace 2>&1 | grep -c '^skipped: '
//! ```
//!
//! One file, used from three places: `weir_e2e::services` in the end-to-end
//! tests, and by `#[path]` in the host's unit and integration tests, which
//! cannot depend on this crate (it depends on the host). It uses only `std`.

#![allow(
    dead_code,
    reason = "each including test module uses the part it needs"
)]

use std::io::Write;
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// The variable that asks for service tests to be skipped (see the module docs).
pub const SKIP_VARIABLE: &str = "WEIR_TEST_SKIP_SERVICES";

/// A service some tests need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// Redis, the online feature store.
    Redis,
    /// NATS with JetStream, the streaming source and sink.
    Nats,
    /// PostgreSQL.
    Postgres,
}

impl Service {
    /// The name `WEIR_TEST_SKIP_SERVICES` lists it by.
    pub fn name(self) -> &'static str {
        match self {
            Self::Redis => "redis",
            Self::Nats => "nats",
            Self::Postgres => "postgres",
        }
    }

    /// The variable that names its address.
    pub fn variable(self) -> &'static str {
        match self {
            Self::Redis => "WEIR_TEST_REDIS_URL",
            Self::Nats => "WEIR_TEST_NATS_URL",
            Self::Postgres => "WEIR_TEST_PG_URL",
        }
    }

    /// Its address when the variable is unset: the one `.ci/run` starts it at.
    pub fn default_url(self) -> &'static str {
        match self {
            Self::Redis => "redis://127.0.0.1:6379",
            Self::Nats => "nats://127.0.0.1:4222",
            Self::Postgres => "postgres://postgres@127.0.0.1:5432/test",
        }
    }

    fn default_port(self) -> u16 {
        match self {
            Self::Redis => 6379,
            Self::Nats => 4222,
            Self::Postgres => 5432,
        }
    }

    /// The address the tests use: the variable's value, else [`Self::default_url`].
    pub fn configured_url(self) -> String {
        std::env::var(self.variable())
            .ok()
            .filter(|u| !u.trim().is_empty())
            .unwrap_or_else(|| self.default_url().to_owned())
    }
}

/// Whether the run asked to skip the tests that need `service`.
pub fn skip_requested(service: Service) -> bool {
    skip_list_names(&std::env::var(SKIP_VARIABLE).unwrap_or_default(), service)
}

/// Whether the value `list` of `WEIR_TEST_SKIP_SERVICES` names `service`.
fn skip_list_names(list: &str, service: Service) -> bool {
    list.split([',', ' '])
        .map(str::trim)
        .filter(|w| !w.is_empty())
        .any(|w| {
            let w = w.to_ascii_lowercase();
            matches!(w.as_str(), "1" | "all" | "true" | "yes") || w == service.name()
        })
}

/// The address of `service` for the calling test, or `None` when the run asked
/// to skip it: then the test should return, and this has said so on stderr.
///
/// # Panics
/// When the service does not accept a connection at its address and no skip
/// was asked for.
pub fn url(service: Service) -> Option<String> {
    urls([service]).map(|[u]| u)
}

/// The addresses of `services`, all needed by the calling test; `None` (said
/// on stderr) when the run asked to skip any of them.
///
/// # Panics
/// When one does not accept a connection and no skip was asked for.
pub fn urls<const N: usize>(services: [Service; N]) -> Option<[String; N]> {
    if services.iter().any(|s| skip_requested(*s)) {
        let test = std::thread::current()
            .name()
            .unwrap_or("<unnamed test>")
            .to_owned();
        let names: Vec<&str> = services.iter().map(|s| s.name()).collect();
        // Straight to fd 2: `eprintln!` is captured for passing tests.
        let _ = writeln!(
            std::io::stderr().lock(),
            "skipped: {test} ({})",
            names.join(", ")
        );
        return None;
    }
    Some(services.map(|s| {
        let url = s.configured_url();
        if let Err(why) = reachable(&url, s.default_port()) {
            panic!(
                "{} is not reachable at {url} ({why}); start it there, point {} at one, \
                 or set {SKIP_VARIABLE}=1 (or ={}) to skip the tests that need it",
                s.name(),
                s.variable(),
                s.name(),
            );
        }
        url
    }))
}

/// `host:port` of a `scheme://[user[:pass]@]host[:port][/path][?query]` URL.
fn host_port(url: &str, default_port: u16) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    // A bracketed IPv6 address keeps its colons.
    let has_port = match host.rfind(']') {
        Some(end) => host[end..].contains(':'),
        None => host.contains(':'),
    };
    if has_port {
        host.to_owned()
    } else {
        format!("{host}:{default_port}")
    }
}

/// Whether something accepts a TCP connection at `url` within two seconds.
fn reachable(url: &str, default_port: u16) -> Result<(), String> {
    let target = host_port(url, default_port);
    let addrs: Vec<_> = target
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {target}: {e}"))?
        .collect();
    let mut last = format!("{target} resolves to no address");
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(_) => return Ok(()),
            Err(e) => last = format!("{addr}: {e}"),
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_reads_each_url_shape() {
        assert_eq!(host_port("redis://127.0.0.1:6379", 1), "127.0.0.1:6379");
        assert_eq!(host_port("nats://localhost", 4222), "localhost:4222");
        assert_eq!(
            host_port("postgres://postgres@127.0.0.1:5432/test", 1),
            "127.0.0.1:5432"
        );
        assert_eq!(
            host_port("redis://:secret@[::1]:6380/0?x=1", 1),
            "[::1]:6380"
        );
        assert_eq!(host_port("redis://[::1]/0", 6379), "[::1]:6379");
    }

    #[test]
    fn the_skip_list_names_every_service_or_the_listed_ones() {
        for all in ["1", "all", "ALL", "true"] {
            assert!(skip_list_names(all, Service::Redis), "{all}");
            assert!(skip_list_names(all, Service::Postgres), "{all}");
        }
        assert!(skip_list_names("redis,nats", Service::Nats));
        assert!(skip_list_names(" redis , nats ", Service::Redis));
        assert!(!skip_list_names("redis,nats", Service::Postgres));
        assert!(!skip_list_names("", Service::Redis));
        assert!(!skip_list_names("0", Service::Redis));
    }

    #[test]
    fn an_unreachable_address_is_an_error_naming_it() {
        // A port nothing listens on: bind one, then free it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let err = reachable(&format!("redis://127.0.0.1:{port}"), 1).unwrap_err();
        assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert_eq!(reachable(&format!("nats://127.0.0.1:{port}"), 1), Ok(()));
    }
}
