//! The server as a process: durability across SIGKILL, and clear startup errors.

use crate::KEYWARD;

#[test]
fn acknowledged_key_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let server = KEYWARD.serve(dir.path());
    let root = server.root_key.clone().unwrap();
    let created = server.cli(
        &root,
        &["keys", "create", "--owner", "o", "--output", "json"],
    );
    assert!(created.status.success());
    let created: serde_json::Value = serde_json::from_slice(&created.stdout).unwrap();
    let key = created["key"].as_str().unwrap().to_owned();
    server.kill();

    let restarted = KEYWARD.serve(dir.path());
    assert_eq!(
        restarted.root_key, None,
        "the root key is printed only on the first start of an empty store"
    );
    let verified = restarted.cli(&root, &["verify", &key]);
    assert_eq!(
        verified.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&verified.stdout)
    );
    assert!(String::from_utf8_lossy(&verified.stdout).starts_with("VALID"));
}

fn serve_fails(data_dir: &std::path::Path) -> String {
    let out = KEYWARD
        .command()
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains("error: "), "{err}");
    err
}

#[test]
fn corrupt_data_directory_is_a_clear_startup_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("keyward.db"), vec![0x42u8; 8192]).unwrap();
    let err = serve_fails(dir.path());
    assert!(
        err.contains("keyward.db") && err.contains("not a database"),
        "{err}"
    );
}

#[test]
fn data_directory_that_is_a_file_is_a_clear_startup_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let err = serve_fails(&file);
    assert!(err.contains("cannot create the data directory"), "{err}");
}

#[test]
fn unusable_listen_address_is_a_clear_startup_error() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = KEYWARD
        .command()
        .args(["serve", "--listen", &addr, "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("cannot listen on {addr}")));
}

#[test]
fn listen_address_and_data_dir_come_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("from-env");
    let server = KEYWARD.start(
        &["serve"],
        &[
            ("KEYWARD_LISTEN", "127.0.0.1:0"),
            ("KEYWARD_DATA_DIR", data.to_str().unwrap()),
        ],
        dir.path(),
        "listening on",
    );
    let listening = server.stdout_lines.last().unwrap().clone();
    server.kill();
    assert!(listening.contains("http://127.0.0.1:"), "{listening}");
    assert!(listening.contains("from-env"), "{listening}");
    assert!(data.join("keyward.db").exists());
}

/// Issue 10, finding 9: the bootstrap root key went only to standard output, which service
/// managers ship to log stores. With `--bootstrap-key-file` it goes to a 0600 file instead.
#[test]
fn finding_9_bootstrap_key_goes_to_a_private_file_not_stdout() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let key_file = dir.path().join("root-key");
    let args = [
        "--data-dir",
        data.to_str().unwrap(),
        "--bootstrap-key-file",
        key_file.to_str().unwrap(),
    ];
    let mut server = KEYWARD.serve_with(&args, dir.path());
    assert_eq!(server.root_key, None, "{:?}", server.stdout_lines);
    assert!(
        server
            .stdout_lines
            .iter()
            .any(|l| l.contains("wrote it to") && l.contains("root-key")),
        "{:?}",
        server.stdout_lines
    );
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let root = std::fs::read_to_string(&key_file)
        .unwrap()
        .trim()
        .to_owned();
    assert!(root.starts_with("kwroot_"), "{root}");
    assert!(
        !server.log().contains(&root),
        "the root key reached the log"
    );
    let listed = server.cli(&root, &["root", "list"]);
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    server.terminate();

    // A restart on the same store and file: the file is kept as it is, no new key.
    let restarted = KEYWARD.serve_with(&args, dir.path());
    assert_eq!(restarted.root_key, None);
    assert_eq!(std::fs::read_to_string(&key_file).unwrap().trim(), root);
    assert!(restarted.cli(&root, &["root", "list"]).status.success());
}

#[test]
fn finding_9_an_existing_bootstrap_key_file_is_never_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("root-key");
    std::fs::write(&key_file, "operator's own notes\n").unwrap();
    let out = KEYWARD
        .command()
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--bootstrap-key-file")
        .arg(&key_file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("already exists") && err.contains("never overwrites"),
        "{err}"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("kwroot_"));
    assert_eq!(
        std::fs::read_to_string(&key_file).unwrap(),
        "operator's own notes\n"
    );

    // A store that already has a root key leaves no empty file behind either.
    let fresh = tempfile::tempdir().unwrap();
    let data = fresh.path().join("data");
    let mut first = KEYWARD.serve(&data);
    assert!(first.root_key.is_some());
    first.terminate();
    let unused = fresh.path().join("unused-key-file");
    let again = KEYWARD.serve_with(
        &[
            "--data-dir",
            data.to_str().unwrap(),
            "--bootstrap-key-file",
            unused.to_str().unwrap(),
        ],
        fresh.path(),
    );
    assert_eq!(again.root_key, None);
    assert!(!unused.exists(), "an empty key file was left behind");
}
