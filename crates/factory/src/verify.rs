//! `factory audit verify`: recompute the whole audit log offline, straight from the database,
//! and check it against every signed checkpoint. Exits non-zero naming the first bad record.

use std::time::Instant;

use anyhow::{anyhow, Context};
use factory_audit::checkpoint::NoteVerifier;
use factory_audit::record::AuditRecord;
use factory_audit::verify::{verify_log, StoredRecord};
use factory_store::{DetailsCheck, Store};

use crate::cli::VerifyArgs;

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
    let store = Store::open_read_only(&url).await?;
    let started = Instant::now();
    // Checkpoints first, then the head: every checkpoint read is then of a size the head has
    // reached, and records appended while verifying (at or past the head) are left out, so a
    // live factory verifies without false alarms.
    let checkpoints = store.audit_checkpoints().await?;
    let expected_size = store.audit_size().await?;

    let handle = tokio::runtime::Handle::current();
    let pages = StoredPages {
        store: &store,
        handle: &handle,
        after: None,
        below: expected_size,
        page: Vec::new().into_iter(),
        failure: None,
        details_mismatch: None,
    };
    let (result, pages) = tokio::task::block_in_place(|| {
        let mut pages = pages;
        let result = verify_log(pages.by_ref(), expected_size, &checkpoints, &verifier);
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
        "audit log verified: {} records, {} signed checkpoints, root {} ({:.0} records/s)",
        report.records,
        report.checkpoints_verified,
        hex_root(&report.root),
        report.records as f64 / seconds.max(1e-9)
    );
    store.close().await;
    Ok(())
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
                match self.handle.block_on(self.store.stored_audit_page(self.after, self.below, PAGE)) {
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
