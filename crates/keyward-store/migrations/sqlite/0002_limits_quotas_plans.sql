-- Issue 3: per-key policy (plan, limits, quota, bindings), plans, and quota balances.
ALTER TABLE keys ADD COLUMN policy TEXT NOT NULL DEFAULT '{}';

CREATE TABLE plans (
    plan_id     TEXT    PRIMARY KEY,
    limits      TEXT    NOT NULL,
    quota       TEXT,
    permissions TEXT    NOT NULL,
    version     INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);

-- The durable credit balance of a key. Nodes lease credits from it in blocks (see
-- keyward-engine's quota stage), so a crash can only lose credits already taken from here.
CREATE TABLE quota_balances (
    key_id    TEXT    PRIMARY KEY REFERENCES keys (key_id),
    remaining INTEGER NOT NULL,
    period    INTEGER
);
