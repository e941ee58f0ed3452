-- A tenant is a Connect installation, a Forge installation or a Jira admin
-- webhook source. Only Connect tenants have a shared secret (empty for the others).
ALTER TABLE tenants ADD COLUMN kind TEXT NOT NULL DEFAULT 'connect';
-- An admin-webhook source's name.
ALTER TABLE tenants ADD COLUMN name TEXT;
-- Forge installations: the site's cloud id, the product API base URL
-- (https://api.atlassian.com/ex/jira/<cloudId>) and the app environment.
ALTER TABLE tenants ADD COLUMN cloud_id TEXT;
ALTER TABLE tenants ADD COLUMN api_base_url TEXT;
ALTER TABLE tenants ADD COLUMN environment TEXT;

-- The name the source gave the event, where it differs from `event` (Forge's
-- avi:jira:created:issue for jira:issue_created); NULL means the same.
ALTER TABLE events ADD COLUMN source_event TEXT;

-- An admin-webhook source's secrets: several at once, so that one can be
-- rotated without losing events. Sealed like every secret.
CREATE TABLE source_secrets (
    source_id   TEXT NOT NULL REFERENCES tenants (client_key) ON DELETE CASCADE,
    prefix      TEXT NOT NULL,
    secret      TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    PRIMARY KEY (source_id, prefix)
);

-- The app system token (x-forge-oauth-system) a Forge installation sends with
-- its events, kept for calling the product as the app. Sealed like every secret.
CREATE TABLE forge_tokens (
    installation_id  TEXT PRIMARY KEY REFERENCES tenants (client_key) ON DELETE CASCADE,
    token            TEXT NOT NULL,
    expires_at       TEXT,
    updated_at       TEXT NOT NULL
);

-- Forge Invocation Tokens already accepted, by SHA-256 of the token, with the
-- event each carried, kept until they expire: the token does not cover the
-- body, so a captured one must not carry another event. The same token with
-- the same event (a retry) is still accepted, and stored once.
CREATE TABLE used_forge_tokens (
    digest      BLOB PRIMARY KEY,
    event_key   TEXT NOT NULL,
    expires_at  TEXT NOT NULL
);
CREATE INDEX used_forge_tokens_expiry ON used_forge_tokens (expires_at);
