//! Issue 10's edge findings against the real listeners: what the gateway tells its upstream
//! (finding 2), client `X-Keyward-*` headers (finding 12), trusted proxies and the PROXY
//! protocol (finding 14), the owner's header encoding and `/metrics`'s host check. Slow and
//! excess connections (finding 3) are in `connections.rs`, with the raw-socket helpers here.

use std::net::SocketAddr;
use std::time::Duration;

use keyward_http::listener::{Connections, ListenerConfig};
use keyward_http::trusted_proxy::TrustedProxies;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::gateway::{gateway_on, route, upstream};
use keyward_testkit::http::Http;
use keyward_testkit::server::Server;

/// Longest any test here waits for the server to act: generous, never a timing assertion.
pub(crate) const DEADLINE: Duration = Duration::from_secs(20);

pub(crate) fn connections(
    name: &'static str,
    adjust: impl FnOnce(&mut ListenerConfig),
) -> Connections {
    let mut config = ListenerConfig::default();
    adjust(&mut config);
    Connections::new(name, config).unwrap()
}

pub(crate) fn addr_of(http: &Http) -> SocketAddr {
    http.base.trim_start_matches("http://").parse().unwrap()
}

pub(crate) fn trusting(blocks: &[&str]) -> TrustedProxies {
    TrustedProxies::parse(blocks).unwrap()
}

/// Reads until the server closes the connection (EOF or reset) and returns what it sent;
/// panics if it is still open at the deadline.
pub(crate) async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut received = Vec::new();
    let closed = tokio::time::timeout(DEADLINE, async {
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the server kept the connection open; it sent {:?}",
        String::from_utf8_lossy(&received)
    );
    received
}

/// Sends one request on `stream` and reads one response with a Content-Length body; returns
/// the status line and the body.
pub(crate) async fn exchange(stream: &mut TcpStream, request: &str) -> (String, String) {
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    let read = tokio::time::timeout(DEADLINE, async {
        loop {
            if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buffer[..end]).to_string();
                let length: usize = head
                    .lines()
                    .find_map(|l| {
                        let (name, value) = l.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse().ok())?
                    })
                    .unwrap_or(0);
                if buffer.len() >= end + 4 + length {
                    let body = String::from_utf8_lossy(&buffer[end + 4..end + 4 + length]);
                    let status = head.lines().next().unwrap_or_default().to_owned();
                    return (status, body.into_owned());
                }
            }
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(
                n > 0,
                "closed mid-response: {:?}",
                String::from_utf8_lossy(&buffer)
            );
            buffer.extend_from_slice(&chunk[..n]);
        }
    })
    .await;
    read.expect("no response before the deadline")
}

/// Writes `bytes` one at a time, `gap` apart, until they run out or the server closes.
pub(crate) fn trickle(mut writer: tokio::net::tcp::OwnedWriteHalf, bytes: Vec<u8>, gap: Duration) {
    tokio::spawn(async move {
        for b in bytes {
            if writer.write_all(&[b]).await.is_err() {
                return;
            }
            tokio::time::sleep(gap).await;
        }
    });
}

// ---- Finding 2 ----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn finding_2_the_clients_host_and_forwarding_headers_do_not_reach_the_upstream() {
    let s = Server::start().await;
    let up = upstream().await;
    let mut named = route("/named", up, None);
    named.host = Some("orders.internal:8443".into());
    let gw = Http::new(
        gateway_on(
            &s,
            vec![route("/orders", up, None), named],
            Connections::defaults("gateway"),
        )
        .await,
    );
    let (key, _) = s.create(json!({"owner": "o"})).await;
    let bearer = format!("Bearer {key}");
    let forged = [
        ("authorization", bearer.as_str()),
        ("host", "internal-admin.example"),
        ("x-forwarded-host", "internal-admin.example"),
        ("x-forwarded-for", "10.9.9.9"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-port", "443"),
        (
            "forwarded",
            "for=10.9.9.9;host=internal-admin.example;proto=https",
        ),
        ("x-real-ip", "10.9.9.9"),
        ("true-client-ip", "10.9.9.9"),
        ("x-original-url", "/admin/users"),
        ("x-rewrite-url", "/admin/users"),
        ("x-http-method-override", "DELETE"),
        ("x_forwarded_host", "internal-admin.example"),
    ];
    let r = gw.raw_with_headers("GET", "/orders/1", &forged).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let seen = &r.json()["headers"];
    // The upstream's own authority, not the client's virtual host.
    assert_eq!(seen["host"], up.to_string());
    // What keyward saw, in keyward's words.
    assert_eq!(seen["x-forwarded-host"], "internal-admin.example");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen["x-real-ip"], "127.0.0.1");
    for gone in [
        "forwarded",
        "x-forwarded-port",
        "true-client-ip",
        "x-original-url",
        "x-rewrite-url",
        "x-http-method-override",
        "x_forwarded_host",
    ] {
        assert!(
            seen.get(gone).is_none(),
            "{gone} reached the upstream: {seen}"
        );
    }
    // A route's configured host wins over the upstream's authority.
    let r = gw.raw_with_headers("GET", "/named/1", &forged).await;
    assert_eq!(r.json()["headers"]["host"], "orders.internal:8443");
    // A Host that is not a well-formed authority is not repeated in X-Forwarded-Host.
    let r = gw
        .raw_with_headers(
            "GET",
            "/orders/1",
            &[("authorization", &bearer), ("host", "user@evil.example")],
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(r.json()["headers"].get("x-forwarded-host").is_none());
}

// ---- Finding 12 ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn finding_12_client_keyward_headers_never_reach_the_gateways_upstream() {
    let s = Server::start().await;
    let up = upstream().await;
    let gw = Http::new(
        gateway_on(
            &s,
            vec![route("/orders", up, None)],
            Connections::defaults("gateway"),
        )
        .await,
    );
    let (key, _) = s.create(json!({"owner": "billing"})).await;
    let r = gw
        .raw_with_headers(
            "GET",
            "/orders/1",
            &[
                ("x-api-key", &key),
                ("x-keyward-code", "VALID"),
                ("x-keyward-tenant", "acme"),
                ("X-Keyward-Owner", "mallory"),
                ("x_keyward_owner", "mallory"),
                ("x-keyward_tenant", "acme"),
                ("x-keyward-root-key", "forged"),
                ("x-keyward-anything", "forged"),
            ],
        )
        .await;
    assert_eq!(r.status, 200);
    let seen = r.json()["headers"].clone();
    let keyward: Vec<(&String, &Value)> = seen
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| k.replace('_', "-").starts_with("x-keyward-"))
        .collect();
    // Only keyward's own identity headers; the key has no tenant, so none is sent.
    let names: Vec<&str> = keyward.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, ["x-keyward-key-id", "x-keyward-owner"], "{seen}");
    assert_eq!(seen["x-keyward-owner"], "billing");
}

// ---- Finding 14 ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn finding_14_only_a_trusted_proxy_names_the_client() {
    let s = Server::start().await;
    let up = upstream().await;
    let routes = || vec![route("/orders", up, None)];
    let direct = Http::new(gateway_on(&s, routes(), Connections::defaults("gateway")).await);
    let behind_lb = Http::new(
        gateway_on(
            &s,
            routes(),
            connections("gateway", |c| {
                c.trusted_proxies = trusting(&["127.0.0.0/8", "::1/128"]);
            }),
        )
        .await,
    );
    let (net_key, _) = s
        .create(json!({"owner": "o", "ip_allowlist": ["198.51.100.0/24", "2001:db8::/32"]}))
        .await;
    let call = |http: &Http, xff: &[&str]| {
        let http = http.clone();
        let mut headers: Vec<(String, String)> = vec![("x-api-key".into(), net_key.clone())];
        headers.extend(
            xff.iter()
                .map(|v| ("x-forwarded-for".to_owned(), (*v).to_owned())),
        );
        async move {
            let pairs: Vec<(&str, &str)> = headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect();
            http.raw_with_headers("GET", "/orders/1", &pairs).await
        }
    };

    // No trusted proxy: a spoofed X-Forwarded-For is ignored, the socket peer is the client.
    call(&direct, &["198.51.100.7"])
        .await
        .problem(403, "ip_not_allowed");

    // Behind a trusted proxy: its X-Forwarded-For names the client...
    let ok = call(&behind_lb, &["198.51.100.7"]).await;
    assert_eq!(ok.status, 200, "{}", String::from_utf8_lossy(&ok.body));
    let seen = &ok.json()["headers"];
    assert_eq!(seen["x-real-ip"], "198.51.100.7");
    assert_eq!(seen["x-forwarded-for"], "198.51.100.7, 127.0.0.1");
    // ...the rightmost untrusted entry, whatever the client put left of it...
    assert_eq!(
        call(&behind_lb, &["6.6.6.6, 198.51.100.7"]).await.status,
        200
    );
    call(&behind_lb, &["198.51.100.7, 203.0.113.5"])
        .await
        .problem(403, "ip_not_allowed");
    // ...across several header lines...
    assert_eq!(
        call(&behind_lb, &["6.6.6.6", "198.51.100.7", "127.0.0.9"])
            .await
            .status,
        200
    );
    call(&behind_lb, &["198.51.100.7", "203.0.113.5"])
        .await
        .problem(403, "ip_not_allowed");
    // ...in IPv6, with or without a port...
    assert_eq!(call(&behind_lb, &["[2001:db8::7]:443"]).await.status, 200);
    assert_eq!(call(&behind_lb, &["2001:db8::7"]).await.status, 200);
    // ...and garbage stops the walk at the hop that reported it (the proxy itself here).
    for garbage in [
        "198.51.100.7, unknown",
        "198.51.100.7, , ",
        "198.51.100.7 extra",
    ] {
        call(&behind_lb, &[garbage])
            .await
            .problem(403, "ip_not_allowed");
    }
    // Every entry trusted: the leftmost is the client.
    let all_trusted = call(&behind_lb, &["127.0.0.7, 127.0.0.8"]).await;
    all_trusted.problem(403, "ip_not_allowed");
    assert_eq!(all_trusted.header("x-keyward-code"), "IP_NOT_ALLOWED");

    // The admin API resolves the same way: an auth failure is audited with the client.
    let admin = Server::start_listening(
        |e| e,
        connections("admin", |c| c.trusted_proxies = trusting(&["127.0.0.0/8"])),
    )
    .await;
    for xff in ["198.51.100.9", "garbage"] {
        admin
            .http
            .raw_with_headers(
                "GET",
                "/v1/keys",
                &[
                    ("authorization", "Bearer kwroot_nope"),
                    ("x-forwarded-for", xff),
                ],
            )
            .await
            .problem(401, "unauthenticated");
    }
    let audit = admin
        .admin("GET", "/v1/audit?action=auth.failed", None)
        .await;
    let addresses: Vec<Value> = audit.json()["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["summary"]["remote_addr"].clone())
        .collect();
    assert_eq!(addresses, ["198.51.100.9", "127.0.0.1"]);
    // Without a trusted proxy, the admin API ignores X-Forwarded-For.
    let plain = Server::start().await;
    plain
        .http
        .raw_with_headers(
            "GET",
            "/v1/keys",
            &[
                ("authorization", "Bearer kwroot_nope"),
                ("x-forwarded-for", "198.51.100.9"),
            ],
        )
        .await
        .problem(401, "unauthenticated");
    let audit = plain
        .admin("GET", "/v1/audit?action=auth.failed", None)
        .await;
    assert_eq!(
        audit.json()["events"][0]["summary"]["remote_addr"],
        "127.0.0.1"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn finding_14_the_proxy_protocol_is_believed_only_from_a_trusted_proxy() {
    let s = Server::start().await;
    let up = upstream().await;
    let (key, _) = s
        .create(json!({"owner": "o", "ip_allowlist": ["198.51.100.0/24"]}))
        .await;
    let request = format!(
        "GET /orders/1 HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\nConnection: close\r\n\r\n"
    );
    let lb = gateway_on(
        &s,
        vec![route("/orders", up, None)],
        connections("gateway", |c| {
            c.trusted_proxies = trusting(&["127.0.0.0/8"]);
            c.proxy_protocol = true;
        }),
    )
    .await;
    // v1 and v2 from the trusted balancer name the client.
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
    v2.extend_from_slice(&[198, 51, 100, 7, 127, 0, 0, 1, 0x15, 0xb3, 0, 80]);
    for preamble in [
        b"PROXY TCP4 198.51.100.7 127.0.0.1 5555 80\r\n".to_vec(),
        v2,
    ] {
        let mut stream = TcpStream::connect(lb).await.unwrap();
        stream.write_all(&preamble).await.unwrap();
        let (status, body) = exchange(&mut stream, &request).await;
        assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
        let echoed: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(echoed["headers"]["x-real-ip"], "198.51.100.7");
    }
    // A trusted peer without a header is an ordinary (direct) connection.
    let mut plain = TcpStream::connect(lb).await.unwrap();
    let (status, _) = exchange(&mut plain, &request).await;
    assert_eq!(status, "HTTP/1.1 403 Forbidden");
    // A malformed header closes the connection.
    let mut bad = TcpStream::connect(lb).await.unwrap();
    bad.write_all(b"PROXY TCP4 198.51.100.7 nowhere 5555 80\r\n")
        .await
        .unwrap();
    assert!(read_until_closed(&mut bad).await.is_empty());

    // The same listener for a peer that is not a trusted proxy: a PROXY header is refused.
    let elsewhere = gateway_on(
        &s,
        vec![route("/orders", up, None)],
        connections("gateway", |c| {
            c.trusted_proxies = trusting(&["10.0.0.0/8"]);
            c.proxy_protocol = true;
        }),
    )
    .await;
    let mut spoof = TcpStream::connect(elsewhere).await.unwrap();
    spoof
        .write_all(format!("PROXY TCP4 198.51.100.7 127.0.0.1 5555 80\r\n{request}").as_bytes())
        .await
        .unwrap();
    assert!(read_until_closed(&mut spoof).await.is_empty());
    // Without one it is served as itself.
    let mut honest = TcpStream::connect(elsewhere).await.unwrap();
    let (status, _) = exchange(&mut honest, &request).await;
    assert_eq!(status, "HTTP/1.1 403 Forbidden");
}

// ---- Also ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn also_an_owner_that_is_not_printable_ascii_is_encoded_not_dropped() {
    let s = Server::start().await;
    let up = upstream().await;
    let gw = Http::new(
        gateway_on(
            &s,
            vec![route("/orders", up, None)],
            Connections::defaults("gateway"),
        )
        .await,
    );
    let (key, _) = s.create(json!({"owner": "Zoë Ltd"})).await;
    let r = gw.raw("GET", "/orders/1", Some(&key), None).await;
    assert_eq!(
        r.json()["headers"]["x-keyward-owner"],
        "utf-8''Zo%C3%AB%20Ltd"
    );
    // /v1/auth sends the same encoded value to nginx.
    let root = s
        .admin(
            "POST",
            "/v1/root-keys",
            Some(json!({"owner": "nginx", "permissions": ["keys.verify"]})),
        )
        .await;
    let root = root.json()["key"].as_str().unwrap().to_owned();
    let auth = s.http.auth_request(Some(&root), Some(&key), &[], "").await;
    assert_eq!(auth.status, 204);
    assert_eq!(auth.header("x-keyward-owner"), "utf-8''Zo%C3%AB%20Ltd");
}

#[tokio::test(flavor = "multi_thread")]
async fn also_metrics_answers_only_for_the_listeners_own_host() {
    let s = Server::start_listening(
        |e| e,
        connections("admin", |c| c.host_names = vec!["metrics.internal".into()]),
    )
    .await;
    let port = addr_of(&s.http).port();
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        "metrics.internal".to_owned(),
    ] {
        let r = s
            .http
            .raw_with_headers("GET", "/metrics", &[("host", &host)])
            .await;
        assert_eq!(r.status, 200, "{host}");
    }
    // A rebinding page's name, or any other, is misdirected.
    for host in [
        format!("attacker.example:{port}"),
        "metrics.internal.attacker.example".to_owned(),
        "10.0.0.1".to_owned(),
    ] {
        let r = s
            .http
            .raw_with_headers("GET", "/metrics", &[("host", &host)])
            .await;
        let body = r.problem(421, "misdirected_request");
        assert!(!body.to_string().contains("keyward_"), "{host}");
    }
    // Other endpoints do not care about Host.
    let r = s
        .http
        .raw_with_headers("GET", "/healthz", &[("host", "attacker.example")])
        .await;
    assert_eq!(r.status, 200);
}
