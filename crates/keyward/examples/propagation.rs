//! Revocation propagation across nodes, for bench/propagation.sh.
//!
//! `propagation ROOT_KEY NODE_A NODE_B [NODE_C ...] [--revocations N] [--clients-per-node K]`
//!
//! For each of N revocations: create a key through node A; make every other node verify it
//! once (so it is cached there); start K clients per other node verifying it in a tight loop;
//! revoke it through node A; and record the time from the moment the revoke's 200 arrived to
//! the last VALID answer any client received afterwards (0 when none came after). A client
//! stops at its first non-VALID answer. Each revocation is bounded by a 10 s deadline; one that
//! is still VALID somewhere then is reported as a failure. Prints p50, p90, p99 and max.
//!
//! The figure is an upper bound: a VALID received after the 200 may have been answered before
//! the revoke committed, while the request was in flight.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

type Http = Client<HttpConnector, Full<Bytes>>;

const DEADLINE: Duration = Duration::from_secs(10);

async fn call(http: &Http, root: &str, method: &str, url: String, body: Value) -> (u16, Value) {
    let request = Request::builder()
        .method(method)
        .uri(url)
        .header("authorization", format!("Bearer {root}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let response = http.request(request).await.unwrap();
    let status = response.status().as_u16();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut take_flag = |name: &str, default: usize| -> usize {
        match args.iter().position(|a| a == name) {
            Some(i) => {
                let value = args.remove(i + 1).parse().expect("a number");
                args.remove(i);
                value
            }
            None => default,
        }
    };
    let revocations = take_flag("--revocations", 100);
    let clients_per_node = take_flag("--clients-per-node", 2);
    assert!(
        args.len() >= 3,
        "usage: propagation ROOT_KEY NODE_A NODE_B [NODE_C ...] [--revocations N] [--clients-per-node K]"
    );
    let root = args[0].clone();
    let writer = args[1].trim_end_matches('/').to_owned();
    let readers: Vec<String> = args[2..]
        .iter()
        .map(|u| u.trim_end_matches('/').to_owned())
        .collect();
    let http: Http = Client::builder(TokioExecutor::new()).build_http();

    let mut lags_ms = Vec::with_capacity(revocations);
    let mut failures = 0;
    for i in 0..revocations {
        let (status, created) = call(
            &http,
            &root,
            "POST",
            format!("{writer}/v1/keys"),
            json!({"owner": "propagation-bench", "name": format!("r{i}")}),
        )
        .await;
        assert_eq!(status, 201, "create: {created}");
        let key = created["key"].as_str().unwrap().to_owned();
        let key_id = created["record"]["key_id"].as_str().unwrap().to_owned();
        for reader in &readers {
            let (_, v) = call(
                &http,
                &root,
                "POST",
                format!("{reader}/v1/keys/verify"),
                json!({"key": key}),
            )
            .await;
            assert_eq!(v["code"], "VALID", "warm-up on {reader}: {v}");
        }

        let last_valid: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
        let mut clients = Vec::new();
        for reader in &readers {
            for _ in 0..clients_per_node {
                let (http, root, key) = (http.clone(), root.clone(), key.clone());
                let url = format!("{reader}/v1/keys/verify");
                let last_valid = Arc::clone(&last_valid);
                clients.push(tokio::spawn(async move {
                    let started = Instant::now();
                    while started.elapsed() < DEADLINE {
                        let (_, v) =
                            call(&http, &root, "POST", url.clone(), json!({"key": key})).await;
                        if v["code"] != "VALID" {
                            return true;
                        }
                        let now = Instant::now();
                        let mut last = last_valid.lock().unwrap();
                        *last = Some(last.map_or(now, |t| t.max(now)));
                    }
                    false
                }));
            }
        }
        let (status, body) = call(
            &http,
            &root,
            "POST",
            format!("{writer}/v1/keys/{key_id}/revoke"),
            json!({"reason": "propagation benchmark"}),
        )
        .await;
        let revoked_at = Instant::now();
        assert_eq!(status, 200, "revoke: {body}");
        let mut all_stopped = true;
        for client in clients {
            all_stopped &= client.await.unwrap();
        }
        if !all_stopped {
            failures += 1;
            continue;
        }
        let last = last_valid.lock().unwrap().unwrap_or(revoked_at);
        lags_ms.push(last.saturating_duration_since(revoked_at).as_secs_f64() * 1000.0);
    }
    lags_ms.sort_by(f64::total_cmp);
    println!(
        "revocations: {revocations}, nodes verifying: {}, clients per node: {clients_per_node}",
        readers.len()
    );
    println!("still VALID after {DEADLINE:?} (failures): {failures}");
    if !lags_ms.is_empty() {
        println!(
            "revoke 200 -> last VALID seen (ms): p50 {:.2}, p90 {:.2}, p99 {:.2}, max {:.2}",
            percentile(&lags_ms, 50.0),
            percentile(&lags_ms, 90.0),
            percentile(&lags_ms, 99.0),
            percentile(&lags_ms, 100.0)
        );
    }
    if failures > 0 {
        std::process::exit(1);
    }
}
