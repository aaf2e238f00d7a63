-- The audit log's proof index: beside each record, the roots of the perfect Merkle subtrees
-- that appending it completed (32 bytes each, smallest first; NULL or empty when it completed
-- none), so roots and proofs read O(log n) rows instead of hashing every leaf. Derived from
-- the leaves alone: `factory audit verify` recomputes and checks it. Existing logs are indexed
-- by the migration itself (migrations.rs), in the same transaction as this column.

ALTER TABLE audit_records ADD COLUMN subtree_roots {blob}
