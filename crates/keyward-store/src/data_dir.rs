//! The embedded store's data directory is private to the user running keyward.
//!
//! It holds key hashes, every key's metadata and the audit log. Hashes of high-entropy keys
//! cannot be reversed, but metadata and audit history are for operators only, and a directory
//! others can write lets them swap the database (or plant a `-wal` file that SQLite would
//! replay) under a running server. So:
//!
//! - a directory keyward creates is made `0700`, and the database file `0600` before SQLite
//!   first opens it; SQLite gives its `-wal` and `-shm` files the database file's mode;
//! - an existing directory that group or others can write is refused with a clear error (the
//!   operator fixes it with `chmod`; keyward does not change a directory it did not make);
//! - existing database files readable by others (from a version before this rule) are narrowed
//!   to `0600`, with a warning.
//!
//! On platforms without Unix permissions only the directory is created.

use std::path::{Path, PathBuf};

use crate::StoreError;

/// The database files SQLite keeps in WAL mode, relative to the data directory.
/// The SQLite database file inside the data directory.
pub const DB_FILE: &str = "keyward.db";
const DB_FILES: [&str; 3] = [DB_FILE, "keyward.db-wal", "keyward.db-shm"];

/// Creates or checks `data_dir` as described in the module documentation; returns the path
/// of the database file.
pub(crate) fn prepare(data_dir: &Path) -> Result<PathBuf, StoreError> {
    let open_error = |reason: String| StoreError::Open {
        location: data_dir.display().to_string(),
        reason,
    };
    if !data_dir.exists() {
        create_private_dir(data_dir)
            .map_err(|e| open_error(format!("cannot create the data directory: {e}")))?;
    }
    let metadata = std::fs::metadata(data_dir)
        .map_err(|e| open_error(format!("cannot read the data directory: {e}")))?;
    if !metadata.is_dir() {
        return Err(open_error(
            "cannot create the data directory: a file of that name exists".into(),
        ));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = metadata.permissions().mode() & 0o7777;
        if mode & 0o022 != 0 {
            return Err(open_error(format!(
                "the data directory is writable by other users (mode {mode:04o}); \
                 make it private with: chmod 700 {}",
                data_dir.display()
            )));
        }
        for name in DB_FILES {
            narrow_file(&data_dir.join(name))
                .map_err(|e| open_error(format!("cannot make {name} private to this user: {e}")))?;
        }
    }
    let db = data_dir.join(DB_FILE);
    #[cfg(unix)]
    if !db.exists() {
        use std::os::unix::fs::OpenOptionsExt as _;
        // An empty file is an empty SQLite database; creating it here fixes its mode before
        // SQLite (which would use 0644 less the umask) creates it, and its journals follow it.
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&db)
        {
            Ok(_) => {}
            // Another process created it meanwhile: it was checked by that process.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(open_error(format!("cannot create {}: {e}", db.display()))),
        }
    }
    Ok(db)
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    // Parents created on the way get 0700 too: nothing else of keyward's lives there.
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)
}

/// Narrows an existing file to `0600`; a missing file is fine.
#[cfg(unix)]
fn narrow_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let metadata = match std::fs::metadata(path) {
        Ok(metadata) => metadata,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let mode = metadata.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        tracing::warn!(
            file = %path.display(),
            mode = format_args!("{mode:04o}"),
            "the store file was readable by other users; narrowed it to 0600"
        );
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

#[cfg(test)]
#[cfg(unix)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use keyward_core::key::KeyHash;

    use crate::{KeyStore, SqliteStore, StoreError};

    fn mode(path: &std::path::Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    /// Issue 10, finding 8: the directory and every database file were world-readable
    /// (0755 and 0644).
    #[tokio::test]
    async fn finding_8_data_dir_and_files_are_private() {
        let parent = tempfile::tempdir().unwrap();
        std::fs::set_permissions(parent.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let dir = parent.path().join("keyward-data");
        let store = SqliteStore::open(&dir).await.unwrap();
        // A write makes SQLite create its -wal and -shm files.
        store
            .write_key(crate::testsuite::new_key_write(
                "key_AAAAAAAAAAAAAAAAAAAA",
                "kw_live_private",
            ))
            .await
            .unwrap();
        assert_eq!(mode(&dir), 0o700);
        for name in super::DB_FILES {
            let path = dir.join(name);
            assert!(path.exists(), "{name} was not created");
            assert_eq!(mode(&path), 0o600, "{name}");
        }
        store.close().await;
    }

    #[tokio::test]
    async fn finding_8_a_data_dir_others_can_write_is_refused() {
        for open in [0o777, 0o775, 0o1777, 0o757] {
            let dir = tempfile::tempdir().unwrap();
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(open)).unwrap();
            let err = SqliteStore::open(dir.path()).await.unwrap_err();
            assert!(matches!(err, StoreError::Open { .. }), "{err}");
            let text = err.to_string();
            assert!(text.contains("writable by other users"), "{open:o}: {text}");
            assert!(text.contains("chmod 700"), "{text}");
            // Nothing was created in a directory that was refused.
            assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        }
    }

    #[tokio::test]
    async fn finding_8_files_from_before_are_narrowed_and_still_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).await.unwrap();
        store
            .write_key(crate::testsuite::new_key_write(
                "key_AAAAAAAAAAAAAAAAAAAB",
                "kw_live_older",
            ))
            .await
            .unwrap();
        store.close().await;
        drop(store);
        let db = dir.path().join(super::DB_FILE);
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
        // A group-readable directory is allowed (only writability is refused).
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o750)).unwrap();
        let store = SqliteStore::open(dir.path()).await.unwrap();
        assert_eq!(mode(&db), 0o600);
        let found = store
            .find_by_hash(&KeyHash::sha256_of("kw_live_older"), crate::testsuite::T0)
            .await
            .unwrap();
        assert!(found.is_some());
        store.close().await;
    }
}
