//! The error answers every operation shares because of the extractors it uses, added to the
//! OpenAPI document in one place rather than repeated in each handler's `responses(...)`:
//! `Authorized` answers 401 and 403, `ApiJson` 400, 413 and 415, `ApiQuery` 400. A handler
//! still documents its own answers (404, 409, ...) and may describe these more precisely; what
//! it documents is kept. The OpenAPI-driven test (`.ci/schemathesis.sh`) fails on any status
//! the document leaves out.

use utoipa::Modify;
use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, RefOr, ResponseBuilder};

/// Adds the shared error answers to every operation that can give them.
pub(crate) struct CommonResponses;

impl Modify for CommonResponses {
    fn modify(&self, openapi: &mut OpenApi) {
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for operation in operations.into_iter().flatten() {
                add_common(operation);
            }
        }
    }
}

fn add_common(operation: &mut Operation) {
    let root_key = operation
        .security
        .as_ref()
        .and_then(|s| serde_json::to_value(s).ok())
        .is_some_and(|v| v.to_string().contains("\"root_key\""));
    if root_key {
        add(operation, 401, "No valid root key (`unauthenticated`)");
        add(
            operation,
            403,
            "The root key lacks the permission this operation needs (`forbidden`)",
        );
    }
    if operation.request_body.is_some() {
        add(
            operation,
            400,
            "The body is not valid JSON of the documented shape, or a field is invalid",
        );
        add(
            operation,
            413,
            "The body is too large (`payload_too_large`)",
        );
        add(
            operation,
            415,
            "The body is not sent as `application/json` (`unsupported_media_type`)",
        );
    }
    let query = operation
        .parameters
        .iter()
        .flatten()
        .any(|p| matches!(p.parameter_in, ParameterIn::Query));
    if query {
        add(
            operation,
            400,
            "A query parameter is unknown, repeated or invalid",
        );
    }
}

/// Documents `status` with a problem body, unless the handler documents it already.
fn add(operation: &mut Operation, status: u16, description: &str) {
    operation
        .responses
        .responses
        .entry(status.to_string())
        .or_insert_with(|| {
            RefOr::T(
                ResponseBuilder::new()
                    .description(description)
                    .content(
                        "application/problem+json",
                        ContentBuilder::new()
                            .schema(Some(Ref::from_schema_name("Problem")))
                            .build(),
                    )
                    .build(),
            )
        });
}
