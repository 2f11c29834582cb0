//! OpenAPI links: which operations take an identifier that another one returns (a created key's
//! `key_id`, a plan's `plan_id`). Clients and generators read them to chain calls; the
//! OpenAPI-driven test (`.ci/schemathesis.sh`) follows them in its stateful phase, so the
//! operations on one key or plan are tested on a real one rather than only on unknown ids.

use utoipa::Modify;
use utoipa::openapi::link::LinkBuilder;
use utoipa::openapi::{OpenApi, RefOr};

/// An answer (`path`, `method`, `status`) whose body holds an identifier (at `expression`) that
/// the path parameter `parameter` of each of `targets` takes.
struct LinkSpec {
    path: &'static str,
    method: &'static str,
    status: &'static str,
    targets: &'static [&'static str],
    parameter: &'static str,
    expression: &'static str,
}

const LINKS: &[LinkSpec] = &[
    LinkSpec {
        path: "/v1/keys",
        method: "post",
        status: "201",
        targets: KEY_OPERATIONS,
        parameter: "key_id",
        expression: "$response.body#/record/key_id",
    },
    LinkSpec {
        path: "/v1/keys/{key_id}/rotate",
        method: "post",
        status: "201",
        targets: KEY_OPERATIONS,
        parameter: "key_id",
        expression: "$response.body#/record/key_id",
    },
    LinkSpec {
        path: "/v1/plans",
        method: "post",
        status: "201",
        targets: &["get_plan", "replace_plan", "delete_plan"],
        parameter: "plan_id",
        expression: "$response.body#/plan_id",
    },
    LinkSpec {
        path: "/v1/root-keys",
        method: "post",
        status: "201",
        targets: &["revoke_root_key"],
        parameter: "key_id",
        expression: "$response.body#/record/key_id",
    },
];

const KEY_OPERATIONS: &[&str] = &[
    "get_key",
    "update_key",
    "rotate_key",
    "revoke_key",
    "get_credits",
    "adjust_credits",
];

/// Adds [`LINKS`] to the document.
pub(crate) struct Links;

impl Modify for Links {
    fn modify(&self, openapi: &mut OpenApi) {
        for spec in LINKS {
            let Some(item) = openapi.paths.paths.get_mut(spec.path) else {
                continue;
            };
            let operation = match spec.method {
                "post" => item.post.as_mut(),
                "put" => item.put.as_mut(),
                _ => None,
            };
            let Some(RefOr::T(response)) =
                operation.and_then(|o| o.responses.responses.get_mut(spec.status))
            else {
                continue;
            };
            for target in spec.targets {
                let link = LinkBuilder::new()
                    .operation_id(*target)
                    .parameter(spec.parameter, spec.expression)
                    .build();
                response.links.insert((*target).to_owned(), RefOr::T(link));
            }
        }
    }
}

/// utoipa 5 writes a link's `operationId` as `operation_id`, which OpenAPI readers ignore; the
/// document's text is corrected here (no other key of the document is spelled that way).
pub(crate) fn camel_case(document: String) -> String {
    document.replace("\"operation_id\": ", "\"operationId\": ")
}
