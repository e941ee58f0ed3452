-- Subscriptions: external HTTP endpoints that events are relayed to.
CREATE TABLE subscriptions (
    id               UUID PRIMARY KEY,
    url              TEXT NOT NULL,
    -- JSON array of event-name patterns (`jira:issue_*`, `*`).
    events           TEXT NOT NULL,
    -- JSON array of client keys; NULL means every tenant.
    tenants          TEXT,
    -- JSONPath (RFC 9535) query on the envelope; the event matches when it selects something.
    filter           TEXT,
    -- JSON object of extra request headers.
    headers          TEXT NOT NULL,
    -- `whsec_…`; never returned after creation.
    secret           TEXT NOT NULL,
    description      TEXT,
    -- Deliveries per second (per process); NULL means unlimited.
    rate_limit       BIGINT,
    max_concurrency  BIGINT NOT NULL,
    enabled          BOOLEAN NOT NULL,
    disabled_reason  TEXT,
    -- When the current run of failed attempts began (NULL after a success).
    failing_since    TIMESTAMPTZ,
    created_at       TIMESTAMPTZ NOT NULL,
    updated_at       TIMESTAMPTZ NOT NULL
);

-- One delivery per (event, subscription); a replay reopens it.
-- state: pending | delivered | failed | dead. A pending delivery is due at
-- `next_attempt_at`; a worker claims it by moving that forward (its lease) and
-- writing a fresh `claim`, which its result must still match when it lands.
CREATE TABLE deliveries (
    id               UUID PRIMARY KEY,
    event_id         UUID NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    subscription_id  UUID NOT NULL REFERENCES subscriptions (id) ON DELETE CASCADE,
    state            TEXT NOT NULL,
    -- Attempts in the current round (a replay starts a new round).
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  TIMESTAMPTZ NOT NULL,
    claim            UUID,
    last_status      INTEGER,
    last_error       TEXT,
    created_at       TIMESTAMPTZ NOT NULL,
    updated_at       TIMESTAMPTZ NOT NULL,
    UNIQUE (event_id, subscription_id)
);
CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE state = 'pending';
CREATE INDEX deliveries_subscription ON deliveries (subscription_id, state, id);

-- Every attempt, kept for the admin API.
CREATE TABLE delivery_attempts (
    id               UUID PRIMARY KEY,
    delivery_id      UUID NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    event_id         UUID NOT NULL,
    subscription_id  UUID NOT NULL,
    attempted_at     TIMESTAMPTZ NOT NULL,
    duration_ms      INTEGER NOT NULL,
    status_code      INTEGER,
    error            TEXT,
    -- The first few KiB of the response body.
    response_body    TEXT,
    -- delivered | retry | failed | dead
    outcome          TEXT NOT NULL
);
CREATE INDEX delivery_attempts_delivery ON delivery_attempts (delivery_id, id);
CREATE INDEX delivery_attempts_subscription ON delivery_attempts (subscription_id, id);
