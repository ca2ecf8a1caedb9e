//! Rocket.Chat-shaped error answers.
//!
//! Every body here is the one Rocket.Chat itself sends (see `spec/rocketchat-reference.md` §2):
//! `error` is `"<reason> [<error-id>]"` and `errorType` the bare id, with key order as the
//! server writes it. The shim never invents another shape, so existing clients keep working.

use bytes::Bytes;
use http::header::{self, HeaderName};
use http::{HeaderValue, StatusCode};
use serde_json::{json, Value};

use crate::config::ErrorStyle;

/// The `details.route` Rocket.Chat hard-codes in the disabled-endpoint error, also for `dm.`.
pub const IM_ROUTE: &str = "/api/v1/im.messages.others";

/// An error answer: a status, a JSON body and any extra headers (e.g. rate-limit ones).
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: Value,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl ApiError {
    fn new(status: StatusCode, body: Value) -> Self {
        ApiError {
            status,
            body,
            headers: Vec::new(),
        }
    }

    /// A plain `failure()` 400: `{"success":false,"error":"<reason> [<id>]","errorType":"<id>"}`.
    pub fn failure(error_type: &str, reason: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            json!({
                "success": false,
                "error": format!("{reason} [{error_type}]"),
                "errorType": error_type,
            }),
        )
    }

    /// Step 1: not logged in (401).
    pub fn not_logged_in(style: ErrorStyle) -> Self {
        const MSG: &str = "You must be logged in to do this.";
        let body = match style {
            ErrorStyle::Modern => json!({
                "success": false,
                "error": MSG,
                "status": "error",
                "message": MSG,
            }),
            ErrorStyle::Legacy => json!({"status": "error", "message": MSG}),
        };
        Self::new(StatusCode::UNAUTHORIZED, body)
    }

    /// The permission is missing (403).
    pub fn forbidden(style: ErrorStyle) -> Self {
        let error = match style {
            ErrorStyle::Modern => {
                "User does not have the permissions required for this action [error-unauthorized]"
            }
            ErrorStyle::Legacy => "unauthorized",
        };
        Self::new(
            StatusCode::FORBIDDEN,
            json!({"success": false, "error": error}),
        )
    }

    /// The setting is off (400). Both styles send the G1+ body with `details.route`.
    pub fn endpoint_disabled() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            json!({
                "success": false,
                "error": "This endpoint is disabled [error-endpoint-disabled]",
                "errorType": "error-endpoint-disabled",
                "details": {"route": IM_ROUTE},
            }),
        )
    }

    /// Step 4: `roomId` missing or blank (400).
    pub fn room_id_missing() -> Self {
        Self::failure(
            "error-roomid-param-not-provided",
            "The parameter \"roomId\" is required",
        )
    }

    /// spec/shim.md 9.2: the `X-Audit-Reason` header is missing or not acceptable (400).
    pub fn reason_required() -> Self {
        Self::failure(
            "error-reason-required",
            "A reason is required to read others' direct messages: send it in the X-Audit-Reason header",
        )
    }

    /// spec/shim.md 9.3: a protected conversation (403, same body in both error styles).
    pub fn room_protected() -> Self {
        let mut e = Self::failure("error-room-protected", "This conversation is protected");
        e.status = StatusCode::FORBIDDEN;
        e
    }

    /// Rocket.Chat's own answer for an unknown DM room (400), sent by the shim when the members
    /// lookup is refused with a 4xx while protected lists are set.
    pub fn room_not_found(room_id: &str) -> Self {
        Self::failure(
            "error-room-not-found",
            &format!("No direct message room found by the id of: {room_id}"),
        )
    }

    /// A parameter the shim refuses: says which one and why (400 `error-invalid-params`).
    pub fn invalid_param(param: &str, why: &str) -> Self {
        let mut e = Self::failure(
            "error-invalid-params",
            &format!("The parameter \"{param}\" {why}"),
        );
        e.body["details"] = json!({"parameter": param});
        e
    }

    /// A refused query string as a whole, when no single parameter is to blame (too long, too
    /// many pairs, an undecodable parameter name): 400 `error-invalid-params`.
    pub fn invalid_params(reason: &str) -> Self {
        Self::failure("error-invalid-params", reason)
    }

    /// `parseJsonQuery` errors (`error-invalid-sort`, `-fields`, `-query`), with its `details`.
    pub fn parse_json_query(error_type: &str, reason: &str) -> Self {
        let mut e = Self::failure(error_type, reason);
        e.body["details"] = json!({"helperMethod": "parseJsonQuery"});
        e
    }

    /// The rate limit was hit (429). `wait_secs` is rounded up and at least 1.
    pub fn too_many_requests(wait_secs: u64) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            json!({
                "success": false,
                "error": format!(
                    "Error, too many requests. Please slow down. You must wait {} seconds before trying this endpoint again. [error-too-many-requests]",
                    wait_secs.max(1)
                ),
            }),
        )
    }

    /// Only `GET` and `HEAD` reach the endpoint (405 with `Allow`).
    pub fn method_not_allowed() -> Self {
        let mut e = Self::failure(
            "error-method-not-allowed",
            "Only GET and HEAD are allowed on this endpoint",
        );
        e.status = StatusCode::METHOD_NOT_ALLOWED;
        e.headers
            .push((header::ALLOW, HeaderValue::from_static("GET, HEAD")));
        e
    }

    /// The upstream could not be reached or broke the exchange (502).
    pub fn bad_gateway(reason: &str) -> Self {
        let mut e = Self::failure("error-bad-gateway", reason);
        e.status = StatusCode::BAD_GATEWAY;
        e
    }

    /// The upstream did not answer in time (504).
    pub fn gateway_timeout(reason: &str) -> Self {
        let mut e = Self::failure("error-gateway-timeout", reason);
        e.status = StatusCode::GATEWAY_TIMEOUT;
        e
    }

    /// A malformed request refused before it reaches the upstream (400).
    pub fn bad_request(reason: &str) -> Self {
        Self::failure("error-bad-request", reason)
    }

    /// A path that names a guarded endpoint in some router's reading but is that endpoint in
    /// none of the shim's canonical readings (400; `spec/shim.md` §1).
    pub fn ambiguous_path() -> Self {
        Self::failure(
            "error-invalid-path",
            "The request path is ambiguous: a router could read it as a protected endpoint; send the canonical path",
        )
    }

    /// A request head larger than `max_header_bytes` (431).
    pub fn header_too_large() -> Self {
        let mut e = Self::failure(
            "error-request-header-too-large",
            "The request head is larger than this server accepts",
        );
        e.status = StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE;
        e
    }

    /// A dependency needed for the decision is unavailable and the shim fails closed (503).
    pub fn service_unavailable(reason: &str) -> Self {
        let mut e = Self::failure("error-service-unavailable", reason);
        e.status = StatusCode::SERVICE_UNAVAILABLE;
        e
    }

    /// Adds a header to the answer.
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// The body as compact JSON bytes.
    pub fn body_bytes(&self) -> Bytes {
        Bytes::from(self.body.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_byte_exact() {
        assert_eq!(
            ApiError::not_logged_in(ErrorStyle::Modern).body.to_string(),
            r#"{"success":false,"error":"You must be logged in to do this.","status":"error","message":"You must be logged in to do this."}"#
        );
        assert_eq!(
            ApiError::not_logged_in(ErrorStyle::Legacy).body.to_string(),
            r#"{"status":"error","message":"You must be logged in to do this."}"#
        );
        assert_eq!(
            ApiError::endpoint_disabled().body.to_string(),
            r#"{"success":false,"error":"This endpoint is disabled [error-endpoint-disabled]","errorType":"error-endpoint-disabled","details":{"route":"/api/v1/im.messages.others"}}"#
        );
        assert_eq!(
            ApiError::room_id_missing().body.to_string(),
            r#"{"success":false,"error":"The parameter \"roomId\" is required [error-roomid-param-not-provided]","errorType":"error-roomid-param-not-provided"}"#
        );
        assert_eq!(
            ApiError::too_many_requests(0).body.to_string(),
            r#"{"success":false,"error":"Error, too many requests. Please slow down. You must wait 1 seconds before trying this endpoint again. [error-too-many-requests]"}"#
        );
        assert_eq!(
            ApiError::parse_json_query("error-invalid-sort", "Invalid sort parameter provided")
                .body
                .to_string(),
            r#"{"success":false,"error":"Invalid sort parameter provided [error-invalid-sort]","errorType":"error-invalid-sort","details":{"helperMethod":"parseJsonQuery"}}"#
        );
    }
}
