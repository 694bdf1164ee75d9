//! Where a PostgreSQL node connects, how, and whose fault a failure is.
//!
//! Settings come from the node's table (`url`, `password_env`) or, for what it
//! leaves out, from libpq's environment variables (`PGHOST`, `PGPORT`,
//! `PGUSER`, `PGPASSWORD`, `PGDATABASE`), as `psql` reads them. No message,
//! log line or error prints the password: a connection is named by
//! [`Conn::describe`] (`postgres://user@host:port/db`).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_postgres::error::SqlState;

use crate::node::NodeError;
use crate::node::config::SpecError;
use crate::node::retry::{RetryPolicy, Transience};
use crate::units::Millis;

/// How a node reaches its PostgreSQL server: the keys shared by the source and
/// lookup tables.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ConnSpec {
    /// `postgres://user[:password]@host[:port]/db` or libpq's `host=… user=…`.
    /// Default: libpq's environment variables, then `localhost:5432`, the
    /// user `postgres` and a database of the user's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The environment variable that holds the password, so none is written in
    /// the pipeline file. Default: the URL's, else `PGPASSWORD`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
    /// Time allowed to connect. Default: 10 s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<Millis>,
}

/// A resolved connection: the client's configuration and a printable name.
#[derive(Clone)]
pub struct Conn {
    config: tokio_postgres::Config,
    name: String,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

impl ConnSpec {
    /// Checks what can be checked without connecting: the URL parses.
    ///
    /// # Errors
    /// The key (`{key}.url`) and why it does not parse, without the URL itself
    /// (it may hold a password).
    pub fn check(&self, key: &str) -> Result<(), SpecError> {
        if let Some(url) = &self.url {
            url.parse::<tokio_postgres::Config>().map_err(|e| {
                SpecError::invalid(
                    format!("{key}.url"),
                    format!("is not a PostgreSQL URL: {e}"),
                )
            })?;
        }
        if self.password_env.as_deref() == Some("") {
            return Err(SpecError::invalid(
                format!("{key}.password_env"),
                "names no variable",
            ));
        }
        Ok(())
    }

    /// The connection these settings describe, completed from the environment
    /// (`env` reads a variable; the process environment in a run).
    ///
    /// # Errors
    /// [`NodeError::Config`] naming `key` when the URL does not parse or
    /// `password_env` names an unset variable.
    pub fn resolve(
        &self,
        key: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Conn, NodeError> {
        let mut config = match &self.url {
            Some(url) => url.parse::<tokio_postgres::Config>().map_err(|e| {
                NodeError::config(format!("`{key}.url` is not a PostgreSQL URL: {e}"))
            })?,
            None => tokio_postgres::Config::new(),
        };
        if config.get_hosts().is_empty() {
            config.host(env("PGHOST").as_deref().unwrap_or("localhost"));
        }
        if config.get_ports().is_empty() {
            let port = match env("PGPORT") {
                Some(p) => p
                    .parse()
                    .map_err(|_| NodeError::config(format!("PGPORT `{p}` is not a port")))?,
                None => 5432,
            };
            config.port(port);
        }
        if config.get_user().is_none() {
            config.user(env("PGUSER").as_deref().unwrap_or("postgres"));
        }
        if config.get_dbname().is_none() {
            let db = env("PGDATABASE").or_else(|| config.get_user().map(str::to_owned));
            if let Some(db) = db {
                config.dbname(db);
            }
        }
        match &self.password_env {
            Some(var) => {
                let pw = env(var).ok_or_else(|| {
                    NodeError::config(format!(
                        "`{key}.password_env` names `{var}`, which is not set"
                    ))
                })?;
                config.password(pw);
            }
            None if config.get_password().is_none() => {
                if let Some(pw) = env("PGPASSWORD") {
                    config.password(pw);
                }
            }
            None => {}
        }
        config.connect_timeout(
            self.connect_timeout
                .map_or(Duration::from_secs(10), |m| m.0),
        );
        config.application_name("weir");
        let name = describe(&config);
        Ok(Conn { config, name })
    }
}

/// `postgres://user@host:port/db`: a connection's name without its password.
fn describe(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!(
        "postgres://{}@{host}:{port}/{}",
        config.get_user().unwrap_or(""),
        config.get_dbname().unwrap_or("")
    )
}

impl Conn {
    /// The connection's name for messages: never with the password.
    pub fn describe(&self) -> &str {
        &self.name
    }

    /// Connects once, spawning the connection's driver on the current runtime
    /// (it ends when the client is dropped).
    ///
    /// # Errors
    /// [`NodeError::Service`], transient when trying again may help.
    pub async fn connect(&self) -> Result<tokio_postgres::Client, NodeError> {
        let (client, connection) = self
            .config
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|e| self.error("cannot connect", &e))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("postgres connection ended: {e}");
            }
        });
        Ok(client)
    }

    /// Connects through `retry`, counting the attempts made again into `retries`.
    ///
    /// # Errors
    /// The last failure, saying how many attempts were made.
    pub async fn connect_retrying(
        &self,
        retry: &RetryPolicy,
        retries: &mut u64,
    ) -> Result<tokio_postgres::Client, NodeError> {
        let r = retry
            .run(
                &self.name,
                &crate::node::retry::node_transience,
                |attempt| {
                    if attempt.get() > 1 {
                        *retries += 1;
                    }
                    self.connect()
                },
            )
            .await;
        r.map_err(crate::node::retry::GaveUp::into_node_error)
    }

    /// A `REPEATABLE READ READ ONLY` transaction on `client`: every statement
    /// in it sees one snapshot, and portals live until it ends.
    ///
    /// # Errors
    /// [`NodeError::Service`] when it cannot begin.
    pub async fn begin_read<'c>(
        &self,
        client: &'c mut tokio_postgres::Client,
    ) -> Result<tokio_postgres::Transaction<'c>, NodeError> {
        client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(|e| self.error("cannot begin a transaction", &e))
    }

    /// `e`, from doing `what` on this connection, as a node error that says
    /// whether it is worth another try (see [`transience`]).
    pub fn error(&self, what: &str, e: &tokio_postgres::Error) -> NodeError {
        let message = match e.as_db_error() {
            Some(db) => format!(
                "{}: {what}: {} ({}){}",
                self.name,
                db.message(),
                db.code().code(),
                db.hint()
                    .map(|h| format!("; hint: {h}"))
                    .unwrap_or_default()
            ),
            None => format!("{}: {what}: {e}", self.name),
        };
        NodeError::Service {
            service: self.name.clone(),
            transient: transience(e) == Transience::Transient,
            message,
        }
    }
}

/// Whether a PostgreSQL failure may pass if tried again: a lost or refused
/// connection, a timeout, a server starting or shutting down, too many
/// connections, a serialization failure or deadlock. A wrong password, a
/// missing table, a syntax error or a type that does not fit are permanent.
pub fn transience(e: &tokio_postgres::Error) -> Transience {
    if let Some(code) = e.code() {
        let c = code.code();
        let transient = c.starts_with("08")
            || c.starts_with("53")
            || *code == SqlState::ADMIN_SHUTDOWN
            || *code == SqlState::CRASH_SHUTDOWN
            || *code == SqlState::CANNOT_CONNECT_NOW
            || *code == SqlState::T_R_SERIALIZATION_FAILURE
            || *code == SqlState::T_R_DEADLOCK_DETECTED
            || *code == SqlState::LOCK_NOT_AVAILABLE
            || *code == SqlState::QUERY_CANCELED;
        return if transient {
            Transience::Transient
        } else {
            Transience::Permanent
        };
    }
    let io = std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>());
    if e.is_closed() || io || e.to_string().starts_with("timeout") {
        Transience::Transient
    } else {
        Transience::Permanent
    }
}

/// Runs `fut` to completion on a runtime of its own, on a thread of its own:
/// for what a node must ask the server while it is built (a statement's
/// columns), since building is synchronous and may happen on a runtime's
/// thread, where blocking on another future would panic.
pub fn block_on<T: Send>(fut: impl std::future::Future<Output = T> + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map(|rt| rt.block_on(fut))
        })
        .join()
    })
    .unwrap_or_else(|p| std::panic::resume_unwind(p))
    .unwrap_or_else(|e| panic!("cannot start a runtime to describe a query: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn the_environment_fills_what_the_url_leaves_out_and_no_password_is_printed() {
        let spec = ConnSpec {
            url: Some("postgres://app:s3cret@db.internal:6543/features".into()),
            ..ConnSpec::default()
        };
        let conn = spec.resolve("source[0].postgres", &env(&[])).unwrap();
        assert_eq!(conn.describe(), "postgres://app@db.internal:6543/features");
        assert!(!format!("{conn:?}").contains("s3cret"));

        let spec = ConnSpec {
            password_env: Some("FEATURES_PG_PASSWORD".into()),
            ..ConnSpec::default()
        };
        let vars = env(&[
            ("PGHOST", "10.0.0.7"),
            ("PGUSER", "reader"),
            ("FEATURES_PG_PASSWORD", "pw"),
        ]);
        let conn = spec.resolve("k", &vars).unwrap();
        assert_eq!(conn.describe(), "postgres://reader@10.0.0.7:5432/reader");
        assert_eq!(conn.config.get_password(), Some(&b"pw"[..]));

        let err = spec.resolve("source[0].postgres", &env(&[])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "`source[0].postgres.password_env` names `FEATURES_PG_PASSWORD`, which is not set"
        );
    }

    #[test]
    fn a_bad_url_names_its_key_without_echoing_it() {
        let spec = ConnSpec {
            url: Some("postgres://u:pw@h:notaport/db".into()),
            ..ConnSpec::default()
        };
        let err = spec.check("source[1].postgres").unwrap_err().to_string();
        assert!(
            err.starts_with("`source[1].postgres.url`: is not a PostgreSQL URL"),
            "{err}"
        );
        assert!(!err.contains("pw"), "{err}");
    }
}
