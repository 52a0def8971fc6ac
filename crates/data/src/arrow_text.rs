//! Arrow cells that no training row format holds as such (binary, temporal, decimal), given as the `parquet`
//! crate's record reader gives the same values once pyarrow has written them to Parquet, so that a dataset reads
//! the same from either format and a column the mapping does not use never stops a file from being read: bytes as
//! standard base64 (an `Image` feature's `bytes`), timestamps to the microsecond as `2024-05-01 12:30:00.250
//! +00:00` in UTC, dates as `2024-05-01`, times of day as `12:30:00.250`, decimals as Parquet writes them
//! (`12.50`, `-0.05`, and `12.` at scale 0). Nanosecond timestamps and times, and durations, are plain integers,
//! as Parquet has no text for them; so is any value outside chrono's calendar.

use arrow_array::cast::AsArray;
use arrow_array::temporal_conversions::as_datetime;
use arrow_array::types::*;
use arrow_array::{Array, ArrowPrimitiveType};
use arrow_schema::{DataType, TimeUnit};
use base64::Engine;
use serde_json::Value;

/// Cell `i` of `array` (not null), or None for a type this file does not give.
pub fn cell(array: &dyn Array, i: usize) -> Option<Value> {
    let text = |s: String| Some(Value::String(s));
    match array.data_type() {
        DataType::Binary => text(base64(array.as_binary::<i32>().value(i))),
        DataType::LargeBinary => text(base64(array.as_binary::<i64>().value(i))),
        DataType::BinaryView => text(base64(array.as_binary_view().value(i))),
        DataType::FixedSizeBinary(_) => text(base64(array.as_fixed_size_binary().value(i))),
        DataType::Timestamp(unit, _) => Some(timestamp(array, i, *unit)),
        DataType::Date32 => Some(date(array.as_primitive::<Date32Type>().value(i).into())),
        // pyarrow writes a date64 to Parquet as a date.
        DataType::Date64 => Some(date(array.as_primitive::<Date64Type>().value(i).div_euclid(86_400_000))),
        // Parquet has no seconds: pyarrow writes them as milliseconds.
        DataType::Time32(TimeUnit::Second) => text(time(
            i64::from(array.as_primitive::<Time32SecondType>().value(i)) * 1000,
            3,
        )),
        DataType::Time32(TimeUnit::Millisecond) => {
            text(time(array.as_primitive::<Time32MillisecondType>().value(i).into(), 3))
        }
        DataType::Time64(TimeUnit::Microsecond) => {
            text(time(array.as_primitive::<Time64MicrosecondType>().value(i), 6))
        }
        DataType::Time64(TimeUnit::Nanosecond) => Some(array.as_primitive::<Time64NanosecondType>().value(i).into()),
        DataType::Duration(unit) => Some(duration(array, i, *unit).into()),
        DataType::Decimal32(_, scale) => text(decimal(
            array.as_primitive::<Decimal32Type>().value(i).to_string(),
            *scale,
        )),
        DataType::Decimal64(_, scale) => text(decimal(
            array.as_primitive::<Decimal64Type>().value(i).to_string(),
            *scale,
        )),
        DataType::Decimal128(_, scale) => text(decimal(
            array.as_primitive::<Decimal128Type>().value(i).to_string(),
            *scale,
        )),
        DataType::Decimal256(_, scale) => text(decimal(
            array.as_primitive::<Decimal256Type>().value(i).to_string(),
            *scale,
        )),
        _ => None,
    }
}

fn base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// In UTC whatever the column's time zone (the stored value is UTC): seconds and milliseconds to the millisecond,
/// microseconds to the microsecond, nanoseconds (and anything outside the calendar) as the stored integer.
fn timestamp(array: &dyn Array, i: usize, unit: TimeUnit) -> Value {
    fn at<T: ArrowPrimitiveType<Native = i64>>(array: &dyn Array, i: usize, fraction: &str) -> Value {
        let stored = array.as_primitive::<T>().value(i);
        match as_datetime::<T>(stored) {
            Some(when) => Value::String(format!(
                "{} +00:00",
                when.format(&format!("%Y-%m-%d %H:%M:%S{fraction}"))
            )),
            None => stored.into(),
        }
    }
    match unit {
        TimeUnit::Second => at::<TimestampSecondType>(array, i, "%.3f"),
        TimeUnit::Millisecond => at::<TimestampMillisecondType>(array, i, "%.3f"),
        TimeUnit::Microsecond => at::<TimestampMicrosecondType>(array, i, "%.6f"),
        TimeUnit::Nanosecond => array.as_primitive::<TimestampNanosecondType>().value(i).into(),
    }
}

fn duration(array: &dyn Array, i: usize, unit: TimeUnit) -> i64 {
    match unit {
        TimeUnit::Second => array.as_primitive::<DurationSecondType>().value(i),
        TimeUnit::Millisecond => array.as_primitive::<DurationMillisecondType>().value(i),
        TimeUnit::Microsecond => array.as_primitive::<DurationMicrosecondType>().value(i),
        TimeUnit::Nanosecond => array.as_primitive::<DurationNanosecondType>().value(i),
    }
}

/// `days` since 1970-01-01 as `YYYY-MM-DD`; the number itself outside the calendar.
fn date(days: i64) -> Value {
    let when = days.checked_mul(86_400).and_then(as_datetime::<TimestampSecondType>);
    match when {
        Some(when) => Value::String(when.format("%Y-%m-%d").to_string()),
        None => days.into(),
    }
}

/// `ticks` since midnight, 10^`digits` of them per second, as `HH:MM:SS.fraction`.
fn time(ticks: i64, digits: u32) -> String {
    let per_second = 10i64.pow(digits);
    let (seconds, fraction) = (ticks.div_euclid(per_second), ticks.rem_euclid(per_second));
    let (hours, minutes) = (seconds.div_euclid(3600), seconds.div_euclid(60).rem_euclid(60));
    let clock = format!("{hours:02}:{minutes:02}:{:02}", seconds.rem_euclid(60));
    format!("{clock}.{fraction:0width$}", width = digits as usize)
}

/// The unscaled integer `unscaled` (its decimal digits, `-` first if negative) with `scale` digits after the
/// point, as the parquet crate writes a decimal: never in scientific notation, and with the point even at scale 0
/// (`12.`). A negative scale (Arrow has them, Parquet does not) multiplies by a power of ten.
fn decimal(unscaled: String, scale: i8) -> String {
    if scale < 0 {
        return match unscaled.as_str() {
            "0" => unscaled,
            _ => unscaled + &"0".repeat(scale.unsigned_abs() as usize),
        };
    }
    let negative = usize::from(unscaled.starts_with('-'));
    let mut text = unscaled;
    let point = text.len() as isize - scale as isize - negative as isize;
    if point <= 0 {
        text.insert_str(negative, &"0".repeat(point.unsigned_abs()));
        text.insert_str(negative, "0.");
    } else {
        text.insert(point as usize + negative, '.');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Date32Array, TimestampMillisecondArray, TimestampNanosecondArray};

    #[test]
    fn decimals_as_parquet_writes_them() {
        assert_eq!(decimal("1250".into(), 2), "12.50");
        assert_eq!(decimal("-5".into(), 2), "-0.05");
        assert_eq!(decimal("0".into(), 3), "0.000");
        assert_eq!(decimal("12".into(), 0), "12.");
        assert_eq!(decimal("-12".into(), 0), "-12.");
        assert_eq!(decimal("12".into(), -2), "1200");
        assert_eq!(decimal("0".into(), -2), "0");
        assert_eq!(
            decimal(i128::MIN.to_string(), 39),
            format!("-0.{}", &i128::MIN.to_string()[1..])
        );
    }

    #[test]
    fn times_of_day_and_dates() {
        assert_eq!(time(45_000_250, 3), "12:30:00.250");
        assert_eq!(time(1, 6), "00:00:00.000001");
        assert_eq!(time(-1, 3), "-1:59:59.999", "garbage in, text out: never a panic");
        assert_eq!(date(0), Value::String("1970-01-01".into()));
        assert_eq!(date(-1), Value::String("1969-12-31".into()));
        assert_eq!(date(i64::MAX), Value::from(i64::MAX));
    }

    /// A value outside the calendar (a sentinel, or garbage) gives the stored integer, never an error that would
    /// stop the file; nanoseconds are integers as in Parquet.
    #[test]
    fn values_outside_the_calendar_are_their_integers() {
        let far = TimestampMillisecondArray::from(vec![i64::MAX, 1_714_566_600_250]);
        assert_eq!(cell(&far, 0), Some(Value::from(i64::MAX)));
        assert_eq!(
            cell(&far, 1),
            Some(Value::String("2024-05-01 12:30:00.250 +00:00".into()))
        );
        let days = Date32Array::from(vec![i32::MIN]);
        assert_eq!(cell(&days, 0), Some(Value::from(i64::from(i32::MIN))));
        let nanos = TimestampNanosecondArray::from(vec![5]);
        assert_eq!(cell(&nanos, 0), Some(Value::from(5)));
    }
}
