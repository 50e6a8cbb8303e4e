//! Wall-clock time as the two APIs write it: Ollama's RFC 3339 stamps (Go's `RFC3339Nano`:
//! nanoseconds without trailing zeros, the local offset, `Z` in UTC) and OpenAI's Unix seconds.

use std::time::SystemTime;

use jiff::tz::TimeZone;
use jiff::Timestamp;

/// `when` as Ollama stamps chunks and models: `2025-11-27T09:30:05.123456789+01:00`, in the
/// server's time zone.
pub fn rfc3339(when: SystemTime) -> String {
    rfc3339_in(when, &TimeZone::system())
}

/// Now, as [`rfc3339`].
pub fn now_rfc3339() -> String {
    rfc3339(SystemTime::now())
}

/// Seconds since the Unix epoch (OpenAI's `created`); 0 before it.
pub fn unix_seconds(when: SystemTime) -> u64 {
    when.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Now, as [`unix_seconds`].
pub fn unix_now() -> u64 {
    unix_seconds(SystemTime::now())
}

fn rfc3339_in(when: SystemTime, zone: &TimeZone) -> String {
    let Ok(at) = Timestamp::try_from(when) else {
        return "1970-01-01T00:00:00Z".to_string();
    };
    let local = at.to_zoned(zone.clone());
    let mut text = local.strftime("%Y-%m-%dT%H:%M:%S").to_string();
    let nanos = local.subsec_nanosecond();
    if nanos > 0 {
        text += format!(".{nanos:09}").trim_end_matches('0');
    }
    let offset = local.offset().seconds();
    if offset == 0 {
        text.push('Z');
    } else {
        let (sign, minutes) = (if offset < 0 { '-' } else { '+' }, offset.abs() / 60);
        text += &format!("{sign}{:02}:{:02}", minutes / 60, minutes % 60);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(secs: u64, nanos: u32) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::new(secs, nanos)
    }

    #[test]
    fn stamps_read_as_gos_rfc3339nano() {
        let utc = TimeZone::UTC;
        assert_eq!(rfc3339_in(at(0, 0), &utc), "1970-01-01T00:00:00Z");
        // 2025-11-27 (day 20,419), 09:30:05.
        let day = 20_419 * 86_400 + 9 * 3600 + 30 * 60 + 5;
        assert_eq!(rfc3339_in(at(day, 0), &utc), "2025-11-27T09:30:05Z");
        assert_eq!(
            rfc3339_in(at(day, 120_000_000), &utc),
            "2025-11-27T09:30:05.12Z"
        );
        assert_eq!(
            rfc3339_in(at(day, 123_456_789), &utc),
            "2025-11-27T09:30:05.123456789Z"
        );
        // Fixed offsets, so the test needs no time zone database.
        let zone = |seconds| TimeZone::fixed(jiff::tz::Offset::from_seconds(seconds).unwrap());
        assert_eq!(
            rfc3339_in(at(day, 5), &zone(3600)),
            "2025-11-27T10:30:05.000000005+01:00"
        );
        assert_eq!(
            rfc3339_in(at(day, 0), &zone(-5 * 3600)),
            "2025-11-27T04:30:05-05:00"
        );
        assert_eq!(
            rfc3339_in(at(day, 0), &zone(19_800)),
            "2025-11-27T15:00:05+05:30"
        );
    }

    #[test]
    fn unix_seconds_before_the_epoch_are_zero() {
        assert_eq!(unix_seconds(at(1_700_000_000, 999_999_999)), 1_700_000_000);
        assert_eq!(
            unix_seconds(SystemTime::UNIX_EPOCH - Duration::from_secs(5)),
            0
        );
    }
}
