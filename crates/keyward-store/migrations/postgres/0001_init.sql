-- keyward's schema on PostgreSQL: the same tables as on SQLite (0001 + 0002 there), in one step.
-- Times are Unix milliseconds (UTC) in BIGINT, as on SQLite: the hash chain hashes millisecond
-- times, the domain truncates every time to the millisecond, and the refill and grace
-- arithmetic compares integers, so both backends store and compare exactly the same values.
-- JSON columns hold text (not jsonb): jsonb would reorder keys and renormalise numbers, and the
-- audit chain hashes the stored summary text byte for byte.

-- One row whose lock serialises every write that appends to the audit chain (see
-- postgres.rs, `lock_writes`): the chain stays linear when several nodes write at once.
CREATE TABLE write_lock (
    id INTEGER PRIMARY KEY CHECK (id = 1)
);
INSERT INTO write_lock (id) VALUES (1);

CREATE TABLE keys (
    seq            BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY, -- stable order for cursors
    key_id         TEXT    NOT NULL UNIQUE,
    kind           TEXT    NOT NULL,                                 -- 'api' or 'root'
    owner          TEXT    NOT NULL,
    name           TEXT,
    tenant         TEXT,
    environment    TEXT    NOT NULL,
    purpose        TEXT,
    tags           TEXT    NOT NULL,
    meta           TEXT    NOT NULL,
    permissions    TEXT    NOT NULL,
    routes         TEXT    NOT NULL,
    expires_at     BIGINT,
    enabled        BOOLEAN NOT NULL,
    created_at     BIGINT  NOT NULL,
    created_by     TEXT,
    updated_at     BIGINT  NOT NULL,
    last_used_at   BIGINT,
    revoked_at     BIGINT,
    revoked_reason TEXT,
    rotated_at     BIGINT,
    version        BIGINT  NOT NULL,
    policy         TEXT    NOT NULL DEFAULT '{}'
);
CREATE INDEX keys_kind_owner ON keys (kind, owner, seq);
CREATE INDEX keys_kind_tenant ON keys (kind, tenant, seq);

-- Only hashes of secrets are stored, never a plaintext key.
CREATE TABLE secrets (
    hash         TEXT   PRIMARY KEY,                    -- lower-case hex digest
    hash_version BIGINT NOT NULL,
    key_id       TEXT   NOT NULL REFERENCES keys (key_id),
    start        TEXT   NOT NULL,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT                                 -- NULL for the current secret
);
CREATE INDEX secrets_key_id ON secrets (key_id);

CREATE TABLE audit_log (
    seq       BIGINT PRIMARY KEY,
    time      BIGINT NOT NULL,
    actor     TEXT,
    action    TEXT   NOT NULL,
    target    TEXT,
    summary   TEXT   NOT NULL,
    prev_hash TEXT   NOT NULL,
    hash      TEXT   NOT NULL
);
CREATE INDEX audit_log_target ON audit_log (target, seq);
CREATE INDEX audit_log_action ON audit_log (action, seq);

-- The audit log is append-only for keyward itself; the hash chain catches anyone who
-- bypasses these triggers (a superuser can disable them).
CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only';
END;
$$;
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();

CREATE TABLE plans (
    plan_id     TEXT   PRIMARY KEY,
    limits      TEXT   NOT NULL,
    quota       TEXT,
    permissions TEXT   NOT NULL,
    version     BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);

-- The durable credit balance of a key. Nodes lease credits from it in blocks (see
-- keyward-engine's quota stage), so a crash can only lose credits already taken from here.
CREATE TABLE quota_balances (
    key_id    TEXT   PRIMARY KEY REFERENCES keys (key_id),
    remaining BIGINT NOT NULL,
    period    BIGINT
);
