-- Issue 5: usage for billing (the same table as SQLite's 0003_usage.sql). Verifications per
-- key, hour (Unix milliseconds of the UTC hour's start) and outcome code, with the credits
-- they spent. Nodes add their counts to these rows in batches (see keyward-engine's usage
-- buffer); days are summed from hours on reading. owner and tenant are the key's as of its
-- latest counted use in that hour.
CREATE TABLE usage_hourly (
    hour          BIGINT NOT NULL,
    key_id        TEXT   NOT NULL,
    code          TEXT   NOT NULL,
    owner         TEXT   NOT NULL,
    tenant        TEXT,
    verifications BIGINT NOT NULL,
    credits       BIGINT NOT NULL,
    PRIMARY KEY (hour, key_id, code)
);
CREATE INDEX usage_hourly_by_key ON usage_hourly (key_id, hour);
