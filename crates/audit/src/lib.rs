//! The maths and formats of the factory's tamper-evident audit log.
//!
//! Every governed action is recorded as an [`AuditRecord`] whose canonical bytes are a leaf of
//! an RFC 6962 Merkle tree. The factory periodically signs the tree's size and root as a
//! [`Checkpoint`] (C2SP tlog-checkpoint over C2SP signed-note, Ed25519), and [`verify_log`]
//! replays a stored log offline to show it is still the history those checkpoints committed to.
//!
//! The crate is pure: no I/O, no clocks, no randomness (callers pass key seeds in), so the same
//! code runs in the server, the CLI verifier and the tests. Storage lives in the metadata store,
//! which calls into this crate.
//!
//! * [`merkle`]: tree hashes, inclusion and consistency proofs, and the streaming [`Frontier`];
//! * [`record`]: the canonical record encoding and the details digest;
//! * [`subtree`]: roots and proofs in O(log n) from the stored roots of perfect subtrees;
//! * [`checkpoint`]: signing and verifying checkpoints, and the file format they are published in;
//! * [`verify`]: the offline log verifier.

pub mod checkpoint;
pub mod merkle;
pub mod record;
pub mod subtree;
pub mod verify;

pub use checkpoint::{Checkpoint, CheckpointError, NoteSigner, NoteVerifier, PublishedCheckpoint};
pub use merkle::{Frontier, Hash, ProofError};
pub use record::{details_digest, utc_millis, AuditRecord, Decision, RecordError};
pub use verify::{
    verify_log, verify_log_against, Expectations, StoredRecord, TrustedCheckpoint, VerifyError, VerifyFailure,
    VerifyReport,
};
