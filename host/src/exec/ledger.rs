//! The conservation ledger: every record a node received is accounted for.
//!
//! ```text
//!   operator   in + restored = out + filtered + dead-lettered + held      (fallen back ⊂ out)
//!   aggregate  in + restored = absorbed + filtered + dead-lettered        (absorbed: folded into state)
//!   sink       in            = written + dead-lettered
//!   source     read          = out + dead-lettered + blank_lines          (reported, not checked:
//!                                                                           a source counts its own reads)
//! ```
//!
//! `restored` is what a resumed operator held when its state was restored
//! from a checkpoint; `held` is what it holds now ([`Operator::held_rows`]).
//! The executor checks the ledger at each checkpoint barrier and when a node
//! ends; a mismatch is weir's bug ([`NodeError::Bug`]) and fails the run,
//! naming the node and the numbers, because a record unaccounted for is a
//! record lost or invented.
//!
//! [`Operator::held_rows`]: crate::node::Operator::held_rows

use std::fmt;

use super::NodeStats;
use crate::node::{Conservation, NodeError, NodeKind};

/// One node's ledger, from its counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ledger {
    /// The node's kind.
    pub kind: NodeKind,
    /// How it balances (operators).
    pub rule: Conservation,
    /// Rows received (for a source, rows read: out + dead + blank).
    pub rows_in: u64,
    /// Rows held when a resumed run restored the node's state.
    pub restored: u64,
    /// Rows sent on (written, for a sink); fallen-back rows among them.
    pub rows_out: u64,
    /// Rows sent on with fallback defaults (a subset of `rows_out`).
    pub fallen_back: u64,
    /// Rows dropped by design (a filter's predicate, a sample).
    pub filtered: u64,
    /// Rows sent to the dead-letter store.
    pub dead_lettered: u64,
    /// Rows held in the operator's state now.
    pub held: u64,
    /// Whitespace-only lines a source read and skipped (counter `blank_lines`).
    pub blank: u64,
}

impl Ledger {
    /// The ledger of `stats`, holding `held` rows.
    pub fn of(stats: &NodeStats) -> Self {
        let c = |k: &str| stats.counters.get(k).copied().unwrap_or(0);
        let dead = stats.dead_letters();
        let blank = c("blank_lines");
        Self {
            kind: stats.kind,
            rule: if stats.absorbs {
                Conservation::Absorbs
            } else {
                Conservation::Rows
            },
            rows_in: if stats.kind == NodeKind::Source {
                stats.rows_out + dead + blank
            } else {
                stats.rows_in
            },
            restored: stats.restored_rows,
            rows_out: stats.rows_out,
            fallen_back: c("rows_fallen_back"),
            filtered: c("filtered"),
            dead_lettered: dead,
            held: stats.held_rows,
            blank,
        }
    }

    /// What the rows received went to, as the rule counts it.
    fn accounted(&self) -> u64 {
        match (self.kind, self.rule) {
            (NodeKind::Source, _) => self.rows_out + self.dead_lettered + self.blank,
            (NodeKind::Sink, _) => self.rows_out + self.dead_lettered,
            (NodeKind::Stage, Conservation::Rows) => {
                self.rows_out + self.filtered + self.dead_lettered + self.held
            }
            // Absorbed is what is left: it cannot be negative.
            (NodeKind::Stage, Conservation::Absorbs) => {
                (self.filtered + self.dead_lettered).max(self.rows_in + self.restored)
            }
        }
    }

    /// Whether every row is accounted for.
    pub fn balanced(&self) -> bool {
        self.rows_in + self.restored == self.accounted() && self.fallen_back <= self.rows_out
    }

    /// Checks the ledger of node `node`.
    ///
    /// # Errors
    /// [`NodeError::Bug`] naming the node and the numbers.
    pub fn check(&self, node: &str) -> Result<(), NodeError> {
        if self.balanced() {
            return Ok(());
        }
        Err(NodeError::Bug(format!(
            "the conservation ledger of `{node}` does not balance: {self}"
        )))
    }
}

impl fmt::Display for Ledger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let restored = if self.restored > 0 {
            format!(" + restored {}", self.restored)
        } else {
            String::new()
        };
        match (self.kind, self.rule) {
            (NodeKind::Source, _) => write!(
                f,
                "read {} = out {} + dead-lettered {} + blank {}",
                self.rows_in, self.rows_out, self.dead_lettered, self.blank
            ),
            (NodeKind::Sink, _) => write!(
                f,
                "in {} {} written {} + dead-lettered {}",
                self.rows_in,
                if self.balanced() { "=" } else { "≠" },
                self.rows_out,
                self.dead_lettered
            ),
            (NodeKind::Stage, Conservation::Rows) => write!(
                f,
                "in {}{restored} {} out {} (fallen back {}) + filtered {} + dead-lettered {} + held {}",
                self.rows_in,
                if self.balanced() { "=" } else { "≠" },
                self.rows_out,
                self.fallen_back,
                self.filtered,
                self.dead_lettered,
                self.held
            ),
            (NodeKind::Stage, Conservation::Absorbs) => write!(
                f,
                "in {}{restored} {} absorbed {} + filtered {} + dead-lettered {} (out {} new records)",
                self.rows_in,
                if self.balanced() { "=" } else { "≠" },
                (self.rows_in + self.restored).saturating_sub(self.filtered + self.dead_lettered),
                self.filtered,
                self.dead_lettered,
                self.rows_out
            ),
        }
    }
}
