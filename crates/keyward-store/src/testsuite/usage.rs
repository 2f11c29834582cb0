//! Usage counts: adding them up per hour, summing per day, filtering and paging.

use super::*;

/// Usage counts add up per (hour, key, code), sum per day, filter, and page without gaps.
pub(super) async fn usage(store: &dyn KeyStore) {
    use keyward_core::usage::{Granularity, UsageCount};
    use keyward_core::verify::VerifyCode;

    use crate::UsageFilter;

    let count = |hour: OffsetDateTime, key: &str, owner: &str, code, n, credits| UsageCount {
        start: hour,
        key_id: key.into(),
        owner: owner.into(),
        tenant: (owner == "alice").then(|| "acme".into()),
        code,
        verifications: n,
        credits,
    };
    let h0 = T0;
    let h1 = T0 + Duration::hours(1);
    let d1 = T0 + Duration::days(1);
    store.add_usage(&[]).await.unwrap();
    store
        .add_usage(&[
            count(h0, "key_a", "alice", VerifyCode::Valid, 3, 30),
            count(h0, "key_a", "alice", VerifyCode::RateLimited, 1, 0),
            count(h1, "key_a", "alice", VerifyCode::Valid, 2, 20),
            count(h0, "key_b", "bob", VerifyCode::Valid, 5, 0),
            count(d1, "key_a", "alice", VerifyCode::Valid, 7, 70),
        ])
        .await
        .unwrap();
    // A second batch (another node, or the next flush) adds to the same rows.
    store
        .add_usage(&[
            count(h0, "key_a", "alice", VerifyCode::Valid, 4, 40),
            // Two counts for one row in one batch add up too.
            count(h0, "key_b", "bob", VerifyCode::Valid, 1, 0),
            count(h0, "key_b", "bob", VerifyCode::Valid, 1, 0),
        ])
        .await
        .unwrap();
    let filter = |granularity| UsageFilter {
        granularity,
        from: T0,
        to: T0 + Duration::days(2),
        key_id: None,
        owner: None,
        tenant: None,
        limit: 100,
        after: None,
    };
    let rows = |page: crate::UsagePage| {
        page.items
            .into_iter()
            .map(|c| (c.start, c.key_id, c.code, c.verifications, c.credits))
            .collect::<Vec<_>>()
    };
    let hourly = store.list_usage(&filter(Granularity::Hour)).await.unwrap();
    assert_eq!(hourly.next, None);
    assert_eq!(
        rows(hourly),
        vec![
            (h0, "key_a".into(), VerifyCode::RateLimited, 1, 0),
            (h0, "key_a".into(), VerifyCode::Valid, 7, 70),
            (h0, "key_b".into(), VerifyCode::Valid, 7, 0),
            (h1, "key_a".into(), VerifyCode::Valid, 2, 20),
            (d1, "key_a".into(), VerifyCode::Valid, 7, 70),
        ]
    );
    let daily = store.list_usage(&filter(Granularity::Day)).await.unwrap();
    assert_eq!(
        rows(daily),
        vec![
            (T0, "key_a".into(), VerifyCode::RateLimited, 1, 0),
            (T0, "key_a".into(), VerifyCode::Valid, 9, 90),
            (T0, "key_b".into(), VerifyCode::Valid, 7, 0),
            (d1, "key_a".into(), VerifyCode::Valid, 7, 70),
        ]
    );
    // `to` is exclusive and `from` inclusive.
    let mut window = filter(Granularity::Hour);
    window.from = h1;
    window.to = d1;
    assert_eq!(
        rows(store.list_usage(&window).await.unwrap()),
        vec![(h1, "key_a".into(), VerifyCode::Valid, 2, 20)]
    );
    // Filters by key, owner and tenant.
    let mut by_key = filter(Granularity::Day);
    by_key.key_id = Some("key_b".into());
    let only_b = store.list_usage(&by_key).await.unwrap();
    assert_eq!(only_b.items.len(), 1);
    assert_eq!(only_b.items[0].owner, "bob");
    assert_eq!(only_b.items[0].tenant, None);
    let mut by_owner = filter(Granularity::Day);
    by_owner.owner = Some("alice".into());
    let alice = store.list_usage(&by_owner).await.unwrap();
    assert_eq!(alice.items.len(), 3);
    assert!(
        alice.items.iter().all(|c| c.key_id == "key_a"
            && c.owner == "alice"
            && c.tenant.as_deref() == Some("acme"))
    );
    let mut by_tenant = filter(Granularity::Hour);
    by_tenant.tenant = Some("acme".into());
    assert_eq!(store.list_usage(&by_tenant).await.unwrap().items.len(), 4);
    by_tenant.tenant = Some("nobody".into());
    assert!(store.list_usage(&by_tenant).await.unwrap().items.is_empty());
    // Pages of two walk every hourly row once, in order.
    let mut paged = filter(Granularity::Hour);
    paged.limit = 2;
    let mut walked = Vec::new();
    loop {
        let page = store.list_usage(&paged).await.unwrap();
        assert!(page.items.len() <= 2);
        let next = page.next.clone();
        walked.extend(rows(page));
        match next {
            Some(cursor) => paged.after = Some(cursor),
            None => break,
        }
    }
    assert_eq!(
        walked,
        rows(store.list_usage(&filter(Granularity::Hour)).await.unwrap())
    );
    assert_eq!(walked.len(), 5);

    // Real key_ids mix cases; both backends order them bytewise ('B' < 'a'), so pages split
    // the same way whatever PostgreSQL's collation, and a daily walk visits every sum once.
    let later = T0 + Duration::days(10);
    store
        .add_usage(&[
            count(later, "key_a", "alice", VerifyCode::Valid, 1, 0),
            count(later, "key_B", "bob", VerifyCode::Valid, 2, 0),
            count(
                later + Duration::hours(5),
                "key_B",
                "bob",
                VerifyCode::Valid,
                3,
                0,
            ),
            count(later, "key_Z", "bob", VerifyCode::Revoked, 4, 0),
        ])
        .await
        .unwrap();
    let mut daily = filter(Granularity::Day);
    daily.from = later;
    daily.to = later + Duration::days(1);
    daily.limit = 1;
    let mut walked = Vec::new();
    loop {
        let page = store.list_usage(&daily).await.unwrap();
        let next = page.next.clone();
        walked.extend(rows(page));
        match next {
            Some(cursor) => daily.after = Some(cursor),
            None => break,
        }
    }
    assert_eq!(
        walked,
        vec![
            (later, "key_B".into(), VerifyCode::Valid, 5, 0),
            (later, "key_Z".into(), VerifyCode::Revoked, 4, 0),
            (later, "key_a".into(), VerifyCode::Valid, 1, 0),
        ]
    );
}
