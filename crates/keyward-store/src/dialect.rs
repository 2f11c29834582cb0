//! The SQL that must differ between the two backends, side by side. Everything else both run
//! from one text (see `statement.rs`); a statement lands here only when a backend cannot read
//! the other's: JSON is read with different functions, and PostgreSQL compares text by the
//! database's collation unless told to compare bytes, as SQLite does.

use sqlx::Database;

/// What a backend says about itself that sqlx's [`Database`] does not, and its SQL where it
/// differs.
pub(crate) trait Dialect: Database {
    /// How many rows a statement changed.
    fn rows_affected(result: &Self::QueryResult) -> u64;

    /// Counts (as `n`) the unrevoked keys whose JSON policy names the plan `$1`.
    const COUNT_KEYS_ON_PLAN: &'static str;

    /// The secrets live at `$2` of the keys whose key_ids are in the JSON array `$1`, each
    /// key's current secret (no end) first, then the newest first.
    const SECRETS_OF_KEYS: &'static str;

    /// Usage rows summed per bucket of `$1` ms between `$2` and `$3`, filtered by key_id `$4`,
    /// owner `$5` and tenant `$6` (each when not null), after the cursor (`$7`, `$8`, `$9`)
    /// with text compared bytewise, at most `$10` of them (see `usage.rs`).
    const LIST_USAGE: &'static str;

    /// [`Self::LIST_USAGE`] for hourly buckets, where each bucket of a key and code is one
    /// stored row: the rows before `$1` filtered by key_id `$2`, owner `$3` and tenant `$4`,
    /// after (`$5`, `$6`, `$7`) bytewise, at most `$8`. They are read in (hour, key_id, code)
    /// order from that start, an index seek, so a page costs its own rows, not every row of
    /// the window (which the grouping query sums before it can apply the cursor). The start is
    /// the cursor or, before it, (`from`, "", ""): one row-value bound the index can seek.
    const LIST_USAGE_HOURLY: &'static str;
}

impl Dialect for sqlx::Sqlite {
    fn rows_affected(result: &Self::QueryResult) -> u64 {
        result.rows_affected()
    }

    const COUNT_KEYS_ON_PLAN: &'static str = "SELECT COUNT(*) AS n FROM keys
         WHERE json_extract(policy, '$.plan') = $1 AND revoked_at IS NULL";

    const SECRETS_OF_KEYS: &'static str =
        "SELECT key_id, hash, hash_version, start, created_at, expires_at FROM secrets
         WHERE key_id IN (SELECT value FROM json_each($1)) AND (expires_at IS NULL OR expires_at > $2)
         ORDER BY key_id, expires_at IS NOT NULL, created_at DESC";

    const LIST_USAGE: &'static str =
        "SELECT bucket, key_id, code, owner, tenant, verifications, credits FROM (
           SELECT (hour / $1) * $1 AS bucket, key_id, code,
                  MAX(owner) AS owner, MAX(tenant) AS tenant,
                  CAST(SUM(verifications) AS BIGINT) AS verifications,
                  CAST(SUM(credits) AS BIGINT) AS credits
           FROM usage_hourly
           WHERE hour >= $2 AND hour < $3 AND ($4 IS NULL OR key_id = $4)
             AND ($5 IS NULL OR owner = $5) AND ($6 IS NULL OR tenant = $6)
           GROUP BY 1, 2, 3
         ) AS t
         WHERE bucket > $7 OR (bucket = $7 AND (key_id > $8 OR (key_id = $8 AND code > $9)))
         ORDER BY bucket, key_id, code LIMIT $10";

    // The row value comparison seeks the primary key (hour, key_id, code) from the start.
    const LIST_USAGE_HOURLY: &'static str =
        "SELECT hour AS bucket, key_id, code, owner, tenant, verifications, credits
         FROM usage_hourly
         WHERE hour < $1 AND ($2 IS NULL OR key_id = $2)
           AND ($3 IS NULL OR owner = $3) AND ($4 IS NULL OR tenant = $4)
           AND (hour, key_id, code) > ($5, $6, $7)
         ORDER BY hour, key_id, code LIMIT $8";
}

impl Dialect for sqlx::Postgres {
    fn rows_affected(result: &Self::QueryResult) -> u64 {
        result.rows_affected()
    }

    const COUNT_KEYS_ON_PLAN: &'static str = "SELECT COUNT(*) AS n FROM keys
         WHERE (policy::jsonb ->> 'plan') = $1 AND revoked_at IS NULL";

    // The JSON array becomes a text[] once (an init plan), so `= ANY` still uses the index
    // on secrets.key_id.
    const SECRETS_OF_KEYS: &'static str =
        "SELECT key_id, hash, hash_version, start, created_at, expires_at FROM secrets
         WHERE key_id = ANY(ARRAY(SELECT json_array_elements_text($1::json)))
           AND (expires_at IS NULL OR expires_at > $2)
         ORDER BY key_id, expires_at IS NOT NULL, created_at DESC";

    // Text is compared bytewise (COLLATE "C"), as on SQLite, so pages split the same way
    // whatever the database's collation.
    const LIST_USAGE: &'static str = r#"SELECT bucket, key_id, code, owner, tenant, verifications, credits FROM (
             SELECT (hour / $1) * $1 AS bucket, key_id COLLATE "C" AS key_id,
                    code COLLATE "C" AS code, max(owner) AS owner, max(tenant) AS tenant,
                    sum(verifications)::bigint AS verifications,
                    sum(credits)::bigint AS credits
             FROM usage_hourly
             WHERE hour >= $2 AND hour < $3 AND ($4::text IS NULL OR key_id = $4)
               AND ($5::text IS NULL OR owner = $5) AND ($6::text IS NULL OR tenant = $6)
             GROUP BY 1, 2, 3
           ) AS t
           WHERE bucket > $7 OR (bucket = $7 AND (key_id > $8 OR (key_id = $8 AND code > $9)))
           ORDER BY bucket, key_id, code LIMIT $10"#;

    // key_id and code are in the "C" collation (migration 0003): the primary key's index is
    // in bytewise order, as SQLite's, and the row comparison seeks it from the start.
    const LIST_USAGE_HOURLY: &'static str = r#"SELECT hour AS bucket, key_id, code, owner, tenant,
                    verifications, credits
             FROM usage_hourly
             WHERE hour < $1 AND ($2::text IS NULL OR key_id = $2)
               AND ($3::text IS NULL OR owner = $3) AND ($4::text IS NULL OR tenant = $4)
               AND (hour, key_id, code) > ($5, $6::text, $7::text)
             ORDER BY hour, key_id, code LIMIT $8"#;
}
