//! Durations (`90s`, `15m`, `24h`, `30d`) and sizes (`64KiB`, `10MiB`).

use std::time::Duration;

/// Parses `90s`, `15m`, `24h`, `30d`, `500ms` (one number, one unit).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    if num.is_empty() {
        return Err(format!("bad duration {s:?}: it must start with a number"));
    }
    let n: u64 = num.parse().map_err(|_| format!("bad duration {s:?}: number too large"))?;
    let secs = match unit {
        "ms" => return Ok(Duration::from_millis(n)),
        "s" => Some(n),
        "m" => n.checked_mul(60),
        "h" => n.checked_mul(3600),
        "d" => n.checked_mul(86_400),
        "" => return Err(format!("bad duration {s:?}: missing unit (ms, s, m, h or d)")),
        other => return Err(format!("bad duration {s:?}: unknown unit {other:?} (ms, s, m, h or d)")),
    };
    secs.map(Duration::from_secs).ok_or_else(|| format!("bad duration {s:?}: too large"))
}

/// Parses a size: `512`, `64KiB`, `10MiB`, `1GiB`, also `64KB`/`10MB` (as
/// powers of 1000) and `k`/`m`/`g` (as powers of 1024, like nginx).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    if num.is_empty() {
        return Err(format!("bad size {s:?}: it must start with a number"));
    }
    let n: u64 = num.parse().map_err(|_| format!("bad size {s:?}: number too large"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "k" | "K" => 1 << 10,
        "MiB" | "m" | "M" => 1 << 20,
        "GiB" | "g" | "G" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => return Err(format!("bad size {s:?}: unknown unit {other:?} (B, KiB, MiB, GiB)")),
    };
    n.checked_mul(mult).ok_or_else(|| format!("bad size {s:?}: too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86_400));
        assert_eq!(parse_duration("30d").unwrap(), Duration::from_secs(30 * 86_400));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        for bad in ["", "s", "10", "10x", "1.5h", "-1s", "99999999999999999999s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64KiB").unwrap(), 65_536);
        assert_eq!(parse_size("10MiB").unwrap(), 10 << 20);
        assert_eq!(parse_size("512").unwrap(), 512);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        for bad in ["", "MiB", "10 parsecs", "-1"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }
}
