//! Issue 10, finding 3: slow, idle and excess connections on the admin and gateway listeners,
//! with raw sockets; the listener flags of the real binary; graceful shutdown.

use std::net::SocketAddr;
use std::time::Duration;

use keyward_http::listener::{Connections, ListenerConfig};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::edge::{DEADLINE, addr_of, connections, exchange, read_until_closed, trickle};
use crate::gateway::{gateway_on, route, upstream};
use keyward_testkit::http::Http;
use keyward_testkit::server::Server;

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

/// The flags reach the listener of the real binary, and an impossible combination is refused
/// before the server starts.
#[tokio::test(flavor = "multi_thread")]
async fn finding_3_and_14_serve_flags_configure_the_listener() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = crate::KEYWARD.serve_with(
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

    let refused = crate::KEYWARD
        .command()
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
