//! Small authenticated JSON reads from the upstream (`/me`, `permissions.listAll`, the
//! setting), with a bounded body and errors that keep "the upstream said no" apart from
//! "the upstream could not be asked".

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::StatusCode;
use http_body_util::{BodyExt, Limited};
use serde_json::Value;

use crate::dm_history::credential::Credential;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::request::RequestCtx;
use crate::upstream::{failure, request, Upstream, UpstreamError};

/// Largest lookup answer read (`permissions.listAll` is the big one: ~40 KB on a real server).
const MAX_LOOKUP_BODY: usize = 4 * 1024 * 1024;

/// A lookup that could not be completed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LookupError {
    #[error("{0}")]
    Upstream(UpstreamError),
    #[error("the upstream answered {0} to {1}")]
    Status(StatusCode, &'static str),
    #[error("the upstream's answer to {0} is not what Rocket.Chat sends: {1}")]
    Shape(&'static str, String),
}

impl LookupError {
    /// The fail-closed answer: 504 on a timeout, 503 when every upstream connection stayed
    /// busy, 502 otherwise.
    pub fn to_api_error(&self) -> ApiError {
        match self {
            LookupError::Upstream(UpstreamError::Busy(_)) => {
                ApiError::service_unavailable("The upstream is busy")
            }
            LookupError::Upstream(UpstreamError::Timeout(_)) => ApiError::gateway_timeout(
                "The upstream server did not answer in time; access cannot be checked",
            ),
            _ => ApiError::bad_gateway(
                "The upstream server could not confirm access; the request is refused",
            ),
        }
    }

    /// Logs and counts the failure of the lookup `what` (one place, `upstream::failure`) and
    /// returns the fail-closed answer.
    pub fn report(&self, metrics: &Metrics, ctx: &RequestCtx, what: &str) -> ApiError {
        failure::log_and_count(metrics, ctx, what, self.kind(), self);
        self.to_api_error()
    }

    /// The upstream error kind, for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            LookupError::Upstream(e) => e.kind(),
            _ => "protocol",
        }
    }
}

impl From<UpstreamError> for LookupError {
    fn from(e: UpstreamError) -> Self {
        LookupError::Upstream(e)
    }
}

/// GETs `path` (under `path_prefix`) with `cred`, and reads the JSON answer.
pub async fn get_json(
    upstream: &Upstream,
    path: &str,
    what: &'static str,
    cred: &Credential<'_>,
    ctx: &RequestCtx,
) -> Result<(StatusCode, Value), LookupError> {
    let mut target = format!("{}{}", upstream.path_prefix, path);
    let mut h = HeaderMap::new();
    cred.apply(&mut h, &mut target);
    h.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
    let req = request::own(upstream, &target, h, None, ctx)?;
    let resp = upstream.send(req).await?;
    let status = resp.status();
    let body = read_body(resp.into_body(), MAX_LOOKUP_BODY)
        .await
        .map_err(|e| LookupError::Upstream(UpstreamError::Reset(e)))?;
    let value = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body).map_err(|e| LookupError::Shape(what, e.to_string()))?
    };
    Ok((status, value))
}

/// Reads a whole body, refusing more than `limit` bytes.
pub async fn read_body(body: hyper::body::Incoming, limit: usize) -> Result<Bytes, String> {
    Limited::new(body, limit)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| format!("reading the upstream's answer failed: {e}"))
}
