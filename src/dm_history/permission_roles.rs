//! Which roles hold the permission: the configured list, or `permissions.listAll` from the
//! upstream (with the service account when there is one, else the caller's credential),
//! cached for `permissions_ttl`. Concurrent first reads share one upstream call; failures are
//! not cached and make the caller fail closed.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use http::StatusCode;
use moka::future::Cache;
use serde_json::Value;

use crate::config::{PolicyConfig, RolesSource};
use crate::dm_history::credential::Credential;
use crate::dm_history::lookup::{self, LookupError};
use crate::metrics::Metrics;
use crate::request::RequestCtx;
use crate::upstream::Upstream;

/// Roles holding the permission.
pub struct PermissionRoles {
    /// The configured list (`roles = [...]`), built once; `None` means "from the upstream".
    fixed: Option<Arc<Vec<String>>>,
    permission: String,
    service: Option<Credential<'static>>,
    cache: Cache<(), Arc<Vec<String>>>,
    metrics: Metrics,
}

impl PermissionRoles {
    pub fn new(
        policy: &PolicyConfig,
        service: Option<Credential<'static>>,
        metrics: Metrics,
    ) -> Self {
        PermissionRoles {
            fixed: match &policy.roles {
                RolesSource::List(l) => Some(Arc::new(l.clone())),
                RolesSource::Upstream => None,
            },
            permission: policy.permission.clone(),
            service,
            cache: Cache::builder()
                .max_capacity(1)
                .time_to_live(policy.permissions_ttl)
                .build(),
            metrics,
        }
    }

    /// The roles: the configured list, or the upstream's (read with the service account when
    /// one is configured, otherwise with the caller's credential: any logged-in user may call
    /// `permissions.listAll`).
    pub async fn get(
        &self,
        upstream: &Upstream,
        caller: &Credential<'_>,
        ctx: &RequestCtx,
    ) -> Result<Arc<Vec<String>>, LookupError> {
        if let Some(fixed) = &self.fixed {
            return Ok(fixed.clone());
        }
        let cred = self.service.as_ref().unwrap_or(caller);
        let r = self
            .cache
            .try_get_with((), async {
                self.metrics
                    .counters()
                    .permission_upstream_calls
                    .fetch_add(1, Relaxed);
                let (status, body) = lookup::get_json(
                    upstream,
                    "/api/v1/permissions.listAll",
                    "permissions.listAll",
                    cred,
                    ctx,
                )
                .await?;
                if status != StatusCode::OK {
                    return Err(LookupError::Status(status, "permissions.listAll"));
                }
                roles_of(&body, &self.permission).map(Arc::new)
            })
            .await;
        r.map_err(|e| {
            self.metrics
                .counters()
                .permission_failures
                .fetch_add(1, Relaxed);
            e.as_ref().clone()
        })
    }
}

/// The roles of `permission` in a `permissions.listAll` answer. A permission the server does
/// not list is held by nobody.
pub fn roles_of(body: &Value, permission: &str) -> Result<Vec<String>, LookupError> {
    let update = body
        .get("update")
        .and_then(Value::as_array)
        .ok_or_else(|| LookupError::Shape("permissions.listAll", "no \"update\" list".into()))?;
    Ok(update
        .iter()
        .find(|p| p.get("_id").and_then(Value::as_str) == Some(permission))
        .and_then(|p| p.get("roles"))
        .and_then(Value::as_array)
        .map(|roles| {
            roles
                .iter()
                .filter_map(|r| r.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn roles_from_list_all() {
        let body = json!({"update":[
            {"_id":"view-room-administration","roles":["admin","auditor"]},
            {"_id":"other","roles":["user"]}
        ],"remove":[],"success":true});
        assert_eq!(
            roles_of(&body, "view-room-administration").ok(),
            Some(vec!["admin".to_string(), "auditor".to_string()])
        );
        assert_eq!(roles_of(&body, "missing").ok(), Some(vec![]));
        assert!(roles_of(&json!({"success":true}), "x").is_err());
    }
}
