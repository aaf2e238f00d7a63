//! The offline verifier behind `factory audit verify`.
//!
//! The metadata store keeps each record's bytes and leaf hash in SQL, where anyone with write
//! access to the database could edit, delete, reorder or truncate rows. This module replays the
//! stored log and says whether it is still the history the signed checkpoints committed to:
//!
//! * positions are contiguous from 0, so a removed or reordered row shows up where it happened;
//! * every record is canonical and names its own position, so rows cannot be relabelled;
//! * every stored leaf hash is the hash of its record bytes, and the stored subtree roots
//!   (the proof index of [`crate::subtree`]) are the ones the leaves give;
//! * every checkpoint is signed by the audit key and its root equals the root recomputed from
//!   the records at its size, so rewriting history (even with recomputed hashes) is caught;
//! * no checkpoint covers more records than are present, and the count matches the store's
//!   head counter, so cutting off the tail is caught;
//! * checkpoints kept outside the database ([`TrustedCheckpoint`], a witness's copies of the
//!   published ones) are held to the same two rules, so a log rewritten together with its
//!   stored checkpoints is caught by any copy made before the rewrite;
//! * the newest checkpoint is not stale: the records it does not cover span no longer than the
//!   checkpointer could have left them unsigned, so deleting the later checkpoints shows.
//!
//! Records are streamed through a [`Frontier`], never collected, so memory stays O(log n) in the
//! number of records (plus the checkpoints themselves).

use std::fmt;
use std::time::Duration;

use crate::checkpoint::{Checkpoint, CheckpointError, NoteVerifier};
use crate::merkle::{leaf_hash, Frontier, Hash};
use crate::record::{utc_millis, AuditRecord, RecordError};

/// One row of the stored log, exactly as read from the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    /// The stored position column.
    pub index: u64,
    /// The stored canonical record bytes (the leaf data).
    pub record: Vec<u8>,
    /// The stored leaf hash.
    pub leaf_hash: Vec<u8>,
    /// The stored roots of the subtrees this record completed, 32 bytes each, smallest first
    /// (an absent value reads as empty); `None` when the store predates them, and then they
    /// are not checked.
    pub subtree_roots: Option<Vec<u8>>,
}

/// A checkpoint handed to the verifier from outside the database: a copy of a published one,
/// kept by a witness. The database may have been rewritten; this cannot have been.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedCheckpoint {
    /// Where it came from (a file name), to name it in messages.
    pub from: String,
    /// The signed note.
    pub note: String,
}

/// Everything a stored log is checked against besides its own rows.
#[derive(Debug, Clone, Copy)]
pub struct Expectations<'a> {
    /// The store's head counter.
    pub expected_size: u64,
    /// The signed notes stored in the database, in any order.
    pub stored_checkpoints: &'a [String],
    /// Checkpoints from outside the database, in any order.
    pub trusted_checkpoints: &'a [TrustedCheckpoint],
    /// The longest span of records the newest checkpoint may leave uncovered, from the first
    /// uncovered record's time to the last record's; `None` skips the check. See
    /// [`max_uncovered_span`] for the value that matches a checkpoint interval.
    pub max_uncovered_span: Option<Duration>,
}

/// What a successful verification covered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// The number of records verified.
    pub records: u64,
    /// The number of signed checkpoints checked against the records, trusted ones included.
    pub checkpoints_verified: usize,
    /// How many of those came from outside the database.
    pub trusted_checkpoints_verified: usize,
    /// The Merkle root of all the records.
    pub root: Hash,
}

/// The first problem found, and the record it concerns when there is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyError {
    /// The index of the first bad (or missing) record, when the problem is tied to one.
    pub record: Option<u64>,
    /// What is wrong.
    pub failure: VerifyFailure,
}

/// What is wrong with the log. Messages are written to follow "record N: ".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyFailure {
    /// The row at this position carries another index: rows were removed, duplicated or
    /// reordered.
    #[error("found the row stored as index {stored} in its place (records removed or reordered)")]
    OutOfPlace {
        /// The index column of the row found at this position.
        stored: u64,
    },
    /// The stored leaf hash is not 32 bytes long.
    #[error("stored leaf hash is {len} bytes, not 32")]
    LeafHashLength {
        /// Its length.
        len: usize,
    },
    /// The stored leaf hash is not the hash of the stored record bytes.
    #[error("leaf hash does not match record bytes")]
    LeafHashMismatch,
    /// The stored subtree roots are not the ones the leaves give.
    #[error("stored subtree roots do not match the ones recomputed from the leaves (the proof index is damaged)")]
    SubtreeRootsMismatch,
    /// The record bytes are not a canonical audit record.
    #[error("{0}")]
    Record(RecordError),
    /// The record's own index field names another position.
    #[error("record body says it is record {claimed}")]
    RecordIndex {
        /// The index written inside the record.
        claimed: u64,
    },
    /// The record's time is not an RFC 3339 UTC time, so its age cannot be judged.
    #[error("record time {time:?} is not an RFC 3339 UTC time")]
    RecordTime {
        /// The time as written.
        time: String,
    },
    /// A checkpoint's signature did not verify.
    #[error("checkpoint {position} (in the order given) does not verify: {error}")]
    CheckpointSignature {
        /// Its position in the list of checkpoints given.
        position: usize,
        /// Why it was refused.
        error: CheckpointError,
    },
    /// A correctly signed checkpoint commits to another history than the stored records.
    #[error("signed checkpoint for size {size} does not match the root recomputed from the records")]
    CheckpointRoot {
        /// The checkpoint's size.
        size: u64,
    },
    /// A correctly signed checkpoint covers records that are no longer there.
    #[error("missing, though a signed checkpoint for size {size} covers it (log truncated)")]
    CheckpointBeyondLog {
        /// The checkpoint's size.
        size: u64,
    },
    /// A trusted checkpoint does not verify with the verifier key.
    #[error("trusted checkpoint {from} does not verify: {error}")]
    TrustedCheckpointSignature {
        /// Where it came from.
        from: String,
        /// Why it was refused.
        error: CheckpointError,
    },
    /// The log is not an extension of what a trusted checkpoint committed to.
    #[error(
        "trusted checkpoint {from} for size {size} does not match the root of the first {size} records: \
         the log is not an extension of the history it committed to (records rewritten, removed or renumbered)"
    )]
    TrustedCheckpointRoot {
        /// Where it came from.
        from: String,
        /// Its size.
        size: u64,
    },
    /// A trusted checkpoint covers more records than the log holds.
    #[error("missing, though trusted checkpoint {from} covers {size} records (log truncated or rewritten)")]
    TrustedCheckpointBeyondLog {
        /// Where it came from.
        from: String,
        /// Its size.
        size: u64,
    },
    /// Records went uncovered by any checkpoint for longer than the checkpointer allows.
    #[error(
        "not covered by any checkpoint (the newest covers {covered} records), yet the log runs on for {span_secs} s \
         after it, more than the {allowed_secs} s the checkpoint interval allows: later checkpoints were deleted, \
         or checkpoints stopped being signed"
    )]
    StaleCheckpoint {
        /// The size of the newest checkpoint.
        covered: u64,
        /// Seconds from this record's time to the last record's.
        span_secs: u64,
        /// The largest span allowed.
        allowed_secs: u64,
    },
    /// Fewer records than the head counter says.
    #[error("missing, though the head counter says the log holds {expected} records")]
    MissingTail {
        /// The head counter.
        expected: u64,
    },
    /// More records than the head counter says.
    #[error("present beyond the head counter of {expected} records")]
    BeyondHead {
        /// The head counter.
        expected: u64,
    },
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.record {
            Some(index) => write!(f, "record {index}: {}", self.failure),
            None => write!(f, "{}", self.failure),
        }
    }
}

// The failure is part of the message rather than a separate source, so error chains do not
// print it twice.
impl std::error::Error for VerifyError {}

impl VerifyError {
    fn at(record: u64, failure: VerifyFailure) -> Self {
        Self { record: Some(record), failure }
    }

    fn general(failure: VerifyFailure) -> Self {
        Self { record: None, failure }
    }
}

/// The span of uncovered records to allow for a factory that signs a checkpoint every
/// `interval`: twice the interval plus a minute.
///
/// The checkpointer signs whenever the log has grown since its last checkpoint, and it runs
/// once at start, every `interval` while the factory is up, and once at shutdown. A record is
/// therefore covered by the first run after it was appended, at most one interval later,
/// unless the factory stopped first (a crash), in which case the next start covers it before
/// any newer record is written. So while records are still being written after it, a record
/// can stay uncovered for about one interval. The second interval and the minute absorb a
/// slow signing run, a busy machine and clock steps.
pub fn max_uncovered_span(interval: Duration) -> Duration {
    interval.saturating_mul(2).saturating_add(Duration::from_secs(60))
}

/// Verifies a stored audit log against its stored checkpoints only; see [`verify_log_against`].
pub fn verify_log(
    records: impl Iterator<Item = StoredRecord>,
    expected_size: u64,
    checkpoints: &[String],
    verifier: &NoteVerifier,
) -> Result<VerifyReport, VerifyError> {
    let expectations = Expectations {
        expected_size,
        stored_checkpoints: checkpoints,
        trusted_checkpoints: &[],
        max_uncovered_span: None,
    };
    verify_log_against(records, &expectations, verifier)
}

/// A checkpoint that passed its signature check, waiting for the stream to reach its size.
struct Due {
    checkpoint: Checkpoint,
    /// Where a trusted checkpoint came from; `None` for one stored in the database.
    trusted: Option<String>,
}

impl Due {
    fn root_mismatch(&self) -> VerifyFailure {
        let size = self.checkpoint.size;
        match &self.trusted {
            Some(from) => VerifyFailure::TrustedCheckpointRoot { from: from.clone(), size },
            None => VerifyFailure::CheckpointRoot { size },
        }
    }

    fn beyond_log(&self) -> VerifyFailure {
        let size = self.checkpoint.size;
        match &self.trusted {
            Some(from) => VerifyFailure::TrustedCheckpointBeyondLog { from: from.clone(), size },
            None => VerifyFailure::CheckpointBeyondLog { size },
        }
    }
}

/// Verifies a stored audit log; see the module documentation for what is checked.
///
/// `records` must yield the stored rows in index order (as the store pages them), including
/// any that look wrong.
pub fn verify_log_against(
    records: impl Iterator<Item = StoredRecord>,
    expectations: &Expectations<'_>,
    verifier: &NoteVerifier,
) -> Result<VerifyReport, VerifyError> {
    let expected_size = expectations.expected_size;
    // Signatures first: a forged checkpoint makes the rest meaningless, and is cheap to spot.
    let mut pending = Vec::new();
    for (position, note) in expectations.stored_checkpoints.iter().enumerate() {
        let checkpoint = verifier
            .verify(note)
            .map_err(|error| VerifyError::general(VerifyFailure::CheckpointSignature { position, error }))?;
        pending.push(Due { checkpoint, trusted: None });
    }
    for trusted in expectations.trusted_checkpoints {
        let checkpoint = verifier.verify(&trusted.note).map_err(|error| {
            VerifyError::general(VerifyFailure::TrustedCheckpointSignature { from: trusted.from.clone(), error })
        })?;
        pending.push(Due { checkpoint, trusted: Some(trusted.from.clone()) });
    }
    // Sorted by size, each is checked the moment the stream reaches its size.
    pending.sort_by_key(|due| due.checkpoint.size);
    let newest_checkpoint = pending.last().map_or(0, |due| due.checkpoint.size);
    let mut due = pending.iter().peekable();

    let mut frontier = Frontier::new();
    let mut check_due = |frontier: &Frontier| -> Result<(), VerifyError> {
        let size = frontier.size();
        // Sizes only grow by one and every size is visited, so no checkpoint is skipped.
        let mut root = None;
        while let Some(checkpoint) = due.next_if(|due| due.checkpoint.size == size) {
            let root = *root.get_or_insert_with(|| frontier.root());
            if checkpoint.checkpoint.root != root {
                return Err(VerifyError::general(checkpoint.root_mismatch()));
            }
        }
        Ok(())
    };

    // The times that decide whether the newest checkpoint is stale: the first record it does
    // not cover, and the last record.
    let mut first_uncovered_time = None;
    let mut last_time = None;
    let mut completed = Vec::new();
    check_due(&frontier)?;
    for (position, stored) in (0u64..).zip(records) {
        if position >= expected_size {
            return Err(VerifyError::at(position, VerifyFailure::BeyondHead { expected: expected_size }));
        }
        if stored.index != position {
            return Err(VerifyError::at(position, VerifyFailure::OutOfPlace { stored: stored.index }));
        }
        let stored_hash: Hash =
            stored.leaf_hash.as_slice().try_into().map_err(|_| {
                VerifyError::at(position, VerifyFailure::LeafHashLength { len: stored.leaf_hash.len() })
            })?;
        if leaf_hash(&stored.record) != stored_hash {
            return Err(VerifyError::at(position, VerifyFailure::LeafHashMismatch));
        }
        let record = AuditRecord::from_canonical(&stored.record)
            .map_err(|error| VerifyError::at(position, VerifyFailure::Record(error)))?;
        if record.index != position {
            return Err(VerifyError::at(position, VerifyFailure::RecordIndex { claimed: record.index }));
        }
        completed.clear();
        frontier.push_completing(stored_hash, |node| completed.extend_from_slice(&node));
        if stored.subtree_roots.as_ref().is_some_and(|roots| *roots != completed) {
            return Err(VerifyError::at(position, VerifyFailure::SubtreeRootsMismatch));
        }
        if position == newest_checkpoint {
            first_uncovered_time = Some((position, record.time.clone()));
        }
        last_time = Some((position, record.time));
        check_due(&frontier)?;
    }

    let records = frontier.size();
    if records < expected_size {
        return Err(VerifyError::at(records, VerifyFailure::MissingTail { expected: expected_size }));
    }
    if let Some(checkpoint) = due.next() {
        return Err(VerifyError::at(records, checkpoint.beyond_log()));
    }
    if let (Some(allowed), Some(first), Some(last)) = (expectations.max_uncovered_span, first_uncovered_time, last_time)
    {
        let millis = |(index, time): (u64, String)| {
            utc_millis(&time).ok_or_else(|| VerifyError::at(index, VerifyFailure::RecordTime { time }))
        };
        let (first_index, first_millis) = (first.0, millis(first)?);
        let last_millis = millis(last)?;
        // A clock stepped back makes the span negative, which is no evidence of a gap.
        let span = Duration::from_millis(last_millis.saturating_sub(first_millis).max(0).unsigned_abs());
        if span > allowed {
            return Err(VerifyError::at(
                first_index,
                VerifyFailure::StaleCheckpoint {
                    covered: newest_checkpoint,
                    span_secs: span.as_secs(),
                    allowed_secs: allowed.as_secs(),
                },
            ));
        }
    }
    let trusted_checkpoints_verified = pending.iter().filter(|due| due.trusted.is_some()).count();
    Ok(VerifyReport {
        records,
        checkpoints_verified: pending.len(),
        trusted_checkpoints_verified,
        root: frontier.root(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use base64::engine::general_purpose::STANDARD as STANDARD_B64;
    use base64::Engine as _;

    use super::*;
    use crate::checkpoint::NoteSigner;
    use crate::merkle;
    use crate::record::{details_digest, Decision};

    const ORIGIN: &str = "factory.local/audit";

    fn record(index: u64) -> AuditRecord {
        AuditRecord {
            index,
            time: format!("2025-01-01T00:00:{:02}Z", index % 60),
            tenant: (!index.is_multiple_of(3)).then(|| "acme".to_string()),
            principal: format!("user:{}", index % 5),
            action: "dataset.read".to_string(),
            resource: format!("dataset:acme/{index}"),
            decision: if index.is_multiple_of(4) { Decision::Deny } else { Decision::Allow },
            policies: vec!["base".to_string()],
            request_id: format!("req-{index}"),
            details_digest: details_digest(&serde_json::json!({ "n": index })),
        }
    }

    fn stored(index: u64) -> StoredRecord {
        let bytes = record(index).canonical_bytes();
        StoredRecord { index, leaf_hash: merkle::leaf_hash(&bytes).to_vec(), record: bytes, subtree_roots: None }
    }

    /// A clean log of `n` records, with checkpoints at the given sizes.
    struct Log {
        rows: Vec<StoredRecord>,
        signer: NoteSigner,
        checkpoints: Vec<String>,
    }

    impl Log {
        fn new(n: u64, checkpoint_sizes: &[u64]) -> Self {
            let rows: Vec<StoredRecord> = (0..n).map(stored).collect();
            let signer = NoteSigner::generate(ORIGIN, [9; 32]).unwrap();
            let mut log = Self { rows, signer, checkpoints: vec![] };
            for &size in checkpoint_sizes {
                let note = log.sign_at(size);
                log.checkpoints.push(note);
            }
            log
        }

        fn root_at(&self, size: u64) -> Hash {
            let leaves: Vec<Hash> =
                self.rows[..size as usize].iter().map(|row| row.leaf_hash.as_slice().try_into().unwrap()).collect();
            merkle::root(&leaves)
        }

        fn sign_at(&self, size: u64) -> String {
            self.signer.sign(&Checkpoint { origin: ORIGIN.to_string(), size, root: self.root_at(size) })
        }

        fn verify(&self, expected_size: u64) -> Result<VerifyReport, VerifyError> {
            verify_log(self.rows.clone().into_iter(), expected_size, &self.checkpoints, &self.signer.verifier())
        }
    }

    /// Replaces a row's record, re-deriving its leaf hash the way an attacker with database
    /// access would.
    fn rewrite(row: &mut StoredRecord, record: &AuditRecord) {
        row.record = record.canonical_bytes();
        row.leaf_hash = merkle::leaf_hash(&row.record).to_vec();
    }

    #[test]
    fn clean_log_verifies() {
        // Checkpoints out of order, with a duplicate and the empty tree.
        let log = Log::new(40, &[17, 40, 0, 1, 17, 33]);
        let report = log.verify(40).unwrap();
        assert_eq!(
            report,
            VerifyReport {
                records: 40,
                checkpoints_verified: 6,
                trusted_checkpoints_verified: 0,
                root: log.root_at(40)
            }
        );
        let empty = Log::new(0, &[0]);
        assert_eq!(
            empty.verify(0).unwrap(),
            VerifyReport {
                records: 0,
                checkpoints_verified: 1,
                trusted_checkpoints_verified: 0,
                root: merkle::empty_root()
            }
        );
        assert_eq!(Log::new(5, &[]).verify(5).unwrap().checkpoints_verified, 0);
    }

    #[test]
    fn flipped_record_byte_is_caught() {
        let mut log = Log::new(30, &[30]);
        // Inside a string value: still decodes, but the leaf hash no longer matches.
        let pos = log.rows[17].record.windows(7).position(|w| w == b"req-17\"").unwrap();
        log.rows[17].record[pos] ^= 0x01;
        let err = log.verify(30).unwrap_err();
        assert_eq!(err.record, Some(17));
        assert_eq!(err.failure, VerifyFailure::LeafHashMismatch);
        assert_eq!(err.to_string(), "record 17: leaf hash does not match record bytes");

        // With the leaf hash recomputed, only the checkpoint can tell.
        let mut row = log.rows[17].clone();
        row.leaf_hash = merkle::leaf_hash(&row.record).to_vec();
        log.rows[17] = row;
        let err = log.verify(30).unwrap_err();
        assert_eq!(err.record, None);
        assert_eq!(err.failure, VerifyFailure::CheckpointRoot { size: 30 });

        // A flipped byte in the JSON structure is not even a record.
        let mut log = Log::new(30, &[30]);
        log.rows[3].record[0] ^= 0x01;
        log.rows[3].leaf_hash = merkle::leaf_hash(&log.rows[3].record).to_vec();
        let err = log.verify(30).unwrap_err();
        assert_eq!(err.record, Some(3));
        assert!(matches!(err.failure, VerifyFailure::Record(_)));

        // A flipped leaf hash byte.
        let mut log = Log::new(30, &[30]);
        log.rows[8].leaf_hash[31] ^= 0x80;
        assert_eq!(log.verify(30).unwrap_err(), VerifyError::at(8, VerifyFailure::LeafHashMismatch));
        log.rows[8].leaf_hash.pop();
        assert_eq!(log.verify(30).unwrap_err(), VerifyError::at(8, VerifyFailure::LeafHashLength { len: 31 }));
    }

    #[test]
    fn non_canonical_record_is_caught_even_with_matching_hash() {
        let mut log = Log::new(10, &[]);
        let mut bytes = log.rows[4].record.clone();
        bytes.push(b' ');
        log.rows[4].leaf_hash = merkle::leaf_hash(&bytes).to_vec();
        log.rows[4].record = bytes;
        assert_eq!(log.verify(10).unwrap_err(), VerifyError::at(4, VerifyFailure::Record(RecordError::NotCanonical)));
    }

    #[test]
    fn deleted_record_is_caught() {
        let mut log = Log::new(30, &[30]);
        log.rows.remove(12);
        let err = log.verify(30).unwrap_err();
        assert_eq!(err, VerifyError::at(12, VerifyFailure::OutOfPlace { stored: 13 }));
        assert!(err.to_string().starts_with("record 12: "));

        // Renumbering the index column afterwards: the records still say where they were.
        for (i, row) in log.rows.iter_mut().enumerate() {
            row.index = i as u64;
        }
        assert_eq!(log.verify(29).unwrap_err(), VerifyError::at(12, VerifyFailure::RecordIndex { claimed: 13 }));

        // Rewriting the records too: the checkpoint no longer matches (and the count is short).
        for (i, row) in log.rows.iter_mut().enumerate() {
            let mut rec = AuditRecord::from_canonical(&row.record).unwrap();
            rec.index = i as u64;
            rewrite(row, &rec);
        }
        assert_eq!(log.verify(29).unwrap_err(), VerifyError::at(29, VerifyFailure::CheckpointBeyondLog { size: 30 }));
        assert_eq!(log.verify(30).unwrap_err(), VerifyError::at(29, VerifyFailure::MissingTail { expected: 30 }));
        let mut log_with_earlier = Log::new(30, &[20]);
        log_with_earlier.rows.remove(12);
        for (i, row) in log_with_earlier.rows.iter_mut().enumerate() {
            row.index = i as u64;
            let mut rec = AuditRecord::from_canonical(&row.record).unwrap();
            rec.index = i as u64;
            rewrite(row, &rec);
        }
        assert_eq!(
            log_with_earlier.verify(29).unwrap_err(),
            VerifyError::general(VerifyFailure::CheckpointRoot { size: 20 })
        );
    }

    #[test]
    fn swapped_records_are_caught() {
        let mut log = Log::new(30, &[30]);
        log.rows.swap(5, 9);
        assert_eq!(log.verify(30).unwrap_err(), VerifyError::at(5, VerifyFailure::OutOfPlace { stored: 9 }));

        // Swapping the contents but keeping the index column.
        let mut log = Log::new(30, &[30]);
        let (a, b) = (log.rows[5].clone(), log.rows[9].clone());
        log.rows[5] = StoredRecord { index: 5, ..b };
        log.rows[9] = StoredRecord { index: 9, ..a };
        assert_eq!(log.verify(30).unwrap_err(), VerifyError::at(5, VerifyFailure::RecordIndex { claimed: 9 }));

        // And relabelling the records themselves: only the checkpoint can tell.
        let mut log = Log::new(30, &[30]);
        let (mut a, mut b) = (record(5), record(9));
        std::mem::swap(&mut a.index, &mut b.index);
        rewrite(&mut log.rows[5], &b);
        rewrite(&mut log.rows[9], &a);
        assert_eq!(log.verify(30).unwrap_err(), VerifyError::general(VerifyFailure::CheckpointRoot { size: 30 }));
    }

    #[test]
    fn truncated_tail_is_caught() {
        // Without adjusting the head counter.
        let mut log = Log::new(30, &[10]);
        log.rows.truncate(25);
        let err = log.verify(30).unwrap_err();
        assert_eq!(err, VerifyError::at(25, VerifyFailure::MissingTail { expected: 30 }));
        assert_eq!(err.to_string(), "record 25: missing, though the head counter says the log holds 30 records");

        // Adjusting the head counter, while a checkpoint covers the removed tail.
        let mut log = Log::new(30, &[10, 28]);
        log.rows.truncate(25);
        let err = log.verify(25).unwrap_err();
        assert_eq!(err, VerifyError::at(25, VerifyFailure::CheckpointBeyondLog { size: 28 }));
        assert_eq!(
            err.to_string(),
            "record 25: missing, though a signed checkpoint for size 28 covers it (log truncated)"
        );

        // Adjusting the head counter with no checkpoint past the cut: nothing can tell, which
        // is why checkpoints are issued (and witnessed) regularly.
        let mut log = Log::new(30, &[10]);
        log.rows.truncate(25);
        assert_eq!(log.verify(25).unwrap().records, 25);
    }

    #[test]
    fn records_beyond_the_head_counter_are_caught() {
        let log = Log::new(12, &[12]);
        assert_eq!(log.verify(10).unwrap_err(), VerifyError::at(10, VerifyFailure::BeyondHead { expected: 10 }));
    }

    #[test]
    fn forged_checkpoints_are_caught() {
        let log = Log::new(20, &[10]);
        let verifier = log.signer.verifier();
        let rows = || log.rows.clone().into_iter();

        // Signed by another key.
        let other = NoteSigner::generate(ORIGIN, [10; 32]).unwrap();
        let forged = other.sign(&Checkpoint { origin: ORIGIN.to_string(), size: 20, root: log.root_at(20) });
        let notes = vec![log.checkpoints[0].clone(), forged];
        let err = verify_log(rows(), 20, &notes, &verifier).unwrap_err();
        assert_eq!(err.record, None);
        assert!(matches!(
            err.failure,
            VerifyFailure::CheckpointSignature { position: 1, error: CheckpointError::NoSignature { .. } }
        ));

        // Root or size altered in the signed text.
        let good = log.sign_at(15);
        let good_root = STANDARD_B64.encode(log.root_at(15));
        let other_root = STANDARD_B64.encode(log.root_at(14));
        for tampered in [
            good.replacen(&good_root, &other_root, 1),
            good.replacen("\n15\n", "\n14\n", 1),
            good.replacen("\n15\n", "\n16\n", 1),
        ] {
            assert_ne!(tampered, good);
            let err = verify_log(rows(), 20, &[tampered], &verifier).unwrap_err();
            assert!(
                matches!(
                    err.failure,
                    VerifyFailure::CheckpointSignature { position: 0, error: CheckpointError::BadSignature { .. } }
                ),
                "{err}"
            );
        }

        // Correctly signed, but over another history (the key signed a lie, or records were
        // rewritten after signing).
        let lie = log.signer.sign(&Checkpoint { origin: ORIGIN.to_string(), size: 15, root: log.root_at(14) });
        assert_eq!(
            verify_log(rows(), 20, &[lie], &verifier).unwrap_err(),
            VerifyError::general(VerifyFailure::CheckpointRoot { size: 15 })
        );
        let too_big = log.signer.sign(&Checkpoint { origin: ORIGIN.to_string(), size: 21, root: log.root_at(20) });
        assert_eq!(
            verify_log(rows(), 20, &[too_big], &verifier).unwrap_err(),
            VerifyError::at(20, VerifyFailure::CheckpointBeyondLog { size: 21 })
        );
        // Not a note at all.
        let err = verify_log(rows(), 20, &["garbage".to_string()], &verifier).unwrap_err();
        assert!(err.to_string().starts_with("checkpoint 0 (in the order given) does not verify: "));
    }

    /// The attack of issue 16: one tenant's records deleted, the rest renumbered and re-hashed
    /// so the rows are self-consistent, and the checkpoints that covered the deleted records
    /// deleted too. What is left verifies against the database alone.
    fn rewritten_without(log: &Log, deleted: impl Fn(&AuditRecord) -> bool, kept_checkpoints: &[u64]) -> Log {
        let mut rows = Vec::new();
        for row in &log.rows {
            let mut rec = AuditRecord::from_canonical(&row.record).unwrap();
            if deleted(&rec) {
                continue;
            }
            rec.index = rows.len() as u64;
            let mut row = row.clone();
            rewrite(&mut row, &rec);
            row.index = rec.index;
            rows.push(row);
        }
        let mut rewritten = Log { rows, signer: log.signer.clone(), checkpoints: vec![] };
        rewritten.checkpoints = kept_checkpoints.iter().map(|&size| log.sign_at(size)).collect();
        rewritten
    }

    fn trusted(log: &Log, size: u64) -> TrustedCheckpoint {
        TrustedCheckpoint { from: format!("checkpoint-{size}.json"), note: log.sign_at(size) }
    }

    fn verify_with(
        log: &Log,
        trusted: &[TrustedCheckpoint],
        span: Option<Duration>,
    ) -> Result<VerifyReport, VerifyError> {
        let expectations = Expectations {
            expected_size: log.rows.len() as u64,
            stored_checkpoints: &log.checkpoints,
            trusted_checkpoints: trusted,
            max_uncovered_span: span,
        };
        verify_log_against(log.rows.clone().into_iter(), &expectations, &log.signer.verifier())
    }

    #[test]
    fn a_rewritten_log_is_caught_by_a_trusted_checkpoint() {
        let log = Log::new(40, &[10, 25, 40]);
        let witnessed = [trusted(&log, 25), trusted(&log, 40)];
        let report = verify_with(&log, &witnessed, None).unwrap();
        assert_eq!((report.checkpoints_verified, report.trusted_checkpoints_verified), (5, 2));

        // Record 12 is the first of the deleted tenant's (index % 3 == 0 has no tenant; delete
        // every record of principal 2 from 12 on); the checkpoint at 10 survives.
        let rewritten = rewritten_without(&log, |rec| rec.index >= 12 && rec.principal == "user:2", &[10]);
        assert!(rewritten.rows.len() < 40);
        assert_eq!(rewritten.verify(rewritten.rows.len() as u64).unwrap().checkpoints_verified, 1);

        let err = verify_with(&rewritten, &witnessed[..1], None).unwrap_err();
        assert_eq!(
            err,
            VerifyError::general(VerifyFailure::TrustedCheckpointRoot {
                from: "checkpoint-25.json".to_string(),
                size: 25
            })
        );
        assert!(err.to_string().contains("not an extension of the history"), "{err}");
        // A trusted checkpoint beyond the rewritten log's end.
        let err = verify_with(&rewritten, &witnessed[1..], None).unwrap_err();
        assert_eq!(err.record, Some(rewritten.rows.len() as u64));
        assert!(matches!(err.failure, VerifyFailure::TrustedCheckpointBeyondLog { size: 40, .. }), "{err}");
        // Rewriting only after the witnessed size is caught at the next witnessed size only.
        let late = rewritten_without(&log, |rec| rec.index == 30, &[10, 25]);
        assert!(verify_with(&late, &witnessed[..1], None).is_ok());
        assert!(verify_with(&late, &witnessed, None).is_err());
    }

    #[test]
    fn trusted_checkpoints_must_verify_with_the_pinned_key() {
        let log = Log::new(20, &[20]);
        let other = NoteSigner::generate(ORIGIN, [11; 32]).unwrap();
        let foreign = TrustedCheckpoint {
            from: "witness.json".to_string(),
            note: other.sign(&Checkpoint { origin: ORIGIN.to_string(), size: 20, root: log.root_at(20) }),
        };
        let err = verify_with(&log, &[foreign], None).unwrap_err();
        assert!(
            matches!(&err.failure, VerifyFailure::TrustedCheckpointSignature { from, error: CheckpointError::NoSignature { .. } } if from == "witness.json"),
            "{err}"
        );
    }

    /// A log whose records are `gap_secs` apart, from 2025-01-01T00:00:00Z.
    fn timed_log(n: u64, gap_secs: u64, checkpoint_sizes: &[u64]) -> Log {
        let mut log = Log::new(n, &[]);
        for (i, row) in log.rows.iter_mut().enumerate() {
            let mut rec = AuditRecord::from_canonical(&row.record).unwrap();
            let seconds = i as u64 * gap_secs;
            rec.time = format!("2025-01-01T{:02}:{:02}:{:02}.250Z", seconds / 3600, seconds / 60 % 60, seconds % 60);
            rewrite(row, &rec);
        }
        log.checkpoints = checkpoint_sizes.iter().map(|&size| log.sign_at(size)).collect();
        log
    }

    #[test]
    fn a_stale_newest_checkpoint_is_caught() {
        let allowed = max_uncovered_span(Duration::from_secs(60));
        assert_eq!(allowed, Duration::from_secs(180));
        // Records every 30 s; a checkpoint at 30 leaves 10 records (270 s of log) uncovered.
        let log = timed_log(40, 30, &[10, 30]);
        let err = verify_with(&log, &[], Some(allowed)).unwrap_err();
        assert_eq!(
            err,
            VerifyError::at(30, VerifyFailure::StaleCheckpoint { covered: 30, span_secs: 270, allowed_secs: 180 })
        );
        assert!(err.to_string().starts_with("record 30: not covered by any checkpoint"), "{err}");
        // A checkpoint at 34 leaves 5 records, 150 s: within the interval's allowance.
        assert!(verify_with(&timed_log(40, 30, &[10, 34]), &[], Some(allowed)).is_ok());
        // Covered completely, or no check asked for.
        assert!(verify_with(&timed_log(40, 30, &[40]), &[], Some(allowed)).is_ok());
        assert!(verify_with(&log, &[], None).is_ok());
        // A trusted checkpoint counts as coverage too.
        assert!(verify_with(&log, &[trusted(&log, 36)], Some(allowed)).is_ok());
        // No checkpoint at all: measured from the first record.
        let err = verify_with(&timed_log(10, 30, &[]), &[], Some(allowed)).unwrap_err();
        assert_eq!(err.record, Some(0));
        // An unreadable time cannot be judged, so it fails.
        let mut log = timed_log(40, 1, &[30]);
        let mut rec = AuditRecord::from_canonical(&log.rows[39].record).unwrap();
        rec.time = "yesterday".to_string();
        rewrite(&mut log.rows[39], &rec);
        let err = verify_with(&log, &[], Some(allowed)).unwrap_err();
        assert_eq!(err, VerifyError::at(39, VerifyFailure::RecordTime { time: "yesterday".to_string() }));
    }

    #[test]
    fn stored_subtree_roots_are_checked() {
        let mut log = Log::new(20, &[20]);
        let mut frontier = Frontier::new();
        for row in &mut log.rows {
            let mut roots = Vec::new();
            frontier.push_completing(row.leaf_hash.as_slice().try_into().unwrap(), |node| roots.extend(node));
            row.subtree_roots = Some(roots);
        }
        assert_eq!(log.verify(20).unwrap().records, 20);
        log.rows[11].subtree_roots.as_mut().unwrap()[40] ^= 1;
        assert_eq!(log.verify(20).unwrap_err(), VerifyError::at(11, VerifyFailure::SubtreeRootsMismatch));
        log.rows[11].subtree_roots = Some(Vec::new());
        assert_eq!(log.verify(20).unwrap_err(), VerifyError::at(11, VerifyFailure::SubtreeRootsMismatch));
        // Stores that predate the subtree roots are not held to them.
        log.rows[11].subtree_roots = None;
        assert!(log.verify(20).is_ok());
    }

    #[test]
    fn streaming_does_not_need_a_collection() {
        // The iterator is consumed lazily: rows are generated on the fly.
        let signer = NoteSigner::generate(ORIGIN, [9; 32]).unwrap();
        let n = 5000u64;
        let mut frontier = Frontier::new();
        for i in 0..n {
            frontier.push(merkle::leaf_hash(&record(i).canonical_bytes()));
        }
        let note = signer.sign(&Checkpoint { origin: ORIGIN.to_string(), size: n, root: frontier.root() });
        let report = verify_log((0..n).map(stored), n, &[note], &signer.verifier()).unwrap();
        assert_eq!(report.records, n);
        assert_eq!(report.root, frontier.root());
    }
}
