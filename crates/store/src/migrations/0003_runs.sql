-- Training runs are jobs (their state, attempts, cancellation and result live in `jobs`); these
-- tables hold what a run produces while it runs: metrics per step, and checkpoints to resume
-- from. `artifact_references` keeps objects that are not dataset versions (checkpoints, trained
-- weights, tokenizers) safe from the orphan sweep.

CREATE TABLE run_metrics (
    run_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    step BIGINT NOT NULL,
    metrics TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (run_id, kind, step)
);

CREATE TABLE run_checkpoints (
    run_id TEXT NOT NULL,
    step BIGINT NOT NULL,
    weights_digest TEXT NOT NULL,
    optimizer_digest TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (run_id, step)
);

CREATE TABLE artifact_references (
    digest TEXT NOT NULL,
    tenant TEXT NOT NULL,
    owner TEXT NOT NULL,
    PRIMARY KEY (digest, tenant, owner)
)
