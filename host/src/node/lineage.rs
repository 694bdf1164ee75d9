//! Lineage: which code and which input made each output batch.
//!
//! ```text
//!   source ── {pipeline, version, sources: [{source, from, to}]}   one span per batch
//!     │
//!   stage  ── appends {stage, digest, params_hash}   (the version that processed it)
//!     │
//!   sort · group · session · batch · fan-in ── the union of what they consumed
//!     │
//!   sink   ── the run's lineage log: (sink, first row, rows, lineage)
//! ```
//!
//! Lineage travels beside the batch in its [`super::Envelope`], behind an `Arc`:
//! a hop that does not change it shares it, and nothing is serialized until a
//! sink logs it. A stage appends its own entry after it processed the batch, so
//! during a swap each batch names the exact component digest and parameters that
//! produced it. An operator that combines rows of several batches carries the
//! union ([`Lineage::union`]): every source span (contiguous spans of a source
//! merged into one) and every distinct stage entry. The pipeline version is the
//! one active when the source read the first of them; the stage entries are the
//! authority on what code ran.

use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};

/// Where one output batch came from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lineage {
    /// The pipeline's name.
    pub pipeline: String,
    /// The pipeline version active when the source read the batch (`None` when the
    /// pipeline was run from a file, not from the store).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// The input positions, one span per source batch merged into this one.
    pub sources: Vec<SourceSpan>,
    /// The stages that processed it, in order.
    pub stages: Vec<StageLineage>,
}

/// A source's positions before and after the batch.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SourceSpan {
    /// The source node.
    pub source: String,
    /// Its position before the batch (`None` at the start).
    pub from: Option<String>,
    /// Its position after the batch.
    pub to: Option<String>,
}

/// The code and parameters of one stage that processed a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageLineage {
    /// The stage node.
    pub stage: String,
    /// sha256 of the component.
    pub digest: String,
    /// sha256 of the parameters' JSON text.
    pub params_hash: String,
}

impl Lineage {
    /// The union of `parts`: every source span, contiguous spans of one source
    /// merged (`a.to == b.from`), and every distinct stage entry in first-seen
    /// order. The pipeline and version are the first part's.
    pub fn union<'a>(parts: impl IntoIterator<Item = &'a Lineage>) -> Lineage {
        let mut parts = parts.into_iter();
        let Some(first) = parts.next() else {
            return Lineage::default();
        };
        let mut out = first.clone();
        for p in parts {
            out.sources.extend(p.sources.iter().cloned());
            for s in &p.stages {
                if !out.stages.contains(s) {
                    out.stages.push(s.clone());
                }
            }
        }
        out.sources = merge_spans(std::mem::take(&mut out.sources));
        out
    }

    /// This lineage with `stage` appended (a stage that processed the batch).
    pub fn with_stage(&self, stage: &StageLineage) -> Lineage {
        let mut out = self.clone();
        if !out.stages.contains(stage) {
            out.stages.push(stage.clone());
        }
        out
    }
}

/// Chains spans of one source whose ends meet (`a.to == b.from`) into one span,
/// keeping the order in which each chain first appeared.
pub fn merge_spans(spans: Vec<SourceSpan>) -> Vec<SourceSpan> {
    if spans.len() < 2 {
        return spans;
    }
    // The same span twice is the same records twice (the pieces of one batch
    // that a guard split and processed apart): keep it once, or a holder of
    // many such pieces (a session window) would grow its lineage with each.
    let mut seen: HashSet<&SourceSpan, foldhash::fast::RandomState> = HashSet::default();
    let unique: Vec<usize> = (0..spans.len())
        .filter(|&i| seen.insert(&spans[i]))
        .collect();
    drop(seen);
    let spans: Vec<SourceSpan> = if unique.len() == spans.len() {
        spans
    } else {
        unique.into_iter().map(|i| spans[i].clone()).collect()
    };
    let mut by_start: HashMap<(&str, Option<&str>), usize, foldhash::fast::RandomState> =
        HashMap::default();
    for (i, s) in spans.iter().enumerate() {
        by_start
            .entry((s.source.as_str(), s.from.as_deref()))
            .or_insert(i);
    }
    // A span is a chain's head unless another span ends where it starts.
    let mut has_pred = vec![false; spans.len()];
    for s in &spans {
        if let Some(&j) = by_start.get(&(s.source.as_str(), s.to.as_deref()))
            && s.to.is_some()
        {
            has_pred[j] = true;
        }
    }
    let mut used = vec![false; spans.len()];
    let mut out = Vec::new();
    let chain = |start: usize, used: &mut Vec<bool>, out: &mut Vec<SourceSpan>| {
        let mut span = spans[start].clone();
        used[start] = true;
        while let Some(&j) = span
            .to
            .as_deref()
            .and_then(|to| by_start.get(&(span.source.as_str(), Some(to))))
        {
            if used[j] {
                break;
            }
            used[j] = true;
            span.to = spans[j].to.clone();
        }
        out.push(span);
    };
    for i in 0..spans.len() {
        if !used[i] && !has_pred[i] {
            chain(i, &mut used, &mut out);
        }
    }
    // Whatever is left is a cycle of equal positions: keep it as is.
    for i in 0..spans.len() {
        if !used[i] {
            chain(i, &mut used, &mut out);
        }
    }
    out
}

/// sha256 of a stage's parameter text, in hex.
pub fn params_hash(params: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(params.as_bytes()))
}

/// One entry of a run's lineage log: a run of consecutive output rows of a sink
/// that share one lineage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineageRecord {
    /// The sink.
    pub sink: String,
    /// Index of the first row (counted over the sink's output in this run).
    pub first_row: u64,
    /// Number of rows.
    pub rows: u64,
    /// Where they came from.
    pub lineage: Lineage,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(s: &str, from: Option<&str>, to: &str) -> SourceSpan {
        SourceSpan {
            source: s.into(),
            from: from.map(Into::into),
            to: Some(to.into()),
        }
    }

    #[test]
    fn contiguous_spans_merge_per_source_and_gaps_stay() {
        let spans = vec![
            span("a", Some("2"), "3"),
            span("b", None, "9"),
            span("a", None, "1"),
            span("a", Some("1"), "2"),
            span("a", Some("5"), "6"),
        ];
        let merged = merge_spans(spans);
        assert_eq!(
            merged,
            vec![
                span("b", None, "9"),
                span("a", None, "3"),
                span("a", Some("5"), "6")
            ]
        );
    }

    #[test]
    fn the_same_span_many_times_is_kept_once() {
        // The pieces of one batch a guard split apart, each with its own lineage.
        let mut spans = vec![span("a", None, "1")];
        spans.extend(std::iter::repeat_n(span("a", Some("1"), "2"), 200));
        spans.push(span("a", Some("2"), "3"));
        spans.extend(std::iter::repeat_n(span("a", Some("1"), "2"), 50));
        assert_eq!(merge_spans(spans), vec![span("a", None, "3")]);
    }

    #[test]
    fn a_union_keeps_each_stage_once() {
        let st = |d: &str| StageLineage {
            stage: "w".into(),
            digest: d.into(),
            params_hash: "p".into(),
        };
        let a = Lineage {
            pipeline: "p".into(),
            version: Some(1),
            sources: vec![span("s", None, "1")],
            stages: vec![st("d1")],
        };
        let b = Lineage {
            sources: vec![span("s", Some("1"), "2")],
            stages: vec![st("d1"), st("d2")],
            ..a.clone()
        };
        let u = Lineage::union([&a, &b]);
        assert_eq!(u.sources, vec![span("s", None, "2")]);
        assert_eq!(u.stages, vec![st("d1"), st("d2")]);
    }
}
