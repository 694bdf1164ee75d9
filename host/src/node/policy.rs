//! Error policies: what a node does when a call fails, keyed on whose fault
//! the failure is ([`Fault`]).
//!
//! A pipeline file gives a stage or a sink an `on_error` beside its `name`:
//!
//! ```toml
//! [[stage]]
//! name = "score"
//! input = "events"
//! on_error = "fallback"                 # or "fail", "skip"
//! # on_error = { retry = { attempts = 3, backoff = "200ms" }, then = "skip" }
//! fallback = { defaults = { score = 0.0, bucket = "unknown" }, mark = "_fallback" }
//! breaker = { traps = 5, window = "60s", open = "30s" }
//! [stage.wasm]
//! component = "score.wasm"
//! ```
//!
//! How a failure is treated ([`OnError::decide`]):
//!
//! | fault | `fail` | `skip` / `fallback` | `retry … then` |
//! | --- | --- | --- | --- |
//! | [`Fault::Bug`], [`Fault::Config`], [`Fault::Io`], [`Fault::Resource`] | fail | fail | fail |
//! | [`Fault::Service`] permanent | fail | fail | fail |
//! | [`Fault::Service`] transient, [`Fault::Stage`] transient | fail | the rows | retried, then `then` |
//! | [`Fault::Data`], [`Fault::Stage`] (an error or a trap) | fail | the rows | `then` at once |
//!
//! "The rows" are the row the error names, or, when it names none (a trap),
//! the rows bisection isolates (see the executor's guard). A failure that is
//! no record's fault (a bug, a wrong configuration, a full disk, a refused
//! password) is never skipped: dead-lettering every record because a
//! password is wrong would empty the pipeline into the store and hide the
//! cause.
//!
//! Without `on_error` a node follows its kind's default ([`OnError::default_for`]):
//! a row-local stage (map, filter, split, a WebAssembly stage) and a sink skip
//! [`Fault::Data`] and fail on everything else, as Kafka Connect does with
//! `errors.tolerance` limited to the records themselves; a stateful stage
//! (sort, group, session, sample, batch) fails on everything, since it cannot
//! take one row back out of the state it has folded it into. A stage's own
//! error fails by default even when it names a row: a featurizer refusing
//! rows is as often a bug in the featurizer as a bad record, and skipping
//! them silently would hide it; `on_error = "skip"` says the author expects it.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, MapAccess};
use serde::{Deserialize, Serialize};

use super::error::Fault;
use super::retry::RetryPolicy;
use crate::units::Millis;

/// What is done, in the end, with the rows a failure is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// The run stops, naming the node and the failure.
    Fail,
    /// The rows go to the dead-letter store with the fault, a reason and the
    /// message; the run goes on.
    Skip,
    /// The rows pass on with the stage's declared defaults and the mark
    /// column set ([`FallbackSpec`]).
    Fallback,
}

impl Action {
    /// The name pipeline files use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fail => "fail",
            Self::Skip => "skip",
            Self::Fallback => "fallback",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "fail" => Some(Self::Fail),
            "skip" => Some(Self::Skip),
            "fallback" => Some(Self::Fallback),
            _ => None,
        }
    }
}

/// A node's `on_error`: an action, after retries of transient failures when
/// `retry` is set.
#[derive(Debug, Clone, PartialEq)]
pub struct OnError {
    /// Retries of a transient failure, through the host's one retry loop
    /// ([`RetryPolicy`]). `None`: no retry.
    pub retry: Option<RetryPolicy>,
    /// What is done with the rows once retries (if any) are spent, or at once
    /// for a failure that is not transient.
    pub then: Action,
    /// Set when the node's own defaults apply (no `on_error` in the file): then
    /// only [`Fault::Data`] follows `then`, everything else fails.
    pub data_only: bool,
}

/// What the executor does with one failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Stop the run.
    Fail,
    /// Call again on the same rows (the failure is transient and the policy
    /// retries).
    Retry,
    /// Apply the action to the rows the failure is about.
    Rows(Action),
}

impl OnError {
    /// A policy that applies `then` at once, with no retry.
    pub fn action(then: Action) -> Self {
        Self {
            retry: None,
            then,
            data_only: false,
        }
    }

    /// The default of a node whose `on_error` is not set: `row_local` nodes
    /// (and sinks) skip [`Fault::Data`] and fail otherwise; other nodes fail.
    pub fn default_for(row_local: bool) -> Self {
        Self {
            retry: None,
            then: if row_local {
                Action::Skip
            } else {
                Action::Fail
            },
            data_only: true,
        }
    }

    /// What to do with a failure of `fault`, `retrying` whether retries are
    /// still allowed (false once they are spent).
    pub fn decide(&self, fault: Fault, retrying: bool) -> Decision {
        let transient = matches!(
            fault,
            Fault::Stage {
                transient: true,
                ..
            } | Fault::Service { transient: true }
        );
        match fault {
            Fault::Bug | Fault::Config | Fault::Io | Fault::Resource => Decision::Fail,
            Fault::Service { transient: false } => Decision::Fail,
            _ if self.data_only && fault != Fault::Data => Decision::Fail,
            _ if transient && retrying && self.retry.is_some() => Decision::Retry,
            _ => match self.then {
                Action::Fail => Decision::Fail,
                a => Decision::Rows(a),
            },
        }
    }

    /// Whether any failure can lead to `action`.
    pub fn may(&self, action: Action) -> bool {
        self.then == action
    }

    /// Checks the retry table's numbers; `key` is the node's `on_error` key.
    ///
    /// # Errors
    /// The key under `key` and what is wrong with it.
    pub fn check(&self, key: &str) -> Result<(), super::config::SpecError> {
        if let Some(r) = &self.retry {
            r.check()
                .map_err(|m| super::config::SpecError::invalid(format!("{key}.retry"), m))?;
        }
        Ok(())
    }
}

impl fmt::Display for OnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.retry {
            None => f.write_str(self.then.as_str()),
            Some(r) => write!(
                f,
                "retry ({} attempts), then {}",
                r.attempts,
                self.then.as_str()
            ),
        }
    }
}

/// The table form: `{ retry = { … }, then = "skip" }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RetryThen {
    #[serde(default)]
    retry: Option<RetryPolicy>,
    #[serde(default = "fail_action")]
    then: Action,
}

fn fail_action() -> Action {
    Action::Fail
}

const EXPECTED: &str = "\"fail\", \"skip\", \"fallback\", or a table \
                        `{ retry = { attempts = 3, backoff = \"100ms\" }, then = \"skip\" }`";

struct OnErrorVisitor;

impl<'de> de::Visitor<'de> for OnErrorVisitor {
    type Value = OnError;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(EXPECTED)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<OnError, E> {
        if v == "retry" {
            return Err(E::custom(
                "`retry` needs a table saying how and what then: \
                 `{ retry = { attempts = 3 }, then = \"skip\" }`",
            ));
        }
        Action::parse(v).map(OnError::action).ok_or_else(|| {
            let hint = super::config::closest(v, ["fail", "skip", "fallback"])
                .map(|c| format!(" (did you mean `{c}`?)"))
                .unwrap_or_default();
            E::custom(format!("unknown policy `{v}`: expected {EXPECTED}{hint}"))
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<OnError, A::Error> {
        let t = RetryThen::deserialize(de::value::MapAccessDeserializer::new(map))?;
        if t.retry.is_none() {
            return Err(de::Error::custom(
                "a table policy retries: it needs `retry` (or write the action alone, \
                 `on_error = \"skip\"`)",
            ));
        }
        Ok(OnError {
            retry: t.retry,
            then: t.then,
            data_only: false,
        })
    }
}

impl<'de> Deserialize<'de> for OnError {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(OnErrorVisitor)
    }
}

impl Serialize for OnError {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match &self.retry {
            None => s.serialize_str(self.then.as_str()),
            Some(r) => {
                let mut m = s.serialize_map(Some(2))?;
                m.serialize_entry("retry", r)?;
                m.serialize_entry("then", &self.then)?;
                m.end()
            }
        }
    }
}

/// What a stage's rows get when the stage could not produce them
/// (`fallback = { defaults = { … }, mark = "_fallback" }`).
///
/// Such a row is the input row's columns, with each default replacing the
/// same-named column or filling an output column the input lacks, plus the
/// mark column set to true; rows the stage produced carry the mark set to
/// false. Every output column must come from the input or a default: the plan
/// refuses a missing one, naming it. The same table serves a batch run and a
/// stream, so training data and online features agree on what a missing
/// feature looks like.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FallbackSpec {
    /// The value of each output column in a fallen-back row, by column name;
    /// typed to the stage's output schema at plan time (a number for numeric
    /// columns, a string for `utf8`, a boolean, an integer of epoch
    /// milliseconds for a timestamp, or null for a nullable column).
    #[serde(default)]
    pub defaults: BTreeMap<String, serde_json::Value>,
    /// The boolean column saying which rows fell back. Default: `_fallback`
    /// ([`default_mark`]).
    #[serde(default = "default_mark")]
    pub mark: String,
}

/// The default mark column: `_fallback`.
pub fn default_mark() -> String {
    "_fallback".to_owned()
}

/// When a stage's trap breaker opens, and for how long
/// (`breaker = { traps = 5, window = "60s", open = "30s", max_open = "10m" }`).
///
/// A breaker counts the batches whose call trapped. At `traps` of them
/// within `window` it opens: batches then follow the node's policy without
/// entering the sandbox. After `open` it half-opens and lets one batch try;
/// success closes it, a trap opens it again for twice as long (at most
/// `max_open`). A swap to another version closes it.
///
/// Why these defaults, and not resilience4j's 50 % of 100 calls with 60 s
/// open: a weir call is a batch of thousands of rows, and a trapping batch
/// costs a fresh instance plus a bisection of up to a few dozen calls, so a
/// stage trapping on 5 batches in a minute is broken, not unlucky, and a
/// rate over 100 batches would take minutes to notice on a slow stream.
/// Opening for 30 s and doubling keeps a stage that stays broken nearly free
/// while still trying it twice a minute at first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerSpec {
    /// Trapping batches within `window` that open the breaker, at least 1.
    /// Default: 5 ([`default_traps`]).
    #[serde(default = "default_traps")]
    pub traps: std::num::NonZeroU32,
    /// The window the traps are counted in. Default: 60 s ([`default_window`]).
    #[serde(default = "default_window")]
    pub window: Millis,
    /// How long it stays open the first time. Default: 30 s ([`default_open`]).
    #[serde(default = "default_open")]
    pub open: Millis,
    /// The longest it stays open, however often it reopened. Default: 10 min
    /// ([`default_max_open`]).
    #[serde(default = "default_max_open")]
    pub max_open: Millis,
}

/// Default trapping batches that open a breaker: 5.
pub fn default_traps() -> std::num::NonZeroU32 {
    std::num::NonZeroU32::new(5).unwrap_or(std::num::NonZeroU32::MIN)
}

/// Default window the traps are counted in: 60 s.
pub fn default_window() -> Millis {
    Millis(Duration::from_secs(60))
}

/// Default first open period: 30 s.
pub fn default_open() -> Millis {
    Millis(Duration::from_secs(30))
}

/// Default longest open period: 10 min.
pub fn default_max_open() -> Millis {
    Millis(Duration::from_secs(600))
}

impl Default for BreakerSpec {
    fn default() -> Self {
        Self {
            traps: default_traps(),
            window: default_window(),
            open: default_open(),
            max_open: default_max_open(),
        }
    }
}

impl BreakerSpec {
    /// Checks what serde cannot; `key` is the node's `breaker` key.
    ///
    /// # Errors
    /// A zero window or open period, or `max_open` below `open`.
    pub fn check(&self, key: &str) -> Result<(), super::config::SpecError> {
        use super::config::SpecError;
        if self.window.0.is_zero() {
            return Err(SpecError::invalid(
                format!("{key}.window"),
                "must be greater than 0",
            ));
        }
        if self.open.0.is_zero() {
            return Err(SpecError::invalid(
                format!("{key}.open"),
                "must be greater than 0",
            ));
        }
        if self.max_open.0 < self.open.0 {
            return Err(SpecError::invalid(
                format!("{key}.max_open"),
                format!("({}) is below `open` ({})", self.max_open, self.open),
            ));
        }
        Ok(())
    }
}

/// A node's error handling as its spec gives it: the policy, the fallback
/// table and the breaker.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NodePolicy {
    /// `on_error`; `None`: the kind's default ([`OnError::default_for`]).
    pub on_error: Option<OnError>,
    /// `fallback`; required when the policy may fall back.
    pub fallback: Option<FallbackSpec>,
    /// `breaker`; `None`: the defaults ([`BreakerSpec::default`]).
    pub breaker: Option<BreakerSpec>,
}

impl NodePolicy {
    /// Whether nothing is set (the node follows its kind's defaults).
    pub fn is_default(&self) -> bool {
        self.on_error.is_none() && self.fallback.is_none() && self.breaker.is_none()
    }

    /// The policy in force for a node that is `row_local` or not.
    pub fn effective(&self, row_local: bool) -> OnError {
        self.on_error
            .clone()
            .unwrap_or_else(|| OnError::default_for(row_local))
    }

    /// Checks the policy against the node it is on; `node_key` is the node's
    /// key (`stage[2]`), `kind` its kind table (`sort`), `row_local` whether
    /// it processes each batch on its own, `stage` whether it is a stage (a
    /// sink cannot fall back: it has no output to mark).
    ///
    /// # Errors
    /// `skip` or `fallback` on a node that is not row-local, `fallback`
    /// without a `fallback` table or the other way round, bad numbers.
    pub fn check(
        &self,
        node_key: &str,
        kind: &str,
        unguarded: Option<&str>,
        stage: bool,
    ) -> Result<(), super::config::SpecError> {
        use super::config::SpecError;
        let key = format!("{node_key}.on_error");
        if let Some(p) = &self.on_error {
            p.check(&key)?;
            if let Some(because) = unguarded
                && (p.then != Action::Fail || p.retry.is_some())
            {
                let asked = if p.retry.is_some() {
                    "a retry"
                } else {
                    p.then.as_str()
                };
                return Err(SpecError::invalid(
                    key,
                    format!(
                        "`{asked}` needs a node that processes each batch on its own \
                         (map, filter, split, a WebAssembly stage, a sink); `{kind}` \
                         {because}: use \"fail\" (the default)"
                    ),
                ));
            }
            if !stage && p.then == Action::Fallback {
                return Err(SpecError::invalid(
                    key,
                    "a sink has no output to fall back to: use \"skip\" or \"fail\"",
                ));
            }
        }
        let falls_back = self
            .on_error
            .as_ref()
            .is_some_and(|p| p.may(Action::Fallback));
        match (&self.fallback, falls_back) {
            (None, true) => {
                return Err(SpecError::invalid(
                    key,
                    format!(
                        "\"fallback\" needs the rows' defaults: add \
                         `fallback = {{ defaults = {{ column = value, … }} }}` to `{node_key}`"
                    ),
                ));
            }
            (Some(_), false) => {
                return Err(SpecError::invalid(
                    format!("{node_key}.fallback"),
                    "is only used with `on_error = \"fallback\"` (or `then = \"fallback\"`)",
                ));
            }
            (Some(f), true) if f.mark.is_empty() => {
                return Err(SpecError::invalid(
                    format!("{node_key}.fallback.mark"),
                    "must not be empty",
                ));
            }
            _ => {}
        }
        if let Some(b) = &self.breaker {
            b.check(&format!("{node_key}.breaker"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Holder {
        on_error: OnError,
    }

    fn parse(text: &str) -> Result<OnError, String> {
        toml::from_str::<Holder>(text)
            .map(|h| h.on_error)
            .map_err(|e| e.message().to_owned())
    }

    #[test]
    fn the_three_actions_and_the_retry_table_parse() {
        assert_eq!(
            parse(r#"on_error = "skip""#).unwrap(),
            OnError::action(Action::Skip)
        );
        assert_eq!(
            parse(r#"on_error = "fallback""#).unwrap().then,
            Action::Fallback
        );
        let p = parse(r#"on_error = { retry = { attempts = 3, backoff = "5ms" }, then = "skip" }"#)
            .unwrap();
        assert_eq!(p.then, Action::Skip);
        let r = p.retry.unwrap();
        assert_eq!(r.attempts.get(), 3);
        assert_eq!(r.backoff, Millis(Duration::from_millis(5)));
        assert_eq!(
            parse(r#"on_error = { retry = {} }"#).unwrap().then,
            Action::Fail
        );
    }

    #[test]
    fn malformed_policies_say_why() {
        assert_eq!(
            parse(r#"on_error = "skp""#).unwrap_err(),
            "unknown policy `skp`: expected \"fail\", \"skip\", \"fallback\", or a table \
             `{ retry = { attempts = 3, backoff = \"100ms\" }, then = \"skip\" }` \
             (did you mean `skip`?)"
        );
        assert!(
            parse(r#"on_error = "retry""#)
                .unwrap_err()
                .starts_with("`retry` needs a table")
        );
        assert!(
            parse(r#"on_error = { then = "skip" }"#)
                .unwrap_err()
                .starts_with("a table policy retries")
        );
        assert!(
            parse(r#"on_error = { retry = {}, then = "drop" }"#)
                .unwrap_err()
                .contains("unknown variant `drop`")
        );
        assert!(
            parse(r#"on_error = { retry = {}, than = "skip" }"#)
                .unwrap_err()
                .contains("unknown field `than`")
        );
        assert!(parse("on_error = 3").unwrap_err().contains("expected"));
    }

    #[test]
    fn decisions_key_on_the_fault() {
        let trap = Fault::Stage {
            transient: false,
            trap: true,
        };
        let transient = Fault::Stage {
            transient: true,
            trap: false,
        };
        let skip = OnError::action(Action::Skip);
        assert_eq!(skip.decide(trap, true), Decision::Rows(Action::Skip));
        assert_eq!(skip.decide(Fault::Data, true), Decision::Rows(Action::Skip));
        assert_eq!(skip.decide(transient, true), Decision::Rows(Action::Skip));
        assert_eq!(skip.decide(Fault::Bug, true), Decision::Fail);
        assert_eq!(skip.decide(Fault::Config, true), Decision::Fail);
        assert_eq!(
            skip.decide(Fault::Service { transient: false }, true),
            Decision::Fail
        );
        let retry = OnError {
            retry: Some(RetryPolicy::default()),
            then: Action::Fallback,
            data_only: false,
        };
        assert_eq!(retry.decide(transient, true), Decision::Retry);
        assert_eq!(
            retry.decide(transient, false),
            Decision::Rows(Action::Fallback)
        );
        assert_eq!(
            retry.decide(Fault::Service { transient: true }, true),
            Decision::Retry
        );
        assert_eq!(retry.decide(trap, true), Decision::Rows(Action::Fallback));
        assert_eq!(retry.decide(Fault::Bug, true), Decision::Fail);
        // The defaults: data skipped on row-local nodes, all else fails.
        let d = OnError::default_for(true);
        assert_eq!(d.decide(Fault::Data, true), Decision::Rows(Action::Skip));
        assert_eq!(d.decide(trap, true), Decision::Fail);
        assert_eq!(
            OnError::default_for(false).decide(Fault::Data, true),
            Decision::Fail
        );
    }

    /// What a node that keeps rows says of itself.
    const KEEPS: &str =
        "keeps rows across batches, so a failed row cannot be taken out of its state";

    #[test]
    fn a_policy_is_checked_against_its_node() {
        let skip = NodePolicy {
            on_error: Some(OnError::action(Action::Skip)),
            ..NodePolicy::default()
        };
        assert_eq!(
            skip.check("stage[1]", "sort", Some(KEEPS), true)
                .unwrap_err()
                .to_string(),
            "`stage[1].on_error`: `skip` needs a node that processes each batch on its own \
             (map, filter, split, a WebAssembly stage, a sink); `sort` keeps rows across \
             batches, so a failed row cannot be taken out of its state: use \"fail\" (the \
             default)"
        );
        skip.check("stage[1]", "map", None, true).unwrap();
        // A retry is not applied to such a node either: it is refused, not ignored.
        let retry = NodePolicy {
            on_error: Some(OnError {
                retry: Some(RetryPolicy::default()),
                then: Action::Fail,
                data_only: false,
            }),
            ..NodePolicy::default()
        };
        assert!(
            retry
                .check("stage[1]", "group", Some(KEEPS), true)
                .unwrap_err()
                .to_string()
                .contains("`a retry` needs a node that processes each batch on its own")
        );
        let fail = NodePolicy {
            on_error: Some(OnError::action(Action::Fail)),
            ..NodePolicy::default()
        };
        fail.check("stage[1]", "group", Some(KEEPS), true).unwrap();
        let fallback = NodePolicy {
            on_error: Some(OnError::action(Action::Fallback)),
            ..NodePolicy::default()
        };
        assert!(
            fallback
                .check("stage[0]", "wasm", None, true)
                .unwrap_err()
                .to_string()
                .starts_with("`stage[0].on_error`: \"fallback\" needs the rows' defaults")
        );
        let stray = NodePolicy {
            fallback: Some(FallbackSpec {
                defaults: BTreeMap::new(),
                mark: default_mark(),
            }),
            ..NodePolicy::default()
        };
        assert!(
            stray
                .check("stage[0]", "wasm", None, true)
                .unwrap_err()
                .to_string()
                .starts_with("`stage[0].fallback`: is only used with")
        );
        let breaker = NodePolicy {
            breaker: Some(BreakerSpec {
                max_open: Millis(Duration::from_secs(1)),
                ..BreakerSpec::default()
            }),
            ..NodePolicy::default()
        };
        assert_eq!(
            breaker
                .check("stage[0]", "wasm", None, true)
                .unwrap_err()
                .to_string(),
            "`stage[0].breaker.max_open`: (1s) is below `open` (30s)"
        );
    }
}
