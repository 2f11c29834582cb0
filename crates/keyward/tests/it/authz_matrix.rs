//! The authorization matrix: every route the admin listener serves × every kind of credential,
//! with the status each must get.
//!
//! The routes come from the generated OpenAPI document and from the router's source
//! (`keyward-http/src/lib.rs`), and [`ROWS`] must name exactly those: a new route without a row
//! fails the test before any request is sent. Each row says which root permission the route
//! needs, what a caller holding exactly that permission gets, and how a tenant-scoped root key
//! holding it is treated ([`Scoped`]). The other columns follow from that:
//!
//! | credential                          | admin route                 | `/v1/auth` (in `X-Keyward-Root-Key`) |
//! |-------------------------------------|-----------------------------|--------------------------------------|
//! | none, malformed, unknown, revoked   | 401 `unauthenticated`       | 400 `auth_misconfigured`             |
//! | an API key (holding `*`)            | 401 `unauthenticated`       | 400 `auth_misconfigured`             |
//! | a root key with all but the one     | 403 `forbidden`             | 400 `auth_misconfigured`             |
//! | a root key with exactly it          | the row's success status    | 204                                  |
//! | ... confined to the resources' tenant | success, or 403 `out_of_scope` for operations over every tenant | 204 |
//! | ... confined to another tenant      | as [`Scoped`] says          | 401 `unknown_key`                    |
//!
//! Public routes answer every credential alike. Every resource a request names belongs to
//! tenant `acme`; no answer of the API to the other tenant's root key may contain the word
//! `acme`.

use std::collections::BTreeSet;

use serde_json::{Value, json};
use time::Duration;

use keyward_testkit::http::Response;
use keyward_testkit::server::Server;

/// How a root key confined to a tenant, holding the row's permission, is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scoped {
    /// The route names one of `acme`'s keys: for another tenant it does not exist (404
    /// `key_not_found`; `/v1/auth` tells the client 401 `unknown_key`).
    Hidden,
    /// A listing, report or verification: 2xx, with only its own tenant's data.
    Filtered,
    /// The request creates something in tenant `acme`: another tenant gets 400 `invalid_field`.
    TenantField,
    /// Shared by every tenant and only read (plans): 2xx for any tenant.
    Shared,
    /// Spans every tenant (plan writes, the audit chain): 403 `out_of_scope` for any tenant.
    Global,
}

/// What a row's path parameters and body placeholders are filled with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// Nothing to fill in.
    None,
    /// `acme`'s long-lived API key (it has a quota).
    Key,
    /// A new `acme` API key for each request (the request changes it for good).
    FreshKey,
    /// A new `acme` root key for each request.
    FreshRootKey,
    /// The plan `pro`.
    Plan,
    /// A new plan for each request.
    FreshPlan,
}

/// Where the credential goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    /// Not needed: a public route.
    Public,
    /// `Authorization: Bearer`.
    Bearer,
    /// `X-Keyward-Root-Key` (the client's API key is the bearer token).
    RootKeyHeader,
}

struct Row {
    method: &'static str,
    path: &'static str,
    via: Via,
    permission: &'static str,
    target: Target,
    /// The body; `{fresh}` becomes a new name and `{api_key}` `acme`'s API key.
    body: Option<&'static str>,
    /// The status for a root key holding exactly `permission`.
    ok: u16,
    scoped: Scoped,
}

/// One positional argument per column keeps each row of [`ROWS`] on one line.
#[rustfmt::skip]
#[allow(clippy::too_many_arguments)]
const fn row(method: &'static str, path: &'static str, via: Via, permission: &'static str, target: Target, body: Option<&'static str>, ok: u16, scoped: Scoped) -> Row {
    Row { method, path, via, permission, target, body, ok, scoped }
}

use Scoped::{Filtered, Global, Hidden, Shared, TenantField};
use Target::{FreshKey, FreshPlan, FreshRootKey, Key, Plan};
use Via::{Bearer, Public, RootKeyHeader};

/// Every route of the admin listener, one row each.
#[rustfmt::skip]
const ROWS: &[Row] = &[
    //   method    path                                 via            permission     target          body                                                 ok   tenant-scoped
    row("POST",   "/v1/keys",                          Bearer,        "keys.create", Target::None,   Some(r#"{"owner": "o", "tenant": "acme"}"#),          201, TenantField),
    row("GET",    "/v1/keys",                          Bearer,        "keys.read",   Target::None,   None,                                                200, Filtered),
    row("GET",    "/v1/keys/{key_id}",                 Bearer,        "keys.read",   Key,            None,                                                200, Hidden),
    row("PATCH",  "/v1/keys/{key_id}",                 Bearer,        "keys.update", Key,            Some(r#"{"name": "renamed"}"#),                      200, Hidden),
    row("POST",   "/v1/keys/{key_id}/rotate",          Bearer,        "keys.update", FreshKey,       Some(r#"{}"#),                                       201, Hidden),
    row("POST",   "/v1/keys/{key_id}/revoke",          Bearer,        "keys.revoke", FreshKey,       Some(r#"{"reason": "matrix"}"#),                     200, Hidden),
    row("GET",    "/v1/keys/{key_id}/credits",         Bearer,        "keys.read",   Key,            None,                                                200, Hidden),
    row("POST",   "/v1/keys/{key_id}/credits",         Bearer,        "keys.update", Key,            Some(r#"{"op": "increase", "amount": 1}"#),          200, Hidden),
    row("POST",   "/v1/keys/verify",                   Bearer,        "keys.verify", Target::None,   Some(r#"{"key": "{api_key}", "cost": 0}"#),          200, Filtered),
    row("GET",    "/v1/auth",                          RootKeyHeader, "keys.verify", Target::None,   None,                                                204, Hidden),
    row("POST",   "/v1/plans",                         Bearer,        "plans.write", Target::None,   Some(r#"{"plan_id": "{fresh}"}"#),                   201, Global),
    row("GET",    "/v1/plans",                         Bearer,        "plans.read",  Target::None,   None,                                                200, Shared),
    row("GET",    "/v1/plans/{plan_id}",               Bearer,        "plans.read",  Plan,           None,                                                200, Shared),
    row("PUT",    "/v1/plans/{plan_id}",               Bearer,        "plans.write", Plan,           Some(r#"{"quota": {"credits": 1000}}"#),             200, Global),
    row("DELETE", "/v1/plans/{plan_id}",               Bearer,        "plans.write", FreshPlan,      None,                                                204, Global),
    row("POST",   "/v1/root-keys",                     Bearer,        "root.manage", Target::None,   Some(r#"{"tenant": "acme", "permissions": ["root.manage"]}"#), 201, TenantField),
    row("GET",    "/v1/root-keys",                     Bearer,        "root.manage", Target::None,   None,                                                200, Filtered),
    row("POST",   "/v1/root-keys/{key_id}/revoke",     Bearer,        "root.manage", FreshRootKey,   Some(r#"{"reason": "matrix"}"#),                     200, Hidden),
    row("GET",    "/v1/reports/rotation",              Bearer,        "keys.read",   Target::None,   None,                                                200, Filtered),
    row("GET",    "/v1/usage",                         Bearer,        "usage.read",  Target::None,   None,                                                200, Filtered),
    row("GET",    "/v1/audit",                         Bearer,        "audit.read",  Target::None,   None,                                                200, Filtered),
    row("POST",   "/v1/audit/verify",                  Bearer,        "audit.read",  Target::None,   None,                                                200, Global),
    row("GET",    "/healthz",                          Public,        "",            Target::None,   None,                                                200, Shared),
    row("GET",    "/readyz",                           Public,        "",            Target::None,   None,                                                200, Shared),
    row("GET",    "/openapi.json",                     Public,        "",            Target::None,   None,                                                200, Shared),
    row("GET",    "/metrics",                          Public,        "",            Target::None,   None,                                                200, Shared),
];

/// Routes the router serves that the OpenAPI document deliberately leaves out.
const UNDOCUMENTED: &[(&str, &str)] = &[("GET", "/openapi.json"), ("GET", "/metrics")];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Credential {
    None,
    Malformed,
    Unknown,
    Revoked,
    ApiKey,
    Lacking,
    Exact,
    OwnTenant,
    OtherTenant,
}

impl Credential {
    const ALL: [Self; 9] = [
        Self::None,
        Self::Malformed,
        Self::Unknown,
        Self::Revoked,
        Self::ApiKey,
        Self::Lacking,
        Self::Exact,
        Self::OwnTenant,
        Self::OtherTenant,
    ];

    fn describe(self, permission: &str) -> String {
        match self {
            Self::None => "no credential".into(),
            Self::Malformed => "a malformed root key".into(),
            Self::Unknown => "an unknown root key".into(),
            Self::Revoked => "a revoked root key (*)".into(),
            Self::ApiKey => "an API key (*)".into(),
            Self::Lacking => format!("a root key with every permission but {permission}"),
            Self::Exact => format!("a root key with exactly {permission}"),
            Self::OwnTenant => format!("an acme root key with exactly {permission}"),
            Self::OtherTenant => format!("a globex root key with exactly {permission}"),
        }
    }
}

/// An expected answer: a status and, for an error, its problem code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Expect {
    status: u16,
    code: Option<&'static str>,
}

const fn ok(status: u16) -> Expect {
    Expect { status, code: None }
}

const fn problem(status: u16, code: &'static str) -> Expect {
    Expect {
        status,
        code: Some(code),
    }
}

impl Row {
    fn expect(&self, credential: Credential) -> Expect {
        use Credential as C;
        match (self.via, credential) {
            (Public, _) => ok(self.ok),
            (Bearer, C::None | C::Malformed | C::Unknown | C::Revoked | C::ApiKey) => {
                problem(401, "unauthenticated")
            }
            (Bearer, C::Lacking) => problem(403, "forbidden"),
            (RootKeyHeader, C::None | C::Malformed | C::Unknown | C::Revoked | C::ApiKey)
            | (RootKeyHeader, C::Lacking) => problem(400, "auth_misconfigured"),
            (_, C::Exact) => ok(self.ok),
            (_, C::OwnTenant) => match self.scoped {
                Global => problem(403, "out_of_scope"),
                _ => ok(self.ok),
            },
            (_, C::OtherTenant) => match self.scoped {
                Hidden if self.via == RootKeyHeader => problem(401, "unknown_key"),
                Hidden => problem(404, "key_not_found"),
                Filtered | Shared => ok(self.ok),
                TenantField => problem(400, "invalid_field"),
                Global => problem(403, "out_of_scope"),
            },
        }
    }
}

/// The routes of the OpenAPI document: (METHOD, path) and whether they declare the root-key
/// security scheme.
fn documented_routes() -> Vec<(String, String, bool)> {
    let doc: Value = serde_json::from_str(&keyward_http::openapi_json()).unwrap();
    let mut routes = Vec::new();
    for (path, operations) in doc["paths"].as_object().unwrap() {
        for (method, operation) in operations.as_object().unwrap() {
            let secured = operation["security"]
                .as_array()
                .is_some_and(|s| s.iter().any(|r| r.get("root_key").is_some()));
            routes.push((method.to_uppercase(), path.clone(), secured));
        }
    }
    routes
}

/// The routes `router_with` registers, read from its source: every `.route("path", ...)` and
/// the method routers chained in it.
fn router_routes() -> BTreeSet<(String, String)> {
    let source = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../keyward-http/src/lib.rs"
    ))
    .unwrap();
    let mut routes = BTreeSet::new();
    for call in source.split(".route(").skip(1) {
        let path = call.split('"').nth(1).unwrap().to_owned();
        // The call's arguments end at the parenthesis that closes `.route(`.
        let mut depth = 1;
        let end = call
            .char_indices()
            .find(|(_, c)| {
                match c {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    _ => {}
                }
                depth == 0
            })
            .map(|(i, _)| i)
            .unwrap();
        let args = &call[..end];
        for method in [
            "get", "post", "put", "patch", "delete", "head", "options", "any",
        ] {
            let needle = format!("{method}(");
            let mut from = 0;
            while let Some(at) = args[from..].find(&needle) {
                let at = from + at;
                let before = args[..at].chars().next_back();
                if !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                    assert_ne!(method, "any", "{path} is routed for any method; list them");
                    routes.insert((method.to_uppercase(), path.clone()));
                }
                from = at + needle.len();
            }
        }
    }
    routes
}

/// Fails with a clear message unless [`ROWS`] names exactly the routes the OpenAPI document
/// and the router have, with the documented security matching the row.
fn check_rows_cover_every_route() {
    let rows: BTreeSet<(String, String)> = ROWS
        .iter()
        .map(|r| (r.method.to_owned(), r.path.to_owned()))
        .collect();
    assert_eq!(rows.len(), ROWS.len(), "a route has two rows in ROWS");
    let documented = documented_routes();
    let mut problems = Vec::new();
    for (method, path, secured) in &documented {
        match ROWS.iter().find(|r| r.method == method && r.path == path) {
            None => problems.push(format!(
                "{method} {path} is in the OpenAPI document but has no row in ROWS \
                 (crates/keyward/tests/it/authz_matrix.rs): add one with its permission"
            )),
            Some(row) if *secured != (row.via == Bearer) => problems.push(format!(
                "{method} {path}: the OpenAPI document {} the root_key security scheme, but \
                 its row says {:?}",
                if *secured {
                    "declares"
                } else {
                    "does not declare"
                },
                row.via
            )),
            Some(_) => {}
        }
    }
    let documented: BTreeSet<(String, String)> =
        documented.into_iter().map(|(m, p, _)| (m, p)).collect();
    for (method, path) in &rows {
        let undocumented = UNDOCUMENTED.contains(&(method.as_str(), path.as_str()));
        if !documented.contains(&(method.clone(), path.clone())) && !undocumented {
            problems.push(format!(
                "{method} {path} has a row but is not in the OpenAPI document (document it, \
                 or list it in UNDOCUMENTED)"
            ));
        }
    }
    let served = router_routes();
    for route in served.difference(&rows) {
        problems.push(format!(
            "{} {} is served by the router (keyward-http/src/lib.rs) but has no row in ROWS",
            route.0, route.1
        ));
    }
    for route in rows.difference(&served) {
        problems.push(format!(
            "{} {} has a row but the router does not serve it",
            route.0, route.1
        ));
    }
    assert!(
        problems.is_empty(),
        "the authorization matrix does not cover the API:\n{}",
        problems.join("\n")
    );
}

/// The credentials and `acme`'s resources.
struct Fixture<'a> {
    s: &'a Server,
    api_key: String,
    api_key_id: String,
    revoked: String,
    unknown: String,
    counter: std::cell::Cell<u32>,
}

impl<'a> Fixture<'a> {
    async fn new(s: &'a Server) -> Self {
        let created = s
            .admin(
                "POST",
                "/v1/keys",
                Some(json!({
                    "owner": "o", "tenant": "acme", "permissions": ["*"], "quota": {"credits": 100},
                })),
            )
            .await;
        assert_eq!(created.status, 201);
        let api_key = created.json()["key"].as_str().unwrap().to_owned();
        let api_key_id = created.json()["record"]["key_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let plan = s
            .admin("POST", "/v1/plans", Some(json!({"plan_id": "pro"})))
            .await;
        assert_eq!(plan.status, 201);
        let revoked = s
            .admin("POST", "/v1/root-keys", Some(json!({"permissions": ["*"]})))
            .await
            .json();
        let revoked_id = revoked["record"]["key_id"].as_str().unwrap();
        let r = s
            .admin(
                "POST",
                &format!("/v1/root-keys/{revoked_id}/revoke"),
                Some(json!({"reason": "matrix"})),
            )
            .await;
        assert_eq!(r.status, 200);
        let unknown = keyward_testkit::keys::stranger("kwroot");
        // acme's key overdue for rotation, and its usage of the current hour: the listings and
        // reports have something of acme's to show, or to hide.
        s.engine
            .set_rotation_config(keyward_engine::rotation_policy::RotationConfig {
                policies: vec![
                    keyward_engine::rotation_policy::RotationPolicy::parse("*/live=1").unwrap(),
                ],
                warning_days: 0,
            });
        s.clock.advance(Duration::days(2));
        assert_eq!(
            s.verify(json!({"key": api_key, "cost": 0})).await["code"],
            "VALID"
        );
        s.engine.flush_usage().await.unwrap();
        Self {
            s,
            api_key,
            api_key_id,
            revoked: revoked["key"].as_str().unwrap().to_owned(),
            unknown,
            counter: std::cell::Cell::new(0),
        }
    }

    fn fresh_name(&self) -> String {
        self.counter.set(self.counter.get() + 1);
        format!("matrix-{}", self.counter.get())
    }

    /// A root key minted by the bootstrap key.
    async fn root_key(&self, tenant: Option<&str>, permissions: Vec<&str>) -> String {
        let r = self
            .s
            .admin(
                "POST",
                "/v1/root-keys",
                Some(json!({"tenant": tenant, "permissions": permissions})),
            )
            .await;
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
        r.json()["key"].as_str().unwrap().to_owned()
    }

    /// The credential's secret for a route needing `permission`.
    async fn credential(&self, credential: Credential, permission: &str) -> Option<String> {
        let lacking: Vec<&str> = keyward_engine::ROOT_PERMISSIONS
            .iter()
            .copied()
            .filter(|p| *p != permission)
            .collect();
        match credential {
            Credential::None => None,
            Credential::Malformed => Some("kwroot_notakey".into()),
            Credential::Unknown => Some(self.unknown.clone()),
            Credential::Revoked => Some(self.revoked.clone()),
            Credential::ApiKey => Some(self.api_key.clone()),
            Credential::Lacking => Some(self.root_key(None, lacking).await),
            Credential::Exact => Some(self.root_key(None, vec![permission]).await),
            Credential::OwnTenant => Some(self.root_key(Some("acme"), vec![permission]).await),
            Credential::OtherTenant => Some(self.root_key(Some("globex"), vec![permission]).await),
        }
    }

    /// The row's path with its parameters filled in, and its body.
    async fn request(&self, row: &Row) -> (String, Option<Value>) {
        let fresh = self.fresh_name();
        let (name, value) = match row.target {
            Target::None => ("", String::new()),
            Key => ("{key_id}", self.api_key_id.clone()),
            FreshKey => {
                let r = self
                    .s
                    .admin(
                        "POST",
                        "/v1/keys",
                        Some(json!({"owner": "o", "tenant": "acme"})),
                    )
                    .await;
                (
                    "{key_id}",
                    r.json()["record"]["key_id"].as_str().unwrap().to_owned(),
                )
            }
            FreshRootKey => {
                let r = self
                    .s
                    .admin(
                        "POST",
                        "/v1/root-keys",
                        Some(json!({"tenant": "acme", "permissions": ["keys.read"]})),
                    )
                    .await;
                (
                    "{key_id}",
                    r.json()["record"]["key_id"].as_str().unwrap().to_owned(),
                )
            }
            Plan => ("{plan_id}", "pro".to_owned()),
            FreshPlan => {
                let r = self
                    .s
                    .admin("POST", "/v1/plans", Some(json!({"plan_id": fresh})))
                    .await;
                assert_eq!(r.status, 201);
                ("{plan_id}", fresh.clone())
            }
        };
        let path = if name.is_empty() {
            row.path.to_owned()
        } else {
            row.path.replace(name, &value)
        };
        let body = row.body.map(|b| {
            serde_json::from_str(
                &b.replace("{fresh}", &fresh)
                    .replace("{api_key}", &self.api_key),
            )
            .unwrap()
        });
        (path, body)
    }

    async fn send(&self, row: &Row, credential: Option<&str>) -> Response {
        let (path, body) = self.request(row).await;
        match row.via {
            RootKeyHeader => {
                let mut headers = vec![("authorization", format!("Bearer {}", self.api_key))];
                if let Some(root) = credential {
                    headers.push(("x-keyward-root-key", root.to_owned()));
                }
                let pairs: Vec<(&str, &str)> =
                    headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
                self.s
                    .http
                    .raw_with_headers(row.method, &path, &pairs)
                    .await
            }
            Public | Bearer => self.s.http.call(row.method, &path, credential, body).await,
        }
    }
}

/// What is wrong with `response`, if anything.
fn mismatch(expected: Expect, response: &Response) -> Option<String> {
    let body = String::from_utf8_lossy(&response.body);
    let code = serde_json::from_slice::<Value>(&response.body)
        .ok()
        .and_then(|v| v["code"].as_str().map(str::to_owned));
    let status_ok = response.status == expected.status;
    let code_ok = expected.code.is_none_or(|c| code.as_deref() == Some(c));
    if status_ok && code_ok {
        return None;
    }
    let excerpt: String = body.chars().take(200).collect();
    Some(format!(
        "expected {}{}, got {} {}",
        expected.status,
        expected.code.map(|c| format!(" {c}")).unwrap_or_default(),
        response.status,
        excerpt
    ))
}

#[tokio::test(flavor = "multi_thread")]
async fn authorization_matrix() {
    check_rows_cover_every_route();
    let s = Server::start().await;
    let f = Fixture::new(&s).await;
    let mut failures = Vec::new();
    for row in ROWS {
        // A public route gets the credentials of some permission all the same.
        let permission = if row.via == Public {
            "keys.read"
        } else {
            row.permission
        };
        for credential in Credential::ALL {
            let secret = f.credential(credential, permission).await;
            let response = f.send(row, secret.as_deref()).await;
            let expected = row.expect(credential);
            let cell = format!(
                "{} {} with {}",
                row.method,
                row.path,
                credential.describe(permission)
            );
            if let Some(wrong) = mismatch(expected, &response) {
                failures.push(format!("{cell}: {wrong}"));
                continue;
            }
            let body = String::from_utf8_lossy(&response.body);
            // A route the router does not serve answers not_found or method_not_allowed.
            if credential == Credential::Exact
                && (body.contains("urn:keyward:problem:not_found")
                    || body.contains("urn:keyward:problem:method_not_allowed"))
            {
                failures.push(format!("{cell}: the router does not serve it: {body}"));
            }
            // Another tenant's key never sees anything of acme's through the API, and a
            // filtered route does show acme's data to an unscoped key (so this check can
            // fail). Public routes are the operator's (`/metrics` labels by tenant).
            if credential == Credential::OtherTenant && row.via != Public && body.contains("acme") {
                failures.push(format!(
                    "{cell}: the answer reveals tenant acme: {body:.300}"
                ));
            }
            if credential == Credential::Exact && row.scoped == Filtered && !body.contains("acme") {
                failures.push(format!(
                    "{cell}: expected acme's data in the answer (the fixture is wrong): {body:.300}"
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cells of the authorization matrix failed:\n{}",
        failures.len(),
        ROWS.len() * Credential::ALL.len(),
        failures.join("\n")
    );
}
