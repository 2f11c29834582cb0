//! The first root key of an empty store: created once, shown once.
//!
//! By default it is printed to standard output, which is right for a terminal but wrong under a
//! service manager (systemd's journal, a container runtime's log driver) that ships standard
//! output to a log store. `--bootstrap-key-file PATH` (gateway: `bootstrap_key_file`) writes it
//! to a file of mode `0600` instead and prints only its key_id and the path:
//!
//! - the file is created (`O_CREAT | O_EXCL`) *before* the key is minted, so a key is never
//!   created that has nowhere to go; if no key was created (the store already had one) the
//!   empty file is removed again;
//! - an existing file is never overwritten: if it exists and the store already has a root key
//!   (a restart), nothing happens; if it exists and the store has none, keyward refuses to
//!   start rather than mint a key it cannot store.

use std::io::Write as _;
use std::path::Path;

use anyhow::{Context, bail};
use keyward_engine::{Created, Keyward};

/// Creates the first root key if the store has none and hands it to the operator: in
/// `key_file` if given, else on standard output (never to the log).
pub async fn announce(engine: &Keyward, key_file: Option<&Path>) -> anyhow::Result<()> {
    let Some(path) = key_file else {
        if let Some(root) = engine
            .bootstrap()
            .await
            .context("creating the first root key")?
        {
            print_key(&root);
        }
        return Ok(());
    };
    let mut file = match create_private(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            if engine
                .has_root_key()
                .await
                .context("reading the store's root keys")?
            {
                return Ok(());
            }
            bail!(
                "the bootstrap key file {} already exists and the store has no root key yet; \
                 keyward never overwrites it: move it away or pass another path",
                path.display()
            );
        }
        Err(e) => {
            return Err(e).with_context(|| {
                format!("cannot create the bootstrap key file {}", path.display())
            });
        }
    };
    let root = match engine.bootstrap().await {
        Ok(Some(root)) => root,
        Ok(None) => {
            drop(file);
            remove_unused(path);
            return Ok(());
        }
        Err(e) => {
            drop(file);
            remove_unused(path);
            return Err(e).context("creating the first root key");
        }
    };
    let written = writeln!(file, "{}", root.key.expose()).and_then(|()| file.sync_all());
    if let Err(e) = written {
        // The key exists in the store now; losing it would lock the operator out, so it goes
        // to standard output after all, with the reason.
        eprintln!(
            "error: writing the bootstrap key file {} failed ({e}); the key follows on standard output",
            path.display()
        );
        print_key(&root);
        return Ok(());
    }
    println!(
        "keyward: created the first root key ({}), with all permissions, and wrote it to {} (mode 0600)",
        root.record.key_id,
        path.display()
    );
    Ok(())
}

fn print_key(root: &Created) {
    println!(
        "keyward: created the first root key ({}), with all permissions:",
        root.record.key_id
    );
    println!();
    println!("    {}", root.key.expose());
    println!();
    println!("This root key will not be shown again. Store it now, for example:");
    println!("    export KEYWARD_ROOT_KEY=<the key above>");
}

#[cfg(unix)]
fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
}

/// Removes the empty file this process created and did not need.
fn remove_unused(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        tracing::warn!(path = %path.display(), error = %e, "removing the unused bootstrap key file failed");
    }
}
