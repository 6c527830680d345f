//! Parsing of sizes, durations and rates given by users (`512M`, `10m`, `100MB/s`).

/// A size, duration or rate that does not parse. The message names the value and what
/// would be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    /// No number where one was expected.
    #[error("invalid {kind} {input:?}: expected {expected}")]
    Malformed {
        /// `size`, `duration` or `rate`.
        kind: &'static str,
        /// What was given.
        input: String,
        /// Examples of what is accepted.
        expected: &'static str,
    },
    /// A unit that is not known.
    #[error("invalid {kind} {input:?}: unknown unit {unit:?}")]
    UnknownUnit {
        /// `size`, `duration` or `rate`.
        kind: &'static str,
        /// What was given.
        input: String,
        /// The unit.
        unit: String,
    },
    /// Zero where it makes no sense, or too large.
    #[error("invalid {kind} {input:?}: out of range")]
    OutOfRange {
        /// `size`, `duration` or `rate`.
        kind: &'static str,
        /// What was given.
        input: String,
    },
}

fn malformed(kind: &'static str, input: &str, expected: &'static str) -> UnitError {
    UnitError::Malformed { kind, input: input.to_string(), expected }
}

fn unknown(kind: &'static str, input: &str, unit: &str) -> UnitError {
    UnitError::UnknownUnit { kind, input: input.to_string(), unit: unit.to_string() }
}

fn out_of_range(kind: &'static str, input: &str) -> UnitError {
    UnitError::OutOfRange { kind, input: input.to_string() }
}

/// Parses a memory size into MiB: `512`, `512M`, `512MiB`, `2G`, `2GiB`.
pub fn parse_size_mib(s: &str) -> Result<u64, UnitError> {
    let t = s.trim();
    let (num, unit) = split_num(t);
    let n: u64 = num.parse().map_err(|_| malformed("size", s, "e.g. 512M or 2G"))?;
    let mult = match unit.to_ascii_lowercase().as_str() {
        "" | "m" | "mb" | "mib" => 1,
        "g" | "gb" | "gib" => 1024,
        "t" | "tb" | "tib" => 1024 * 1024,
        _ => return Err(unknown("size", s, unit)),
    };
    n.checked_mul(mult).filter(|v| *v > 0).ok_or_else(|| out_of_range("size", s))
}

/// Parses a duration into milliseconds: `300ms`, `10s`, `10m`, `1h`, plain number = seconds.
pub fn parse_duration_ms(s: &str) -> Result<u64, UnitError> {
    let t = s.trim();
    let (num, unit) = split_num(t);
    let n: u64 = num.parse().map_err(|_| malformed("duration", s, "e.g. 300ms, 30s or 10m"))?;
    let mult = match unit {
        "ms" => 1,
        "" | "s" => 1000,
        "m" | "min" => 60_000,
        "h" => 3_600_000,
        _ => return Err(unknown("duration", s, unit)),
    };
    n.checked_mul(mult).ok_or_else(|| out_of_range("duration", s))
}

/// Parses a rate into bytes per second: `100M` / `100MB/s` / `100MiB/s` (MiB), `1G`, `500K`,
/// `800Mbit` (megabits). A plain number is bytes per second.
pub fn parse_rate_bytes_per_s(s: &str) -> Result<u64, UnitError> {
    let t = s.trim();
    let t = t.strip_suffix("/s").unwrap_or(t);
    let (num, unit) = split_num(t);
    let n: u64 = num.parse().map_err(|_| malformed("rate", s, "e.g. 100M (MiB/s) or 800Mbit"))?;
    let mult: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "kbit" => 1000 / 8,
        "mbit" => 1_000_000 / 8,
        "gbit" => 1_000_000_000 / 8,
        _ => return Err(unknown("rate", s, unit)),
    };
    n.checked_mul(mult).filter(|v| *v > 0).ok_or_else(|| out_of_range("rate", s))
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

    #[test]
    fn errors_name_the_value_and_what_is_accepted() {
        assert_eq!(parse_size_mib("lots").unwrap_err().to_string(), "invalid size \"lots\": expected e.g. 512M or 2G");
        assert_eq!(parse_size_mib("12Q").unwrap_err().to_string(), "invalid size \"12Q\": unknown unit \"Q\"");
        assert_eq!(parse_size_mib("0"), Err(UnitError::OutOfRange { kind: "size", input: "0".into() }));
        assert_eq!(parse_duration_ms("5y").unwrap_err().to_string(), "invalid duration \"5y\": unknown unit \"y\"");
        assert_eq!(
            parse_rate_bytes_per_s("fast").unwrap_err().to_string(),
            "invalid rate \"fast\": expected e.g. 100M (MiB/s) or 800Mbit"
        );
    }
}
