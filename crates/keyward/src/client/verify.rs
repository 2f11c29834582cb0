//! `keyward verify`: asks `POST /v1/keys/verify` about a key (given as an argument or on
//! standard input) and exits by the answer.

use std::io::Read;
use std::process::ExitCode;

use anyhow::Context;
use keyward_wire::{VerifyKeyRequest, VerifyKeyResponse};

use super::http::connect;
use crate::cli::verify::VerifyArgs;

/// Exit status when a verified key is not valid, or the audit chain is broken.
pub const EXIT_NOT_VALID: u8 = 3;

/// Verifies the key: exit 0 if it is valid, [`EXIT_NOT_VALID`] if not.
pub async fn run(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let (client, out) = connect(&args.client)?;
    let key = if args.key == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading the key from standard input")?;
        text.trim().to_owned()
    } else {
        args.key
    };
    let permissions = match (args.query, args.permissions.is_empty()) {
        (Some(q), _) => Some(q),
        (None, false) => Some(args.permissions.join(" AND ")),
        (None, true) => None,
    };
    let body = VerifyKeyRequest {
        key,
        permissions,
        method: args.method,
        path: args.path,
        ip: args.ip,
        origin: args.origin,
        cost: args.cost,
        tenant: None,
        environment: None,
    };
    let response: VerifyKeyResponse = client.post("/v1/keys/verify", &body).await?;
    out.verification(&response)?;
    Ok(if response.valid {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_NOT_VALID)
    })
}
