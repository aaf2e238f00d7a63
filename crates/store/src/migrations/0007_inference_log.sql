-- The inference log: one row per answered (or refused by the engine) request, written in
-- batches off the request path. Drift monitoring, feedback and cost reporting read it. Bodies
-- are not stored here.

CREATE TABLE inference_log (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    deployment TEXT NOT NULL,
    variant TEXT NOT NULL,
    kind TEXT NOT NULL,
    request_id TEXT NOT NULL,
    episode_id TEXT,
    status TEXT NOT NULL,
    finish_reason TEXT,
    prompt_tokens BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    cost DOUBLE PRECISION NOT NULL,
    queue_ms DOUBLE PRECISION NOT NULL,
    first_token_ms DOUBLE PRECISION NOT NULL,
    decode_ms DOUBLE PRECISION NOT NULL,
    total_ms DOUBLE PRECISION NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE INDEX inference_log_by_deployment ON inference_log (tenant, deployment, created_at)
