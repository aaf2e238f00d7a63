-- The model registry. A version row is inserted in the governed transaction that registers it,
-- after its files and signed manifest are stored and referenced (artifact_references, owner
-- `model:<tenant>/<name>@<version>`), so a version is visible exactly when it is whole.
-- Versions are immutable; aliases are the only thing that moves.

CREATE TABLE model_versions (
    tenant TEXT NOT NULL,
    name TEXT NOT NULL,
    version BIGINT NOT NULL,
    origin TEXT NOT NULL,
    run_id TEXT,
    jurisdiction TEXT NOT NULL,
    classification TEXT NOT NULL,
    parameters BIGINT NOT NULL,
    manifest_digest TEXT NOT NULL,
    signer TEXT NOT NULL,
    evals TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    PRIMARY KEY (tenant, name, version)
);

CREATE INDEX model_versions_by_run ON model_versions (run_id);

CREATE TABLE model_aliases (
    tenant TEXT NOT NULL,
    name TEXT NOT NULL,
    alias TEXT NOT NULL,
    version BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    updated_by TEXT NOT NULL,
    PRIMARY KEY (tenant, name, alias)
)
