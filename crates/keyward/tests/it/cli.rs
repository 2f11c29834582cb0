//! The CLI against a real `keyward serve` process: the README's walkthrough, JSON output,
//! and one-line errors with non-zero exits.

use serde_json::Value;

use crate::KEYWARD;

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn json(o: &std::process::Output) -> Value {
    assert!(
        o.status.success(),
        "{}{}",
        stdout(o),
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn readme_walkthrough() {
    let dir = tempfile::tempdir().unwrap();
    let server = KEYWARD.serve(dir.path());
    let root = server
        .root_key
        .clone()
        .expect("the first start prints a root key");
    assert!(
        server
            .stdout_lines
            .iter()
            .any(|l| l.contains("will not be shown again")),
        "{:?}",
        server.stdout_lines
    );

    let created = json(&server.cli(
        &root,
        &[
            "keys",
            "create",
            "--owner",
            "billing-team",
            "--permission",
            "orders.read",
            "--output",
            "json",
        ],
    ));
    let key = created["key"].as_str().unwrap().to_owned();
    let key_id = created["record"]["key_id"].as_str().unwrap().to_owned();

    let text = server.cli(
        &root,
        &[
            "keys", "create", "--owner", "ci", "--ttl", "1h", "--tag", "ci",
        ],
    );
    assert!(text.status.success());
    assert!(
        stdout(&text).starts_with("key             kw_live_"),
        "{}",
        stdout(&text)
    );
    assert!(String::from_utf8_lossy(&text.stderr).contains("will not be shown again"));

    let valid = server.cli(&root, &["verify", &key, "--permission", "orders.read"]);
    assert_eq!(valid.status.code(), Some(0));
    assert!(stdout(&valid).starts_with("VALID\n"), "{}", stdout(&valid));
    let denied = server.cli(
        &root,
        &[
            "verify",
            &key,
            "--permission",
            "orders.read",
            "--permission",
            "orders.write",
        ],
    );
    assert_eq!(denied.status.code(), Some(3));
    assert!(stdout(&denied).starts_with("INSUFFICIENT_PERMISSIONS"));

    let shown = json(&server.cli(&root, &["keys", "show", &key_id, "--output", "json"]));
    assert_eq!(shown["owner"], "billing-team");
    let updated = json(&server.cli(
        &root,
        &[
            "keys", "update", &key_id, "--name", "orders", "--output", "json",
        ],
    ));
    assert_eq!(updated["name"], "orders");
    let listed = json(&server.cli(
        &root,
        &[
            "keys",
            "list",
            "--owner",
            "billing-team",
            "--output",
            "json",
        ],
    ));
    assert_eq!(listed["keys"].as_array().unwrap().len(), 1);

    let rotated = json(&server.cli(
        &root,
        &[
            "keys", "rotate", &key_id, "--grace", "1h", "--output", "json",
        ],
    ));
    let new_key = rotated["key"].as_str().unwrap().to_owned();
    let old = json(&server.cli(&root, &["verify", &key, "--output", "json"]));
    assert_eq!(old["rotation"]["deprecated"], true);
    assert_eq!(
        server.cli(&root, &["verify", &new_key]).status.code(),
        Some(0)
    );

    let revoked = server.cli(&root, &["keys", "revoke", &key_id, "--reason", "leaked"]);
    assert!(revoked.status.success());
    for k in [&key, &new_key] {
        let after = server.cli(&root, &["verify", k, "--permission", "orders.read"]);
        assert_eq!(after.status.code(), Some(3));
        assert!(
            stdout(&after).starts_with("REVOKED\n"),
            "{}",
            stdout(&after)
        );
    }

    let audit = json(&server.cli(
        &root,
        &["audit", "list", "--key-id", &key_id, "--output", "json"],
    ));
    let actions: Vec<_> = audit["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        actions,
        ["key.create", "key.update", "key.rotate", "key.revoke"]
    );
    let chain = server.cli(&root, &["audit", "verify"]);
    assert_eq!(chain.status.code(), Some(0));
    assert!(stdout(&chain).starts_with("OK: "), "{}", stdout(&chain));

    let reader = json(&server.cli(
        &root,
        &[
            "root",
            "create",
            "--permission",
            "keys.read",
            "--output",
            "json",
        ],
    ));
    let reader_key = reader["key"].as_str().unwrap();
    assert!(server.cli(reader_key, &["keys", "list"]).status.success());
    let denied = server.cli(reader_key, &["keys", "create", "--owner", "x"]);
    assert_eq!(denied.status.code(), Some(1));
    let err = String::from_utf8(denied.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error: ") && err.contains("forbidden"),
        "{err}"
    );
    let roots = json(&server.cli(&root, &["root", "list", "--output", "json"]));
    assert_eq!(roots["keys"].as_array().unwrap().len(), 2);
    let reader_id = reader["record"]["key_id"].as_str().unwrap();
    assert!(
        server
            .cli(&root, &["root", "revoke", reader_id, "--reason", "done"])
            .status
            .success()
    );
    assert_eq!(
        server.cli(reader_key, &["keys", "list"]).status.code(),
        Some(1)
    );

    // The server logged every request of this session at debug level, and no secret.
    let log = server.log();
    assert!(
        log.contains("/v1/keys/verify"),
        "the log was captured: {log:.300}"
    );
    for secret in [root.as_str(), key.as_str(), new_key.as_str(), reader_key] {
        assert!(!log.contains(secret), "a key reached the log");
        assert!(
            !log.contains(&secret[secret.len() - 38..]),
            "a key's random part reached the log"
        );
    }
}

/// `--limit` and `--cursor` reach the list endpoints as their query parameters, and a page
/// says how to fetch the next one.
#[test]
fn list_commands_page_with_limit_and_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let server = KEYWARD.serve(dir.path());
    let root = server.root_key.clone().unwrap();
    for _ in 0..3 {
        json(&server.cli(
            &root,
            &["keys", "create", "--owner", "pager", "--output", "json"],
        ));
    }
    let page = |command: &[&str], extra: &[&str]| {
        let mut args = command.to_vec();
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--output", "json"]);
        json(&server.cli(&root, &args))
    };
    let keys = ["keys", "list", "--owner", "pager"];
    let first = page(&keys, &["--limit", "2"]);
    assert_eq!(first["keys"].as_array().unwrap().len(), 2, "{first}");
    let cursor = first["next_cursor"]
        .as_str()
        .expect("a next page")
        .to_owned();
    let second = page(&keys, &["--limit", "2", "--cursor", &cursor]);
    assert_eq!(second["keys"].as_array().unwrap().len(), 1, "{second}");
    assert!(second["next_cursor"].is_null(), "{second}");
    let ids = |p: &Value| -> Vec<String> {
        p["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["key_id"].as_str().unwrap().to_owned())
            .collect()
    };
    let mut all = ids(&first);
    all.extend(ids(&second));
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 3, "the two pages hold three different keys");

    let audit = ["audit", "list", "--action", "key.create"];
    let first = page(&audit, &["--limit", "1"]);
    assert_eq!(first["events"].as_array().unwrap().len(), 1, "{first}");
    let cursor = first["next_cursor"]
        .as_str()
        .expect("a next page")
        .to_owned();
    let rest = page(&audit, &["--cursor", &cursor]);
    assert_eq!(rest["events"].as_array().unwrap().len(), 2, "{rest}");

    let text = server.cli(&root, &["keys", "list", "--owner", "pager", "--limit", "1"]);
    assert!(text.status.success());
    assert!(
        stdout(&text).contains("next page: --cursor "),
        "{}",
        stdout(&text)
    );
}

#[test]
fn client_errors_are_one_line_and_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let server = KEYWARD.serve(dir.path());
    let root = server.root_key.clone().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["keys", "show", "../audit"], "is not a key_id"),
        (
            vec!["keys", "create", "--owner", "o", "--meta", "[1]"],
            "must be a JSON object",
        ),
        (
            vec!["keys", "create", "--owner", "o", "--ttl", "10y"],
            "not a duration",
        ),
        (
            vec!["keys", "create", "--owner", "o", "--permission", "a b"],
            "permissions[0]",
        ),
        (
            vec!["keys", "show", "key_00000000000000000000"],
            "key_not_found",
        ),
        (
            vec!["keys", "list", "--url", "https://example.invalid"],
            "http://",
        ),
    ];
    for (args, expected) in cases {
        let out = server.cli(&root, &args);
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(
            err.starts_with("error: ") && err.contains(expected),
            "{args:?}: {err}"
        );
    }
    let no_key = KEYWARD
        .command()
        .args(["keys", "list", "--url", &format!("http://{}", server.addr)])
        .env_remove("KEYWARD_ROOT_KEY")
        .output()
        .unwrap();
    assert_eq!(no_key.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&no_key.stderr).contains("KEYWARD_ROOT_KEY"));
    // Nothing listens on port 1.
    let unreachable = KEYWARD
        .command()
        .args(["keys", "list", "--url", "http://127.0.0.1:1"])
        .env("KEYWARD_ROOT_KEY", &root)
        .output()
        .unwrap();
    assert_eq!(unreachable.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&unreachable.stderr).starts_with("error: cannot reach keyward")
    );
}

#[test]
fn verify_reads_the_key_from_stdin() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let server = KEYWARD.serve(dir.path());
    let root = server.root_key.clone().unwrap();
    let created = json(&server.cli(
        &root,
        &["keys", "create", "--owner", "o", "--output", "json"],
    ));
    let mut child = KEYWARD
        .command()
        .args(["verify", "-"])
        .env("KEYWARD_URL", format!("http://{}", server.addr))
        .env("KEYWARD_ROOT_KEY", &root)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(
        child.stdin.take().unwrap(),
        "{}",
        created["key"].as_str().unwrap()
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout(&out).starts_with("VALID"));
}

#[test]
fn committed_help_text_is_current() {
    let commands: &[&[&str]] = &[
        &[],
        &["serve"],
        &["migrate"],
        &["keys"],
        &["keys", "create"],
        &["keys", "list"],
        &["keys", "show"],
        &["keys", "update"],
        &["keys", "rotate"],
        &["keys", "revoke"],
        &["verify"],
        &["audit"],
        &["audit", "list"],
        &["audit", "verify"],
        &["root"],
        &["root", "create"],
        &["root", "list"],
        &["root", "revoke"],
        &["simulate-leak"],
    ];
    let mut text = String::new();
    for args in commands {
        let out = KEYWARD
            .command()
            .args(args.iter())
            .arg("--help")
            .env_clear()
            .output()
            .unwrap();
        assert!(out.status.success());
        text.push_str(&format!("$ keyward {} --help\n", args.join(" ")).replace("  ", " "));
        text.push_str(&String::from_utf8(out.stdout).unwrap());
        text.push('\n');
    }
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/cli-help.txt");
    if std::env::var_os("KEYWARD_BLESS").is_some() {
        std::fs::create_dir_all(std::path::Path::new(path).parent().unwrap()).unwrap();
        std::fs::write(path, &text).unwrap();
    }
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == text,
        "docs/cli-help.txt is out of date; run `KEYWARD_BLESS=1 cargo test -p keyward` and commit it"
    );
}

/// The cluster example's env files name only settings `keyward serve` reads (a misspelled
/// variable would be silently ignored), and every node shares one store and one namespace.
#[test]
fn cluster_example_env_files_use_real_settings() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/cluster");
    let help = KEYWARD
        .command()
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    let mut shared = std::collections::BTreeSet::new();
    let mut listens = std::collections::BTreeSet::new();
    for node in ["a", "b", "c"] {
        let text = std::fs::read_to_string(format!("{dir}/node-{node}.env")).unwrap();
        for line in text
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        {
            let (name, value) = line.split_once('=').unwrap();
            assert!(
                // Values of secret-bearing settings are hidden: `[env: NAME]`.
                help.contains(&format!("[env: {name}="))
                    || help.contains(&format!("[env: {name}]")),
                "node-{node}.env sets {name}, which keyward serve does not read"
            );
            match name {
                "KEYWARD_LISTEN" => assert!(listens.insert(value.to_owned()), "{value} twice"),
                "KEYWARD_STORE" | "KEYWARD_REDIS" | "KEYWARD_REDIS_NAMESPACE" => {
                    shared.insert(format!("{name}={value}"));
                }
                _ => {}
            }
        }
    }
    assert_eq!(listens.len(), 3);
    assert_eq!(
        shared.len(),
        3,
        "one store, one Redis, one namespace: {shared:?}"
    );
}
