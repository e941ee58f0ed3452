-- The inspector's sign-ins. The cookie's value is never kept: only its SHA-256,
-- with the session's CSRF token, a fingerprint of the admin token it was opened
-- with (changing the token ends every session) and when it ends (Unix ms).
CREATE TABLE ui_sessions (
    id_hash      TEXT PRIMARY KEY,
    csrf         TEXT NOT NULL,
    token_print  TEXT NOT NULL,
    expires_at   BIGINT NOT NULL
);
CREATE INDEX ui_sessions_expires_at ON ui_sessions (expires_at);
