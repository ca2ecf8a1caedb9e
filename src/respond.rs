//! Turning the shim's own answers (errors, cached bodies) into HTTP responses.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};

use crate::body::ProxyBody;
use crate::error::ApiError;

static JSON: HeaderValue = HeaderValue::from_static("application/json");
static NO_STORE: HeaderValue = HeaderValue::from_static("no-store");

/// Header slots a spare map is given room for: the JSON pair here, the endpoint's
/// `Cache-Status` and three rate-limit headers, `Retry-After` or `Allow`, and the dispatcher's
/// `X-Request-Id`. (hyper parses the next request on a connection into the map of the answer
/// before it, so this room serves the next request's headers too.)
const ANSWER_HEADERS: usize = 8;

/// A JSON answer with `Cache-Control: no-store`, as Rocket.Chat sends its API answers.
pub fn json(status: StatusCode, body: Bytes) -> Response<ProxyBody> {
    json_with(HeaderMap::new(), status, body)
}

/// [`json`] built on `headers`, a spare map (cleared here) whose allocation is reused: the
/// endpoint hands in the request's own, so an answer costs no new header map.
pub fn json_with(mut headers: HeaderMap, status: StatusCode, body: Bytes) -> Response<ProxyBody> {
    headers.clear();
    headers.reserve(ANSWER_HEADERS);
    headers.insert(header::CONTENT_TYPE, JSON.clone());
    headers.insert(header::CACHE_CONTROL, NO_STORE.clone());
    let mut resp = Response::new(ProxyBody::full(body));
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    resp
}

/// The response for an [`ApiError`], with its extra headers.
pub fn error(e: &ApiError) -> Response<ProxyBody> {
    error_with(e, HeaderMap::new())
}

/// [`error`] built on a spare map (see [`json_with`]).
pub fn error_with(e: &ApiError, headers: HeaderMap) -> Response<ProxyBody> {
    let mut resp = json_with(headers, e.status, e.body_bytes());
    for (name, value) in &e.headers {
        resp.headers_mut().append(name.clone(), value.clone());
    }
    resp
}
