//! The 429 of a refused budget on the endpoint's own road, prebuilt: the same status, headers
//! (in the same order) and body bytes as `respond::error(&decision.refusal())`, without
//! building the JSON body or a header list per refusal. A refusal is the answer a flood gets,
//! so it should cost less than the request it refuses: the body comes from a table by its
//! seconds-to-wait (the only thing in it that varies), the numbers from `header_values`, and
//! the header map is a spare one the caller hands in (the request's own, whose allocation
//! hyper recycles from connection to connection).

use std::cell::RefCell;
use std::sync::OnceLock;

use bytes::Bytes;
use http::header::{HeaderMap, RETRY_AFTER};
use http::{Response, StatusCode};

use super::Decision;
use crate::body::ProxyBody;
use crate::error::ApiError;
use crate::header_values::{self, Slot};
use crate::respond;

/// Seconds-to-wait whose body is kept once made (a refusal waits at most one emission
/// interval of its budget: `per / requests`).
const TABLE: usize = 128;

/// The 429 answer of `d` on `headers` (cleared first).
pub fn response(d: &Decision, headers: HeaderMap) -> Response<ProxyBody> {
    let secs = d.wait_secs();
    let mut resp = respond::json_with(headers, StatusCode::TOO_MANY_REQUESTS, body(secs));
    let h = resp.headers_mut();
    for (name, value) in d.headers() {
        h.append(name, value);
    }
    h.append(RETRY_AFTER, header_values::number(Slot::RetryAfter, secs));
    resp
}

/// Rocket.Chat's 429 body for `secs` (the bytes of [`ApiError::too_many_requests`]): from the
/// table, or beyond it from this thread's last one when `secs` is the same.
fn body(secs: u64) -> Bytes {
    static BODIES: [OnceLock<Bytes>; TABLE] = [const { OnceLock::new() }; TABLE];
    thread_local! {
        static LAST: RefCell<Option<(u64, Bytes)>> = const { RefCell::new(None) };
    }
    let make = || ApiError::too_many_requests(secs).body_bytes();
    if let Some(cell) = usize::try_from(secs).ok().and_then(|i| BODIES.get(i)) {
        return cell.get_or_init(make).clone();
    }
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        match &*last {
            Some((s, b)) if *s == secs => b.clone(),
            _ => {
                let b = make();
                *last = Some((secs, b.clone()));
                b
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::BudgetKind;
    use std::time::Duration;

    #[test]
    fn the_prebuilt_429_is_the_error_answer_byte_for_byte() {
        for (limit, wait_ms) in [(10, 0), (10, 1), (10, 5_999), (3, 20_000), (1, 500_000)] {
            let d = Decision {
                allowed: false,
                which: BudgetKind::PerIp,
                limit,
                remaining: 0,
                reset_after: Duration::from_millis(wait_ms),
            };
            let mut spare = HeaderMap::new();
            spare.insert("x-left-over", "from the request".parse().expect("value"));
            for _ in 0..2 {
                let fast = response(&d, spare.clone());
                let slow = respond::error(&d.refusal());
                assert_eq!(fast.status(), slow.status());
                let names = |r: &Response<ProxyBody>| {
                    r.headers()
                        .iter()
                        .filter(|(n, _)| n.as_str() != "x-ratelimit-reset")
                        .map(|(n, v)| format!("{n}: {v:?}"))
                        .collect::<Vec<_>>()
                };
                assert_eq!(names(&fast), names(&slow));
                // The reset time is read from the clock for each; a millisecond may pass.
                let reset = |r: &Response<ProxyBody>| -> u64 {
                    r.headers()["x-ratelimit-reset"]
                        .to_str()
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0)
                };
                assert!(reset(&slow).abs_diff(reset(&fast)) <= 5);
                let bytes = |r: &Response<ProxyBody>| match r.body() {
                    ProxyBody::Full { data } => data.clone().unwrap_or_default(),
                    _ => Bytes::new(),
                };
                assert_eq!(bytes(&fast), bytes(&slow));
            }
        }
    }
}
