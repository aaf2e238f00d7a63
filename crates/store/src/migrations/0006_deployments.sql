-- Deployments: a public model name mapped to weighted variants (registered model versions or
-- aliases today). The spec is JSON owned by the server; rows change only through governed
-- changes, and the server reloads a deployment's engines when its spec changes.

CREATE TABLE deployments (
    tenant TEXT NOT NULL REFERENCES tenants (name),
    name TEXT NOT NULL,
    spec TEXT NOT NULL,
    revision BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (tenant, name)
)
