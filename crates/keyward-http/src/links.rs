//! OpenAPI links: which operations take an identifier that another one returns (a created key's
//! `key_id`, a plan's `plan_id`). Clients and generators read them to chain calls; the
//! OpenAPI-driven test (`.ci/schemathesis.sh`) follows them in its stateful phase, so the
//! operations on one key or plan are tested on a real one rather than only on unknown ids.

use utoipa::Modify;
use utoipa::openapi::link::LinkBuilder;
use utoipa::openapi::{OpenApi, RefOr};

/// `(path, method, status)` of an answer, the operations its identifier feeds, the path
/// parameter and where the identifier is in the answer's body.
const LINKS: &[(&str, &str, &str, &[&str], &str, &str)] = &[
    (
        "/v1/keys",
        "post",
        "201",
        KEY_OPERATIONS,
        "key_id",
        "$response.body#/record/key_id",
    ),
    (
        "/v1/keys/{key_id}/rotate",
        "post",
        "201",
        KEY_OPERATIONS,
        "key_id",
        "$response.body#/record/key_id",
    ),
    (
        "/v1/plans",
        "post",
        "201",
        &["get_plan", "replace_plan", "delete_plan"],
        "plan_id",
        "$response.body#/plan_id",
    ),
    (
        "/v1/root-keys",
        "post",
        "201",
        &["revoke_root_key"],
        "key_id",
        "$response.body#/record/key_id",
    ),
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
        for (path, method, status, targets, parameter, expression) in LINKS {
            let Some(item) = openapi.paths.paths.get_mut(*path) else {
                continue;
            };
            let operation = match *method {
                "post" => item.post.as_mut(),
                "put" => item.put.as_mut(),
                _ => None,
            };
            let Some(RefOr::T(response)) =
                operation.and_then(|o| o.responses.responses.get_mut(*status))
            else {
                continue;
            };
            for target in *targets {
                let link = LinkBuilder::new()
                    .operation_id(*target)
                    .parameter(*parameter, *expression)
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
