//! Turning the shim's own answers (errors, cached bodies) into HTTP responses.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

use crate::body::ProxyBody;
use crate::error::ApiError;

static JSON: HeaderValue = HeaderValue::from_static("application/json");
static NO_STORE: HeaderValue = HeaderValue::from_static("no-store");

/// A JSON answer with `Cache-Control: no-store`, as Rocket.Chat sends its API answers.
pub fn json(status: StatusCode, body: Bytes) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::full(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, JSON.clone());
    h.insert(header::CACHE_CONTROL, NO_STORE.clone());
    resp
}

/// The response for an [`ApiError`], with its extra headers.
pub fn error(e: &ApiError) -> Response<ProxyBody> {
    let mut resp = json(e.status, e.body_bytes());
    for (name, value) in &e.headers {
        resp.headers_mut().append(name.clone(), value.clone());
    }
    resp
}
