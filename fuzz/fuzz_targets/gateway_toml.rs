//! The gateway's TOML config (`keyward gateway --config`): parsing and validation, as
//! `keyward::gateway::parse_config` does them before anything binds or opens a store.
//!
//! Oracle: no panic. A config that loads has at least one route, each route's prefix starts
//! with '/' and its upstream is an http:// URL with a host.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(loaded) = keyward::gateway::parse_config(Path::new("gateway.toml"), text) else {
        return;
    };
    assert!(
        !loaded.gateway.routes.is_empty(),
        "a config without routes loaded"
    );
    for route in &loaded.gateway.routes {
        assert!(
            route.prefix.normal().as_str().starts_with('/'),
            "prefix {}",
            route.prefix
        );
        assert_eq!(route.upstream.scheme_str(), Some("http"));
        assert!(route.upstream.host().is_some());
    }
});
