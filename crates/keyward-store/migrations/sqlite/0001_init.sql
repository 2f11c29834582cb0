-- keyward's schema on SQLite. Times are Unix milliseconds (UTC); JSON columns hold text.
CREATE TABLE keys (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,  -- stable order for cursor pagination
    key_id         TEXT    NOT NULL UNIQUE,
    kind           TEXT    NOT NULL,                   -- 'api' or 'root'
    owner          TEXT    NOT NULL,
    name           TEXT,
    tenant         TEXT,
    environment    TEXT    NOT NULL,
    purpose        TEXT,
    tags           TEXT    NOT NULL,
    meta           TEXT    NOT NULL,
    permissions    TEXT    NOT NULL,
    routes         TEXT    NOT NULL,
    expires_at     INTEGER,
    enabled        INTEGER NOT NULL,
    created_at     INTEGER NOT NULL,
    created_by     TEXT,
    updated_at     INTEGER NOT NULL,
    last_used_at   INTEGER,
    revoked_at     INTEGER,
    revoked_reason TEXT,
    rotated_at     INTEGER,
    version        INTEGER NOT NULL
);
CREATE INDEX keys_kind_owner ON keys (kind, owner, seq);
CREATE INDEX keys_kind_tenant ON keys (kind, tenant, seq);

-- Only hashes of secrets are stored, never a plaintext key.
CREATE TABLE secrets (
    hash         TEXT    PRIMARY KEY,                   -- lower-case hex digest
    hash_version INTEGER NOT NULL,
    key_id       TEXT    NOT NULL REFERENCES keys (key_id),
    start        TEXT    NOT NULL,
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER                                -- NULL for the current secret
);
CREATE INDEX secrets_key_id ON secrets (key_id);

CREATE TABLE audit_log (
    seq       INTEGER PRIMARY KEY,
    time      INTEGER NOT NULL,
    actor     TEXT,
    action    TEXT    NOT NULL,
    target    TEXT,
    summary   TEXT    NOT NULL,
    prev_hash TEXT    NOT NULL,
    hash      TEXT    NOT NULL
);
CREATE INDEX audit_log_target ON audit_log (target, seq);
CREATE INDEX audit_log_action ON audit_log (action, seq);

-- The audit log is append-only for keyward itself; the hash chain catches anyone who
-- bypasses these triggers with direct file access.
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
