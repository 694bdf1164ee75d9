//! Retrying a call to an outside service: one policy, one schedule, one loop.
//!
//! Every connector that talks to a service (a model server over HTTP, Redis)
//! retries the same way, so a pipeline's `retry` table means the same thing
//! wherever it appears:
//!
//! ```toml
//! [sink.redis.retry]     # or [sink.http.retry]; every key optional
//! attempts = 10          # tries in all, the first included; default 10
//! backoff = "100ms"      # ceiling of the first wait; default 100ms
//! multiplier = 2.0       # each next ceiling is this many times the last; default 2
//! max_wait = "10s"       # no single wait is longer; default 10s
//! deadline = "1m"        # no wait ends later than this after the first try began; default 1m
//! ```
//!
//! After the `n`-th failure (`n` from 0), a transient one, the wait is drawn
//! uniformly from `[0, min(max_wait, backoff × multiplierⁿ)]` ("full jitter"):
//! writers that failed together do not come back together. A permanent failure
//! (the service's [`Classifier`] says which) is returned at once; so is the last
//! transient one when the attempts are spent or the next wait would end past the
//! deadline. The deadline bounds the waits, not a call in progress: each call has
//! its own timeout (the connector's `timeout`).
//!
//! A permanent failure ends with one line saying so: `… (permanent: not
//! retried)`; a transient one that ran out of attempts says how many were made.
//! Each node counts the calls it made again as its `retries` counter, which the
//! run summary prints. Connectors keep no retry loop or reconnect schedule of
//! their own (a client library's built-in reconnect is set to one try), so
//! this table is the only one that says how long a node keeps trying.
//!
//! The loop exists in two forms, [`RetryPolicy::run_blocking`] for sinks on the
//! blocking pool and [`RetryPolicy::run`] (or [`RetryPolicy::run_with`], for a
//! call that changes state between attempts) for async ones; both take their
//! time from a [`Clock`] and their jitter from a [`Jitter`], so tests drive the
//! schedule on a clock they control (the `*_on` forms).

use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::NodeError;
use crate::units::Millis;

/// How a service's calls are retried. Units: `backoff`, `max_wait` and
/// `deadline` are durations (`"250ms"`, `"2s"`, `"1m"`); `multiplier` is a
/// plain factor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Tries in all, the first included. Default: 10 ([`default_attempts`]).
    #[serde(default = "default_attempts")]
    pub attempts: NonZeroU32,
    /// Ceiling of the first wait. Default: 100 ms ([`default_backoff`]).
    #[serde(default = "default_backoff")]
    pub backoff: Millis,
    /// Growth of the ceiling from one wait to the next, at least 1. Default: 2
    /// ([`default_multiplier`]).
    #[serde(default = "default_multiplier")]
    pub multiplier: f64,
    /// Cap on any single wait. Default: 10 s ([`default_max_wait`]).
    #[serde(default = "default_max_wait")]
    pub max_wait: Millis,
    /// Time from the start of the first try after which no wait may end.
    /// Default: 1 min ([`default_deadline`]).
    #[serde(default = "default_deadline")]
    pub deadline: Millis,
}

/// Default tries in all: 10 (a first try and nine retries). With the default
/// schedule the waits' ceilings add up to about 33 s (half that on average,
/// with full jitter), so a service restarted within a few seconds (a Redis or
/// NATS server, a model server rolled over) is ridden out, while a service that
/// stays down fails the run within the one-minute deadline.
pub fn default_attempts() -> NonZeroU32 {
    NonZeroU32::new(10).unwrap_or(NonZeroU32::MIN)
}

/// Default ceiling of the first wait: 100 ms.
pub fn default_backoff() -> Millis {
    Millis(Duration::from_millis(100))
}

/// Default growth of the ceiling: doubled each time.
pub fn default_multiplier() -> f64 {
    2.0
}

/// Default cap on one wait: 10 s.
pub fn default_max_wait() -> Millis {
    Millis(Duration::from_secs(10))
}

/// Default deadline for the waits: 1 min after the first try began.
pub fn default_deadline() -> Millis {
    Millis(Duration::from_secs(60))
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: default_attempts(),
            backoff: default_backoff(),
            multiplier: default_multiplier(),
            max_wait: default_max_wait(),
            deadline: default_deadline(),
        }
    }
}

/// Whether a failed call may succeed if made again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transience {
    /// Worth another try: a dropped connection, a timeout, a busy server.
    Transient,
    /// Will fail the same way: a refused request, a wrong password.
    Permanent,
}

/// A service's rule for telling transient failures from permanent ones; any
/// `Fn(&E) -> Transience` is one.
pub trait Classifier<E> {
    /// Whether `error` is worth another try.
    fn classify(&self, error: &E) -> Transience;
}

impl<E, F: Fn(&E) -> Transience> Classifier<E> for F {
    fn classify(&self, error: &E) -> Transience {
        self(error)
    }
}

/// Why the retries stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The failure was permanent.
    Permanent,
    /// Every attempt failed.
    AttemptsSpent,
    /// The next wait would have ended past the deadline.
    Deadline,
}

/// The failure a retried call ended with, and how it got there.
#[derive(Debug, Clone, PartialEq)]
pub struct GaveUp<E> {
    /// The last call's error.
    pub error: E,
    /// Calls made, the last included.
    pub attempts: NonZeroU32,
    /// Why no further call was made.
    pub stop: Stop,
}

impl<E> GaveUp<E> {
    /// Whether the last failure was transient (so a later run may succeed).
    pub fn transient(&self) -> bool {
        self.stop != Stop::Permanent
    }

    /// Calls made again after a failure: the attempts less the first. What a
    /// node counts as `retries` in the run summary.
    pub fn retries(&self) -> u64 {
        u64::from(self.attempts.get() - 1)
    }

    /// What this adds to the last error's message, in one parenthesis: how
    /// many attempts were made and why no other was, so a permanent failure
    /// says it was not retried.
    fn suffix(&self) -> String {
        let n = self.attempts;
        let s = if n.get() == 1 { "" } else { "s" };
        match self.stop {
            Stop::Permanent if n.get() == 1 => "(permanent: not retried)".to_owned(),
            Stop::Permanent => format!("(after {n} attempts; permanent: not retried further)"),
            Stop::AttemptsSpent => format!("(after {n} attempt{s})"),
            Stop::Deadline => {
                format!("(after {n} attempt{s}; the retry deadline would pass before the next)")
            }
        }
    }
}

impl<E: fmt::Display> fmt::Display for GaveUp<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.error, self.suffix())
    }
}

/// The classifier for calls that already say whose fault a failure is: only a
/// [`NodeError::Service`] marked transient is worth another try. A connector
/// whose call maps its client's errors to [`NodeError`] (classifying them
/// where it knows the protocol) retries with this.
pub fn node_transience(error: &NodeError) -> Transience {
    match error {
        NodeError::Service {
            transient: true, ..
        } => Transience::Transient,
        _ => Transience::Permanent,
    }
}

impl GaveUp<NodeError> {
    /// The node error a retried call ended with, its message saying how many
    /// attempts were made and, for a permanent failure, that it was not
    /// retried (one line: `… (permanent: not retried)`). Errors whose message
    /// is not the node's own text (a bug, a resource, a stage) pass unchanged.
    pub fn into_node_error(self) -> NodeError {
        let suffix = self.suffix();
        let transient = self.transient();
        match self.error {
            NodeError::Service {
                service, message, ..
            } => NodeError::Service {
                service,
                transient,
                message: format!("{message} {suffix}"),
            },
            NodeError::Config(message) => NodeError::Config(format!("{message} {suffix}")),
            NodeError::Data { message, row } => NodeError::Data {
                message: format!("{message} {suffix}"),
                row,
            },
            other => other,
        }
    }
}

/// Where the retry loop reads the time and waits. [`SystemClock`] in a run;
/// a test's own clock in tests.
pub trait Clock: Sync {
    /// Time since this clock's origin.
    fn now(&self) -> Duration;
    /// Waits `d`, blocking the thread.
    fn sleep_blocking(&self, d: Duration);
    /// Waits `d` on the async runtime.
    fn sleep(&self, d: Duration) -> impl Future<Output = ()> + Send;
}

/// The real clock: `Instant` and the thread's or tokio's sleep.
#[derive(Debug, Clone, Copy)]
pub struct SystemClock {
    origin: Instant,
}

impl SystemClock {
    /// A clock whose origin is now.
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    fn sleep_blocking(&self, d: Duration) {
        std::thread::sleep(d);
    }

    fn sleep(&self, d: Duration) -> impl Future<Output = ()> + Send {
        tokio::time::sleep(d)
    }
}

/// A source of uniform draws for the jitter.
pub trait Jitter {
    /// A duration drawn uniformly from `[0, upper]`.
    fn uniform(&mut self, upper: Duration) -> Duration;
}

/// SplitMix64 seeded from the process's random hasher keys: jitter needs
/// spread, not cryptographic strength, and this needs no extra crate.
#[derive(Debug, Clone)]
pub struct SplitMix(u64);

impl SplitMix {
    /// A generator seeded from `seed` (for reproducible tests).
    pub fn seeded(seed: u64) -> Self {
        Self(seed)
    }

    /// A generator with a seed that differs between processes and calls
    /// (std's hasher keys are random per process and advance per call).
    pub fn random() -> Self {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        Self(h.finish())
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

impl Jitter for SplitMix {
    fn uniform(&mut self, upper: Duration) -> Duration {
        let nanos = u64::try_from(upper.as_nanos()).unwrap_or(u64::MAX);
        if nanos == 0 {
            return Duration::ZERO;
        }
        // Lemire's multiply-shift: uniform on [0, nanos] without a modulo's bias
        // beyond 2^-64.
        let n = nanos.saturating_add(1);
        let x = ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64;
        Duration::from_nanos(x)
    }
}

impl RetryPolicy {
    /// Checks the numbers a pipeline file may get wrong; `Err` says which.
    ///
    /// # Errors
    /// A multiplier below 1 or not finite, a zero deadline, or a cap below the
    /// first ceiling.
    pub fn check(&self) -> Result<(), String> {
        if !self.multiplier.is_finite() || self.multiplier < 1.0 {
            return Err(format!(
                "`multiplier` must be a number ≥ 1, not {}",
                self.multiplier
            ));
        }
        if self.deadline.0.is_zero() {
            return Err("`deadline` must be greater than 0".into());
        }
        if self.max_wait.0 < self.backoff.0 {
            return Err(format!(
                "`max_wait` ({}) is below `backoff` ({})",
                self.max_wait, self.backoff
            ));
        }
        Ok(())
    }

    /// The ceiling of the wait after the `n`-th failure (from 0):
    /// `min(max_wait, backoff × multiplierⁿ)`.
    pub fn ceiling(&self, n: u32) -> Duration {
        let exp = i32::try_from(n).unwrap_or(i32::MAX);
        // In nanoseconds, rounded: 5 ms × 3 is 15 ms, not a hair under.
        let nanos = self.backoff.0.as_nanos() as f64 * self.multiplier.powi(exp);
        let cap = self.max_wait.0;
        if !nanos.is_finite() || nanos >= cap.as_nanos() as f64 {
            cap
        } else {
            Duration::from_nanos(nanos.round() as u64).min(cap)
        }
    }

    /// The schedule of one retried call, started at `now`.
    pub fn schedule<J: Jitter>(&self, jitter: J, now: Duration) -> Schedule<'_, J> {
        Schedule {
            policy: self,
            jitter,
            start: now,
            failures: 0,
        }
    }

    /// Calls `op` (given the attempt number, from 1) until it succeeds, fails
    /// permanently, or the policy gives up; waits block the thread.
    ///
    /// # Errors
    /// The last failure, with the attempts made and why they stopped.
    pub fn run_blocking<T, E: fmt::Display>(
        &self,
        service: &str,
        classifier: &impl Classifier<E>,
        op: impl FnMut(NonZeroU32) -> Result<T, E>,
    ) -> Result<T, GaveUp<E>> {
        self.run_blocking_on(
            &SystemClock::new(),
            SplitMix::random(),
            service,
            classifier,
            op,
        )
    }

    /// [`run_blocking`](Self::run_blocking) on a given clock and jitter.
    ///
    /// # Errors
    /// As [`run_blocking`](Self::run_blocking).
    pub fn run_blocking_on<T, E: fmt::Display>(
        &self,
        clock: &impl Clock,
        jitter: impl Jitter,
        service: &str,
        classifier: &impl Classifier<E>,
        mut op: impl FnMut(NonZeroU32) -> Result<T, E>,
    ) -> Result<T, GaveUp<E>> {
        let mut schedule = self.schedule(jitter, clock.now());
        loop {
            let attempt = schedule.attempt();
            let error = match op(attempt) {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let wait = schedule.after(clock.now(), error, classifier, service)?;
            clock.sleep_blocking(wait);
        }
    }

    /// Calls `op` (given the attempt number, from 1) until it succeeds, fails
    /// permanently, or the policy gives up; waits on the async runtime.
    ///
    /// # Errors
    /// The last failure, with the attempts made and why they stopped.
    pub async fn run<T, E: fmt::Display, Fut: Future<Output = Result<T, E>>>(
        &self,
        service: &str,
        classifier: &impl Classifier<E>,
        mut op: impl FnMut(NonZeroU32) -> Fut,
    ) -> Result<T, GaveUp<E>> {
        let ((), result) = self
            .run_with(service, classifier, (), |(), attempt| {
                let call = op(attempt);
                async move { ((), call.await) }
            })
            .await;
        result
    }

    /// [`run`](Self::run) for a call that needs mutable state (a connector's
    /// `&mut self`, the requests still to send): `op` takes `state` and hands
    /// it back with its result, so each attempt's future owns what it changes
    /// and stays `Send` (a closure lending its captures to the future it
    /// returns would not be). Returns the state with the outcome.
    pub async fn run_with<S, T, E: fmt::Display, Fut: Future<Output = (S, Result<T, E>)>>(
        &self,
        service: &str,
        classifier: &impl Classifier<E>,
        state: S,
        op: impl FnMut(S, NonZeroU32) -> Fut,
    ) -> (S, Result<T, GaveUp<E>>) {
        self.run_on(
            &SystemClock::new(),
            SplitMix::random(),
            service,
            classifier,
            state,
            op,
        )
        .await
    }

    /// [`run_with`](Self::run_with) on a given clock and jitter.
    pub async fn run_on<S, T, E: fmt::Display, Fut: Future<Output = (S, Result<T, E>)>>(
        &self,
        clock: &impl Clock,
        jitter: impl Jitter,
        service: &str,
        classifier: &impl Classifier<E>,
        mut state: S,
        mut op: impl FnMut(S, NonZeroU32) -> Fut,
    ) -> (S, Result<T, GaveUp<E>>) {
        let mut schedule = self.schedule(jitter, clock.now());
        loop {
            let attempt = schedule.attempt();
            let (back, result) = op(state, attempt).await;
            state = back;
            let error = match result {
                Ok(v) => return (state, Ok(v)),
                Err(e) => e,
            };
            match schedule.after(clock.now(), error, classifier, service) {
                Ok(wait) => clock.sleep(wait).await,
                Err(gave_up) => return (state, Err(gave_up)),
            }
        }
    }
}

/// The waits of one retried call: each failure asks it for the next wait.
#[derive(Debug)]
pub struct Schedule<'p, J> {
    policy: &'p RetryPolicy,
    jitter: J,
    start: Duration,
    failures: u32,
}

impl<J: Jitter> Schedule<'_, J> {
    /// The number of the next call, from 1.
    pub fn attempt(&self) -> NonZeroU32 {
        NonZeroU32::new(self.failures.saturating_add(1)).unwrap_or(NonZeroU32::MAX)
    }

    /// After a transient failure at `now`: the wait before the next call, or
    /// why there is none (the failure being the last attempt, or the wait
    /// ending past the deadline).
    ///
    /// # Errors
    /// [`Stop::AttemptsSpent`] or [`Stop::Deadline`].
    pub fn next_wait(&mut self, now: Duration) -> Result<Duration, Stop> {
        let n = self.failures;
        self.failures = self.failures.saturating_add(1);
        if self.failures >= self.policy.attempts.get() {
            return Err(Stop::AttemptsSpent);
        }
        let wait = self.jitter.uniform(self.policy.ceiling(n));
        if now.saturating_sub(self.start) + wait > self.policy.deadline.0 {
            return Err(Stop::Deadline);
        }
        Ok(wait)
    }

    /// Classifies `error`, logs the retry, and returns the wait or the failure.
    fn after<E: fmt::Display>(
        &mut self,
        now: Duration,
        error: E,
        classifier: &impl Classifier<E>,
        service: &str,
    ) -> Result<Duration, GaveUp<E>> {
        let attempts = self.attempt();
        let stop = match classifier.classify(&error) {
            Transience::Permanent => Err(Stop::Permanent),
            Transience::Transient => self.next_wait(now),
        };
        match stop {
            Ok(wait) => {
                tracing::warn!(
                    service,
                    attempt = attempts.get(),
                    wait_ms = wait.as_millis() as u64,
                    "transient failure, retrying: {error}"
                );
                Ok(wait)
            }
            Err(stop) => Err(GaveUp {
                error,
                attempts,
                stop,
            }),
        }
    }
}

#[cfg(test)]
mod tests;
