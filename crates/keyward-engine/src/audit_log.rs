//! Reading the audit log: pages of events (all of them, or one tenant's) and the walk of the
//! whole hash chain. Events are written by the operations they record, each in the same store
//! transaction as its change.

use keyward_core::audit::{AuditAction, AuditEvent, BrokenLink, ChainVerifier};
use keyward_core::validate::{self, FieldError, MAX_PAGE};
use keyward_store::{AuditFilter, KeyStore, Page};

use crate::error::EngineError;
use crate::types::ChainReport;

/// A page of audit events; with `tenant`, only those whose target or actor is a key of it.
pub(crate) async fn page(
    store: &dyn KeyStore,
    target: Option<String>,
    action: Option<String>,
    limit: Option<u32>,
    after: Option<i64>,
    tenant: Option<String>,
) -> Result<Page<AuditEvent>, EngineError> {
    if action
        .as_deref()
        .is_some_and(|a| AuditAction::parse(a).is_none())
    {
        let known: Vec<_> = AuditAction::ALL.iter().map(|a| a.as_str()).collect();
        return Err(
            FieldError::new("action", format!("must be one of {}", known.join(", "))).into(),
        );
    }
    let filter = AuditFilter {
        target,
        action,
        tenant,
        limit: validate::page_limit(limit)?,
        after,
    };
    Ok(store.list_audit(&filter).await?)
}

/// Walks the whole audit chain and reports the first broken link.
pub(crate) async fn verify_chain(store: &dyn KeyStore) -> Result<ChainReport, EngineError> {
    fn report(verifier: &ChainVerifier, first_broken: Option<BrokenLink>) -> ChainReport {
        let (head_seq, head_hash) = verifier.head();
        ChainReport {
            checked: verifier.checked(),
            first_broken,
            head_seq,
            head_hash: head_hash.to_owned(),
        }
    }
    let mut verifier = ChainVerifier::default();
    let mut filter = AuditFilter {
        limit: MAX_PAGE,
        ..AuditFilter::default()
    };
    loop {
        let page = store.list_audit(&filter).await?;
        for event in &page.items {
            if let Err(broken) = verifier.check(event) {
                return Ok(report(&verifier, Some(broken)));
            }
        }
        match page.next_cursor {
            Some(cursor) => filter.after = Some(cursor),
            None => return Ok(report(&verifier, None)),
        }
    }
}
