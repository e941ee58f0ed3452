-- Signed-install tokens already accepted, by SHA-256 of the token, kept until
-- they expire: a captured `installed` token cannot be posted again with another
-- body (the token does not cover the body).
CREATE TABLE used_install_tokens (
    digest      BLOB PRIMARY KEY,
    -- RFC 3339, milliseconds, `Z`: compares as text.
    expires_at  TEXT NOT NULL
);
CREATE INDEX used_install_tokens_expiry ON used_install_tokens (expires_at);
