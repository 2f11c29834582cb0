//! Path normalisation and allowlist matching (issue 10, findings 1 and 13): the cost a request
//! path can put on an edge thread.
//!
//! Run with `cargo bench -p keyward-core --bench paths`; figures go to BENCHMARKS.md.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use keyward_core::path::{MAX_PATH_BYTES, MAX_SEGMENTS, PathOptions, normalize};
use keyward_core::route::{RoutePattern, route_allowed};

fn bench_paths(c: &mut Criterion) {
    let options = PathOptions::default();
    let typical = b"/v1/orders/42/items";
    c.bench_function("normalize_typical", |b| {
        b.iter(|| normalize(black_box(typical), options).unwrap())
    });
    let encoded = b"/v1/%6Frders/caf%c3%a9/%7Euser/items";
    c.bench_function("normalize_encoded", |b| {
        b.iter(|| normalize(black_box(encoded), options).unwrap())
    });

    // The longest path accepted: MAX_SEGMENTS segments filling MAX_PATH_BYTES.
    let segment = "s".repeat(MAX_PATH_BYTES / MAX_SEGMENTS - 1);
    let longest = format!("/{}", vec![segment.as_str(); MAX_SEGMENTS].join("/"));
    assert_eq!(longest.len(), MAX_PATH_BYTES);
    c.bench_function("normalize_longest", |b| {
        b.iter(|| normalize(black_box(longest.as_bytes()), options).unwrap())
    });

    // Refused by its length before it is read (the 64 KB path of finding 13).
    let huge = "/a".repeat(32 * 1024);
    c.bench_function("refuse_64kb", |b| {
        b.iter(|| normalize(black_box(huge.as_bytes()), options).unwrap_err())
    });

    // Finding 13's worst case, at the new limits: a key with 64 `**` patterns that each make
    // the matcher backtrack over the whole path and then fail, against the longest path.
    let routes: Vec<RoutePattern> = (0..64)
        .map(|i| RoutePattern::new(&format!("GET /**/{segment}/**/end{i}")).unwrap())
        .collect();
    let path = normalize(longest.as_bytes(), options).unwrap();
    assert!(!route_allowed(&routes, Some("GET"), Some(&path)));
    c.bench_function("allowlist_64_double_star_longest_path", |b| {
        b.iter(|| route_allowed(black_box(&routes), Some("GET"), Some(black_box(&path))))
    });
    // Patterns of 256 bytes, `/**/a` fifty times and then a segment that never comes, against
    // 128 segments `a`: the most `**` backtracking one pattern can ask for.
    let adversarial: Vec<RoutePattern> = (0..64)
        .map(|i| RoutePattern::new(&format!("GET {}/b{i}", "/**/a".repeat(49))).unwrap())
        .collect();
    let many_a = normalize("/a".repeat(MAX_SEGMENTS).as_bytes(), options).unwrap();
    assert!(!route_allowed(&adversarial, Some("GET"), Some(&many_a)));
    c.bench_function("allowlist_64_adversarial_patterns_128_segments", |b| {
        b.iter(|| {
            route_allowed(
                black_box(&adversarial),
                Some("GET"),
                Some(black_box(&many_a)),
            )
        })
    });
    c.bench_function("normalize_and_allowlist_64_double_star_longest_path", |b| {
        b.iter(|| {
            let path = normalize(black_box(longest.as_bytes()), options).unwrap();
            route_allowed(black_box(&routes), Some("GET"), Some(&path))
        })
    });
}

criterion_group!(benches, bench_paths);
criterion_main!(benches);
