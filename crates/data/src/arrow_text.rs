//! Arrow cells that no training row format holds as such (binary, temporal, decimal), written as the text the
//! `parquet` crate's record reader gives the same values, so that a dataset reads the same from either format and
//! a column the mapping does not use never stops a file from being read: bytes as standard base64 (an `Image`
//! feature's `bytes`), timestamps as `2024-05-01 12:30:00.250 +00:00` in UTC, dates as `2024-05-01`, times of
//! day as `12:30:00.250`, decimals in plain notation.

use arrow_array::cast::AsArray;
use arrow_array::temporal_conversions::as_datetime;
use arrow_array::types::*;
use arrow_array::{Array, ArrowPrimitiveType};
use arrow_schema::{DataType, TimeUnit};
use base64::Engine;

/// Cell `i` of `array` as text, or None for a type this file does not write.
pub fn text(array: &dyn Array, i: usize) -> Option<String> {
    Some(match array.data_type() {
        DataType::Binary => base64(array.as_binary::<i32>().value(i)),
        DataType::LargeBinary => base64(array.as_binary::<i64>().value(i)),
        DataType::BinaryView => base64(array.as_binary_view().value(i)),
        DataType::FixedSizeBinary(_) => base64(array.as_fixed_size_binary().value(i)),
        DataType::Timestamp(unit, _) => timestamp(array, i, *unit)?,
        DataType::Date32 => date(array.as_primitive::<Date32Type>().value(i).into())?,
        DataType::Date64 => date(array.as_primitive::<Date64Type>().value(i).div_euclid(86_400_000))?,
        // Parquet has no seconds: pyarrow stores them as milliseconds, which its reader writes with 3 digits.
        DataType::Time32(TimeUnit::Second) => {
            time(i64::from(array.as_primitive::<Time32SecondType>().value(i)) * 1000, 3)
        }
        DataType::Time32(TimeUnit::Millisecond) => {
            time(array.as_primitive::<Time32MillisecondType>().value(i).into(), 3)
        }
        DataType::Time64(TimeUnit::Microsecond) => time(array.as_primitive::<Time64MicrosecondType>().value(i), 6),
        DataType::Time64(TimeUnit::Nanosecond) => time(array.as_primitive::<Time64NanosecondType>().value(i), 9),
        DataType::Decimal32(_, scale) => decimal(array.as_primitive::<Decimal32Type>().value(i).into(), *scale),
        DataType::Decimal64(_, scale) => decimal(array.as_primitive::<Decimal64Type>().value(i).into(), *scale),
        DataType::Decimal128(_, scale) => decimal(array.as_primitive::<Decimal128Type>().value(i), *scale),
        _ => return None,
    })
}

fn base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// In UTC whatever the column's time zone (the stored value is UTC), as parquet's reader writes it: milliseconds
/// for seconds and milliseconds, otherwise the unit's digits.
fn timestamp(array: &dyn Array, i: usize, unit: TimeUnit) -> Option<String> {
    fn at<T: ArrowPrimitiveType<Native = i64>>(array: &dyn Array, i: usize, digits: usize) -> Option<String> {
        let when = as_datetime::<T>(array.as_primitive::<T>().value(i))?;
        let fraction = match digits {
            3 => "%.3f",
            6 => "%.6f",
            _ => "%.9f",
        };
        Some(format!(
            "{} +00:00",
            when.format(&format!("%Y-%m-%d %H:%M:%S{fraction}"))
        ))
    }
    match unit {
        TimeUnit::Second => at::<TimestampSecondType>(array, i, 3),
        TimeUnit::Millisecond => at::<TimestampMillisecondType>(array, i, 3),
        TimeUnit::Microsecond => at::<TimestampMicrosecondType>(array, i, 6),
        TimeUnit::Nanosecond => at::<TimestampNanosecondType>(array, i, 9),
    }
}

/// `days` since 1970-01-01 as `YYYY-MM-DD`.
fn date(days: i64) -> Option<String> {
    let when = as_datetime::<TimestampSecondType>(days.checked_mul(86_400)?)?;
    Some(when.format("%Y-%m-%d").to_string())
}

/// `ticks` since midnight, 10^`digits` of them per second, as `HH:MM:SS.fraction` (no fraction for 0 digits).
fn time(ticks: i64, digits: u32) -> String {
    let per_second = 10i64.pow(digits);
    let (seconds, fraction) = (ticks.div_euclid(per_second), ticks.rem_euclid(per_second));
    let (hours, minutes) = (seconds.div_euclid(3600), seconds.div_euclid(60).rem_euclid(60));
    let clock = format!("{hours:02}:{minutes:02}:{:02}", seconds.rem_euclid(60));
    match digits {
        0 => clock,
        d => format!("{clock}.{fraction:0width$}", width = d as usize),
    }
}

/// The unscaled integer `value` with `scale` digits after the point, in plain notation (`-0.05`, `1200`).
fn decimal(value: i128, scale: i8) -> String {
    let digits = value.unsigned_abs().to_string();
    let sign = if value < 0 { "-" } else { "" };
    if scale <= 0 {
        let zeros = "0".repeat(scale.unsigned_abs() as usize);
        return if value == 0 {
            "0".into()
        } else {
            format!("{sign}{digits}{zeros}")
        };
    }
    let scale = scale as usize;
    let digits = format!("{digits:0>width$}", width = scale + 1);
    let (whole, fraction) = digits.split_at(digits.len() - scale);
    format!("{sign}{whole}.{fraction}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_in_plain_notation() {
        assert_eq!(decimal(1250, 2), "12.50");
        assert_eq!(decimal(-5, 2), "-0.05");
        assert_eq!(decimal(0, 3), "0.000");
        assert_eq!(decimal(12, -2), "1200");
        assert_eq!(decimal(0, -2), "0");
        assert_eq!(decimal(i128::MIN, 0), i128::MIN.to_string());
    }

    #[test]
    fn times_of_day_and_dates() {
        assert_eq!(time(45_000_250, 3), "12:30:00.250");
        assert_eq!(time(45_000, 0), "12:30:00");
        assert_eq!(time(-1, 3), "-1:59:59.999", "garbage in, text out: never a panic");
        assert_eq!(time(1, 9), "00:00:00.000000001");
        assert_eq!(date(0).unwrap(), "1970-01-01");
        assert_eq!(date(-1).unwrap(), "1969-12-31");
        assert_eq!(date(i64::MAX), None);
    }
}
