//! Issue 10's edge findings against the real listeners: what the gateway tells its upstream
//! (finding 2), slow and excess connections on both listeners (finding 3), client
//! `X-Keyward-*` headers (finding 12), trusted proxies and the PROXY protocol (finding 14),
//! the owner's header encoding and `/metrics`'s host check.

use std::net::SocketAddr;
use std::time::Duration;

use keyward_http::listener::{Connections, ListenerConfig};
use keyward_http::trusted_proxy::TrustedProxies;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::gateway::{gateway_on, route, upstream};
use crate::testkit::{Http, Server};

/// Longest any test here waits for the server to act: generous, never a timing assertion.
const DEADLINE: Duration = Duration::from_secs(20);

fn connections(name: &'static str, adjust: impl FnOnce(&mut ListenerConfig)) -> Connections {
    let mut config = ListenerConfig::default();
    adjust(&mut config);
    Connections::new(name, config).unwrap()
}

fn addr_of(http: &Http) -> SocketAddr {
    http.base.trim_start_matches("http://").parse().unwrap()
}

fn trusting(blocks: &[&str]) -> TrustedProxies {
    TrustedProxies::parse(blocks).unwrap()
}

/// Reads until the server closes the connection (EOF or reset) and returns what it sent;
/// panics if it is still open at the deadline.
async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
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
async fn exchange(stream: &mut TcpStream, request: &str) -> (String, String) {
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
fn trickle(mut writer: tokio::net::tcp::OwnedWriteHalf, bytes: Vec<u8>, gap: Duration) {
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

// ---- Finding 3 ----------------------------------------------------------------------------

/// An admin API and a gateway, both with `config`; returns (server, admin, gateway) addresses.
async fn both_listeners(adjust: fn(&mut ListenerConfig)) -> (Server, SocketAddr, SocketAddr) {
    let s = Server::start_listening(|e| e, connections("admin", adjust)).await;
    let up = upstream().await;
    let gw = gateway_on(
        &s,
        vec![route("/orders", up, None)],
        connections("gateway", adjust),
    )
    .await;
    let admin = addr_of(&s.http);
    (s, admin, gw)
}

#[tokio::test(flavor = "multi_thread")]
async fn finding_3_a_client_that_trickles_its_request_head_is_cut_off() {
    let (_s, admin, gateway) = both_listeners(|c| {
        c.header_read_timeout = Duration::from_millis(200);
    })
    .await;
    for addr in [admin, gateway] {
        // A head that never ends, a byte every 20 ms for far longer than the timeout.
        let stream = TcpStream::connect(addr).await.unwrap();
        let (mut reader, writer) = stream.into_split();
        let mut head = b"GET /healthz HTTP/1.1\r\nHost: x\r\n".to_vec();
        head.extend(std::iter::repeat_n(b"X-Slow: 1\r\n".iter().copied(), 5000).flatten());
        trickle(writer, head, Duration::from_millis(20));
        let mut received = Vec::new();
        let closed = tokio::time::timeout(DEADLINE, reader.read_to_end(&mut received)).await;
        assert!(
            closed.is_ok(),
            "{addr}: the trickling connection is still open"
        );
        assert!(
            !String::from_utf8_lossy(&received).contains(" 200 "),
            "{addr}: {received:?}"
        );

        // A connection that sends nothing at all is closed too.
        let mut silent = TcpStream::connect(addr).await.unwrap();
        read_until_closed(&mut silent).await;

        // And a client that sends its head in time is served.
        let mut prompt = TcpStream::connect(addr).await.unwrap();
        let (status, _) = exchange(
            &mut prompt,
            "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(status.starts_with("HTTP/1.1 "), "{addr}: {status}");
        assert!(!status.contains(" 408"), "{addr}: {status}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn finding_3_the_connection_cap_holds_and_frees() {
    let capped = |c: &mut ListenerConfig| {
        c.max_connections = 2;
        c.header_read_timeout = Duration::from_secs(60);
    };
    // The key is made through an uncapped server: the test client's pooled connection would
    // otherwise hold a slot of the capped one.
    let s = Server::start().await;
    let (key, _) = s.create(json!({"owner": "o"})).await;
    let capped_admin = Server::start_listening(|e| e, connections("admin", capped)).await;
    let admin = addr_of(&capped_admin.http);
    let gateway = gateway_on(
        &s,
        vec![route("/orders", upstream().await, None)],
        connections("gateway", capped),
    )
    .await;
    for (addr, path) in [(admin, "/healthz"), (gateway, "/orders/1")] {
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\r\n");
        // Two served connections stay open (kept alive), taking both slots.
        let mut first = TcpStream::connect(addr).await.unwrap();
        let mut second = TcpStream::connect(addr).await.unwrap();
        for held in [&mut first, &mut second] {
            let (status, _) = exchange(held, &request).await;
            assert_eq!(status, "HTTP/1.1 200 OK", "{addr}");
        }
        // A third is closed without an answer while they are open.
        let mut third = TcpStream::connect(addr).await.unwrap();
        let _ = third.write_all(request.as_bytes()).await;
        let answer = read_until_closed(&mut third).await;
        assert!(
            answer.is_empty(),
            "{addr}: {:?}",
            String::from_utf8_lossy(&answer)
        );
        // The held connections still work.
        let (status, _) = exchange(&mut second, &request).await;
        assert_eq!(status, "HTTP/1.1 200 OK", "{addr}");

        // Once one closes, a slot frees: a new client is served (it may need to retry while
        // the server notices the close).
        drop(first);
        let served = tokio::time::timeout(DEADLINE, async {
            loop {
                let mut next = TcpStream::connect(addr).await.unwrap();
                if next.write_all(request.as_bytes()).await.is_ok() {
                    let mut chunk = [0u8; 64];
                    if let Ok(n) = next.read(&mut chunk).await
                        && n > 0
                    {
                        return (next, String::from_utf8_lossy(&chunk[..n]).into_owned());
                    }
                }
                tokio::task::yield_now().await;
            }
        })
        .await;
        let (next, answer) = served.expect("no slot freed before the deadline");
        assert!(answer.starts_with("HTTP/1.1 200 OK"), "{addr}: {answer}");
        // And the cap still holds with the new pair.
        let mut over = TcpStream::connect(addr).await.unwrap();
        assert!(read_until_closed(&mut over).await.is_empty(), "{addr}");
        drop((second, next));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn finding_3_a_body_that_trickles_in_gets_408_and_a_closed_connection() {
    let (s, admin, gateway) = both_listeners(|c| {
        c.body_read_timeout = Duration::from_millis(300);
    })
    .await;
    let (key, _) = s.create(json!({"owner": "o"})).await;
    for (addr, path, bearer) in [
        (admin, "/v1/keys", s.root_key.clone()),
        (gateway, "/orders/upload", key.clone()),
    ] {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (mut reader, mut writer) = stream.into_split();
        writer
            .write_all(
                format!(
                    "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {bearer}\r\n\
                     Content-Type: application/json\r\nContent-Length: 5000\r\n\r\n{{"
                )
                .as_bytes(),
            )
            .await
            .unwrap();
        // Bytes keep coming (so the connection is not idle), but far too slowly.
        trickle(writer, vec![b' '; 4999], Duration::from_millis(20));
        let mut received = Vec::new();
        let closed = tokio::time::timeout(DEADLINE, reader.read_to_end(&mut received)).await;
        assert!(closed.is_ok(), "{addr}: still open");
        let text = String::from_utf8_lossy(&received);
        assert!(text.starts_with("HTTP/1.1 408 "), "{addr}: {text}");
        assert!(text.contains("request_timeout"), "{addr}: {text}");
    }
    // A body that arrives in time still works on both.
    let created = s.create(json!({"owner": "in-time"})).await;
    assert!(created.0.starts_with("kw_"));
    let gw = Http::new(gateway);
    let r = gw
        .raw(
            "POST",
            "/orders/upload",
            Some(&key),
            Some(("text/plain", vec![b'x'; 3000])),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["body_bytes"], 3000);
}

#[tokio::test(flavor = "multi_thread")]
async fn finding_3_a_connection_where_nothing_moves_is_closed() {
    let (s, admin, _) = both_listeners(|c| {
        c.idle_timeout = Duration::from_millis(200);
        c.header_read_timeout = Duration::from_secs(60);
        c.body_read_timeout = Duration::from_secs(60);
    })
    .await;
    // The head arrives, the promised body never does, and nothing else moves.
    let mut stream = TcpStream::connect(admin).await.unwrap();
    stream
        .write_all(
            format!(
                "POST /v1/keys HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
                 Content-Type: application/json\r\nContent-Length: 100\r\n\r\n",
                s.root_key
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let answer = read_until_closed(&mut stream).await;
    assert!(
        !String::from_utf8_lossy(&answer).contains(" 201 "),
        "{answer:?}"
    );
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

/// The flags reach the listener of the real binary, and an impossible combination is refused
/// before the server starts.
#[tokio::test(flavor = "multi_thread")]
async fn finding_3_and_14_serve_flags_configure_the_listener() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = crate::testkit::Process::start_with(
        &[
            "--data-dir",
            data.to_str().unwrap(),
            "--header-read-timeout-ms",
            "200",
            "--trusted-proxy",
            "10.0.0.0/8",
            "--metrics-host",
            "metrics.internal",
        ],
        dir.path(),
    );
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    read_until_closed(&mut silent).await;
    let http = Http::new(server.addr);
    let metrics = http
        .raw_with_headers("GET", "/metrics", &[("host", "metrics.internal")])
        .await;
    assert_eq!(metrics.status, 200);

    let refused = std::process::Command::new(crate::testkit::binary())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--proxy-protocol",
            "--data-dir",
        ])
        .arg(dir.path().join("other"))
        .env_remove("KEYWARD_TRUSTED_PROXIES")
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("needs at least one trusted proxy"),
        "{stderr}"
    );
}

/// Serving through the listener keeps graceful shutdown: a request in flight when the stop
/// comes is answered, an idle kept-alive connection is closed, and serving then returns.
#[tokio::test(flavor = "multi_thread")]
async fn finding_3_graceful_shutdown_still_finishes_requests_in_flight() {
    use std::sync::{Arc, Mutex};

    let (entered_tx, entered_rx) = tokio::sync::oneshot::channel::<()>();
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
    let gate = Arc::new(Mutex::new(Some((entered_tx, release_rx))));
    let app = axum::Router::new()
        .route(
            "/wait",
            axum::routing::get(move || {
                let gate = gate.lock().unwrap().take();
                async move {
                    if let Some((entered, release)) = gate {
                        let _ = entered.send(());
                        let _ = release.await;
                    }
                    "done"
                }
            }),
        )
        .route("/now", axum::routing::get(|| async { "now" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(keyward_http::listener::serve_router(
        listener,
        app,
        Connections::defaults("test"),
        async move {
            let _ = stop_rx.await;
        },
    ));
    let mut idle = TcpStream::connect(addr).await.unwrap();
    let (status, _) = exchange(&mut idle, "GET /now HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    let mut busy = TcpStream::connect(addr).await.unwrap();
    busy.write_all(b"GET /wait HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    entered_rx.await.unwrap();
    stop_tx.send(()).unwrap();
    // The idle connection is closed by the shutdown...
    assert!(read_until_closed(&mut idle).await.is_empty());
    // ...the busy one is answered once its handler finishes, and then serving ends.
    release_tx.send(()).unwrap();
    let answer = String::from_utf8(read_until_closed(&mut busy).await).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    assert!(answer.ends_with("done"), "{answer}");
    tokio::time::timeout(DEADLINE, serving)
        .await
        .expect("serving did not end after the shutdown")
        .unwrap()
        .unwrap();
}
