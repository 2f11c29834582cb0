-- Issue 12: hourly usage pages are read in bytewise (key_id, code) order within each hour, as
-- SQLite orders them, so a page seeks this index from its cursor instead of summing every row
-- of the window (see LIST_USAGE_HOURLY in src/dialect.rs). The primary key's index is in the
-- database's collation, which need not be bytewise.
CREATE INDEX usage_hourly_by_hour_bytes ON usage_hourly (hour, key_id COLLATE "C", code COLLATE "C");
