//! Roots and proofs from stored subtree roots, in O(log n) hashes instead of O(n).
//!
//! Computing a root or a proof from the leaves, as [`crate::merkle`] does, hashes every leaf of
//! the tree: half a second per proof at two million records. The store therefore keeps, with
//! each leaf, the roots of the perfect subtrees that appending it completed (one on average, at
//! most log2(n)), written in the same transaction as the leaf. That is enough for everything:
//! each subtree RFC 6962's recursion visits is either perfect and aligned (its root is stored
//! with its last leaf) or lies on the right edge of the tree, where it splits into at most
//! log2(n) perfect aligned subtrees. A root or a proof thus reads O(log n) stored nodes.
//!
//! Everything stored is a function of the leaves, so the offline verifier recomputes it while
//! streaming ([`crate::Frontier::push_completing`]) and a damaged or forged node is caught; the
//! proofs served from the nodes are the very proofs [`crate::merkle`] computes from the leaves
//! (a property tested below for every size up to 300).
//!
//! Like the rest of the crate this does no I/O. A store first asks which nodes a computation
//! reads ([`root_nodes`], [`inclusion_nodes`], [`consistency_nodes`]), fetches those in one
//! query, then runs the computation over them ([`root_from`], [`inclusion_proof_from`],
//! [`consistency_proof_from`]).

use std::collections::BTreeSet;

use crate::merkle::{empty_root, node_hash, split_size, Hash, ProofError};

/// A perfect, aligned subtree: the `2^level` leaves from index `index << level` on. Level 0 is
/// a single leaf.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId {
    /// The subtree's height.
    pub level: u32,
    /// Its position among the subtrees of that height, from the left.
    pub index: u64,
}

impl NodeId {
    /// The leaf at `index`.
    pub fn leaf(index: u64) -> Self {
        Self { level: 0, index }
    }

    /// The index of the subtree's last leaf. Appending that leaf completed the subtree, so its
    /// root is stored with that leaf's record.
    pub fn last_leaf(&self) -> u64 {
        ((self.index + 1) << self.level) - 1
    }
}

/// The subtrees that appending the leaf at `index` completes, smallest first: one per trailing
/// one bit of `index`, at levels 1, 2, ... (an even index completes none).
pub fn completed_by(index: u64) -> impl Iterator<Item = NodeId> {
    (1..=index.trailing_ones()).map(move |level| NodeId { level, index: index >> level })
}

/// The left neighbours that the leaf at `index` is merged with when appended, smallest first:
/// the subtree of level `j` just left of it, for each completed level `j + 1`.
pub fn append_siblings(index: u64) -> Vec<NodeId> {
    (0..index.trailing_ones()).map(|level| NodeId { level, index: (index >> level) - 1 }).collect()
}

/// The roots of the subtrees completed by appending `leaf`, in the order of [`completed_by`],
/// given the hashes of its [`append_siblings`] in their order.
pub fn completed_roots(leaf: Hash, siblings: &[Hash]) -> Vec<Hash> {
    let mut node = leaf;
    siblings
        .iter()
        .map(|left| {
            node = node_hash(left, &node);
            node
        })
        .collect()
}

/// The Merkle tree hash of the first `size` leaves.
pub fn root_from(size: u64, node: &mut impl FnMut(NodeId) -> Option<Hash>) -> Result<Hash, ProofError> {
    if size == 0 {
        return Ok(empty_root());
    }
    range_root(0, size, node)
}

/// The audit path of leaf `index` in the tree of `size` leaves, equal to
/// [`crate::merkle::inclusion_proof`] over those leaves.
pub fn inclusion_proof_from(
    size: u64,
    index: u64,
    node: &mut impl FnMut(NodeId) -> Option<Hash>,
) -> Result<Vec<Hash>, ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let mut proof = Vec::new();
    audit_path(index, 0, size, node, &mut proof)?;
    Ok(proof)
}

/// The consistency proof from the tree of `old_size` leaves to the tree of `new_size`, equal to
/// [`crate::merkle::consistency_proof`] over those leaves.
pub fn consistency_proof_from(
    old_size: u64,
    new_size: u64,
    node: &mut impl FnMut(NodeId) -> Option<Hash>,
) -> Result<Vec<Hash>, ProofError> {
    if old_size == 0 || old_size > new_size {
        return Err(ProofError::SizeOutOfRange { old_size, new_size });
    }
    let mut proof = Vec::new();
    subproof(old_size, 0, new_size, true, node, &mut proof)?;
    Ok(proof)
}

/// The stored nodes [`root_from`] reads.
pub fn root_nodes(size: u64) -> Vec<NodeId> {
    nodes_read_by(|mut node| root_from(size, &mut node).map(drop)).unwrap_or_default()
}

/// The stored nodes [`inclusion_proof_from`] reads, and the leaf itself.
pub fn inclusion_nodes(size: u64, index: u64) -> Result<Vec<NodeId>, ProofError> {
    let mut nodes = nodes_read_by(|mut node| inclusion_proof_from(size, index, &mut node).map(drop))?;
    nodes.push(NodeId::leaf(index));
    nodes.sort_unstable();
    nodes.dedup();
    Ok(nodes)
}

/// The stored nodes [`consistency_proof_from`] reads.
pub fn consistency_nodes(old_size: u64, new_size: u64) -> Result<Vec<NodeId>, ProofError> {
    nodes_read_by(|mut node| consistency_proof_from(old_size, new_size, &mut node).map(drop))
}

/// Runs `compute` over placeholder hashes to learn which nodes it reads. The recursions above
/// branch on sizes and indices only, never on hash values, so the real run reads the same set.
fn nodes_read_by(
    compute: impl FnOnce(&mut dyn FnMut(NodeId) -> Option<Hash>) -> Result<(), ProofError>,
) -> Result<Vec<NodeId>, ProofError> {
    let mut read = BTreeSet::new();
    compute(&mut |id| {
        read.insert(id);
        Some([0u8; 32])
    })?;
    Ok(read.into_iter().collect())
}

/// MTH of the `len >= 1` leaves from `start`, RFC 6962 section 2.1, reading each perfect aligned
/// subtree from `node` instead of descending into it. The ranges RFC 6962's recursion produces
/// start at a multiple of the next power of two at or above their length, so each is either
/// stored or splits into a stored left half and a right part of the same kind: O(log n) reads.
fn range_root(start: u64, len: u64, node: &mut impl FnMut(NodeId) -> Option<Hash>) -> Result<Hash, ProofError> {
    if len.is_power_of_two() && start.is_multiple_of(len) {
        let id = NodeId { level: len.trailing_zeros(), index: start >> len.trailing_zeros() };
        return node(id).ok_or(ProofError::MissingNode { level: id.level, index: id.index });
    }
    let k = split_size(len);
    let left = range_root(start, k, node)?;
    let right = range_root(start + k, len - k, node)?;
    Ok(node_hash(&left, &right))
}

/// `PATH(m, D[start..start+len])` of RFC 6962 section 2.1.1, as in `merkle::audit_path`.
fn audit_path(
    m: u64,
    start: u64,
    len: u64,
    node: &mut impl FnMut(NodeId) -> Option<Hash>,
    out: &mut Vec<Hash>,
) -> Result<(), ProofError> {
    if len <= 1 {
        return Ok(());
    }
    let k = split_size(len);
    if m < k {
        audit_path(m, start, k, node, out)?;
        out.push(range_root(start + k, len - k, node)?);
    } else {
        audit_path(m - k, start + k, len - k, node, out)?;
        out.push(range_root(start, k, node)?);
    }
    Ok(())
}

/// `SUBPROOF(m, D[start..start+len], whole)` of RFC 6962 section 2.1.2, as in
/// `merkle::subproof`.
fn subproof(
    m: u64,
    start: u64,
    len: u64,
    whole: bool,
    node: &mut impl FnMut(NodeId) -> Option<Hash>,
    out: &mut Vec<Hash>,
) -> Result<(), ProofError> {
    if m == len {
        if !whole {
            out.push(range_root(start, len, node)?);
        }
        return Ok(());
    }
    let k = split_size(len);
    if m <= k {
        subproof(m, start, k, whole, node, out)?;
        out.push(range_root(start + k, len - k, node)?);
    } else {
        subproof(m - k, start + k, len - k, false, node, out)?;
        out.push(range_root(start, k, node)?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::HashMap;

    use super::*;
    use crate::merkle::{self, leaf_hash, Frontier};

    fn test_leaves(n: usize) -> Vec<Hash> {
        (0..n).map(|i| leaf_hash(format!("record {i}").as_bytes())).collect()
    }

    /// What a store holds after appending `leaves` one by one: each leaf, and the roots its
    /// append completed, computed only from the siblings the append reads.
    fn stored_tree(leaves: &[Hash]) -> HashMap<NodeId, Hash> {
        let mut stored = HashMap::new();
        for (index, leaf) in (0u64..).zip(leaves) {
            let siblings: Vec<Hash> = append_siblings(index).iter().map(|id| stored[id]).collect();
            stored.insert(NodeId::leaf(index), *leaf);
            for (id, root) in completed_by(index).zip(completed_roots(*leaf, &siblings)) {
                stored.insert(id, root);
            }
        }
        stored
    }

    /// A node source that answers only the nodes `allowed` names, so a computation that reads
    /// more than it planned fails.
    fn source<'a>(stored: &'a HashMap<NodeId, Hash>, allowed: &'a [NodeId]) -> impl FnMut(NodeId) -> Option<Hash> + 'a {
        move |id| if allowed.contains(&id) { stored.get(&id).copied() } else { None }
    }

    /// A small deterministic generator, so the "random" indices are the same on every run.
    struct SplitMix(u64);

    impl SplitMix {
        fn below(&mut self, bound: u64) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d1_049b_1331_11eb);
            (z ^ (z >> 31)) % bound
        }
    }

    #[test]
    fn stored_nodes_are_the_roots_of_their_leaves() {
        let leaves = test_leaves(300);
        let stored = stored_tree(&leaves);
        for (id, hash) in &stored {
            let first = (id.index << id.level) as usize;
            let last = id.last_leaf() as usize;
            assert_eq!(*hash, merkle::root(&leaves[first..=last]), "{id:?}");
        }
        // One interior node per leaf on average: n - popcount(n) of them.
        assert_eq!(stored.len(), 300 + 300 - 300u64.count_ones() as usize);
    }

    #[test]
    fn the_frontier_reports_the_nodes_an_append_completes() {
        let leaves = test_leaves(130);
        let stored = stored_tree(&leaves);
        let mut frontier = Frontier::new();
        for (index, leaf) in (0u64..).zip(&leaves) {
            let mut reported = Vec::new();
            frontier.push_completing(*leaf, |node| reported.push(node));
            let expected: Vec<Hash> = completed_by(index).map(|id| stored[&id]).collect();
            assert_eq!(reported, expected, "leaf {index}");
            assert!(completed_by(index).all(|id| id.last_leaf() == index));
        }
    }

    #[test]
    fn proofs_from_stored_nodes_equal_proofs_from_all_leaves() {
        let leaves = test_leaves(300);
        let stored = stored_tree(&leaves);
        let mut random = SplitMix(16);
        for size in 1..=300u64 {
            let tree = &leaves[..size as usize];
            let planned = root_nodes(size);
            assert!(planned.len() <= 64);
            assert_eq!(root_from(size, &mut source(&stored, &planned)).unwrap(), merkle::root(tree), "root {size}");

            // Every index of the small trees, random ones (and the edges) of the larger.
            let indices: Vec<u64> = if size <= 40 {
                (0..size).collect()
            } else {
                let mut some: Vec<u64> = (0..8).map(|_| random.below(size)).collect();
                some.extend([0, size / 2, size - 1]);
                some
            };
            for index in indices {
                let planned = inclusion_nodes(size, index).unwrap();
                assert!(planned.len() <= 2 * 64, "{} nodes for {index} in {size}", planned.len());
                let proof = inclusion_proof_from(size, index, &mut source(&stored, &planned)).unwrap();
                assert_eq!(proof, merkle::inclusion_proof(tree, index).unwrap(), "inclusion {index} in {size}");
            }

            let olds: Vec<u64> = if size <= 40 {
                (1..=size).collect()
            } else {
                let mut some: Vec<u64> = (0..8).map(|_| 1 + random.below(size)).collect();
                some.extend([1, size / 2, size - 1, size]);
                some
            };
            for old_size in olds {
                let planned = consistency_nodes(old_size, size).unwrap();
                let proof = consistency_proof_from(old_size, size, &mut source(&stored, &planned)).unwrap();
                assert_eq!(
                    proof,
                    merkle::consistency_proof(tree, old_size).unwrap(),
                    "consistency {old_size} -> {size}"
                );
            }
        }
        assert_eq!(root_from(0, &mut source(&stored, &[])).unwrap(), merkle::empty_root());
    }

    #[test]
    fn proofs_read_logarithmically_many_nodes() {
        // A tree of 2^40 + 12345 leaves: far too large to hash, cheap to plan.
        let size = (1u64 << 40) + 12_345;
        assert!(root_nodes(size).len() <= 41);
        for index in [0, 1, size / 3, size - 2, size - 1] {
            assert!(inclusion_nodes(size, index).unwrap().len() <= 2 * 41 + 1);
        }
        for old_size in [1, 7, size / 2, size - 1] {
            assert!(consistency_nodes(old_size, size).unwrap().len() <= 2 * 41 + 1);
        }
    }

    #[test]
    fn missing_nodes_and_bad_requests_are_errors() {
        let leaves = test_leaves(9);
        let stored = stored_tree(&leaves);
        assert_eq!(root_from(9, &mut source(&stored, &[])), Err(ProofError::MissingNode { level: 3, index: 0 }));
        assert_eq!(inclusion_nodes(9, 9), Err(ProofError::IndexOutOfRange { index: 9, size: 9 }));
        assert_eq!(consistency_nodes(0, 9), Err(ProofError::SizeOutOfRange { old_size: 0, new_size: 9 }));
        assert_eq!(consistency_nodes(10, 9), Err(ProofError::SizeOutOfRange { old_size: 10, new_size: 9 }));
        assert!(consistency_nodes(9, 9).unwrap().is_empty());
    }
}
