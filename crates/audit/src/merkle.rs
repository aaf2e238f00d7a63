//! The Merkle tree hash of the audit log, its proofs and their verification.
//!
//! The factory's audit log is an append-only sequence of records; a single 32-byte root commits
//! to every record and to their order. We use the Certificate Transparency construction of
//! RFC 6962 section 2.1 (restated in RFC 9162 section 2.1) rather than inventing one, because it
//! is well analysed, its proofs are small (O(log n) hashes), and independent tooling in other
//! languages can check our roots and proofs:
//!
//! * an inclusion proof shows that a given record sits at a given index of a tree of a given size;
//! * a consistency proof shows that the tree at an older size is a prefix of the tree now, so the
//!   log was only appended to between two signed checkpoints;
//! * [`Frontier`] recomputes the root while streaming the records, keeping only the roots of the
//!   perfect subtrees on the right edge of the tree, so a verifier reading millions of records
//!   needs O(log n) memory.
//!
//! The domain-separation prefixes (0x00 for leaves, 0x01 for interior nodes) keep a leaf from
//! ever being reinterpreted as a node, which is what stops second-preimage tricks on the tree.

use sha2::{Digest, Sha256};

/// A SHA-256 output: a leaf hash, an interior node hash or a tree root.
pub type Hash = [u8; 32];

/// Why a proof could not be produced or did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// The leaf index does not name a leaf of a tree of this size.
    #[error("leaf index {index} is outside a tree of size {size}")]
    IndexOutOfRange {
        /// The requested leaf index.
        index: u64,
        /// The tree size it was checked against.
        size: u64,
    },
    /// The old tree size of a consistency proof is zero or larger than the new one.
    #[error("old tree size {old_size} is not between 1 and the new size {new_size}")]
    SizeOutOfRange {
        /// The older (smaller) tree size.
        old_size: u64,
        /// The newer (larger) tree size.
        new_size: u64,
    },
    /// The proof has hashes left over once the path reaches the root.
    #[error("proof has more hashes than the tree sizes allow")]
    ProofTooLong,
    /// The proof ran out before the path reached the root.
    #[error("proof has fewer hashes than the tree sizes require")]
    ProofTooShort,
    /// The proof is well formed but leads to another root.
    #[error("proof does not lead to the expected root")]
    RootMismatch,
    /// A stored subtree root that a root or proof needs was not supplied (see [`crate::subtree`]).
    #[error("the stored tree lacks the root of the subtree at level {level}, index {index}")]
    MissingNode {
        /// The subtree's height: 0 for a leaf.
        level: u32,
        /// Its position among the subtrees of that height, from the left.
        index: u64,
    },
    /// A consistency proof leads to another root for the old tree.
    #[error("proof does not lead to the expected old root")]
    OldRootMismatch,
    /// A consistency proof leads to another root for the new tree.
    #[error("proof does not lead to the expected new root")]
    NewRootMismatch,
}

/// The hash of one leaf: SHA-256(0x00 || data), RFC 6962 section 2.1.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([0x00]);
    hasher.update(data);
    hasher.finalize().into()
}

/// The hash of an interior node: SHA-256(0x01 || left || right), RFC 6962 section 2.1.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([0x01]);
    hasher.update(left);
    hasher.update(right);
    hasher.finalize().into()
}

/// The root of the empty tree: MTH({}) = SHA-256() with no input, RFC 6962 section 2.1.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// The largest power of two strictly below `n`, for `n >= 2`: the size of the left subtree in
/// the recursive definitions of RFC 6962 section 2.1.
fn split_point(n: usize) -> usize {
    debug_assert!(n >= 2);
    1 << (usize::BITS - 1 - (n - 1).leading_zeros())
}

/// [`split_point`] over tree sizes rather than slice lengths, for trees that are not in memory.
pub(crate) fn split_size(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1 << (u64::BITS - 1 - (n - 1).leading_zeros())
}

/// The Merkle tree hash `MTH(D[n])` over already hashed leaves, RFC 6962 section 2.1.
///
/// The recursion depth is the height of the tree, about log2(n), so it cannot overflow the stack.
pub fn root(leaves: &[Hash]) -> Hash {
    match leaves {
        [] => empty_root(),
        [only] => *only,
        _ => {
            let k = split_point(leaves.len());
            node_hash(&root(&leaves[..k]), &root(&leaves[k..]))
        }
    }
}

/// The audit path `PATH(m, D[n])` of leaf `index` in the tree over all of `leaves`,
/// RFC 6962 section 2.1.1: the sibling hashes from the leaf up to the root, nearest first.
pub fn inclusion_proof(leaves: &[Hash], index: u64) -> Result<Vec<Hash>, ProofError> {
    let size = leaves.len() as u64;
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let mut proof = Vec::new();
    // `index < leaves.len()`, so the conversion to usize is lossless.
    audit_path(index as usize, leaves, &mut proof);
    Ok(proof)
}

/// `PATH(m, D[n])` of RFC 6962 section 2.1.1, appending to `out`: the path inside the subtree that
/// holds leaf `m` comes first, then the root of the other subtree.
fn audit_path(m: usize, leaves: &[Hash], out: &mut Vec<Hash>) {
    if leaves.len() <= 1 {
        return;
    }
    let k = split_point(leaves.len());
    if m < k {
        audit_path(m, &leaves[..k], out);
        out.push(root(&leaves[k..]));
    } else {
        audit_path(m - k, &leaves[k..], out);
        out.push(root(&leaves[..k]));
    }
}

/// The consistency proof `PROOF(m, D[n])` between the tree over the first `old_size` leaves and
/// the tree over all of `leaves`, RFC 6962 section 2.1.2. Equal sizes give the empty proof.
pub fn consistency_proof(leaves: &[Hash], old_size: u64) -> Result<Vec<Hash>, ProofError> {
    let new_size = leaves.len() as u64;
    if old_size == 0 || old_size > new_size {
        return Err(ProofError::SizeOutOfRange { old_size, new_size });
    }
    let mut proof = Vec::new();
    // `old_size <= leaves.len()`, so the conversion to usize is lossless.
    subproof(old_size as usize, leaves, true, &mut proof);
    Ok(proof)
}

/// `SUBPROOF(m, D[n], b)` of RFC 6962 section 2.1.2, appending to `out`. `whole` is the flag b:
/// true while the old tree is still the whole of the subtree's left edge, in which case its root
/// is already known to the verifier and is left out.
fn subproof(m: usize, leaves: &[Hash], whole: bool, out: &mut Vec<Hash>) {
    let n = leaves.len();
    if m == n {
        if !whole {
            out.push(root(leaves));
        }
        return;
    }
    // Here 0 < m < n, so n >= 2 and the split is defined.
    let k = split_point(n);
    if m <= k {
        subproof(m, &leaves[..k], whole, out);
        out.push(root(&leaves[k..]));
    } else {
        subproof(m - k, &leaves[k..], false, out);
        out.push(root(&leaves[..k]));
    }
}

/// Checks that `leaf` is the leaf at `index` of the tree of `size` leaves whose root is `root`,
/// following RFC 9162 section 2.1.3.2 step by step.
///
/// Note that the proof binds the position inside the tree shape, not the size as such: for a
/// few pairs of sizes the two trees have the same shape along this path, and the proof then
/// verifies against the same root under either size. A root is only meaningful together with
/// its size, which is why checkpoints sign both.
pub fn verify_inclusion(leaf: &Hash, index: u64, size: u64, proof: &[Hash], root: &Hash) -> Result<(), ProofError> {
    // Step 1.
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    // Step 2: fn walks the leaf's position up the tree, sn the last leaf's position.
    let mut f_n = index;
    let mut s_n = size - 1;
    // Step 3.
    let mut r = *leaf;
    // Step 4.
    for p in proof {
        // 4a: the path already reached the root.
        if s_n == 0 {
            return Err(ProofError::ProofTooLong);
        }
        if f_n & 1 == 1 || f_n == s_n {
            // 4b: our node is a right child, or the last node of its level with no right
            // sibling, so p is the left sibling.
            r = node_hash(p, &r);
            // Skip the levels where our node is the lone rightmost node and is promoted
            // unchanged (the "split at the largest power of two" of section 2.1).
            while f_n & 1 == 0 && f_n != 0 {
                f_n >>= 1;
                s_n >>= 1;
            }
        } else {
            // Otherwise p is the right sibling.
            r = node_hash(&r, p);
        }
        // 4c.
        f_n >>= 1;
        s_n >>= 1;
    }
    // Step 5.
    if s_n != 0 {
        return Err(ProofError::ProofTooShort);
    }
    if r != *root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

/// Checks that the tree of `old_size` leaves with root `old_root` is a prefix of the tree of
/// `new_size` leaves with root `new_root`, following RFC 9162 section 2.1.4.2.
///
/// The RFC algorithm covers `0 < old_size < new_size`. The edge cases are settled here: equal
/// sizes need an empty proof and equal roots, and the empty tree (whose root is
/// [`empty_root`]) is a prefix of every tree with an empty proof.
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    if old_size > new_size {
        return Err(ProofError::SizeOutOfRange { old_size, new_size });
    }
    if old_size == 0 {
        if !proof.is_empty() {
            return Err(ProofError::ProofTooLong);
        }
        if *old_root != empty_root() {
            return Err(ProofError::OldRootMismatch);
        }
        return Ok(());
    }
    if old_size == new_size {
        if !proof.is_empty() {
            return Err(ProofError::ProofTooLong);
        }
        if old_root != new_root {
            return Err(ProofError::NewRootMismatch);
        }
        return Ok(());
    }
    // Step 1.
    let Some((first, rest)) = proof.split_first() else {
        return Err(ProofError::ProofTooShort);
    };
    // Step 2: when the old tree is a perfect subtree its root is not in the proof (SUBPROOF
    // leaves it out), so it seeds the walk; otherwise the first proof hash does.
    let (seed, rest) = if old_size.is_power_of_two() { (*old_root, proof) } else { (*first, rest) };
    // Step 3.
    let mut f_n = old_size - 1;
    let mut s_n = new_size - 1;
    // Step 4: climb past the levels where the old tree's last node is a right child, since the
    // seed is already the root of that whole subtree.
    while f_n & 1 == 1 {
        f_n >>= 1;
        s_n >>= 1;
    }
    // Step 5.
    let mut f_r = seed;
    let mut s_r = seed;
    // Step 6.
    for c in rest {
        // 6a.
        if s_n == 0 {
            return Err(ProofError::ProofTooLong);
        }
        if f_n & 1 == 1 || f_n == s_n {
            // 6b: c is a left sibling shared by both trees.
            f_r = node_hash(c, &f_r);
            s_r = node_hash(c, &s_r);
            while f_n & 1 == 0 && f_n != 0 {
                f_n >>= 1;
                s_n >>= 1;
            }
        } else {
            // Otherwise c lies only in the new tree, to the right.
            s_r = node_hash(&s_r, c);
        }
        // 6c.
        f_n >>= 1;
        s_n >>= 1;
    }
    // Step 7.
    if s_n != 0 {
        return Err(ProofError::ProofTooShort);
    }
    if f_r != *old_root {
        return Err(ProofError::OldRootMismatch);
    }
    if s_r != *new_root {
        return Err(ProofError::NewRootMismatch);
    }
    Ok(())
}

/// The right edge of a growing tree: the roots of its perfect subtrees, one for each set bit of
/// the size, largest (leftmost) first.
///
/// Appending a leaf merges equal-sized subtrees like a binary counter carrying, so memory stays
/// at popcount(size) <= 64 hashes. Folding the stored roots from the right reproduces MTH
/// exactly, because MTH splits off the largest power of two on the left at every level
/// (RFC 6962 section 2.1).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    nodes: Vec<Hash>,
}

impl Frontier {
    /// The frontier of the empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends one leaf hash.
    pub fn push(&mut self, leaf: Hash) {
        self.push_completing(leaf, |_| {});
    }

    /// Appends one leaf hash and hands `completed` the root of every perfect subtree this leaf
    /// completes, smallest (level 1) first. These are exactly the interior nodes the store keeps
    /// beside the leaf ([`crate::subtree`]), so a verifier streaming the log can recompute them.
    pub fn push_completing(&mut self, leaf: Hash, mut completed: impl FnMut(Hash)) {
        // Each trailing one bit of the old size is a perfect subtree of the same size as the one
        // being built, which it absorbs as its left half.
        let merges = self.size.trailing_ones() as usize;
        let keep = self.nodes.len().saturating_sub(merges);
        let mut node = leaf;
        for left in self.nodes.drain(keep..).rev() {
            node = node_hash(&left, &node);
            completed(node);
        }
        self.nodes.push(node);
        self.size += 1;
    }

    /// The number of leaves appended so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The root MTH of the leaves appended so far.
    pub fn root(&self) -> Hash {
        let mut from_right = self.nodes.iter().rev();
        match from_right.next() {
            None => empty_root(),
            Some(last) => from_right.fold(*last, |right, left| node_hash(left, &right)),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn h(hex_text: &str) -> Hash {
        hex::decode(hex_text).unwrap().try_into().unwrap()
    }

    fn hs(hex_texts: &[&str]) -> Vec<Hash> {
        hex_texts.iter().map(|t| h(t)).collect()
    }

    /// The leaf inputs of the Certificate Transparency reference tests.
    fn ct_leaves() -> Vec<Hash> {
        let inputs: [&[u8]; 8] = [
            b"",
            b"\x00",
            b"\x10",
            b"\x20\x21",
            b"\x30\x31",
            b"\x40\x41\x42\x43",
            b"\x50\x51\x52\x53\x54\x55\x56\x57",
            b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
        ];
        inputs.iter().map(|d| leaf_hash(d)).collect()
    }

    /// MTH of the first n CT leaves, n = 0..=8.
    const CT_ROOTS: [&str; 9] = [
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    fn flip(hash: &Hash, byte: usize) -> Hash {
        let mut out = *hash;
        out[byte % 32] ^= 0x01;
        out
    }

    fn test_leaves(n: usize) -> Vec<Hash> {
        (0..n).map(|i| leaf_hash(format!("leaf {i}").as_bytes())).collect()
    }

    #[test]
    fn empty_root_is_sha256_of_nothing() {
        assert_eq!(empty_root(), h(CT_ROOTS[0]));
        assert_eq!(root(&[]), empty_root());
        assert_eq!(Frontier::new().root(), empty_root());
    }

    #[test]
    fn leaf_and_node_hashes_are_prefixed() {
        // SHA-256 of the single byte 0x00, the leaf hash of the empty string.
        assert_eq!(leaf_hash(b""), h(CT_ROOTS[1]));
        let mut concatenated = vec![0x01];
        concatenated.extend_from_slice(&leaf_hash(b""));
        concatenated.extend_from_slice(&leaf_hash(b"\x00"));
        let expected: Hash = Sha256::digest(&concatenated).into();
        assert_eq!(node_hash(&leaf_hash(b""), &leaf_hash(b"\x00")), expected);
    }

    #[test]
    fn ct_reference_roots() {
        let leaves = ct_leaves();
        let mut frontier = Frontier::new();
        for (n, want) in CT_ROOTS.iter().enumerate() {
            assert_eq!(root(&leaves[..n]), h(want), "root of {n} leaves");
            assert_eq!(frontier.root(), h(want), "frontier root of {n} leaves");
            assert_eq!(frontier.size(), n as u64);
            if let Some(leaf) = leaves.get(n) {
                frontier.push(*leaf);
            }
        }
    }

    #[test]
    fn ct_reference_inclusion_proofs() {
        let leaves = ct_leaves();
        let cases: [(u64, usize, Vec<Hash>); 5] = [
            (0, 1, vec![]),
            (
                0,
                8,
                hs(&[
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ]),
            ),
            (
                5,
                8,
                hs(&[
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ]),
            ),
            (2, 3, hs(&["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"])),
            (
                1,
                5,
                hs(&[
                    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                ]),
            ),
        ];
        for (index, size, want) in cases {
            let proof = inclusion_proof(&leaves[..size], index).unwrap();
            assert_eq!(proof, want, "path of {index} in {size}");
            verify_inclusion(&leaves[index as usize], index, size as u64, &proof, &h(CT_ROOTS[size])).unwrap();
        }
    }

    #[test]
    fn ct_reference_consistency_proofs() {
        let leaves = ct_leaves();
        let cases: [(u64, usize, Vec<Hash>); 4] = [
            (1, 1, vec![]),
            (
                1,
                8,
                hs(&[
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ]),
            ),
            (
                6,
                8,
                hs(&[
                    "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ]),
            ),
            (
                2,
                5,
                hs(&[
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                ]),
            ),
        ];
        for (old_size, new_size, want) in cases {
            let proof = consistency_proof(&leaves[..new_size], old_size).unwrap();
            assert_eq!(proof, want, "consistency {old_size} -> {new_size}");
            verify_consistency(
                old_size,
                new_size as u64,
                &h(CT_ROOTS[old_size as usize]),
                &h(CT_ROOTS[new_size]),
                &proof,
            )
            .unwrap();
        }
    }

    #[test]
    fn frontier_agrees_with_root_at_every_size() {
        let leaves = test_leaves(300);
        let mut frontier = Frontier::new();
        for n in 0..=leaves.len() {
            assert_eq!(frontier.size(), n as u64);
            assert_eq!(frontier.root(), root(&leaves[..n]), "size {n}");
            assert!(frontier.nodes.len() == (n as u64).count_ones() as usize);
            if let Some(leaf) = leaves.get(n) {
                frontier.push(*leaf);
            }
        }
    }

    #[test]
    fn proof_requests_out_of_range_are_refused() {
        let leaves = test_leaves(5);
        assert_eq!(inclusion_proof(&leaves, 5), Err(ProofError::IndexOutOfRange { index: 5, size: 5 }));
        assert!(inclusion_proof(&[], 0).is_err());
        assert_eq!(consistency_proof(&leaves, 0), Err(ProofError::SizeOutOfRange { old_size: 0, new_size: 5 }));
        assert!(consistency_proof(&leaves, 6).is_err());
        assert!(verify_inclusion(&leaves[0], 0, 0, &[], &empty_root()).is_err());
        assert!(verify_consistency(6, 5, &root(&leaves), &root(&leaves), &[]).is_err());
    }

    #[test]
    fn every_inclusion_proof_round_trips_and_tampering_fails() {
        let all = test_leaves(43);
        for n in 1..=40usize {
            let leaves = &all[..n];
            let tree_root = root(leaves);
            let size = n as u64;
            for i in 0..n {
                let index = i as u64;
                let leaf = &leaves[i];
                let proof = inclusion_proof(leaves, index).unwrap();
                assert_eq!(verify_inclusion(leaf, index, size, &proof, &tree_root), Ok(()), "leaf {i} of {n}");

                // Any single hash flipped.
                for j in 0..proof.len() {
                    let mut bad = proof.clone();
                    bad[j] = flip(&bad[j], j);
                    assert!(verify_inclusion(leaf, index, size, &bad, &tree_root).is_err());
                }
                // A shortened or lengthened proof.
                if let Some((_, shorter)) = proof.split_last() {
                    assert!(verify_inclusion(leaf, index, size, shorter, &tree_root).is_err());
                }
                let mut longer = proof.clone();
                longer.push(tree_root);
                assert!(verify_inclusion(leaf, index, size, &longer, &tree_root).is_err());
                // Another leaf, or the wrong root.
                let other_leaf = &leaves[(i + 1) % n];
                if n > 1 {
                    assert!(verify_inclusion(other_leaf, index, size, &proof, &tree_root).is_err());
                }
                assert!(verify_inclusion(leaf, index, size, &proof, &flip(&tree_root, i)).is_err());
                assert!(verify_inclusion(leaf, index, size, &proof, &root(&leaves[..n - 1])).is_err());
                // Every other index.
                for wrong in 0..size + 2 {
                    if wrong != index {
                        assert!(
                            verify_inclusion(leaf, wrong, size, &proof, &tree_root).is_err(),
                            "leaf {i} of {n} also proved at {wrong}"
                        );
                    }
                }
                // Other sizes: the proof never shows inclusion in the tree of that size, and
                // against this tree's root it fails whenever the path shape differs (where the
                // shape is the same the root alone cannot tell the sizes apart; checkpoints sign
                // the size for that reason).
                for wrong_size in (index + 1)..=(size + 3) {
                    if wrong_size == size {
                        continue;
                    }
                    let other_tree = &all[..wrong_size as usize];
                    assert!(
                        verify_inclusion(leaf, index, wrong_size, &proof, &root(other_tree)).is_err(),
                        "leaf {i} of {n} proved in size {wrong_size}"
                    );
                    let other_shape = inclusion_proof(other_tree, index).unwrap();
                    if other_shape.len() != proof.len() {
                        assert!(verify_inclusion(leaf, index, wrong_size, &proof, &tree_root).is_err());
                    }
                }
            }
        }
    }

    #[test]
    fn every_consistency_proof_round_trips_and_tampering_fails() {
        let all = test_leaves(44);
        let roots: Vec<Hash> = (0..=all.len()).map(|n| root(&all[..n])).collect();
        for n in 1..=40usize {
            let leaves = &all[..n];
            let new_size = n as u64;
            let new_root = roots[n];
            for m in 1..=n {
                let old_size = m as u64;
                let old_root = roots[m];
                let proof = consistency_proof(leaves, old_size).unwrap();
                assert_eq!(
                    verify_consistency(old_size, new_size, &old_root, &new_root, &proof),
                    Ok(()),
                    "consistency {m} -> {n}"
                );
                if m == n {
                    assert!(proof.is_empty());
                }

                for j in 0..proof.len() {
                    let mut bad = proof.clone();
                    bad[j] = flip(&bad[j], j);
                    assert!(
                        verify_consistency(old_size, new_size, &old_root, &new_root, &bad).is_err(),
                        "flipped hash {j} of consistency {m} -> {n}"
                    );
                }
                if let Some((_, shorter)) = proof.split_last() {
                    assert!(verify_consistency(old_size, new_size, &old_root, &new_root, shorter).is_err());
                }
                let mut longer = proof.clone();
                longer.push(new_root);
                assert!(verify_consistency(old_size, new_size, &old_root, &new_root, &longer).is_err());
                assert!(verify_consistency(old_size, new_size, &flip(&old_root, m), &new_root, &proof).is_err());
                assert!(verify_consistency(old_size, new_size, &old_root, &flip(&new_root, m), &proof).is_err());
                // Another old size, with that tree's true root (size 0 is left out: the empty
                // tree is a prefix of every tree, with the empty proof).
                for wrong_old in 1..=new_size {
                    if wrong_old != old_size {
                        assert!(
                            verify_consistency(wrong_old, new_size, &roots[wrong_old as usize], &new_root, &proof)
                                .is_err(),
                            "consistency {m} -> {n} passed as {wrong_old} -> {n}"
                        );
                    }
                }
                // Another new size, with that tree's true root.
                for wrong_new in old_size..=new_size + 3 {
                    if wrong_new != new_size {
                        assert!(
                            verify_consistency(old_size, wrong_new, &old_root, &roots[wrong_new as usize], &proof)
                                .is_err(),
                            "consistency {m} -> {n} passed as {m} -> {wrong_new}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn empty_tree_is_consistent_with_every_tree() {
        let leaves = test_leaves(3);
        assert_eq!(verify_consistency(0, 3, &empty_root(), &root(&leaves), &[]), Ok(()));
        assert!(verify_consistency(0, 3, &leaves[0], &root(&leaves), &[]).is_err());
        assert!(verify_consistency(0, 3, &empty_root(), &root(&leaves), &[leaves[0]]).is_err());
    }
}
