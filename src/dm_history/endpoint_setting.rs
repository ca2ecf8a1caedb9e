//! Whether the endpoint is enabled: decided by the config (`"enabled"`/`"disabled"`), or the
//! upstream's `API_Enable_Direct_Message_History_EndPoint` setting read with the service
//! account (`"upstream"`), cached for `setting_ttl`. Concurrent first reads share one upstream
//! call; failures are not cached and make the caller fail closed.

use std::sync::atomic::Ordering::Relaxed;

use http::StatusCode;
use moka::future::Cache;
use serde_json::Value;

use crate::config::{DmHistoryEndpoint, PolicyConfig};
use crate::dm_history::credential::Credential;
use crate::dm_history::lookup::{self, LookupError};
use crate::metrics::Metrics;
use crate::request::RequestCtx;
use crate::upstream::Upstream;

/// The setting's id.
pub const SETTING_ID: &str = "API_Enable_Direct_Message_History_EndPoint";

/// Whether the endpoint is enabled.
pub struct EndpointSetting {
    mode: DmHistoryEndpoint,
    service: Option<Credential<'static>>,
    cache: Cache<(), bool>,
    metrics: Metrics,
}

impl EndpointSetting {
    pub fn new(
        policy: &PolicyConfig,
        service: Option<Credential<'static>>,
        metrics: Metrics,
    ) -> Self {
        EndpointSetting {
            mode: policy.dm_history_endpoint,
            service,
            cache: Cache::builder()
                .max_capacity(1)
                .time_to_live(policy.setting_ttl)
                .build(),
            metrics,
        }
    }

    /// `enabled`/`disabled` decide locally; `upstream` reads the server's setting (anything
    /// but boolean `true` is disabled, as in Rocket.Chat).
    pub async fn enabled(
        &self,
        upstream: &Upstream,
        ctx: &RequestCtx,
    ) -> Result<bool, LookupError> {
        match self.mode {
            DmHistoryEndpoint::Enabled => return Ok(true),
            DmHistoryEndpoint::Disabled => return Ok(false),
            DmHistoryEndpoint::Upstream => {}
        }
        let Some(cred) = &self.service else {
            return Err(LookupError::Shape(
                "the setting",
                "no service account is configured".into(),
            ));
        };
        let r = self
            .cache
            .try_get_with((), async {
                self.metrics
                    .counters()
                    .setting_upstream_calls
                    .fetch_add(1, Relaxed);
                let path = format!("/api/v1/settings/{SETTING_ID}");
                let (status, body) =
                    lookup::get_json(upstream, &path, "the setting", cred, ctx).await?;
                if status != StatusCode::OK {
                    return Err(LookupError::Status(status, "the setting"));
                }
                Ok(body.get("value") == Some(&Value::Bool(true)))
            })
            .await;
        r.map_err(|e| {
            self.metrics
                .counters()
                .setting_failures
                .fetch_add(1, Relaxed);
            e.as_ref().clone()
        })
    }
}
