//! What moves on a channel: a batch, its lineage and its delivery tokens.
//!
//! ```text
//!   Envelope { batch: RecordBatch, meta: Meta { lineage: Arc<Lineage>, acks: [Arc<AckToken>] } }
//! ```
//!
//! The [`Meta`] is cheap to clone (two `Arc`s and a short vector) and is never
//! serialized on the way: a stateless operator hands its input's meta to its
//! output unchanged (the [`super::Emitter`] does it), a WebAssembly stage appends
//! its entry to the lineage once per batch, and an operator that combines rows
//! of several batches keeps the metas of what it holds in a [`MetaSet`] and emits
//! their union.

use std::sync::Arc;

use arrow::array::RecordBatch;

use super::ack::AckToken;
use super::lineage::Lineage;

/// A batch's lineage and delivery tokens.
#[derive(Debug, Clone, Default)]
pub struct Meta {
    /// Where the rows came from and what code made them.
    pub lineage: Arc<Lineage>,
    /// The source batches whose delivery waits on these rows.
    pub acks: Vec<Arc<AckToken>>,
}

impl Meta {
    /// The meta of a batch a source just read.
    pub fn from_source(lineage: Arc<Lineage>, ack: Arc<AckToken>) -> Self {
        Self {
            lineage,
            acks: vec![ack],
        }
    }

    /// The union of `parts`' lineage and tokens (each token once).
    pub fn union<'a>(parts: impl IntoIterator<Item = &'a Meta> + Clone) -> Meta {
        let mut it = parts.clone().into_iter();
        let Some(first) = it.next() else {
            return Meta::default();
        };
        if it.next().is_none() {
            return first.clone();
        }
        let mut acks: Vec<Arc<AckToken>> = Vec::new();
        let mut lineages: Vec<&Lineage> = Vec::new();
        for m in parts.into_iter() {
            if !lineages.iter().any(|l| std::ptr::eq(*l, &*m.lineage)) {
                lineages.push(&m.lineage);
            }
            for a in &m.acks {
                if !acks.iter().any(|b| Arc::ptr_eq(a, b)) {
                    acks.push(a.clone());
                }
            }
        }
        Meta {
            lineage: Arc::new(Lineage::union(lineages)),
            acks,
        }
    }
}

/// The unit that moves between nodes.
#[derive(Debug, Clone)]
pub struct Envelope {
    /// The rows.
    pub batch: RecordBatch,
    /// Their lineage and delivery tokens.
    pub meta: Meta,
}

/// The union of the metas of rows an operator holds: what a window, a group or
/// a sort emits as its output's meta.
///
/// The union is kept up to date as metas are added (the new spans merged into
/// it, new tokens appended), so each emit costs a clone rather than a merge of
/// everything consumed so far. Consecutive pushes of the same meta (the same
/// lineage `Arc`) are folded.
#[derive(Debug, Clone, Default)]
pub struct MetaSet {
    union: Meta,
    last: Option<Arc<Lineage>>,
    /// The addresses of the tokens in `union.acks` (kept alive by it), to add
    /// each once.
    tokens: std::collections::HashSet<usize>,
}

impl MetaSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `meta` unless it is the last one added.
    pub fn push(&mut self, meta: &Meta) {
        if self
            .last
            .as_ref()
            .is_some_and(|l| Arc::ptr_eq(l, &meta.lineage))
        {
            return;
        }
        self.union.lineage = match self.last {
            None => meta.lineage.clone(),
            Some(_) => Arc::new(Lineage::union([&*self.union.lineage, &*meta.lineage])),
        };
        self.last = Some(meta.lineage.clone());
        for a in &meta.acks {
            if self.tokens.insert(Arc::as_ptr(a) as usize) {
                self.union.acks.push(a.clone());
            }
        }
    }

    /// Adds the meta of the input `out` is processing, if any.
    pub fn push_input(&mut self, out: &super::Emitter) {
        if let Some(m) = out.input_meta() {
            self.push(m);
        }
    }

    /// The union of everything added.
    pub fn union(&self) -> Meta {
        self.union.clone()
    }
}
