-- Events committed but not yet confirmed by the broker. Intake writes a row here in
-- the same transaction as the event; the publisher deletes it once the broker
-- confirms. A row is claimable when `available_at` has passed: a publisher claims
-- it by moving `available_at` forward (its lease), so that another process sweeps
-- it up only if the first one dies or stalls.
CREATE TABLE outbox (
    event_id      TEXT PRIMARY KEY REFERENCES events (id) ON DELETE CASCADE,
    available_at  TEXT NOT NULL,
    attempts      INTEGER NOT NULL DEFAULT 0,
    last_error    TEXT
);
CREATE INDEX outbox_available_at ON outbox (available_at);

-- The in-process broker's queues: one row per (queue, event) routed and not yet
-- acknowledged by a consumer. Claimed the same way as the outbox.
CREATE TABLE local_queue_messages (
    queue         TEXT NOT NULL,
    event_id      TEXT NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    available_at  TEXT NOT NULL,
    deliveries    INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (queue, event_id)
);
CREATE INDEX local_queue_messages_available ON local_queue_messages (queue, available_at);

-- Events stored before the outbox existed were never published: publish them now.
INSERT INTO outbox (event_id, available_at) SELECT id, received_at FROM events;
