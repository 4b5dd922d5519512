//! Parsers for the unit-bearing strings of scenario files: durations, percentages, bit rates.

use std::time::Duration;

/// `"20ms"`, `"1.5s"`, `"10m"`, `"2h"`, `"500us"` → a duration.
pub(crate) fn duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("expected a duration like \"20ms\" or \"1.5s\", found \"{s}\""))?;
    let scale = match unit.trim() {
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        "" => {
            return Err(format!(
                "a duration needs a unit (us, ms, s, m, h): \"{s}\""
            ));
        }
        other => {
            return Err(format!(
                "unknown duration unit \"{other}\" in \"{s}\" (use us, ms, s, m, h)"
            ));
        }
    };
    let secs = value * scale;
    if !secs.is_finite() || secs > 1e9 {
        return Err(format!("duration \"{s}\" is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// `"2%"` → 0.02.
pub(crate) fn percent(s: &str) -> Result<f64, String> {
    let Some(num) = s.trim().strip_suffix('%') else {
        return Err(format!("expected a percentage like \"2%\", found \"{s}\""));
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("expected a percentage like \"2%\", found \"{s}\""))?;
    if !(0.0..=100.0).contains(&v) {
        return Err(format!(
            "a percentage must be from 0% to 100%, found \"{s}\""
        ));
    }
    Ok(v / 100.0)
}

/// `"10Mbit"`, `"64kbit"`, `"1.5 Gbit/s"`, `"64kbps"` → bits per second.
pub(crate) fn bit_rate(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t
        .strip_suffix("/s")
        .or_else(|| t.strip_suffix("ps"))
        .unwrap_or(t);
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("expected a rate like \"10Mbit\" or \"64kbit\", found \"{s}\""))?;
    let scale = match unit.trim() {
        "bit" | "b" => 1.0,
        "kbit" | "kb" | "k" => 1e3,
        "Mbit" | "Mb" | "M" => 1e6,
        "Gbit" | "Gb" | "G" => 1e9,
        other => {
            return Err(format!(
                "unknown rate unit \"{other}\" in \"{s}\" (use bit, kbit, Mbit, Gbit)"
            ));
        }
    };
    let bps = value * scale;
    if !(1.0..=1e12).contains(&bps) {
        return Err(format!(
            "rate \"{s}\" is out of range (1 bit/s to 1 Tbit/s)"
        ));
    }
    Ok(bps.round() as u64)
}

/// `"10/s"` → 10.0 calls per second.
pub(crate) fn per_second(s: &str) -> Result<f64, String> {
    let Some(num) = s.trim().strip_suffix("/s") else {
        return Err(format!("expected a rate like \"10/s\", found \"{s}\""));
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("expected a rate like \"10/s\", found \"{s}\""))?;
    if !(v > 0.0 && v <= 10_000.0) {
        return Err(format!(
            "a ramp must be above 0/s and at most 10000/s, found \"{s}\""
        ));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(duration("20ms"), Ok(Duration::from_millis(20)));
        assert_eq!(duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(duration("500us"), Ok(Duration::from_micros(500)));
        assert!(duration("20").unwrap_err().contains("needs a unit"));
        assert!(
            duration("20 parsecs")
                .unwrap_err()
                .contains("unknown duration unit")
        );
        assert_eq!(percent("2%"), Ok(0.02));
        assert!(percent("120%").is_err());
        assert!(percent("2").is_err());
        assert_eq!(bit_rate("10Mbit"), Ok(10_000_000));
        assert_eq!(bit_rate("64kbit"), Ok(64_000));
        assert_eq!(bit_rate("1.5Mbit/s"), Ok(1_500_000));
        assert!(bit_rate("fast").is_err());
        assert_eq!(per_second("10/s"), Ok(10.0));
        assert!(per_second("0/s").is_err());
    }
}
