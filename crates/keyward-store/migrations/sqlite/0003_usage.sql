-- Issue 5: usage for billing. Verifications per key, hour (Unix milliseconds of the UTC hour's
-- start) and outcome code, with the credits they spent. Nodes add their counts to these rows
-- in batches (see keyward-engine's usage buffer); days are summed from hours on reading.
-- owner and tenant are the key's as of its latest counted use in that hour, so a report for an
-- owner bills what was used while the key was theirs.
CREATE TABLE usage_hourly (
    hour          INTEGER NOT NULL,
    key_id        TEXT    NOT NULL,
    code          TEXT    NOT NULL,
    owner         TEXT    NOT NULL,
    tenant        TEXT,
    verifications INTEGER NOT NULL,
    credits       INTEGER NOT NULL,
    PRIMARY KEY (hour, key_id, code)
);
CREATE INDEX usage_hourly_by_key ON usage_hourly (key_id, hour);
