-- Scheduling scarce compute: what each job has used, preemption requests, and per-tenant
-- quotas (concurrent jobs, compute-seconds). A quota row that is absent means no limit.

ALTER TABLE jobs ADD COLUMN preempt_requested BIGINT NOT NULL DEFAULT 0;

ALTER TABLE jobs ADD COLUMN compute_ms BIGINT NOT NULL DEFAULT 0;

ALTER TABLE jobs ADD COLUMN attempt_started_at BIGINT;

CREATE TABLE tenant_quotas (
    tenant TEXT PRIMARY KEY REFERENCES tenants (name),
    max_concurrent_jobs BIGINT,
    compute_seconds BIGINT,
    updated_at BIGINT NOT NULL,
    updated_by TEXT NOT NULL
)
