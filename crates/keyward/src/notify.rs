//! Webhooks and rotation policy settings of `serve` and `gateway`: their flags
//! ([`NotifyArgs`]), turned (as the gateway TOML's keys are) into the engine's
//! [`RotationConfig`] and a running webhook [`Dispatcher`].

use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use keyward_engine::Keyward;
use keyward_engine::rotation_policy::{RotationConfig, RotationPolicy};
use keyward_webhooks::{Dispatcher, WebhookConfig};
use zeroize::Zeroizing;

/// The webhook signing secret; its `Debug` does not show it.
#[derive(Clone)]
pub struct WebhookSecret(pub Zeroizing<String>);

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(<redacted>)")
    }
}

impl std::str::FromStr for WebhookSecret {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // The length (at least 32 bytes) is checked by `WebhookConfig::new`, not here: clap
        // quotes the value it rejects, and a secret must not reach an error message.
        if s.is_empty() {
            return Err("must not be empty".to_owned());
        }
        Ok(Self(Zeroizing::new(s.to_owned())))
    }
}

/// clap's parser for `--rotation-policy`.
pub fn parse_rotation_policy(text: &str) -> Result<RotationPolicy, String> {
    RotationPolicy::parse(text)
}

/// Webhooks and rotation policy (see docs/webhooks.md and docs/rotation-policy.md).
#[derive(Debug, Clone, Args)]
pub struct NotifyArgs {
    /// POST signed JSON events (key_revoked, key_expiring_soon, rotation_overdue, anomaly,
    /// key_disabled) to this http:// URL; repeat for several endpoints.
    #[arg(long = "webhook", env = "KEYWARD_WEBHOOKS", value_delimiter = ',')]
    pub webhooks: Vec<String>,
    /// Secret for the HMAC-SHA256 Keyward-Signature header (prefer the environment variable:
    /// command lines are visible to other users).
    #[arg(long, env = "KEYWARD_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<WebhookSecret>,
    /// Attempts per event and endpoint before it is given up (backoff 1 s, doubling, at most 60 s).
    #[arg(long, env = "KEYWARD_WEBHOOK_MAX_ATTEMPTS", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub webhook_max_attempts: u32,
    /// Rotation policy TENANT/ENVIRONMENT=DAYS (`*` for any): the current secret of a matching
    /// active key must be younger than DAYS; the most specific rule applies. Repeatable.
    #[arg(long = "rotation-policy", env = "KEYWARD_ROTATION_POLICIES", value_delimiter = ',', value_parser = parse_rotation_policy)]
    pub rotation_policies: Vec<RotationPolicy>,
    /// Days of notice for key_expiring_soon, and the rotation report's default "due soon" window.
    #[arg(long, env = "KEYWARD_EXPIRY_WARNING_DAYS", default_value_t = 7, value_parser = clap::value_parser!(u32).range(0..=365))]
    pub expiry_warning_days: u32,
}

/// What a node notifies about and how.
pub struct Settings {
    pub webhooks: Option<WebhookConfig>,
    pub rotation: RotationConfig,
}

/// Webhook settings from endpoint URLs and a secret (both or neither).
pub fn webhook_config(
    endpoints: Vec<String>,
    secret: Option<&WebhookSecret>,
    max_attempts: u32,
) -> anyhow::Result<Option<WebhookConfig>> {
    if endpoints.is_empty() {
        return Ok(None);
    }
    let secret = secret.map(|s| s.0.as_bytes().to_vec()).unwrap_or_default();
    let mut config = WebhookConfig::new(endpoints, secret).context("configuring webhooks")?;
    config.max_attempts = max_attempts;
    Ok(Some(config))
}

impl NotifyArgs {
    /// The settings these flags describe.
    pub fn settings(&self) -> anyhow::Result<Settings> {
        Ok(Settings {
            webhooks: webhook_config(
                self.webhooks.clone(),
                self.webhook_secret.as_ref(),
                self.webhook_max_attempts,
            )?,
            rotation: RotationConfig {
                policies: self.rotation_policies.clone(),
                warning_days: self.expiry_warning_days,
            },
        })
    }
}

/// Applies the rotation settings and starts delivering webhooks, if any are configured. Keep
/// the returned dispatcher alive: dropping it stops delivery.
pub fn start(engine: &Arc<Keyward>, settings: Settings) -> Option<Dispatcher> {
    engine.set_rotation_config(settings.rotation);
    let config = settings.webhooks?;
    tracing::info!(
        endpoints = config.endpoints().len(),
        "delivering events to webhooks"
    );
    Some(Dispatcher::spawn(engine.subscribe(), config))
}
