-- Issue 12: a page of `GET /v1/keys` (and of root keys) is the keys of one kind after a cursor
-- in sequence order. Without this index SQLite's planner took keys_kind_tenant for `kind = ?`
-- and sorted every key of the kind to find the first page: linear in the key count (found by
-- bench/scale.sh). With it, a page is an index seek, whatever the page's depth.
CREATE INDEX keys_kind_seq ON keys (kind, seq);
