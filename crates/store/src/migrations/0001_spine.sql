-- The spine: identity, the audit log, the outbox and the job queue.
-- Times are Unix milliseconds; JSON is stored as text.

CREATE TABLE tenants (
    name TEXT PRIMARY KEY,
    jurisdictions TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL
);

CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    tenant TEXT REFERENCES tenants (name),
    role TEXT NOT NULL,
    secret_hash TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    expires_at BIGINT,
    revoked_at BIGINT
);

CREATE TABLE audit_head (
    id BIGINT PRIMARY KEY,
    size BIGINT NOT NULL
);

INSERT INTO audit_head (id, size) VALUES (1, 0);

CREATE TABLE audit_records (
    idx BIGINT PRIMARY KEY,
    record TEXT NOT NULL,
    leaf_hash {blob} NOT NULL,
    details TEXT NOT NULL,
    tenant TEXT,
    created_at BIGINT NOT NULL
);

CREATE INDEX audit_records_by_tenant ON audit_records (tenant, idx);

CREATE TABLE audit_checkpoints (
    size BIGINT PRIMARY KEY,
    note TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE outbox (
    id {serial_primary_key},
    topic TEXT NOT NULL,
    idempotency_key TEXT NOT NULL UNIQUE,
    payload TEXT NOT NULL,
    audit_index BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE outbox_cursors (
    subscriber TEXT PRIMARY KEY,
    last_event_id BIGINT NOT NULL,
    failures BIGINT NOT NULL,
    last_error TEXT
);

CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL REFERENCES tenants (name),
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    priority BIGINT NOT NULL,
    state TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    max_attempts BIGINT NOT NULL,
    run_after BIGINT NOT NULL,
    lease_owner TEXT,
    lease_expires_at BIGINT,
    cancel_requested BIGINT NOT NULL,
    last_error TEXT,
    result TEXT,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE INDEX jobs_ready ON jobs (state, priority, run_after);
