-- The PostgreSQL store at the SQLite store's schema version 2, plus each event's lease: which
-- instance holds it, and until when. All times are Unix milliseconds, as in SQLite.
-- Apps never share rows: idempotency tokens, dedupe keys and message sids are unique per app.
CREATE TABLE events (
    id BIGSERIAL PRIMARY KEY,
    app TEXT NOT NULL,
    company TEXT NOT NULL,
    received_at BIGINT NOT NULL,
    idempotency_token TEXT,
    dedup_key TEXT,
    message_sid TEXT,
    message_status TEXT,
    error_code TEXT,
    fields TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at BIGINT,
    last_error TEXT,
    updated_at BIGINT NOT NULL,
    kind TEXT NOT NULL DEFAULT 'status',
    lease_owner TEXT,
    lease_until BIGINT
);
CREATE UNIQUE INDEX events_app_token ON events (app, idempotency_token) WHERE idempotency_token IS NOT NULL;
CREATE UNIQUE INDEX events_app_dedup ON events (app, dedup_key) WHERE dedup_key IS NOT NULL;
CREATE INDEX events_open ON events (state, next_attempt_at) WHERE state IN ('pending', 'failed');
CREATE INDEX events_sid ON events (message_sid);
CREATE INDEX events_finished ON events (updated_at) WHERE state IN ('done', 'dead');

CREATE TABLE messages (
    id BIGSERIAL PRIMARY KEY,
    sid TEXT,
    app TEXT NOT NULL,
    company TEXT NOT NULL,
    account_sid TEXT,
    to_number TEXT,
    from_number TEXT,
    body TEXT,
    media TEXT,
    status TEXT NOT NULL,
    status_rank INTEGER NOT NULL,
    error_code TEXT,
    error_message TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    direction TEXT NOT NULL DEFAULT 'outbound',
    profile_name TEXT,
    wa_id TEXT,
    content_sid TEXT,
    content_variables TEXT
);
CREATE UNIQUE INDEX messages_app_sid ON messages (app, sid);
CREATE INDEX messages_app ON messages (app, created_at);
CREATE INDEX messages_contact ON messages (app, from_number, created_at) WHERE direction = 'inbound';
CREATE INDEX messages_final ON messages (updated_at) WHERE status_rank >= 5;

-- Dashboard logins, so a session made through one instance is valid on all. The token is kept
-- hashed: the table alone cannot be used to log in.
CREATE TABLE dashboard_sessions (
    token_hash TEXT PRIMARY KEY,
    csrf TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);

-- When each sandbox sender may next send: the sandbox allows one message every 3 s per sender,
-- whichever instance sends it.
CREATE TABLE sandbox_senders (
    sender TEXT PRIMARY KEY,
    next_allowed_at BIGINT NOT NULL
);
