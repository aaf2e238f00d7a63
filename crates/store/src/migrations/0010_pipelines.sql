-- Closing the loop: drift alarms raised by the monitors, pipelines declared by tenants, their
-- runs, and every trigger each pipeline has seen (so a redelivered event never starts a second
-- run). All written through governed changes.

CREATE TABLE drift_alarms (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    deployment TEXT NOT NULL,
    monitor TEXT NOT NULL,
    statistic DOUBLE PRECISION NOT NULL,
    threshold DOUBLE PRECISION NOT NULL,
    observed BIGINT NOT NULL,
    details TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE INDEX drift_alarms_by_deployment ON drift_alarms (tenant, deployment, created_at);

CREATE TABLE pipelines (
    tenant TEXT NOT NULL REFERENCES tenants (name),
    name TEXT NOT NULL,
    source TEXT NOT NULL,
    spec TEXT NOT NULL,
    author TEXT NOT NULL,
    revision BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (tenant, name)
);

CREATE TABLE pipeline_runs (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    pipeline TEXT NOT NULL,
    revision BIGINT NOT NULL,
    trigger_info TEXT NOT NULL,
    status TEXT NOT NULL,
    step BIGINT NOT NULL,
    steps TEXT NOT NULL,
    coalesced TEXT NOT NULL,
    reason TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    finished_at BIGINT
);

CREATE INDEX pipeline_runs_by_pipeline ON pipeline_runs (tenant, pipeline, created_at);

-- One run at a time per pipeline.
CREATE UNIQUE INDEX pipeline_runs_active ON pipeline_runs (tenant, pipeline) WHERE status = 'running';

CREATE TABLE pipeline_triggers (
    tenant TEXT NOT NULL,
    pipeline TEXT NOT NULL,
    trigger_key TEXT NOT NULL,
    run_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (tenant, pipeline, trigger_key)
)
