//! A trivial HTTP server for the bench/ harness: answers every request with a fixed body.
//!
//! `bench_upstream ADDR [BYTES]`: with BYTES, the body is a JSON object of that many bytes (the
//! "same-size JSON" baseline for `POST /v1/keys/verify`); without, it is `ok`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

fn body_of(bytes: Option<usize>) -> (Bytes, &'static str) {
    match bytes {
        None => (Bytes::from_static(b"ok"), "text/plain"),
        Some(n) => {
            let filler = n.saturating_sub(r#"{"pad":""}"#.len());
            (
                Bytes::from(format!(r#"{{"pad":"{}"}}"#, "x".repeat(filler))),
                "application/json",
            )
        }
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let addr = args.next().expect("usage: bench_upstream ADDR [BYTES]");
    let bytes = args
        .next()
        .map(|b| b.parse().expect("BYTES must be a number"));
    let (body, content_type) = body_of(bytes);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let listener = TcpListener::bind(&addr).await.unwrap();
        println!("listening on {}", listener.local_addr().unwrap());
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let body = body.clone();
            tokio::spawn(async move {
                let service = service_fn(move |_request: Request<hyper::body::Incoming>| {
                    let body = body.clone();
                    async move {
                        Ok::<_, Infallible>(
                            Response::builder()
                                .header("content-type", content_type)
                                .body(Full::new(body))
                                .unwrap(),
                        )
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}
