-- Web triggers: an admin-defined inbound URL (/x1/<id>) that runs a script
-- (sync) or accepts work for later (async).
CREATE TABLE triggers (
    -- Random, at least 128 bits: with auth `none` the URL is the secret.
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL UNIQUE,
    -- JSON array of methods, or ["*"].
    methods      TEXT NOT NULL,
    -- sync | async
    mode         TEXT NOT NULL,
    -- none | key | hmac-sha256 | standard-webhooks
    auth_type    TEXT NOT NULL,
    auth_header  TEXT,
    -- The key or signing secret; '' for `none`. Sealed like every secret.
    secret       TEXT NOT NULL,
    script       TEXT,
    -- Sync without a script: where the request is POSTed, signed with
    -- forward_secret (a whsec_ secret, sealed; '' when there is no forward).
    forward_url     TEXT,
    forward_secret  TEXT NOT NULL DEFAULT '',
    timeout_ms   INTEGER NOT NULL,
    enabled      INTEGER NOT NULL,
    description  TEXT,
    -- Bumped on every change: compiled scripts are cached by (id, version).
    version      INTEGER NOT NULL,
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL
);

-- One row per call that reached the script (or was accepted, for async).
-- state: completed | failed (done) | accepted (async, no script) | pending
-- (async script due at next_attempt_at, or running under a claim).
CREATE TABLE trigger_invocations (
    id               TEXT PRIMARY KEY,
    trigger_id       TEXT NOT NULL REFERENCES triggers (id) ON DELETE CASCADE,
    event_id         TEXT NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    mode             TEXT NOT NULL,
    state            TEXT NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  TEXT,
    claim            TEXT,
    -- The HTTP status answered (sync) or the script's statusCode (async).
    status_code      INTEGER,
    -- The script's response as JSON, cut to a few KiB.
    response         TEXT,
    error            TEXT,
    -- JSON array of {level, message}.
    console          TEXT,
    duration_ms      INTEGER,
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL
);
CREATE INDEX trigger_invocations_trigger ON trigger_invocations (trigger_id, id);
CREATE INDEX trigger_invocations_event ON trigger_invocations (event_id);
CREATE INDEX trigger_invocations_due ON trigger_invocations (next_attempt_at) WHERE state = 'pending';

-- A subscription's transform: an ES module whose default export maps the
-- envelope to the body delivered.
ALTER TABLE subscriptions ADD COLUMN transform TEXT;
