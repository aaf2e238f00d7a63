-- The console's sessions: a browser signs in with an API key and holds a session cookie, whose
-- secret is stored only as its SHA-256. A session acts with its key's rights, as they stand at
-- each request, until it is signed out (revoked_at), idle past its bound (last_seen_at), or
-- past its absolute end (expires_at). Created and revoked through governed changes;
-- last_seen_at is bookkeeping.

CREATE TABLE console_sessions (
    id TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL UNIQUE,
    key_id TEXT NOT NULL,
    csrf TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    last_seen_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    revoked_at BIGINT
)
