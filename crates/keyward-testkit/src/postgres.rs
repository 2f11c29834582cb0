//! A PostgreSQL schema of one test, so tests run in parallel against one database.
//!
//! The server comes from `KEYWARD_TEST_POSTGRES_URL` (for example
//! `postgres://postgres@127.0.0.1:5432/test`); see the crate docs for what happens without
//! it. The fixture hands out plain strings (the URL, the schema name, a `--store` value): the
//! store's own tests build their `PostgresStore` from them.

use sqlx::Connection;

/// A schema of one test. Nothing creates it here (the store's migrations do, on first
/// connect); [`Schema::drop`] removes it at the end.
pub struct Schema {
    /// The server's URL, as configured.
    pub url: String,
    /// The schema's name, unique to this test.
    pub schema: String,
}

impl Schema {
    /// A fresh schema name on the test server, or `None` (after saying so) when none is
    /// configured.
    pub fn new(test: &str) -> Option<Self> {
        let url = crate::service::url(
            "KEYWARD_TEST_POSTGRES_URL",
            "postgres://postgres@127.0.0.1:5432/test",
            test,
        )?;
        let schema = crate::service::unique("kwtest", '_');
        Some(Self { url, schema })
    }

    /// The URL with this schema selected (`?schema=`): what `keyward serve --store` takes.
    pub fn store_url(&self) -> String {
        let sep = if self.url.contains('?') { '&' } else { '?' };
        format!("{}{sep}schema={}", self.url, self.schema)
    }

    /// The database server's address (the URL's host and port; loopback in tests).
    pub fn server(&self) -> std::net::SocketAddr {
        let after_at = self
            .url
            .rsplit_once('@')
            .map_or(self.url.as_str(), |(_, h)| h);
        let after_scheme = after_at.rsplit_once("://").map_or(after_at, |(_, h)| h);
        let host_port = after_scheme.split(['/', '?']).next().unwrap();
        let host_port = if host_port.contains(':') {
            host_port.to_owned()
        } else {
            format!("{host_port}:5432")
        };
        std::net::ToSocketAddrs::to_socket_addrs(&host_port)
            .unwrap()
            .next()
            .unwrap()
    }

    /// [`Schema::store_url`], reaching the server through `via` (a [`crate::proxy::CutProxy`])
    /// instead.
    pub fn store_url_via(&self, via: std::net::SocketAddr) -> String {
        let server = self.server();
        let store = self.store_url();
        let host = self
            .url
            .split("://")
            .nth(1)
            .unwrap()
            .split(['/', '?'])
            .next()
            .unwrap();
        let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
        assert!(server.ip().is_loopback());
        store.replacen(host, &via.to_string(), 1)
    }

    /// Runs one statement outside any store, as an operator would.
    pub async fn admin(&self, sql: &str) {
        let mut conn = sqlx::PgConnection::connect(&self.url).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
            .execute(&mut conn)
            .await
            .unwrap();
        let _ = conn.close().await;
    }

    /// Drops the schema and everything in it. The schema must exist: a test that never
    /// reached the database fails here.
    pub async fn drop(self) {
        self.admin(&format!("DROP SCHEMA \"{}\" CASCADE", self.schema))
            .await;
    }
}
