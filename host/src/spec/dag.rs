//! Checking a pipeline's graph and ordering it.

use std::collections::HashMap;

use super::error::closest;
use super::{PipelineSpec, SpecError};

pub use crate::node::NodeKind;

/// One node of the checked DAG.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRef {
    /// The node's name.
    pub name: String,
    /// Its kind.
    pub kind: NodeKind,
    /// Its index within its kind's list in the spec.
    pub index: usize,
    /// Indices (into [`Dag::nodes`]) of the nodes it reads from.
    pub inputs: Vec<usize>,
    /// Indices (into [`Dag::nodes`]) of the nodes that read from it.
    pub outputs: Vec<usize>,
}

/// A checked pipeline graph, nodes in topological order (every node after its
/// inputs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dag {
    /// The nodes, sources first, in an order where inputs precede readers.
    pub nodes: Vec<NodeRef>,
}

impl Dag {
    /// The node named `name`.
    pub fn get(&self, name: &str) -> Option<(usize, &NodeRef)> {
        self.nodes.iter().enumerate().find(|(_, n)| n.name == name)
    }

    /// A text drawing of the graph, one line per edge, for `weir validate`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            let kind = node.kind.as_str();
            let inputs: Vec<&str> = node
                .inputs
                .iter()
                .map(|&i| self.nodes[i].name.as_str())
                .collect();
            if inputs.is_empty() {
                out.push_str(&format!("{kind:>6} {}\n", node.name));
            } else {
                out.push_str(&format!(
                    "{kind:>6} {} <- {}\n",
                    node.name,
                    inputs.join(", ")
                ));
            }
        }
        out
    }
}

fn inputs_of(
    key: &str,
    input: &Option<String>,
    inputs: &Option<Vec<String>>,
) -> Result<Vec<String>, SpecError> {
    match (input, inputs) {
        (Some(one), None) => Ok(vec![one.clone()]),
        (None, Some(many)) if !many.is_empty() => Ok(many.clone()),
        (None, Some(_)) => Err(SpecError::invalid(
            format!("{key}.inputs"),
            "is empty; name at least one upstream node",
        )),
        (Some(_), Some(_)) => Err(SpecError::invalid(
            key,
            "set either `input` or `inputs`, not both",
        )),
        (None, None) => Err(SpecError::invalid(
            key,
            "has no `input`; name the node it reads from",
        )),
    }
}

impl PipelineSpec {
    /// Checks everything serde cannot and returns the DAG.
    ///
    /// # Errors
    /// [`SpecError::Invalid`] naming the key: an empty or duplicate name, a missing
    /// or unknown input (with a "did you mean"), a kind table its own check
    /// refuses ([`crate::node::config::SourceConfig::check`] and its siblings), a
    /// cycle, a source or stage nobody reads, a pipeline without source or sink.
    pub fn validate(&self) -> Result<Dag, SpecError> {
        if self.name.trim().is_empty() {
            return Err(SpecError::invalid("name", "is empty"));
        }
        if !self.uses.is_empty() {
            return Err(SpecError::invalid(
                "use",
                "sub-pipelines are not inlined yet (see `PipelineSpec::inline_uses`)",
            ));
        }
        if self.sources.is_empty() {
            return Err(SpecError::invalid(
                "source",
                "the pipeline has no [[source]]",
            ));
        }
        if self.sinks.is_empty() {
            return Err(SpecError::invalid("sink", "the pipeline has no [[sink]]"));
        }

        // (key, name, kind, index, inputs)
        let mut nodes: Vec<(String, String, NodeKind, usize, Vec<String>)> = Vec::new();
        for (i, s) in self.sources.iter().enumerate() {
            let key = format!("source[{i}]");
            s.kind
                .config()
                .check(&format!("{key}.{}", s.kind.table()))?;
            nodes.push((key, s.name.clone(), NodeKind::Source, i, Vec::new()));
        }
        for (i, s) in self.stages.iter().enumerate() {
            let key = format!("stage[{i}]");
            s.kind
                .config()
                .check(&format!("{key}.{}", s.kind.table()))?;
            let config = s.kind.config();
            let unguarded = (!config.row_local()).then(|| config.unguarded_because());
            s.policy.check(&key, s.kind.table(), unguarded, true)?;
            let inputs = inputs_of(&key, &s.input, &s.inputs)?;
            nodes.push((key, s.name.clone(), NodeKind::Stage, i, inputs));
        }
        for (i, s) in self.sinks.iter().enumerate() {
            let key = format!("sink[{i}]");
            s.kind
                .config()
                .check(&format!("{key}.{}", s.kind.table()))?;
            s.policy.check(&key, s.kind.table(), None, false)?;
            let inputs = inputs_of(&key, &s.input, &s.inputs)?;
            nodes.push((key, s.name.clone(), NodeKind::Sink, i, inputs));
        }

        let mut by_name: HashMap<&str, usize> = HashMap::new();
        for (n, (key, name, ..)) in nodes.iter().enumerate() {
            if name.trim().is_empty() {
                return Err(SpecError::invalid(format!("{key}.name"), "is empty"));
            }
            if let Some(&other) = by_name.get(name.as_str()) {
                return Err(SpecError::invalid(
                    format!("{key}.name"),
                    format!("`{name}` is already the name of {}", nodes[other].0),
                ));
            }
            by_name.insert(name, n);
        }

        let mut edges: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
        for (n, (key, _, _, _, inputs)) in nodes.iter().enumerate() {
            for (j, input) in inputs.iter().enumerate() {
                let ikey = if inputs.len() == 1 {
                    format!("{key}.input")
                } else {
                    format!("{key}.inputs[{j}]")
                };
                let Some(&from) = by_name.get(input.as_str()) else {
                    let hint = closest(input, by_name.keys().copied())
                        .map(|c| format!(" (did you mean `{c}`?)"))
                        .unwrap_or_default();
                    return Err(SpecError::invalid(
                        ikey,
                        format!("no node is named `{input}`{hint}"),
                    ));
                };
                if nodes[from].2 == NodeKind::Sink {
                    return Err(SpecError::invalid(
                        ikey,
                        format!("`{input}` is a sink; sinks produce nothing to read"),
                    ));
                }
                if edges[n].contains(&from) {
                    return Err(SpecError::invalid(
                        ikey,
                        format!("`{input}` is listed twice"),
                    ));
                }
                edges[n].push(from);
            }
        }
        for (n, (key, name, kind, ..)) in nodes.iter().enumerate() {
            if *kind != NodeKind::Sink && !edges.iter().any(|e| e.contains(&n)) {
                return Err(SpecError::invalid(
                    key.clone(),
                    format!(
                        "nothing reads from `{name}`; connect it to a stage or sink, or remove it"
                    ),
                ));
            }
        }

        // Kahn's algorithm, stable: ties keep file order (sources, stages, sinks).
        let mut indegree: Vec<usize> = edges.iter().map(Vec::len).collect();
        let mut order = Vec::with_capacity(nodes.len());
        let mut placed = vec![false; nodes.len()];
        while order.len() < nodes.len() {
            let Some(next) = (0..nodes.len()).find(|&n| !placed[n] && indegree[n] == 0) else {
                // What is left is the cycles and what reads from them; peel off the
                // readers (nodes nothing left reads from) to name only the cycle.
                let mut stuck: Vec<usize> = (0..nodes.len()).filter(|&n| !placed[n]).collect();
                while let Some(pos) = stuck
                    .iter()
                    .position(|&n| !stuck.iter().any(|&m| edges[m].contains(&n)))
                {
                    stuck.remove(pos);
                }
                let first = stuck[0];
                let stuck: Vec<&str> = stuck.iter().map(|&n| nodes[n].1.as_str()).collect();
                return Err(SpecError::invalid(
                    nodes[first].0.clone(),
                    format!("the pipeline has a cycle through {}", stuck.join(" → ")),
                ));
            };
            placed[next] = true;
            order.push(next);
            for (m, e) in edges.iter().enumerate() {
                if e.contains(&next) {
                    indegree[m] -= 1;
                }
            }
        }
        let position: HashMap<usize, usize> =
            order.iter().enumerate().map(|(pos, &n)| (n, pos)).collect();
        let mut out: Vec<NodeRef> = order
            .iter()
            .map(|&n| NodeRef {
                name: nodes[n].1.clone(),
                kind: nodes[n].2,
                index: nodes[n].3,
                inputs: edges[n].iter().map(|i| position[i]).collect(),
                outputs: Vec::new(),
            })
            .collect();
        for pos in 0..out.len() {
            for input in out[pos].inputs.clone() {
                out[input].outputs.push(pos);
            }
        }
        Ok(Dag { nodes: out })
    }
}
