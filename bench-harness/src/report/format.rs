//! How figures are written in `report.md`, the index and the plots' labels.
//!
//! One function per kind of figure, so a number means the same thing
//! wherever it appears. Non-finite values (NaN, infinities) are written
//! "n/a" rather than rejected: a report of a broken run is still a report.

/// Written in place of a figure that is not a finite number.
pub const NOT_A_NUMBER: &str = "n/a";

/// An integer with a comma every three digits: `1234567` → "1,234,567".
pub fn thousands(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A non-negative float with `decimals` decimals and thousands separators
/// in the integer part: `(1234.567, 2)` → "1,234.57". Negative values keep
/// their sign.
pub fn fixed(value: f64, decimals: usize) -> String {
    if !value.is_finite() {
        return NOT_A_NUMBER.to_string();
    }
    let text = format!("{:.*}", decimals, value.abs());
    let (int_part, frac_part) = match text.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (text.as_str(), None),
    };
    // The integer part of a finite f64 printed with `{:.N}` is all digits;
    // anything longer than u64 (> 1.8e19) is left without separators.
    let int_grouped = int_part
        .parse::<u64>()
        .map(thousands)
        .unwrap_or_else(|_| int_part.to_string());
    let is_zero = text.bytes().all(|b| b == b'0' || b == b'.');
    let sign = if value < 0.0 && !is_zero { "-" } else { "" };
    match frac_part {
        Some(f) => format!("{sign}{int_grouped}.{f}"),
        None => format!("{sign}{int_grouped}"),
    }
}

/// A count (messages, samples, errors): "1,234,567".
pub fn count(value: u64) -> String {
    thousands(value)
}

/// A rate in messages per second, rounded to whole messages: "123,457".
pub fn msg_rate(value: f64) -> String {
    fixed(value, 0)
}

/// A rate in MB/s (10^6 bytes per second), two decimals: "12.35".
pub fn mb_rate(value: f64) -> String {
    fixed(value, 2)
}

/// A latency in microseconds as held in the report: "1,234".
pub fn micros(value: u64) -> String {
    thousands(value)
}

/// A mean latency in microseconds, one decimal: "1,234.5".
pub fn micros_mean(value: f64) -> String {
    fixed(value, 1)
}

/// Seconds (durations, CPU time, CPU time per GB), two decimals: "12.35".
pub fn seconds(value: f64) -> String {
    fixed(value, 2)
}

/// A ratio of two figures, three decimals: "1.620".
pub fn ratio(value: f64) -> String {
    fixed(value, 3)
}

/// A size in bytes as binary units with one decimal: "23.5 GiB".
pub fn binary_bytes(value: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut scaled = value as f64;
    let mut unit = 0;
    while scaled >= 1024.0 && unit + 1 < UNITS.len() {
        scaled /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{value} B")
    } else {
        format!("{scaled:.1} {}", UNITS[unit])
    }
}

/// A latency in microseconds as a short axis label: "500 µs", "2 ms",
/// "1.5 s".
pub fn duration_label(value_us: f64) -> String {
    if !value_us.is_finite() {
        return NOT_A_NUMBER.to_string();
    }
    let (scaled, unit) = if value_us.abs() >= 1e6 {
        (value_us / 1e6, "s")
    } else if value_us.abs() >= 1e3 {
        (value_us / 1e3, "ms")
    } else {
        (value_us, "µs")
    };
    format!("{} {unit}", trim_decimals(scaled))
}

/// A rate as a short axis label: "0", "500", "25k", "1.5M".
pub fn rate_label(value: f64) -> String {
    if !value.is_finite() {
        return NOT_A_NUMBER.to_string();
    }
    let (scaled, suffix) = if value.abs() >= 1e9 {
        (value / 1e9, "G")
    } else if value.abs() >= 1e6 {
        (value / 1e6, "M")
    } else if value.abs() >= 1e3 {
        (value / 1e3, "k")
    } else {
        (value, "")
    };
    format!("{}{suffix}", trim_decimals(scaled))
}

/// Up to two decimals, without trailing zeros: 1.50 → "1.5", 2.00 → "2".
fn trim_decimals(value: f64) -> String {
    let text = format!("{value:.2}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text == "-0" {
        "0".to_string()
    } else {
        text.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_groups_digits() {
        let cases = [
            (0, "0"),
            (7, "7"),
            (999, "999"),
            (1_000, "1,000"),
            (123_456, "123,456"),
            (1_234_567, "1,234,567"),
            (u64::MAX, "18,446,744,073,709,551,615"),
        ];
        for (value, expected) in cases {
            assert_eq!(thousands(value), expected, "{value}");
        }
    }

    #[test]
    fn fixed_rounds_groups_and_keeps_sign() {
        let cases = [
            (1234.567, 2, "1,234.57"),
            (0.0, 2, "0.00"),
            (999.996, 2, "1,000.00"),
            (-1234.5, 1, "-1,234.5"),
            (-0.0001, 2, "0.00"),
            (123_456.7, 0, "123,457"),
            (f64::NAN, 2, "n/a"),
            (f64::INFINITY, 0, "n/a"),
        ];
        for (value, decimals, expected) in cases {
            assert_eq!(fixed(value, decimals), expected, "{value}");
        }
    }

    #[test]
    fn units() {
        assert_eq!(binary_bytes(512), "512 B");
        assert_eq!(binary_bytes(24_683_656 * 1024), "23.5 GiB");
        assert_eq!(duration_label(500.0), "500 µs");
        assert_eq!(duration_label(1_000.0), "1 ms");
        assert_eq!(duration_label(1_500_000.0), "1.5 s");
        assert_eq!(rate_label(0.0), "0");
        assert_eq!(rate_label(25_000.0), "25k");
        assert_eq!(rate_label(1_500_000.0), "1.5M");
    }
}
