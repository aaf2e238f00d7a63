-- Governed datasets: their definitions, their immutable versions, and which objects each
-- version references (so a failed ingest can delete only what nothing else uses).

CREATE TABLE datasets (
    tenant TEXT NOT NULL REFERENCES tenants (name),
    name TEXT NOT NULL,
    classification TEXT NOT NULL,
    jurisdiction TEXT NOT NULL,
    site TEXT NOT NULL,
    owner TEXT NOT NULL,
    retention_days BIGINT,
    description TEXT NOT NULL,
    tags TEXT NOT NULL,
    pii_policy TEXT NOT NULL,
    declared_schema TEXT,
    latest_version BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    PRIMARY KEY (tenant, name)
);

CREATE TABLE dataset_versions (
    tenant TEXT NOT NULL,
    dataset TEXT NOT NULL,
    version BIGINT NOT NULL,
    manifest_digest TEXT NOT NULL,
    row_count BIGINT NOT NULL,
    byte_count BIGINT NOT NULL,
    source_digest TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    PRIMARY KEY (tenant, dataset, version)
);

CREATE TABLE object_references (
    digest TEXT NOT NULL,
    tenant TEXT NOT NULL,
    dataset TEXT NOT NULL,
    version BIGINT NOT NULL,
    PRIMARY KEY (digest, tenant, dataset, version)
);
