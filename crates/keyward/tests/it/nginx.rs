//! The shipped nginx example (`examples/nginx/keyward.conf`) against a real nginx: auth_request
//! to keyward's `/v1/auth`, identity headers upstream, and limit refusals turned into 429.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use serde_json::json;

use crate::gateway::upstream;
use keyward_testkit::http::Http;
use keyward_testkit::server::Server;

/// Kills nginx when the test ends, whatever happens.
struct Nginx(Child);

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn nginx_binary() -> Option<String> {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .find(|p| std::path::Path::new(p).exists())
        .map(|p| (*p).to_owned())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread")]
async fn nginx_auth_request_with_the_shipped_config() {
    let Some(nginx) = nginx_binary() else {
        // .ci/run installs it.
        keyward_testkit::skip(
            "nginx_auth_request_with_the_shipped_config",
            "nginx is not installed (apt-get install nginx)",
        );
        return;
    };
    let s = Server::start().await;
    let app = upstream().await;
    let root = s
        .admin(
            "POST",
            "/v1/root-keys",
            Some(json!({"owner": "nginx", "permissions": ["keys.verify"]})),
        )
        .await;
    let root_key = root.json()["key"].as_str().unwrap().to_owned();
    let prefix = tempfile::tempdir().unwrap();
    let port = free_port();
    let keyward = s.http.base.trim_start_matches("http://").to_owned();
    let template = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/nginx/keyward.conf"
    ))
    .unwrap();
    let conf = template
        .replace("{{LISTEN}}", &format!("127.0.0.1:{port}"))
        .replace("{{KEYWARD}}", &keyward)
        .replace("{{APP}}", &app.to_string())
        .replace("{{ROOT_KEY}}", &root_key)
        .replace("{{PREFIX}}", &prefix.path().display().to_string());
    let conf_path = prefix.path().join("nginx.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let mut child = Command::new(&nginx)
        .arg("-p")
        .arg(prefix.path())
        .arg("-c")
        .arg(&conf_path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let _guard = Nginx(child);
    // nginx logs "start worker process" once its sockets are bound; EOF means it failed.
    let mut lines = BufReader::new(stderr).lines();
    let mut seen = Vec::new();
    loop {
        let line = lines
            .next()
            .unwrap_or_else(|| panic!("nginx exited: {seen:?}"))
            .unwrap();
        if line.contains("start worker process") {
            break;
        }
        seen.push(line);
    }
    std::thread::spawn(move || lines.for_each(drop));

    let (key, key_id) = s
        .create(json!({"owner": "billing", "tenant": "acme", "permissions": ["orders.read"], "limits": [{"name": "per_minute", "limit": 2, "period_seconds": 60}]}))
        .await;
    let (no_perm, _) = s
        .create(json!({"owner": "o", "permissions": ["users.read"]}))
        .await;
    let edge = Http::new(format!("127.0.0.1:{port}").parse().unwrap());

    let r = edge.raw("GET", "/orders/7", None, None).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("x-keyward-code"), "");
    assert_eq!(r.json()["code"], "unauthenticated_key");
    assert_eq!(
        edge.raw("GET", "/orders/7", Some("kw_live_nope"), None)
            .await
            .status,
        401
    );

    // Finding 12 of issue 10: the client's own X-Keyward-* headers reached the app.
    let bearer = format!("Bearer {key}");
    let forged = [
        ("authorization", bearer.as_str()),
        ("x-keyward-owner", "mallory"),
        ("x-keyward-key-id", "key_forged"),
        ("x-keyward-code", "VALID"),
        ("x-keyward-root-key", "forged"),
        ("x_keyward_owner", "mallory"),
    ];
    let ok = edge.raw_with_headers("GET", "/orders/7?x=1", &forged).await;
    assert_eq!(ok.status, 200, "{}", String::from_utf8_lossy(&ok.body));
    let echoed = ok.json();
    assert_eq!(echoed["path"], "/orders/7");
    assert_eq!(echoed["headers"]["x-keyward-key-id"], key_id.as_str());
    assert_eq!(echoed["headers"]["x-keyward-owner"], "billing");
    assert_eq!(echoed["headers"]["x-keyward-tenant"], "acme");
    for gone in ["x-keyward-code", "x-keyward-root-key", "x_keyward_owner"] {
        assert!(echoed["headers"].get(gone).is_none(), "{gone}: {echoed}");
    }
    assert!(
        echoed["headers"].get("authorization").is_none(),
        "nginx does not forward the key"
    );
    // A key without a tenant: the client's X-Keyward-Tenant is dropped, not passed on.
    let (untenanted, _) = s
        .create(json!({"owner": "o", "permissions": ["orders.read"]}))
        .await;
    let bearer = format!("Bearer {untenanted}");
    let r = edge
        .raw_with_headers(
            "GET",
            "/orders/1",
            &[("authorization", &bearer), ("x-keyward-tenant", "victim")],
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(
        r.json()["headers"].get("x-keyward-tenant").is_none(),
        "{}",
        r.json()
    );

    let denied = edge.raw("GET", "/orders/7", Some(&no_perm), None).await;
    assert_eq!(denied.status, 403);
    assert_eq!(denied.header("x-keyward-code"), "INSUFFICIENT_PERMISSIONS");
    assert_eq!(denied.json()["code"], "forbidden_key");

    assert_eq!(
        edge.raw("GET", "/orders/8", Some(&key), None).await.status,
        200
    );
    let limited = edge.raw("GET", "/orders/9", Some(&key), None).await;
    assert_eq!(
        limited.status,
        429,
        "{}",
        String::from_utf8_lossy(&limited.body)
    );
    assert_eq!(limited.header("retry-after"), "30");
    assert_eq!(limited.header("x-keyward-code"), "RATE_LIMITED");
    assert_eq!(limited.header("ratelimit"), "\"per_minute\";r=0;t=30");
    assert_eq!(
        limited.header("ratelimit-policy"),
        "\"per_minute\";q=2;w=60"
    );
    assert_eq!(limited.header("content-type"), "application/problem+json");
    assert_eq!(limited.json()["code"], "rate_limited");

    // Finding 1: nginx's location matches `..;` (not a dot segment to nginx), keyward refuses
    // the path, and the config turns the refusal into a 400.
    let (reader, _) = s
        .create(json!({"owner": "o", "permissions": ["orders.read"], "routes": ["GET /orders/public/**"]}))
        .await;
    let sneaky = edge
        .raw("GET", "/orders/public/..;/admin", Some(&reader), None)
        .await;
    assert_eq!(
        sneaky.status,
        400,
        "{}",
        String::from_utf8_lossy(&sneaky.body)
    );
    assert_eq!(sneaky.header("x-keyward-code"), "INVALID_PATH");
    assert_eq!(sneaky.json()["code"], "invalid_request");
}

/// Finding 12 of issue 10, kept from coming back: every `x-keyward-*` name keyward's HTTP code
/// uses is set or cleared by `proxy_set_header` in the shipped example's protected location
/// (stock nginx cannot clear headers by pattern, so the names are listed one by one; a new
/// name in the source without a line in the example fails here).
#[test]
fn finding_12_the_nginx_example_sets_or_clears_every_keyward_header() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let example = std::fs::read_to_string(format!("{root}/examples/nginx/keyward.conf")).unwrap();
    let location = example
        .split("location /orders/ {")
        .nth(1)
        .and_then(|rest| rest.split("\n        }").next())
        .unwrap()
        .to_ascii_lowercase();
    let mut names = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir(format!("{root}/crates/keyward-http/src")).unwrap() {
        let source = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        // The product's names, not the forged ones of unit tests.
        let source = source.split("#[cfg(test)]").next().unwrap_or_default();
        for (i, _) in source.match_indices("\"x-keyward-") {
            let name: String = source[i + 1..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            if name.len() > "x-keyward-".len() {
                names.insert(name.to_ascii_lowercase());
            }
        }
    }
    assert!(names.len() >= 5, "{names:?}");
    for name in names {
        assert!(
            location.contains(&format!("proxy_set_header {name} ")),
            "examples/nginx/keyward.conf does not set or clear {name} for the app"
        );
    }
}
