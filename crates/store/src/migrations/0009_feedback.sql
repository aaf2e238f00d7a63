-- Feedback on answers (by inference id) and conversations (by episode id), as metrics declared
-- in the configuration. Written through the governed path; drift and canary analysis read it.

CREATE TABLE feedback (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    deployment TEXT NOT NULL,
    variant TEXT,
    inference_id TEXT,
    episode_id TEXT,
    metric TEXT NOT NULL,
    value DOUBLE PRECISION NOT NULL,
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL
);

CREATE INDEX feedback_by_deployment ON feedback (tenant, deployment, metric, created_at)
