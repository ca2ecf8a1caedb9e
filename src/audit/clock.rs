//! Timestamps: a record's `ts` (RFC 3339, UTC, milliseconds), the UTC stamp in a rotated
//! file's name (`YYYYMMDDTHHMMSS.mmmZ`, which sorts in time order) and `--since` parsing.

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// The current UTC time.
pub fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

/// `2026-12-01T20:58:58.123Z`.
pub fn rfc3339_millis(t: OffsetDateTime) -> String {
    utc_stamp(t, "-", ":")
}

/// `20261201T205858.123Z`, for rotated file names.
pub fn file_stamp(t: OffsetDateTime) -> String {
    utc_stamp(t, "", "")
}

/// UTC date and time to the millisecond, with `date_sep` between the date's parts and
/// `time_sep` between the time's.
fn utc_stamp(t: OffsetDateTime, date_sep: &str, time_sep: &str) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}{date_sep}{:02}{date_sep}{:02}T{:02}{time_sep}{:02}{time_sep}{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// Whether `s` has the shape [`file_stamp`] writes.
pub fn is_file_stamp(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 20
        && b.iter().enumerate().all(|(i, c)| match i {
            8 => *c == b'T',
            15 => *c == b'.',
            19 => *c == b'Z',
            _ => c.is_ascii_digit(),
        })
}

/// Parses an RFC 3339 time such as `2026-12-01T20:58:58Z` or `2026-12-01T21:58:58.5+01:00`.
pub fn parse_rfc3339(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s.trim(), &Rfc3339).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses() {
        let t = parse_rfc3339("2026-12-01T21:58:58.1239+01:00").expect("parses");
        assert_eq!(rfc3339_millis(t), "2026-12-01T20:58:58.123Z");
        assert_eq!(file_stamp(t), "20261201T205858.123Z");
        assert!(is_file_stamp(&file_stamp(t)));
        assert!(!is_file_stamp("20261201T205858.123"));
        assert!(parse_rfc3339("yesterday").is_none());
        assert!(parse_rfc3339("2026-12-01").is_none());
    }
}
