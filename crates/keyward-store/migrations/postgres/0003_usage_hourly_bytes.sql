-- Issue 12: usage rows are ordered bytewise by key_id and code (as SQLite orders them), and an
-- hourly page reads them in (hour, key_id, code) order from its cursor (LIST_USAGE_HOURLY in
-- src/dialect.rs). With the columns in the "C" collation the primary key's index is in that
-- order, so a page is an index seek and needs no sort, whatever the database's collation and
-- whether or not the planner has statistics yet. (This rewrites the table and its indexes once.)
ALTER TABLE usage_hourly
    ALTER COLUMN key_id TYPE TEXT COLLATE "C",
    ALTER COLUMN code TYPE TEXT COLLATE "C";
