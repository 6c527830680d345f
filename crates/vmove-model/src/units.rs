//! Parsing of sizes, durations and rates given by users (`512M`, `10m`, `100MB/s`).

/// Parses a memory size into MiB: `512`, `512M`, `512MiB`, `2G`, `2GiB`.
pub fn parse_size_mib(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, unit) = split_num(t);
    let n: u64 = num.parse().map_err(|_| format!("invalid size {s:?}: expected e.g. 512M or 2G"))?;
    let mult = match unit.to_ascii_lowercase().as_str() {
        "" | "m" | "mb" | "mib" => 1,
        "g" | "gb" | "gib" => 1024,
        "t" | "tb" | "tib" => 1024 * 1024,
        _ => return Err(format!("invalid size {s:?}: unknown unit {unit:?}")),
    };
    n.checked_mul(mult).filter(|v| *v > 0).ok_or_else(|| format!("invalid size {s:?}: out of range"))
}

/// Parses a duration into milliseconds: `300ms`, `10s`, `10m`, `1h`, plain number = seconds.
pub fn parse_duration_ms(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, unit) = split_num(t);
    let n: u64 = num.parse().map_err(|_| format!("invalid duration {s:?}: expected e.g. 300ms, 30s or 10m"))?;
    let mult = match unit {
        "ms" => 1,
        "" | "s" => 1000,
        "m" | "min" => 60_000,
        "h" => 3_600_000,
        _ => return Err(format!("invalid duration {s:?}: unknown unit {unit:?}")),
    };
    n.checked_mul(mult).ok_or_else(|| format!("invalid duration {s:?}: out of range"))
}

/// Parses a rate into bytes per second: `100M` / `100MB/s` / `100MiB/s` (MiB), `1G`, `500K`,
/// `800Mbit` (megabits). A plain number is bytes per second.
pub fn parse_rate_bytes_per_s(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t.strip_suffix("/s").unwrap_or(t);
    let (num, unit) = split_num(t);
    let n: u64 = num.parse().map_err(|_| format!("invalid rate {s:?}: expected e.g. 100M (MiB/s) or 800Mbit"))?;
    let mult: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "kbit" => 1000 / 8,
        "mbit" => 1_000_000 / 8,
        "gbit" => 1_000_000_000 / 8,
        _ => return Err(format!("invalid rate {s:?}: unknown unit {unit:?}")),
    };
    n.checked_mul(mult).filter(|v| *v > 0).ok_or_else(|| format!("invalid rate {s:?}: out of range"))
}

fn split_num(t: &str) -> (&str, &str) {
    let i = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    (&t[..i], t[i..].trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size_mib("512M"), Ok(512));
        assert_eq!(parse_size_mib("2G"), Ok(2048));
        assert_eq!(parse_size_mib("64"), Ok(64));
        assert!(parse_size_mib("0").is_err());
        assert!(parse_size_mib("12Q").is_err());
        assert!(parse_size_mib("").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("300ms"), Ok(300));
        assert_eq!(parse_duration_ms("10m"), Ok(600_000));
        assert_eq!(parse_duration_ms("30"), Ok(30_000));
        assert!(parse_duration_ms("x").is_err());
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate_bytes_per_s("1M"), Ok(1 << 20));
        assert_eq!(parse_rate_bytes_per_s("100MB/s"), Ok(100 << 20));
        assert_eq!(parse_rate_bytes_per_s("8Mbit"), Ok(1_000_000));
        assert!(parse_rate_bytes_per_s("fast").is_err());
    }
}
