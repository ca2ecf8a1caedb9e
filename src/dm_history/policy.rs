//! The setting and permission policy as plain functions: given who the caller is, which roles
//! hold the permission and whether the endpoint is enabled, allow or answer with Rocket.Chat's
//! own error, in the order the configured `error_style` checks them (spec/shim.md §3).

use std::future::Future;
use std::sync::Arc;

use futures_util::FutureExt;

use crate::config::ErrorStyle;
use crate::error::ApiError;

/// A verified caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Shared, not copied, by what keeps it per request (the per-user budget's key, the
    /// access log's facts).
    pub user_id: Arc<str>,
    pub username: String,
    /// Global roles (`users.roles`): the only ones that count for this global permission.
    pub roles: Vec<String>,
}

/// One policy check after authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    Permission,
    Setting,
}

/// The order of the two checks after "logged in": modern Rocket.Chat (6+) checks the
/// permission first, so a caller without it never learns whether the endpoint is enabled;
/// before 6 the setting came first.
pub fn order(style: ErrorStyle) -> [Check; 2] {
    match style {
        ErrorStyle::Modern => [Check::Permission, Check::Setting],
        ErrorStyle::Legacy => [Check::Setting, Check::Permission],
    }
}

/// Whether any of the caller's global roles holds the permission.
pub fn has_permission(identity: &Identity, permitted_roles: &[String]) -> bool {
    identity.roles.iter().any(|r| permitted_roles.contains(r))
}

/// The error a failed check answers with.
pub fn refusal(check: Check, style: ErrorStyle) -> ApiError {
    match check {
        Check::Permission => ApiError::forbidden(style),
        Check::Setting => ApiError::endpoint_disabled(),
    }
}

/// Steps 2 and 3: the checks in the order `style` gives, stopping at the first that fails
/// with its Rocket.Chat error. `passes` answers one check; it is async and may fail because
/// answering can mean asking the upstream (the roles, the setting), and a check that is never
/// reached is never asked. The endpoint's pipeline and [`decide`] both run this loop.
pub async fn check_in_order<F, Fut>(style: ErrorStyle, mut passes: F) -> Result<(), ApiError>
where
    F: FnMut(Check) -> Fut,
    Fut: Future<Output = Result<bool, ApiError>>,
{
    for check in order(style) {
        if !passes(check).await? {
            return Err(refusal(check, style));
        }
    }
    Ok(())
}

/// The whole decision when every input is known: not logged in, then [`check_in_order`].
pub fn decide(
    style: ErrorStyle,
    identity: Option<&Identity>,
    permitted_roles: &[String],
    enabled: bool,
) -> Result<(), ApiError> {
    let identity = identity.ok_or_else(|| ApiError::not_logged_in(style))?;
    check_in_order(style, |check| {
        std::future::ready(Ok(match check {
            Check::Permission => has_permission(identity, permitted_roles),
            Check::Setting => enabled,
        }))
    })
    .now_or_never()
    // Ready futures always complete; fail closed all the same.
    .unwrap_or_else(|| Err(refusal(Check::Permission, style)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    fn user(roles: &[&str]) -> Identity {
        Identity {
            user_id: "u1".into(),
            username: "u".into(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
        }
    }

    fn admin_roles() -> Vec<String> {
        vec!["admin".to_string()]
    }

    fn body(r: Result<(), ApiError>) -> (StatusCode, String) {
        match r {
            Ok(()) => (StatusCode::OK, String::new()),
            Err(e) => (e.status, e.body.to_string()),
        }
    }

    const MODERN_401: &str = r#"{"success":false,"error":"You must be logged in to do this.","status":"error","message":"You must be logged in to do this."}"#;
    const LEGACY_401: &str = r#"{"status":"error","message":"You must be logged in to do this."}"#;
    const MODERN_403: &str = r#"{"success":false,"error":"User does not have the permissions required for this action [error-unauthorized]"}"#;
    const LEGACY_403: &str = r#"{"success":false,"error":"unauthorized"}"#;
    const DISABLED: &str = r#"{"success":false,"error":"This endpoint is disabled [error-endpoint-disabled]","errorType":"error-endpoint-disabled","details":{"route":"/api/v1/im.messages.others"}}"#;

    #[test]
    fn step1_not_logged_in_modern() {
        let r = decide(ErrorStyle::Modern, None, &admin_roles(), true);
        assert_eq!(body(r), (StatusCode::UNAUTHORIZED, MODERN_401.into()));
        // Not logged in wins over everything else.
        let r = decide(ErrorStyle::Modern, None, &admin_roles(), false);
        assert_eq!(body(r), (StatusCode::UNAUTHORIZED, MODERN_401.into()));
    }

    #[test]
    fn step1_not_logged_in_legacy() {
        let r = decide(ErrorStyle::Legacy, None, &admin_roles(), false);
        assert_eq!(body(r), (StatusCode::UNAUTHORIZED, LEGACY_401.into()));
    }

    #[test]
    fn step2_modern_permission_before_setting() {
        // Disabled and no permission: modern says 403 (the setting stays secret).
        let u = user(&["user"]);
        let r = decide(ErrorStyle::Modern, Some(&u), &admin_roles(), false);
        assert_eq!(body(r), (StatusCode::FORBIDDEN, MODERN_403.into()));
        let r = decide(ErrorStyle::Modern, Some(&u), &admin_roles(), true);
        assert_eq!(body(r), (StatusCode::FORBIDDEN, MODERN_403.into()));
    }

    #[test]
    fn step2_legacy_setting_before_permission() {
        let u = user(&["user"]);
        let r = decide(ErrorStyle::Legacy, Some(&u), &admin_roles(), false);
        assert_eq!(body(r), (StatusCode::BAD_REQUEST, DISABLED.into()));
    }

    #[test]
    fn step3_modern_disabled_for_permitted_user() {
        let a = user(&["user", "admin"]);
        let r = decide(ErrorStyle::Modern, Some(&a), &admin_roles(), false);
        assert_eq!(body(r), (StatusCode::BAD_REQUEST, DISABLED.into()));
    }

    #[test]
    fn step3_legacy_permission_missing_when_enabled() {
        let u = user(&["user"]);
        let r = decide(ErrorStyle::Legacy, Some(&u), &admin_roles(), true);
        assert_eq!(body(r), (StatusCode::FORBIDDEN, LEGACY_403.into()));
    }

    #[test]
    fn allowed_in_both_styles() {
        let a = user(&["user", "admin"]);
        for style in [ErrorStyle::Modern, ErrorStyle::Legacy] {
            assert_eq!(decide(style, Some(&a), &admin_roles(), true), Ok(()));
        }
    }

    #[test]
    fn custom_roles_count_and_only_global_roles_matter() {
        let auditor = user(&["user", "auditor"]);
        let roles = vec!["admin".to_string(), "auditor".to_string()];
        assert_eq!(
            decide(ErrorStyle::Modern, Some(&auditor), &roles, true),
            Ok(())
        );
        assert!(decide(ErrorStyle::Modern, Some(&auditor), &admin_roles(), true).is_err());
        let nobody = user(&[]);
        assert!(decide(ErrorStyle::Modern, Some(&nobody), &roles, true).is_err());
    }
}
