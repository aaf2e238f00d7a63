-- The Batch API: files uploaded for batches (and the output and error files batches write),
-- batches with their status and counts, and the parts a running batch has finished (each
-- part's answers stored as objects, so a batch resumes after a crash without asking again).
-- Files and batches change only through governed changes; parts are progress, like a run's
-- checkpoints.

CREATE TABLE files (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    purpose TEXT NOT NULL,
    filename TEXT NOT NULL,
    bytes BIGINT NOT NULL,
    digest TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL
);

CREATE INDEX files_by_tenant ON files (tenant, created_at);

CREATE TABLE batches (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    input_file_id TEXT,
    input_digest TEXT,
    source TEXT,
    completion_window TEXT NOT NULL,
    status TEXT NOT NULL,
    metadata TEXT NOT NULL,
    errors TEXT,
    deployment TEXT,
    output_file_id TEXT,
    error_file_id TEXT,
    output_dataset TEXT,
    total BIGINT NOT NULL DEFAULT 0,
    completed BIGINT NOT NULL DEFAULT 0,
    failed BIGINT NOT NULL DEFAULT 0,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    in_progress_at BIGINT,
    finalizing_at BIGINT,
    completed_at BIGINT,
    failed_at BIGINT,
    expired_at BIGINT,
    cancelling_at BIGINT,
    cancelled_at BIGINT
);

CREATE INDEX batches_by_tenant ON batches (tenant, created_at);

CREATE TABLE batch_parts (
    batch_id TEXT NOT NULL,
    part BIGINT NOT NULL,
    first_line BIGINT NOT NULL,
    lines BIGINT NOT NULL,
    output_digest TEXT NOT NULL,
    error_digest TEXT NOT NULL,
    completed BIGINT NOT NULL,
    failed BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (batch_id, part)
)
