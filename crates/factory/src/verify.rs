//! `factory audit verify`: recompute the whole audit log offline, straight from the database,
//! and check it against every signed checkpoint: those stored in the database, and trusted
//! ones kept outside it (published files a witness copied). Exits non-zero naming the first bad
//! record, or the checkpoint the log no longer extends.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use factory_audit::checkpoint::{NoteVerifier, PublishedCheckpoint};
use factory_audit::record::AuditRecord;
use factory_audit::verify::{max_uncovered_span, verify_log_against, Expectations, StoredRecord, TrustedCheckpoint};
use factory_store::{DetailsCheck, Store};

use crate::args::VerifyArgs;

const PAGE: u32 = 5_000;

pub async fn run(args: VerifyArgs) -> anyhow::Result<()> {
    let key_text = match args.public_key {
        Some(key) => key,
        None => {
            let path = args.data_dir.join("audit.pub");
            std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read the verifier key {}", path.display()))?
        }
    };
    let verifier =
        NoteVerifier::from_verifier_key(key_text.trim()).map_err(|e| anyhow!("invalid verifier key: {e}"))?;
    let url = args.database_url.unwrap_or_else(|| format!("sqlite://{}", args.data_dir.join("metadata.db").display()));
    if url.starts_with("sqlite:") && !args.data_dir.join("metadata.db").exists() {
        return Err(anyhow!("no factory database in {}", args.data_dir.display()));
    }
    // The checkpoints published beside the database are as good as a witness's copies when
    // nobody touched them, and can only add checks: a file cannot forge a signature.
    let mut trusted_paths = args.checkpoints;
    let published_here = args.data_dir.join("checkpoints");
    if published_here.is_dir() {
        trusted_paths.push(published_here);
    }
    let max_span = (args.checkpoint_interval_secs > 0)
        .then(|| max_uncovered_span(Duration::from_secs(args.checkpoint_interval_secs)));

    let store = Store::open_read_only(&url).await?;
    let started = Instant::now();
    // Checkpoints first (published files, then stored ones), then the head: every checkpoint
    // read is then of a size the head has reached, since a checkpoint is published before it is
    // stored and signs a size the head had. Records appended while verifying (at or past the
    // head) are left out, so a live factory verifies without false alarms.
    let trusted = read_trusted_checkpoints(&trusted_paths)?;
    let checkpoints = store.audit_checkpoints().await?;
    let expected_size = store.audit_size().await?;
    let with_subtree_roots = store.audit_subtree_roots_stored().await?;

    let handle = tokio::runtime::Handle::current();
    let pages = StoredPages {
        store: &store,
        handle: &handle,
        after: None,
        below: expected_size,
        with_subtree_roots,
        page: Vec::new().into_iter(),
        failure: None,
        details_mismatch: None,
    };
    let expectations = Expectations {
        expected_size,
        stored_checkpoints: &checkpoints,
        trusted_checkpoints: &trusted,
        max_uncovered_span: max_span,
    };
    let (result, pages) = tokio::task::block_in_place(|| {
        let mut pages = pages;
        let result = verify_log_against(pages.by_ref(), &expectations, &verifier);
        (result, pages)
    });
    if let Some(error) = pages.failure {
        return Err(error);
    }
    let report = match (result, pages.details_mismatch) {
        (Err(error), Some(index)) if error.record.is_some_and(|bad| bad > index) => {
            return Err(anyhow!(
                "audit log verification failed: record {index}: details do not match the record's details digest"
            ))
        }
        (Err(error), _) => return Err(anyhow!("audit log verification failed: {error}")),
        (Ok(_), Some(index)) => {
            return Err(anyhow!(
                "audit log verification failed: record {index}: details do not match the record's details digest"
            ))
        }
        (Ok(report), None) => report,
    };
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "audit log verified: {} records, {} signed checkpoints ({} trusted), root {} ({:.0} records/s)",
        report.records,
        report.checkpoints_verified,
        report.trusted_checkpoints_verified,
        hex_root(&report.root),
        report.records as f64 / seconds.max(1e-9)
    );
    store.close().await;
    Ok(())
}

/// Reads every trusted checkpoint: each path a published file or bare signed note, or a
/// directory of published files. The same note given twice counts once.
fn read_trusted_checkpoints(paths: &[PathBuf]) -> anyhow::Result<Vec<TrustedCheckpoint>> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut published = Vec::new();
            for entry in
                std::fs::read_dir(path).with_context(|| format!("cannot read the checkpoints in {}", path.display()))?
            {
                let entry = entry?;
                // Only the files the factory names; stray temporary files are not checkpoints.
                if entry.file_name().to_str().and_then(PublishedCheckpoint::size_in_file_name).is_some() {
                    published.push(entry.path());
                }
            }
            published.sort();
            files.extend(published);
        } else {
            files.push(path.clone());
        }
    }
    let mut trusted: Vec<TrustedCheckpoint> = Vec::new();
    for file in files {
        let note = read_note(&file)?;
        if !trusted.iter().any(|known| known.note == note) {
            trusted.push(TrustedCheckpoint { from: file.display().to_string(), note });
        }
    }
    Ok(trusted)
}

fn read_note(file: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read the trusted checkpoint {}", file.display()))?;
    PublishedCheckpoint::note_in_file(&text).map_err(|e| anyhow!("{} is not a checkpoint: {e}", file.display()))
}

fn hex_root(root: &[u8; 32]) -> String {
    root.iter().map(|b| format!("{b:02x}")).collect()
}

/// Pulls pages from the database as the verifier consumes records, so memory stays bounded.
struct StoredPages<'a> {
    store: &'a Store,
    handle: &'a tokio::runtime::Handle,
    after: Option<u64>,
    below: u64,
    with_subtree_roots: bool,
    page: std::vec::IntoIter<(StoredRecord, DetailsCheck)>,
    failure: Option<anyhow::Error>,
    details_mismatch: Option<u64>,
}

impl Iterator for StoredPages<'_> {
    type Item = StoredRecord;

    fn next(&mut self) -> Option<StoredRecord> {
        if self.failure.is_some() {
            return None;
        }
        let (record, details) = match self.page.next() {
            Some(item) => item,
            None => {
                match self.handle.block_on(self.store.stored_audit_page(
                    self.after,
                    self.below,
                    PAGE,
                    self.with_subtree_roots,
                )) {
                    Ok(page) => self.page = page.into_iter(),
                    Err(error) => {
                        self.failure = Some(error.into());
                        return None;
                    }
                }
                self.page.next()?
            }
        };
        self.after = Some(record.index);
        if self.details_mismatch.is_none() {
            let matches = AuditRecord::from_canonical(&record.record)
                .map(|parsed| parsed.details_digest == details.details_digest)
                .unwrap_or(true);
            if !matches {
                self.details_mismatch = Some(details.index);
            }
        }
        Some(record)
    }
}
