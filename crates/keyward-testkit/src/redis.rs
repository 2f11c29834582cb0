//! A Redis key namespace of one test, so tests run in parallel against one Redis.
//!
//! The server comes from `KEYWARD_TEST_REDIS_URL` (for example `redis://127.0.0.1:6379`);
//! see the crate docs for what happens without it.

use std::net::SocketAddr;

use redis::AsyncCommands;

/// The Redis to test against, or `None` (after saying so) when none is configured.
pub fn url(test: &str) -> Option<String> {
    crate::service::url("KEYWARD_TEST_REDIS_URL", "redis://127.0.0.1:6379", test)
}

/// A fresh key namespace (`kwtest:…`), unique to the calling test.
pub fn namespace() -> String {
    crate::service::unique("kwtest", ':')
}

/// Deletes every key of `namespace` (a Redis restart that lost its data, or cleanup).
pub async fn wipe(url: &str, namespace: &str) {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = conn.keys(format!("{namespace}:*")).await.unwrap();
    if !keys.is_empty() {
        let _: () = conn.del(keys).await.unwrap();
    }
}

/// The `host:port` of a `redis://` URL, resolved (to put a [`crate::proxy::CutProxy`] in
/// front of it).
pub async fn socket(url: &str) -> SocketAddr {
    let rest = url
        .trim_start_matches("redis://")
        .split('/')
        .next()
        .unwrap()
        .rsplit('@')
        .next()
        .unwrap()
        .to_owned();
    tokio::net::lookup_host(rest).await.unwrap().next().unwrap()
}
