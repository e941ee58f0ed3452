-- Connect installations, one row per clientKey.
CREATE TABLE tenants (
    client_key     TEXT PRIMARY KEY,
    product        TEXT NOT NULL,
    base_url       TEXT NOT NULL,
    display_url    TEXT,
    shared_secret  TEXT NOT NULL,
    state          TEXT NOT NULL,
    -- iat of the newest lifecycle callback applied: older ones arriving late are ignored.
    lifecycle_at   TIMESTAMPTZ NOT NULL,
    installed_at   TIMESTAMPTZ NOT NULL,
    updated_at     TIMESTAMPTZ NOT NULL
);

-- Every accepted event, stored before it is acknowledged.
CREATE TABLE events (
    id                 UUID PRIMARY KEY,
    source             TEXT NOT NULL,
    product            TEXT,
    event              TEXT NOT NULL,
    tenant_client_key  TEXT,
    tenant_base_url    TEXT,
    webhook_id         TEXT,
    webhook_retry      INTEGER,
    webhook_flow       TEXT,
    received_at        TIMESTAMPTZ NOT NULL,
    -- the body exactly as received
    payload            TEXT NOT NULL
);

-- Stored once per (tenant, X-Atlassian-Webhook-Identifier); NULLs never collide.
CREATE UNIQUE INDEX events_tenant_webhook_id ON events (tenant_client_key, webhook_id);
CREATE INDEX events_received_at ON events (received_at);
CREATE INDEX events_event ON events (event, received_at);
