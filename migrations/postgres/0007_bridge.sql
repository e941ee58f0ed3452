-- The bridge: hookrelay calls a tenant's product API as the app.

-- An admin-webhook source's Atlassian API token (account email + token, sent
-- as basic auth), so that calls can be made for it. Sealed like every secret.
CREATE TABLE tenant_api_tokens (
    client_key  TEXT PRIMARY KEY REFERENCES tenants (client_key) ON DELETE CASCADE,
    email       TEXT NOT NULL,
    token       TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL
);

-- Keys external systems call the proxy with, stored as the SHA-256 of the key
-- (keys are 256 random bits, so a fast hash is enough). Scopes are JSON
-- arrays; NULL means any.
CREATE TABLE api_keys (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    key_hash    TEXT NOT NULL UNIQUE,
    prefix      TEXT NOT NULL,
    tenants     TEXT,
    methods     TEXT,
    paths       TEXT,
    created_at  TIMESTAMPTZ NOT NULL,
    -- After this the key is refused; NULL: never.
    expires_at  TIMESTAMPTZ,
    -- Written at most once a minute per process, so a busy key costs no
    -- write per call.
    last_used_at TIMESTAMPTZ
);

-- A web trigger may act on one tenant (context.app.fetch).
ALTER TABLE triggers ADD COLUMN tenant TEXT;

-- Events stored by reconciliation (Jira's failed-webhook list) rather than
-- received.
ALTER TABLE events ADD COLUMN recovered BOOLEAN NOT NULL DEFAULT FALSE;

-- Reconciliation per Connect Jira tenant: where the failed-webhook list was
-- read up to, when the next run is due (a claim: one process runs it), and
-- how the last run went.
CREATE TABLE reconcile_state (
    client_key    TEXT PRIMARY KEY REFERENCES tenants (client_key) ON DELETE CASCADE,
    cursor        TEXT,
    next_run_at   TIMESTAMPTZ NOT NULL,
    last_run_at   TIMESTAMPTZ,
    last_error    TEXT,
    recovered     BIGINT NOT NULL DEFAULT 0
);
