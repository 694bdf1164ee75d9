//! Delivery tokens: how a source learns that what it read is safe downstream.
//!
//! ```text
//!   source batch #7 ──► token(7) ─┬─► envelope ─► stage ─► sink ── durable ──► drop
//!                                 └─► dead letters of #7 ───── durable ──────► drop
//!   last clone of token(7) dropped  ⇒  #7 settled
//!   #1…#7 all settled               ⇒  frontier = position after #7  ⇒  commit
//! ```
//!
//! As Vector's finalizers, a token is reference-counted: every envelope that
//! carries rows of a source batch (and every dead letter from it) holds a clone.
//! Operators that combine rows carry the union of their inputs' tokens, so a row
//! held in a session window keeps its batch unsettled until the session is
//! written. When the last clone goes, the batch is *settled*; the tracker advances
//! its frontier over settled batches strictly in order, so a position is only
//! committed once everything before it is settled too.
//!
//! Dropping is settling, so losing data must never look like delivering it:
//! - a failing node poisons the tracker (see [`CommitTracker::poison`]) while it
//!   still holds the envelope's tokens, before anything is dropped;
//! - a token dropped while its thread panics poisons the tracker itself.
//!
//! A poisoned tracker never advances again, so a failed run commits nothing past
//! what was durable before the failure.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

/// A position in a source's input, after some record: opaque to everyone but
/// the source that made it (a JSON-lines source writes `line:byte offset`, a
/// JetStream source the stream sequence).
pub type Position = String;

/// One source batch's claim on delivery; see the module docs.
pub struct AckToken {
    tracker: Arc<CommitTracker>,
    seq: u64,
}

impl std::fmt::Debug for AckToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AckToken")
            .field("source", &self.tracker.source)
            .field("seq", &self.seq)
            .finish()
    }
}

impl Drop for AckToken {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.tracker.poison();
        } else {
            self.tracker.settle(self.seq);
        }
    }
}

struct Pending {
    seq: u64,
    position: Option<Position>,
    settled: bool,
}

#[derive(Default)]
struct TrackerState {
    next_seq: u64,
    pending: VecDeque<Pending>,
    frontier: Option<Position>,
    settled_batches: u64,
    poisoned: bool,
}

/// Tracks one source's batches from issue to settlement and the frontier of
/// positions that may be committed.
pub struct CommitTracker {
    source: String,
    state: Mutex<TrackerState>,
}

impl std::fmt::Debug for CommitTracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommitTracker")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl CommitTracker {
    /// A tracker for `source`, whose frontier starts at `resumed_from` (the
    /// checkpointed position of a resumed run, or `None`).
    pub fn new(source: &str, resumed_from: Option<Position>) -> Arc<Self> {
        Arc::new(Self {
            source: source.to_owned(),
            state: Mutex::new(TrackerState {
                frontier: resumed_from,
                ..TrackerState::default()
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TrackerState> {
        // A panic while holding this lock cannot leave the queue half-updated
        // (each update is a push, a flag or a pop), so the state stays usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A token for the next batch, which ends at `position`.
    pub fn issue(self: &Arc<Self>, position: Option<Position>) -> Arc<AckToken> {
        let mut s = self.lock();
        let seq = s.next_seq;
        s.next_seq += 1;
        s.pending.push_back(Pending {
            seq,
            position,
            settled: false,
        });
        Arc::new(AckToken {
            tracker: self.clone(),
            seq,
        })
    }

    fn settle(&self, seq: u64) {
        let mut s = self.lock();
        if s.poisoned {
            return;
        }
        let Some(front) = s.pending.front().map(|p| p.seq) else {
            return;
        };
        let Some(slot) = seq
            .checked_sub(front)
            .and_then(|i| usize::try_from(i).ok())
            .and_then(|i| s.pending.get_mut(i))
        else {
            return;
        };
        slot.settled = true;
        while s.pending.front().is_some_and(|p| p.settled) {
            let done = s.pending.pop_front().expect("front exists");
            s.settled_batches += 1;
            if let Some(p) = done.position {
                s.frontier = Some(p);
            }
        }
    }

    /// Stops the frontier for good: the run is failing and what is dropped from
    /// now on was not delivered.
    pub fn poison(&self) {
        self.lock().poisoned = true;
    }

    /// Whether [`CommitTracker::poison`] was called.
    pub fn is_poisoned(&self) -> bool {
        self.lock().poisoned
    }

    /// The position after the last batch such that it and every batch before it
    /// are settled: what may be committed.
    pub fn frontier(&self) -> Option<Position> {
        self.lock().frontier.clone()
    }

    /// Batches issued and not yet settled (in flight or held in state).
    pub fn unsettled(&self) -> usize {
        self.lock().pending.len()
    }

    /// Batches issued so far: once [`CommitTracker::settled`] reaches this
    /// number, everything issued up to now has settled (an aligned checkpoint
    /// notes it at its barrier).
    pub fn issued(&self) -> u64 {
        self.lock().next_seq
    }

    /// Batches settled so far.
    pub fn settled(&self) -> u64 {
        self.lock().settled_batches
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frontier_advances_in_order_over_settled_batches_only() {
        let t = CommitTracker::new("s", None);
        let a = t.issue(Some("1".into()));
        let b = t.issue(Some("2".into()));
        let c = t.issue(Some("3".into()));
        let b2 = b.clone();
        drop(b);
        drop(c);
        assert_eq!(t.frontier(), None, "#1 is still out");
        drop(a);
        assert_eq!(t.frontier().as_deref(), Some("1"), "#2 still has a clone");
        drop(b2);
        assert_eq!(t.frontier().as_deref(), Some("3"));
        assert_eq!((t.unsettled(), t.settled()), (0, 3));
    }

    #[test]
    fn a_poisoned_tracker_commits_nothing_more() {
        let t = CommitTracker::new("s", Some("0".into()));
        let a = t.issue(Some("1".into()));
        t.poison();
        drop(a);
        assert_eq!(t.frontier().as_deref(), Some("0"));
    }

    #[test]
    fn a_token_dropped_in_a_panic_poisons() {
        let t = CommitTracker::new("s", None);
        let a = t.issue(Some("1".into()));
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let _held = a;
            panic!("boom");
        }));
        assert!(r.is_err());
        assert!(t.is_poisoned());
        assert_eq!(t.frontier(), None);
    }
}
