//! The string set behind `count_distinct` over strings. Kept apart because it is
//! a data structure of its own, with its own invariant (exact, whatever the hash
//! says) and its own property test, used by the accumulators but knowing nothing
//! of them.

use super::HashSet;

/// A set of distinct strings for `count_distinct`, without an allocation per value.
///
/// Most groups and sessions hold a handful of distinct values, so a set starts as
/// one byte buffer plus `(hash, start, len)` entries searched linearly by hash;
/// past [`StrSet::SMALL`] values it moves to a hash set. Exact: equal hashes are
/// confirmed by comparing the bytes.
#[derive(Debug, Default)]
pub(crate) enum StrSet {
    /// No value yet, and nothing allocated.
    #[default]
    Empty,
    /// Up to `SMALL` values.
    Small {
        /// The values' bytes, back to back.
        bytes: Vec<u8>,
        /// Per value: its hash, start and length in `bytes`.
        entries: Vec<(u64, u32, u32)>,
    },
    /// More values.
    Large(HashSet<Box<str>>),
}

impl StrSet {
    /// Values a set holds before it moves to a hash set.
    const SMALL: usize = 32;

    /// The most value bytes a cleared small set keeps room for.
    const KEPT_BYTES: usize = 1024;

    /// Adds `x`; true when it was not there yet.
    pub(crate) fn insert(&mut self, x: &str) -> bool {
        use std::hash::BuildHasher;
        // A fixed seed: sets are compared by bytes, the hash only narrows the scan.
        let h = foldhash::fast::FixedState::with_seed(0).hash_one(x);
        match self {
            StrSet::Empty => {
                // Room for a few values at once: most sets grow past one.
                let mut bytes = Vec::with_capacity(x.len().max(16) * 4);
                bytes.extend_from_slice(x.as_bytes());
                let mut entries = Vec::with_capacity(8);
                entries.push((h, 0, x.len() as u32));
                *self = StrSet::Small { bytes, entries };
                true
            }
            StrSet::Small { bytes, entries } => {
                let found = entries.iter().any(|&(eh, start, len)| {
                    eh == h && &bytes[start as usize..(start + len) as usize] == x.as_bytes()
                });
                if found {
                    return false;
                }
                let fits = u32::try_from(bytes.len() + x.len()).is_ok();
                if entries.len() < Self::SMALL && fits {
                    entries.push((h, bytes.len() as u32, x.len() as u32));
                    bytes.extend_from_slice(x.as_bytes());
                    return true;
                }
                let mut set: HashSet<Box<str>> = entries
                    .iter()
                    .map(|&(_, start, len)| {
                        let v = &bytes[start as usize..(start + len) as usize];
                        Box::from(std::str::from_utf8(v).expect("stored from a str"))
                    })
                    .collect();
                set.insert(Box::from(x));
                *self = StrSet::Large(set);
                true
            }
            StrSet::Large(set) => {
                if set.contains(x) {
                    false
                } else {
                    set.insert(Box::from(x))
                }
            }
        }
    }

    /// Empties the set. A small set keeps its two buffers (at most
    /// [`StrSet::KEPT_BYTES`] of values), so a slot reused for the next session
    /// or group fills them again without allocating; a large one is freed.
    pub(crate) fn clear(&mut self) {
        match self {
            StrSet::Small { bytes, entries } if bytes.capacity() <= Self::KEPT_BYTES => {
                bytes.clear();
                entries.clear();
            }
            _ => *self = StrSet::Empty,
        }
    }

    /// The number of distinct values.
    pub(crate) fn len(&self) -> usize {
        match self {
            StrSet::Empty => 0,
            StrSet::Small { entries, .. } => entries.len(),
            StrSet::Large(set) => set.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::StrSet;
    use proptest::prelude::*;

    proptest! {
        /// The set counts exactly what a `HashSet` counts, across the move from
        /// small to large.
        #[test]
        fn counts_like_a_hash_set(values in proptest::collection::vec("[a-c]{0,3}", 0..200)) {
            let mut set = StrSet::default();
            let mut want = std::collections::HashSet::new();
            for v in &values {
                prop_assert_eq!(set.insert(v), want.insert(v.clone()));
            }
            prop_assert_eq!(set.len(), want.len());
        }

        /// A cleared set, small or large, counts like a new one.
        #[test]
        fn a_cleared_set_counts_like_a_new_one(
            first in proptest::collection::vec("[a-c]{0,3}", 0..200),
            then in proptest::collection::vec("[a-d]{0,2}", 0..60),
        ) {
            let mut set = StrSet::default();
            for v in &first {
                set.insert(v);
            }
            set.clear();
            prop_assert_eq!(set.len(), 0);
            let mut want = std::collections::HashSet::new();
            for v in &then {
                prop_assert_eq!(set.insert(v), want.insert(v.clone()));
            }
            prop_assert_eq!(set.len(), want.len());
        }
    }
}
