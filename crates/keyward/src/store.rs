//! Opening the store that `serve` and `gateway` use: the embedded SQLite store in a data
//! directory, or PostgreSQL when given a `postgres://` URL (`--store`, `KEYWARD_STORE`, or
//! `store` in the gateway config); and `keyward migrate`.

use std::path::Path;
use std::sync::Arc;

use anyhow::bail;
use keyward_store::{KeyStore, PostgresOptions, PostgresStore, SqliteStore};

/// The store a server runs on.
#[derive(Clone)]
#[allow(clippy::large_enum_variant)] // One per process; boxing buys nothing.
pub enum Store {
    Sqlite(SqliteStore),
    Postgres(PostgresStore),
}

/// Checks that `url` names PostgreSQL (the only store given by URL).
fn postgres_url(url: &str) -> anyhow::Result<&str> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(url)
    } else {
        // Not echoed: a mistyped URL may still hold a password.
        bail!("--store must be a postgres:// or postgresql:// URL")
    }
}

impl Store {
    /// Opens PostgreSQL at `url` with `options` if given, else SQLite in `data_dir`;
    /// migrations run either way.
    pub async fn open(
        url: Option<&str>,
        data_dir: &Path,
        options: PostgresOptions,
    ) -> anyhow::Result<Self> {
        Ok(match url {
            Some(url) => Self::Postgres(PostgresStore::connect(postgres_url(url)?, options).await?),
            None => Self::Sqlite(SqliteStore::open(data_dir).await?),
        })
    }

    /// The store as the engine takes it.
    pub fn shared(&self) -> Arc<dyn KeyStore> {
        match self {
            Self::Sqlite(store) => Arc::new(store.clone()),
            Self::Postgres(store) => Arc::new(store.clone()),
        }
    }

    /// Where the data is, for the startup line (never with credentials).
    pub fn describe(&self, data_dir: &Path) -> String {
        match self {
            Self::Sqlite(_) => format!("data in {}", data_dir.display()),
            Self::Postgres(store) => format!("store {}", store.location()),
        }
    }

    /// Closes the connections (flushing SQLite's WAL).
    pub async fn close(&self) {
        match self {
            Self::Sqlite(store) => store.close().await,
            Self::Postgres(store) => store.close().await,
        }
    }
}

/// `keyward migrate`: brings the PostgreSQL schema up to date and exits.
pub async fn migrate(url: &str) -> anyhow::Result<()> {
    PostgresStore::migrate(postgres_url(url)?, PostgresOptions::default()).await?;
    Ok(())
}
