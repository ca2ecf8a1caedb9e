//! Header values that carry a number (`X-RateLimit-Limit`, `-Remaining`, `-Reset`,
//! `Retry-After`, the `ttl` of `Cache-Status`), made without allocating in the steady state.
//!
//! Every answer of the endpoint carries three or four of them, and a `HeaderValue` made from a
//! number allocates (its bytes live on the heap). So small numbers come from a table filled on
//! first use and shared by every thread (cloning a value only counts a reference), and larger
//! ones (the reset time in Unix milliseconds, a `remaining` of a large budget) from the last
//! value this thread made for the same slot when the number is the same: at thousands of
//! answers per second, the reset time changes once a millisecond, not once an answer. The
//! bytes are exactly those of `HeaderValue::from(n)`.

use std::cell::RefCell;
use std::sync::OnceLock;

use http::HeaderValue;

/// Numbers below this come from a table (`remaining` of a budget up to 255, `Retry-After`, a
/// `Cache-Status` ttl up to 4 minutes).
const SMALL: usize = 256;

/// What a number is for: each kind has its own prefix and its own last value per thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// `X-RateLimit-Limit`.
    Limit,
    /// `X-RateLimit-Remaining`.
    Remaining,
    /// `X-RateLimit-Reset` (Unix milliseconds).
    Reset,
    /// `Retry-After` (seconds).
    RetryAfter,
    /// `Cache-Status: rocketchat-shim; hit; ttl=<n>`.
    HitTtl,
}

const SLOTS: usize = 5;

/// The text before the number in a [`Slot::HitTtl`] value.
pub const HIT_PREFIX: &str = "rocketchat-shim; hit; ttl=";

impl Slot {
    fn index(self) -> usize {
        self as usize
    }

    fn prefix(self) -> &'static str {
        match self {
            Slot::HitTtl => HIT_PREFIX,
            _ => "",
        }
    }

    /// The small-number table of this slot's text (bare numbers share one).
    fn table(self) -> &'static [OnceLock<HeaderValue>; SMALL] {
        static BARE: [OnceLock<HeaderValue>; SMALL] = [const { OnceLock::new() }; SMALL];
        static HIT: [OnceLock<HeaderValue>; SMALL] = [const { OnceLock::new() }; SMALL];
        match self {
            Slot::HitTtl => &HIT,
            _ => &BARE,
        }
    }
}

thread_local! {
    /// The last value this thread made for each slot, with its number.
    static LAST: RefCell<[Option<(u64, HeaderValue)>; SLOTS]> = const { RefCell::new([const { None }; SLOTS]) };
}

/// `n` as the header value of `slot` (see the module comment).
pub fn number(slot: Slot, n: u64) -> HeaderValue {
    if let Some(cell) = usize::try_from(n).ok().and_then(|i| slot.table().get(i)) {
        return cell.get_or_init(|| make(slot, n)).clone();
    }
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        let entry = &mut last[slot.index()];
        match entry {
            Some((m, v)) if *m == n => v.clone(),
            _ => {
                let v = make(slot, n);
                *entry = Some((n, v.clone()));
                v
            }
        }
    })
}

/// Formats a value (one allocation): the prefix and the decimal digits.
fn make(slot: Slot, n: u64) -> HeaderValue {
    let mut buf = [0u8; 20];
    let digits = format_u64(n, &mut buf);
    let prefix = slot.prefix();
    let mut bytes = Vec::with_capacity(prefix.len() + digits.len());
    bytes.extend_from_slice(prefix.as_bytes());
    bytes.extend_from_slice(digits);
    // Digits and the fixed prefix are visible ASCII: always a valid value.
    HeaderValue::from_maybe_shared(bytes::Bytes::from(bytes))
        .unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The decimal digits of `n`, written at the end of `buf`.
fn format_u64(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &buf[at..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_the_formatted_numbers() {
        for n in [0u64, 1, 9, 10, 255, 256, 1000, 1_733_270_400_123, u64::MAX] {
            for slot in [Slot::Limit, Slot::Remaining, Slot::Reset, Slot::RetryAfter] {
                assert_eq!(number(slot, n), HeaderValue::from(n), "{n}");
                // Twice: the second comes from the table or the last value.
                assert_eq!(number(slot, n), HeaderValue::from(n), "{n}");
            }
            assert_eq!(
                number(Slot::HitTtl, n).to_str().ok(),
                Some(format!("rocketchat-shim; hit; ttl={n}").as_str())
            );
        }
    }

    #[test]
    fn slots_do_not_mix() {
        assert_eq!(number(Slot::Reset, 5000), "5000");
        assert_eq!(number(Slot::Remaining, 7000), "7000");
        assert_eq!(number(Slot::Reset, 5000), "5000");
        assert_eq!(number(Slot::HitTtl, 3), "rocketchat-shim; hit; ttl=3");
        assert_eq!(number(Slot::Limit, 3), "3");
    }
}
