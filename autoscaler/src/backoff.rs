//! Restart back-off: 1 s doubling to 1 min, forgotten once a replica has stayed up 10 min.

use std::time::Duration;

const FIRST: Duration = Duration::from_secs(1);
const CAP: Duration = Duration::from_secs(60);
/// A replica that ran this long is considered healthy again; its next crash starts over at 1 s.
pub const RESET_AFTER: Duration = Duration::from_secs(600);

/// The delay before the `attempt`-th consecutive restart (0-based).
pub fn delay(attempt: u32) -> Duration {
    FIRST
        .checked_mul(1u32.checked_shl(attempt).unwrap_or(u32::MAX))
        .map_or(CAP, |d| d.min(CAP))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_a_minute() {
        let delays: Vec<u64> = (0..9).map(|a| delay(a).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(delay(40), CAP);
    }
}
