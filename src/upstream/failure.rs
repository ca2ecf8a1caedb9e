//! The one place that turns an upstream failure into the client's answer, its log line and its
//! count (`rcshim_upstream_errors_total{kind}`). Every road reports through [`report`]: the
//! pass-through forwarder, the endpoint's fetch and the shim's own lookups.

use super::UpstreamError;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::request::RequestCtx;

/// The Rocket.Chat-shaped answer for a failure: 504 when no head came in time, 503 when every
/// upstream connection stayed busy, 502 when the upstream could not be reached or broke the
/// exchange, 400 when it was the client's own request body that failed.
pub fn answer(e: &UpstreamError) -> ApiError {
    match e {
        UpstreamError::Timeout(_) => {
            ApiError::gateway_timeout("The upstream server did not answer in time")
        }
        UpstreamError::Busy(_) => ApiError::service_unavailable("The upstream is busy"),
        UpstreamError::Connect(_) => {
            ApiError::bad_gateway("The upstream server could not be reached")
        }
        UpstreamError::Protocol(_) | UpstreamError::Reset(_) => {
            ApiError::bad_gateway("The upstream server broke the connection")
        }
        UpstreamError::Request(_) => {
            ApiError::bad_gateway("The upstream request could not be built")
        }
        UpstreamError::ClientBody(_) => {
            ApiError::bad_request("The request body is malformed or incomplete")
        }
    }
}

/// Logs and counts `e` (`what` names the request that failed, e.g. "upstream request") and
/// returns its answer. A failing client body is the client's fault: logged at info, not
/// counted as an upstream error.
pub fn report(metrics: &Metrics, ctx: &RequestCtx, what: &str, e: &UpstreamError) -> ApiError {
    match e {
        UpstreamError::ClientBody(msg) => {
            tracing::info!(request_id = ?ctx.request_id, error = %msg, "the client's request body failed");
        }
        _ => log_and_count(metrics, ctx, what, e.kind(), e),
    }
    answer(e)
}

/// The log line and the count of one upstream failure of `kind` (a label of
/// `rcshim_upstream_errors_total`); the shim's own lookups, whose fail-closed answers are
/// their own, report through this too.
pub fn log_and_count(
    metrics: &Metrics,
    ctx: &RequestCtx,
    what: &str,
    kind: &'static str,
    error: &dyn std::fmt::Display,
) {
    metrics.upstream_error(kind);
    tracing::warn!(request_id = ?ctx.request_id, kind, error = %error, "{what} failed");
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;
    use std::time::Duration;

    #[test]
    fn each_failure_has_its_status() {
        let cases = [
            (UpstreamError::Timeout(Duration::from_secs(1)), 504),
            (UpstreamError::Busy(3), 503),
            (UpstreamError::Connect("refused".into()), 502),
            (UpstreamError::Protocol("garbage".into()), 502),
            (UpstreamError::Reset("cut".into()), 502),
            (UpstreamError::Request("bad".into()), 502),
            (UpstreamError::ClientBody("chunk".into()), 400),
        ];
        for (e, status) in cases {
            assert_eq!(
                answer(&e).status,
                StatusCode::from_u16(status).unwrap(),
                "{e}"
            );
        }
        assert_eq!(
            answer(&UpstreamError::Busy(3)).body.to_string(),
            r#"{"success":false,"error":"The upstream is busy [error-service-unavailable]","errorType":"error-service-unavailable"}"#
        );
    }
}
