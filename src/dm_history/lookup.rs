//! Small authenticated JSON reads from the upstream (`/me`, `permissions.listAll`, the
//! setting), with a bounded body and errors that keep "the upstream said no" apart from
//! "the upstream could not be asked".

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Limited};
use serde_json::Value;

use crate::body::ProxyBody;
use crate::dm_history::errors::ApiError;
use crate::dm_history::identity::Credential;
use crate::proxy::{headers, Upstream, UpstreamError};
use crate::state::RequestCtx;

/// Largest lookup answer read (`permissions.listAll` is the big one: ~40 KB on a real server).
const MAX_LOOKUP_BODY: usize = 4 * 1024 * 1024;

/// A lookup that could not be completed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LookupError {
    #[error("{0}")]
    Upstream(String, &'static str),
    #[error("the upstream answered {0} to {1}")]
    Status(StatusCode, &'static str),
    #[error("the upstream's answer to {0} is not what Rocket.Chat sends: {1}")]
    Shape(&'static str, String),
}

impl LookupError {
    /// The fail-closed answer: 504 on a timeout, 502 otherwise.
    pub fn to_api_error(&self) -> ApiError {
        match self {
            LookupError::Upstream(_, "timeout") => ApiError::gateway_timeout(
                "The upstream server did not answer in time; access cannot be checked",
            ),
            _ => ApiError::bad_gateway(
                "The upstream server could not confirm access; the request is refused",
            ),
        }
    }

    /// The upstream error kind, for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            LookupError::Upstream(_, k) => k,
            _ => "protocol",
        }
    }
}

impl From<UpstreamError> for LookupError {
    fn from(e: UpstreamError) -> Self {
        LookupError::Upstream(e.to_string(), e.kind())
    }
}

/// GETs `path` (under `path_prefix`) with `cred`, and reads the JSON answer.
pub async fn get_json(
    upstream: &Upstream,
    path: &str,
    what: &'static str,
    cred: &Credential,
    ctx: &RequestCtx,
) -> Result<(StatusCode, Value), LookupError> {
    let mut target = format!("{}{}", upstream.path_prefix, path);
    let mut h = HeaderMap::new();
    cred.apply(&mut h, &mut target);
    if let Ok(host) = HeaderValue::from_str(upstream.authority().as_str()) {
        h.insert(header::HOST, host);
    }
    h.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
    headers::set_forwarding(&mut h, ctx.peer.ip(), ctx.client_ip, false, None, ctx.https);
    h.insert(&headers::X_REQUEST_ID, ctx.request_id.clone());
    let mut req = Request::new(ProxyBody::empty());
    *req.uri_mut() = upstream.uri(&target)?;
    *req.headers_mut() = h;
    let resp = upstream.send(req).await?;
    let status = resp.status();
    let body = read_body(resp.into_body(), MAX_LOOKUP_BODY)
        .await
        .map_err(|e| LookupError::Upstream(e, "reset"))?;
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
