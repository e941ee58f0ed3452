-- Signed-install tokens already accepted, by SHA-256 of the token, kept until
-- they expire: a captured `installed` token cannot be posted again with another
-- body (the token does not cover the body), by any process sharing this store.
CREATE TABLE used_install_tokens (
    digest      BYTEA PRIMARY KEY,
    expires_at  TIMESTAMPTZ NOT NULL
);
CREATE INDEX used_install_tokens_expiry ON used_install_tokens (expires_at);
