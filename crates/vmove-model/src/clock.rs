//! Wall-clock time as stored in records (leases, jobs, run records).

/// Unix time now, in milliseconds (0 if the clock is before 1970).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn now_is_after_2025_and_monotonic_enough() {
        let a = super::now_ms();
        assert!(a > 1_735_689_600_000, "{a}");
        assert!(super::now_ms() >= a);
    }
}
