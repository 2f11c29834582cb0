//! `mode = "local_first"` against a real Redis: the overshoot is real and stays within the
//! bound documented in docs/limits-and-quotas.md ("Overshoot bound"), a key mixing exact and
//! local-first limits stays all-or-nothing, and the verify path never waits for Redis.

use super::*;

const NODES: u64 = 3;

fn local_first(name: &str, limit_per_period: u64, period_seconds: u64) -> LimitSpec {
    LimitSpec {
        mode: Some("local_first".into()),
        ..limit(name, limit_per_period, period_seconds, None)
    }
}

/// The documented bound: at most `min(N(b + r·t), b + r·t + (N−1)(b + r·Δ))` units over a
/// stretch `t`, with `r` and `b` per second and `t`, `Δ` in milliseconds.
fn bound(rate: u64, burst: u64, t_ms: u64, delta_ms: u64) -> u64 {
    let alone = NODES * (burst + rate * t_ms / 1000);
    let reconciled = burst + rate * t_ms / 1000 + (NODES - 1) * (burst + rate * delta_ms / 1000);
    alone.min(reconciled)
}

/// Sequential verifies spread round-robin over the nodes (deterministic counts per node).
async fn hammer(c: &Cluster, key: &str, attempts: usize) -> Vec<Verification> {
    let mut out = Vec::with_capacity(attempts);
    for i in 0..attempts {
        out.push(
            c.nodes[i % c.nodes.len()]
                .verify(key, &VerifyRequest::default())
                .await
                .unwrap(),
        );
    }
    out
}

async fn reconcile_all(c: &Cluster) -> u64 {
    let mut units = 0;
    for node in &c.nodes {
        let report = node.reconcile_local_first().await;
        assert!(report.redis_up, "{report:?}");
        units += report.units;
    }
    units
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_first_overshoots_within_the_documented_bound_then_pays_it_back() {
    let Some(url) =
        redis_url("local_first_overshoots_within_the_documented_bound_then_pays_it_back")
    else {
        return;
    };
    let c = cluster(url, false).await;
    let (rate, burst) = (30, 30);
    let delta_ms = u64::try_from(c.nodes[0].reconcile_interval().unwrap().as_millis()).unwrap();
    assert_eq!(delta_ms, 100, "the default reconcile interval");
    let created = c
        .key(NewKey {
            owner: "o".into(),
            limits: vec![local_first("per_second", rate, 1)],
            ..NewKey::default()
        })
        .await;
    let key = created.key.expose();

    // t = 0: every node decides from a full view, so each admits the whole burst.
    let first = hammer(&c, key, 120).await;
    let mut total = count(&first, VerifyCode::Valid) as u64;
    assert!(
        first
            .iter()
            .all(|v| source(v) == EnforcementSource::LocalFirst)
    );
    assert!(
        total > burst,
        "local_first trades exactness: {total} admitted, exact admits {burst}"
    );
    assert!(total <= bound(rate, burst, 0, delta_ms), "{total}");
    let overshoot_at_0 = total - burst;

    // Two reconcile rounds: each node has sent its units and adopted the shared state.
    assert_eq!(reconcile_all(&c).await, total);
    assert_eq!(reconcile_all(&c).await, 0);

    // The overshoot is debt: every node refuses until the shared pool has refilled past it
    // (90 units at 30/s drain by t = 3 s; one unit fits again from 2 s + 1/30 s).
    let mut at_ms = 0;
    for ms in [100, 1000, 2000] {
        c.clock.advance(Duration::milliseconds(ms - at_ms));
        at_ms = ms;
        let refused = hammer(&c, key, 30).await;
        assert_eq!(count(&refused, VerifyCode::Valid), 0, "at {ms} ms");
        assert!(
            refused.iter().all(|v| v.retry_after >= Some(1)),
            "at {ms} ms"
        );
        reconcile_all(&c).await;
    }

    // Then, hammered every 100 ms and reconciled after each step, the cluster stays within
    // the bound at every instant and admits at the configured rate in the long run.
    let mut worst_excess = overshoot_at_0;
    for step in 21..=60u64 {
        let t_ms = step * 100;
        c.clock.advance(Duration::milliseconds(100));
        total += count(&hammer(&c, key, 60).await, VerifyCode::Valid) as u64;
        let exact = burst + rate * t_ms / 1000;
        assert!(
            total <= bound(rate, burst, t_ms, delta_ms),
            "{total} admitted by {t_ms} ms, bound {}",
            bound(rate, burst, t_ms, delta_ms)
        );
        worst_excess = worst_excess.max(total.saturating_sub(exact));
        reconcile_all(&c).await;
    }
    assert!(
        total > burst + rate * 6,
        "over 6 s the cluster still admitted more than exact would ({total})"
    );
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "local_first overshoot (3 nodes, {rate}/s, burst {burst}, reconcile {delta_ms} ms): \
         {} admitted at t=0 (exact: {burst}, bound: {}); {total} by t=6 s (exact: {}, bound: \
         {}); worst excess over exact {worst_excess}",
        overshoot_at_0 + burst,
        bound(rate, burst, 0, delta_ms),
        burst + rate * 6,
        bound(rate, burst, 6000, delta_ms),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_exact_and_local_first_limits_stay_all_or_nothing() {
    let Some(url) = redis_url("mixed_exact_and_local_first_limits_stay_all_or_nothing") else {
        return;
    };
    let c = cluster(url, false).await;
    let node = &c.nodes[0];
    let remaining = |v: &Verification, name: &str| {
        v.limits
            .iter()
            .find(|l| l.name == name)
            .map(|l| l.remaining)
            .unwrap()
    };
    let peek = |key: String| async move {
        node.verify_cost(&key, &VerifyRequest::default(), 0)
            .await
            .unwrap()
    };

    // The local limit refuses first: the exact pool in Redis consumed only what was admitted.
    let local_tighter = c
        .key(NewKey {
            owner: "o".into(),
            limits: vec![limit("exact", 5, 60, None), local_first("local", 3, 60)],
            ..NewKey::default()
        })
        .await;
    let key = local_tighter.key.expose();
    let all = hammer_one(node, key, 10).await;
    assert_eq!(count(&all, VerifyCode::Valid), 3);
    assert_eq!(source(&all[0]), EnforcementSource::Redis);
    let refused = &all[9];
    assert_eq!(refused.code, VerifyCode::RateLimited);
    assert_eq!(
        (remaining(refused, "exact"), remaining(refused, "local")),
        (2, 0)
    );
    let now = peek(key.to_owned()).await;
    assert_eq!((remaining(&now, "exact"), remaining(&now, "local")), (2, 0));

    // The exact limit refuses first: the local limit keeps what the refusals reserved.
    let exact_tighter = c
        .key(NewKey {
            owner: "o".into(),
            limits: vec![limit("exact", 2, 60, None), local_first("local", 5, 60)],
            ..NewKey::default()
        })
        .await;
    let key = exact_tighter.key.expose();
    let all = hammer_one(node, key, 10).await;
    assert_eq!(count(&all, VerifyCode::Valid), 2);
    let now = peek(key.to_owned()).await;
    assert_eq!((remaining(&now, "exact"), remaining(&now, "local")), (0, 3));

    // A quota refuses: nothing stays reserved locally either.
    let paid = c
        .key(NewKey {
            owner: "o".into(),
            limits: vec![local_first("local", 10, 60)],
            quota: quota(4),
            ..NewKey::default()
        })
        .await;
    let key = paid.key.expose();
    let all = hammer_one(node, key, 8).await;
    assert_eq!(count(&all, VerifyCode::Valid), 4);
    assert_eq!(count(&all, VerifyCode::UsageExceeded), 4);
    let now = peek(key.to_owned()).await;
    assert_eq!(remaining(&now, "local"), 6);

    // Only what was admitted reaches Redis: 3 + 2 + 4 units.
    let report = node.reconcile_local_first().await;
    assert_eq!((report.pools, report.units), (3, 9));
}

async fn hammer_one(node: &Keyward, key: &str, attempts: usize) -> Vec<Verification> {
    let mut out = Vec::with_capacity(attempts);
    for _ in 0..attempts {
        out.push(node.verify(key, &VerifyRequest::default()).await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_first_decides_without_redis_and_falls_back_when_it_is_known_down() {
    let Some(url) =
        redis_url("local_first_decides_without_redis_and_falls_back_when_it_is_known_down")
    else {
        return;
    };
    let c = cluster(url, true).await;
    let proxy = c.proxy.as_ref().unwrap();
    let created = c
        .key(NewKey {
            owner: "o".into(),
            limits: vec![local_first("per_minute", 30, 60)],
            ..NewKey::default()
        })
        .await;
    let key = created.key.expose();
    let node = &c.nodes[0];
    assert_eq!(count(&hammer_one(node, key, 2).await, VerifyCode::Valid), 2);

    // Redis is cut off, and the node does not know yet: verify still answers at once from the
    // node's view, which proves it does not call Redis.
    proxy.cut();
    let v = node.verify(key, &VerifyRequest::default()).await.unwrap();
    assert_eq!(
        (v.code, source(&v)),
        (VerifyCode::Valid, EnforcementSource::LocalFirst)
    );

    // The background reconcile finds Redis down; it keeps its units and verify falls back.
    let report = node.reconcile_local_first().await;
    assert!(!report.redis_up);
    let v = node.verify(key, &VerifyRequest::default()).await.unwrap();
    assert_eq!(
        (v.code, source(&v)),
        (VerifyCode::Valid, EnforcementSource::LocalFallback)
    );

    // Redis is back: the kept units arrive once.
    proxy.restore();
    let mut report = node.reconcile_local_first().await;
    for _ in 0..100 {
        if report.redis_up {
            break;
        }
        // Waiting for the connection manager to reconnect, as `sync_all` does.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        report = node.reconcile_local_first().await;
    }
    assert!(report.redis_up, "Redis did not come back");
    assert_eq!(report.units, 3, "units admitted before and during the cut");
    let v = node.verify(key, &VerifyRequest::default()).await.unwrap();
    assert_eq!(source(&v), EnforcementSource::LocalFirst);
}
