//! What a run reports when it ends: per node, records in and out, time busy and
//! time blocked; per source, corrupt records by reason; overall, wall time and
//! throughput.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use super::ledger::Ledger;
use crate::node::{Checkpoint, NodeKind};
use crate::units::ByteSize;

/// Counters of one node over a run.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeStats {
    /// The node's name.
    pub name: String,
    /// Its kind.
    pub kind: NodeKind,
    /// Batches received.
    pub batches_in: u64,
    /// Rows received.
    pub rows_in: u64,
    /// Batches sent downstream (or written, for a sink).
    pub batches_out: u64,
    /// Rows sent downstream (or written, for a sink).
    pub rows_out: u64,
    /// Time spent in the node's own work.
    pub busy: Duration,
    /// Time spent waiting for downstream room: how much backpressure it felt.
    pub blocked: Duration,
    /// Deepest queue in front of the node, in batches.
    pub max_queue_batches: usize,
    /// Deepest queue in front of the node, in bytes.
    pub max_queue_bytes: ByteSize,
    /// Named counters: dead letters by reason, rows dropped per predicate, …
    pub counters: BTreeMap<String, u64>,
    /// Dead letters by whose fault they are ([`crate::node::Fault::as_str`]:
    /// `data`, `stage`, …).
    pub dead_letters_by_fault: BTreeMap<&'static str, u64>,
    /// Named states, the last value set (a stage's trap breaker: `breaker`
    /// is `closed`, `open` or `half_open`).
    pub states: BTreeMap<String, String>,
    /// Rows the node held in its state when it last reported (an operator's
    /// [`crate::node::Operator::held_rows`]; 0 once it has emitted everything).
    pub held_rows: u64,
    /// Rows a resumed operator held when its state was restored.
    pub restored_rows: u64,
    /// Whether the node aggregates: its input is absorbed into state and its
    /// output is new records ([`crate::node::Conservation::Absorbs`]).
    pub absorbs: bool,
}

impl NodeStats {
    pub(crate) fn new(name: &str, kind: NodeKind) -> Self {
        Self {
            name: name.to_owned(),
            kind,
            batches_in: 0,
            rows_in: 0,
            batches_out: 0,
            rows_out: 0,
            busy: Duration::ZERO,
            blocked: Duration::ZERO,
            max_queue_batches: 0,
            max_queue_bytes: ByteSize(0),
            counters: BTreeMap::new(),
            dead_letters_by_fault: BTreeMap::new(),
            states: BTreeMap::new(),
            held_rows: 0,
            restored_rows: 0,
            absorbs: false,
        }
    }

    /// The node's conservation ledger (see [`Ledger`]).
    pub fn ledger(&self) -> Ledger {
        Ledger::of(self)
    }

    /// Dead letters this node produced, in total.
    pub fn dead_letters(&self) -> u64 {
        self.counters
            .iter()
            .filter(|(k, _)| k.starts_with("dead_letter:"))
            .map(|(_, v)| v)
            .sum()
    }
}

/// The outcome of a successful run.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSummary {
    /// The pipeline's name.
    pub pipeline: String,
    /// The run's id.
    pub run_id: String,
    /// Per node, in topological order.
    pub nodes: Vec<NodeStats>,
    /// Wall time from start to the last sink closing.
    pub wall: Duration,
    /// Where dead letters were written, if any were.
    pub dead_letter_file: Option<PathBuf>,
    /// Where the run's dead letters were kept, when the host gave the run a
    /// store ([`super::RunOptions::dead_letters`]) and any were kept: how to
    /// list them.
    pub dead_letters_at: Option<String>,
    /// The checkpoint the run resumed from, if it was resumed.
    pub resumed_from: Option<Checkpoint>,
    /// The last checkpoint the run wrote (stored pipelines only).
    pub checkpoint: Option<Checkpoint>,
    /// Aligned checkpoints not saved because an operator still held rows read
    /// before their barrier (see [`crate::node::AtBarrier::Hold`]).
    pub checkpoints_held: u64,
}

impl RunSummary {
    /// The stats of node `name`.
    pub fn node(&self, name: &str) -> Option<&NodeStats> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// Records read by all sources (good ones; corrupt ones are dead letters).
    pub fn records_in(&self) -> u64 {
        self.nodes
            .iter()
            .filter(|n| n.kind == NodeKind::Source)
            .map(|n| n.rows_out)
            .sum()
    }

    /// Corrupt records across all sources.
    pub fn corrupt(&self) -> u64 {
        self.nodes
            .iter()
            .filter(|n| n.kind == NodeKind::Source)
            .map(NodeStats::dead_letters)
            .sum()
    }

    /// Dead letters of every node by whose fault they are.
    pub fn dead_letters_by_fault(&self) -> BTreeMap<&'static str, u64> {
        let mut all = BTreeMap::new();
        for n in &self.nodes {
            for (k, v) in &n.dead_letters_by_fault {
                *all.entry(*k).or_default() += v;
            }
        }
        all
    }

    /// Records per second over the wall time, counting every record read (good or
    /// corrupt).
    pub fn records_per_second(&self) -> f64 {
        (self.records_in() + self.corrupt()) as f64 / self.wall.as_secs_f64().max(1e-9)
    }
}

impl fmt::Display for RunSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "pipeline {} · run {}", self.pipeline, self.run_id)?;
        writeln!(
            f,
            "  {:<20} {:>6} {:>12} {:>12} {:>10} {:>10} {:>6}",
            "node", "kind", "records in", "records out", "busy", "blocked", "queue"
        )?;
        for n in &self.nodes {
            let kind = n.kind.as_str();
            let rows_in = if n.kind == NodeKind::Source {
                "-".to_owned()
            } else {
                n.rows_in.to_string()
            };
            writeln!(
                f,
                "  {:<20} {:>6} {:>12} {:>12} {:>9.3}s {:>9.3}s {:>6}",
                n.name,
                kind,
                rows_in,
                n.rows_out,
                n.busy.as_secs_f64(),
                n.blocked.as_secs_f64(),
                n.max_queue_batches
            )?;
            for (k, v) in &n.counters {
                writeln!(f, "  {:<20}   {k}: {v}", "")?;
            }
            for (k, v) in &n.states {
                writeln!(f, "  {:<20}   {k}: {v}", "")?;
            }
            writeln!(f, "  {:<20}   ledger: {}", "", n.ledger())?;
        }
        writeln!(
            f,
            "  {} records in, {} corrupt, {:.3}s wall, {:.0} records/s",
            self.records_in(),
            self.corrupt(),
            self.wall.as_secs_f64(),
            self.records_per_second()
        )?;
        let by_fault = self.dead_letters_by_fault();
        if !by_fault.is_empty() {
            let list: Vec<String> = by_fault.iter().map(|(k, v)| format!("{k} {v}")).collect();
            writeln!(f, "  dead letters by fault: {}", list.join(", "))?;
        }
        if let Some(c) = &self.resumed_from {
            writeln!(f, "  resumed from the checkpoint of {}", c.run)?;
        }
        if let Some(p) = &self.dead_letter_file {
            writeln!(f, "  dead letters: {}", p.display())?;
        }
        if let Some(at) = &self.dead_letters_at {
            writeln!(f, "  dead letters: {at}")?;
        }
        Ok(())
    }
}
