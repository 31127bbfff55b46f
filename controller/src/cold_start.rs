//! Per-app cold-start history (activation → first ready replica) and the estimate published in
//! the route table, from which the router computes `Retry-After` and `estimated_ready_seconds`.

use serde::{Deserialize, Serialize};

/// Estimate before an app has any cold start of its own: the design's example default.
pub const DEFAULT_ESTIMATE_SECONDS: f64 = 30.0;

/// Weight of the newest cold start in the moving average. 0.3 follows the last few starts
/// (page cache warm or cold, another app loading beside it) without one outlier dominating.
const EWMA_ALPHA: f64 = 0.3;

/// What the registry persists about an app's cold starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ColdStartStats {
    pub count: u64,
    /// Exponentially weighted moving average of the durations in seconds.
    pub ewma_seconds: Option<f64>,
    pub last_seconds: Option<f64>,
}

impl ColdStartStats {
    /// Add one measured cold start.
    pub fn record(&mut self, seconds: f64) {
        let seconds = seconds.max(0.0);
        self.count += 1;
        self.last_seconds = Some(seconds);
        self.ewma_seconds = Some(match self.ewma_seconds {
            None => seconds,
            Some(avg) => EWMA_ALPHA * seconds + (1.0 - EWMA_ALPHA) * avg,
        });
    }

    /// Seconds a cold start of this app is expected to take.
    pub fn estimate_seconds(&self) -> f64 {
        self.ewma_seconds.unwrap_or(DEFAULT_ESTIMATE_SECONDS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimate_is_the_default_until_a_cold_start_is_measured() {
        assert_eq!(
            ColdStartStats::default().estimate_seconds(),
            DEFAULT_ESTIMATE_SECONDS
        );
    }

    #[test]
    fn first_sample_is_taken_whole_and_later_ones_are_averaged() {
        let mut stats = ColdStartStats::default();
        stats.record(10.0);
        assert_eq!(stats.estimate_seconds(), 10.0);
        stats.record(20.0);
        assert!((stats.estimate_seconds() - 13.0).abs() < 1e-9, "{stats:?}");
        assert_eq!(stats.count, 2);
        assert_eq!(stats.last_seconds, Some(20.0));
    }
}
