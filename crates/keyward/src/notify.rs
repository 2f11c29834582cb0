//! Webhooks and rotation policy settings of `serve` and `gateway`: turns flags (or the gateway
//! TOML) into the engine's [`RotationConfig`] and a running webhook [`Dispatcher`].

use std::sync::Arc;

use anyhow::Context;
use keyward_engine::Keyward;
use keyward_engine::rotation_policy::{RotationConfig, RotationPolicy};
use keyward_webhooks::{Dispatcher, WebhookConfig};
use zeroize::Zeroizing;

use crate::cli::NotifyArgs;

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
