//! Event times as one ordered number per row, for the hold-out by time: integers as they are
//! (epoch seconds or milliseconds: one column has one unit), Arrow timestamps and dates in
//! microseconds, and text such as `2019-11-01 00:00:00 UTC`, `2019-11-01T00:00:00.5Z` or
//! `2019-11-01` in microseconds since 1970 (UTC; an offset such as `+02:00` is applied). Only
//! the order of one user's times matters. A null time is the oldest possible.

use arrow::array::{Array, AsArray};
use arrow::datatypes::*;

use crate::error::{Error, Result};

/// A row without a time: older than any.
pub const NO_TIME: i64 = i64::MIN;

/// The times of `array` into `out` (cleared first). `file` and `column` are for messages.
pub fn column(array: &dyn Array, out: &mut Vec<i64>, file: &str, column: &str) -> Result<()> {
    out.clear();
    let nulls = array.logical_nulls();
    let is_null = |r: usize| nulls.as_ref().is_some_and(|n| n.is_null(r));
    macro_rules! scaled {
        ($t:ty, $scale:expr) => {{
            let a = array.as_primitive::<$t>();
            for r in 0..a.len() {
                out.push(match is_null(r) {
                    true => NO_TIME,
                    false => (a.value(r) as i64).saturating_mul($scale),
                });
            }
        }};
    }
    match array.data_type() {
        DataType::Int64 => scaled!(Int64Type, 1),
        DataType::Int32 => scaled!(Int32Type, 1),
        DataType::UInt32 => scaled!(UInt32Type, 1),
        DataType::UInt64 => scaled!(UInt64Type, 1),
        DataType::Float64 => scaled!(Float64Type, 1),
        DataType::Float32 => scaled!(Float32Type, 1),
        DataType::Timestamp(TimeUnit::Second, _) => scaled!(TimestampSecondType, 1_000_000),
        DataType::Timestamp(TimeUnit::Millisecond, _) => scaled!(TimestampMillisecondType, 1_000),
        DataType::Timestamp(TimeUnit::Microsecond, _) => scaled!(TimestampMicrosecondType, 1),
        DataType::Timestamp(TimeUnit::Nanosecond, _) => {
            let a = array.as_primitive::<TimestampNanosecondType>();
            out.extend((0..a.len()).map(|r| match is_null(r) {
                true => NO_TIME,
                false => a.value(r).div_euclid(1000),
            }));
        }
        DataType::Date32 => scaled!(Date32Type, 86_400_000_000),
        DataType::Date64 => scaled!(Date64Type, 1_000),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Dictionary(..) => {
            let text = arrow::compute::cast(array, &DataType::Utf8)
                .map_err(|e| Error::usage(format!("{file}: column {column:?}: {e}")))?;
            let text = text.as_string::<i32>();
            for r in 0..text.len() {
                if text.is_null(r) {
                    out.push(NO_TIME);
                    continue;
                }
                let value = text.value(r);
                out.push(parse(value).ok_or_else(|| {
                    Error::usage(format!(
                        "{file}: column {column:?}: cannot read {value:?} as a time (give integers, timestamps, or text such as 2019-11-01 00:00:00 UTC); name the time column with --time-col"
                    ))
                })?);
            }
        }
        other => {
            return Err(Error::usage(format!(
                "{file}: column {column:?} has type {other}, not a time (integers, timestamps, dates or text); name the time column with --time-col"
            )))
        }
    }
    Ok(())
}

/// A time written as text: an integer as it is, else a date and time in microseconds.
pub fn parse(text: &str) -> Option<i64> {
    let t = text.trim();
    if let Ok(v) = t.parse::<i64>() {
        return Some(v);
    }
    let t = t.strip_suffix("UTC").unwrap_or(t).trim_end();
    let (t, offset) = split_offset(t)?;
    let (date, time) = match t.split_once(['T', ' ']) {
        Some((d, rest)) => (d, rest.trim()),
        None => (t, ""),
    };
    let mut d = date.splitn(3, '-');
    let (y, m, day): (i64, i64, i64) = (
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
    );
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) {
        return None;
    }
    let mut micros = 0i64;
    if !time.is_empty() {
        let (hms, fraction) = time.split_once('.').unwrap_or((time, ""));
        let mut parts = hms.splitn(3, ':');
        let h: i64 = parts.next()?.parse().ok()?;
        let min: i64 = parts.next()?.parse().ok()?;
        let sec: i64 = parts.next().unwrap_or("0").parse().ok()?;
        if h > 23 || min > 59 || sec > 60 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let digits: String = fraction.chars().chain("000000".chars()).take(6).collect();
        micros = ((h * 60 + min) * 60 + sec) * 1_000_000 + digits.parse::<i64>().ok()?;
    }
    Some((days_from_civil(y, m, day) * 86_400 - offset) * 1_000_000 + micros)
}

/// The text without a trailing `Z` or `+HH:MM`/`-HH:MM` offset, and that offset in seconds.
fn split_offset(t: &str) -> Option<(&str, i64)> {
    if let Some(rest) = t.strip_suffix('Z') {
        return Some((rest, 0));
    }
    // An offset after the time part only (a date's own dashes are not one).
    let time_start = t.find(['T', ' ']).map_or(t.len(), |p| p + 1);
    match t[time_start..].rfind(['+', '-']) {
        Some(at) => {
            let at = time_start + at;
            let (hh, mm) = t[at + 1..].split_once(':').unwrap_or((&t[at + 1..], "0"));
            let seconds = hh.parse::<i64>().ok()? * 3600 + mm.parse::<i64>().ok()? * 60;
            let sign = if t.as_bytes()[at] == b'-' { -1 } else { 1 };
            Some((t[..at].trim_end(), sign * seconds))
        }
        None => Some((t, 0)),
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{StringArray, TimestampMillisecondArray};

    #[test]
    fn text_times_read_as_microseconds_since_1970_in_utc() {
        let s = |t: &str| parse(t).unwrap_or_else(|| panic!("{t}"));
        assert_eq!(s("1970-01-01"), 0);
        assert_eq!(s("1970-01-02 00:00:00"), 86_400_000_000);
        assert_eq!(s("2019-11-01 00:00:00 UTC"), 1_572_566_400_000_000);
        assert_eq!(s("2019-11-01T00:00:00Z"), 1_572_566_400_000_000);
        assert_eq!(s("2019-11-01T02:00:00+02:00"), 1_572_566_400_000_000);
        assert_eq!(s("2019-10-31 22:00:00-02:00"), 1_572_566_400_000_000);
        assert_eq!(s("2019-11-01 00:00:00.25"), 1_572_566_400_250_000);
        assert_eq!(s("2000-02-29 12:30:15"), 951_827_415_000_000);
        assert_eq!(s("1572566400"), 1_572_566_400, "an integer stays as it is");
        for bad in [
            "",
            "yesterday",
            "2019-13-01",
            "2019-11-01 25:00:00",
            "2019-11-01 10:00:xx",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn columns_of_each_kind_keep_the_order_of_their_times() {
        let mut out = Vec::new();
        let text = StringArray::from(vec![
            Some("2019-11-01 00:00:01 UTC"),
            None,
            Some("2019-11-01"),
        ]);
        column(&text, &mut out, "f", "t").unwrap();
        assert_eq!(
            out,
            vec![1_572_566_401_000_000, NO_TIME, 1_572_566_400_000_000]
        );
        let ms = TimestampMillisecondArray::from(vec![1_000, 2_500]);
        column(&ms, &mut out, "f", "t").unwrap();
        assert_eq!(out, vec![1_000_000, 2_500_000]);
        let err = column(&StringArray::from(vec!["soon"]), &mut out, "f.csv", "ts").unwrap_err();
        assert!(
            err.to_string()
                .contains("f.csv: column \"ts\": cannot read \"soon\""),
            "{err}"
        );
    }
}
