//! Choosing one ready replica of an app for a request: round-robin or least-in-flight.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::routes::Endpoint;

/// How requests spread across the ready replicas of one app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Balance {
    /// Each replica in turn.
    RoundRobin,
    /// The replica with the fewest requests in flight (ties taken in turn).
    LeastInFlight,
}

/// Pick an endpoint, skipping `exclude` (the one that just refused a connection) when another
/// exists. `cursor` is the app's turn counter. `None` only when `endpoints` is empty.
pub fn pick<'a>(
    policy: Balance,
    endpoints: &'a [Arc<Endpoint>],
    cursor: &AtomicUsize,
    exclude: Option<&Endpoint>,
) -> Option<&'a Arc<Endpoint>> {
    let n = endpoints.len();
    if n == 0 {
        return None;
    }
    let start = cursor.fetch_add(1, Ordering::Relaxed);
    let candidates = (0..n)
        .map(|i| &endpoints[(start.wrapping_add(i)) % n])
        .filter(|e| exclude.is_none_or(|x| !std::ptr::eq(Arc::as_ptr(e), x)));
    let chosen = match policy {
        Balance::RoundRobin => candidates.into_iter().next(),
        // `min_by_key` keeps the first minimum, and the scan starts at the rotating cursor,
        // so equally loaded replicas still take turns.
        Balance::LeastInFlight => candidates.min_by_key(|e| e.in_flight()),
    };
    chosen.or_else(|| endpoints.get(start % n))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(n: usize) -> Vec<Arc<Endpoint>> {
        (0..n)
            .map(|i| Arc::new(Endpoint::parse(&format!("http://127.0.0.1:{}", 9000 + i)).expect("valid url")))
            .collect()
    }

    fn ports(chosen: &[&Arc<Endpoint>]) -> Vec<String> {
        chosen.iter().map(|e| e.url().to_string()).collect()
    }

    #[test]
    fn round_robin_visits_every_endpoint_in_turn() {
        let eps = endpoints(3);
        let cursor = AtomicUsize::new(0);
        let picks: Vec<_> = (0..6)
            .map(|_| pick(Balance::RoundRobin, &eps, &cursor, None).expect("non-empty"))
            .collect();
        let urls = ports(&picks);
        assert_eq!(urls[0..3], urls[3..6]);
        let mut distinct = urls[0..3].to_vec();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), 3);
    }

    #[test]
    fn least_in_flight_prefers_the_idle_endpoint() {
        let eps = endpoints(3);
        let _busy0 = eps[0].enter();
        let _busy1a = eps[1].enter();
        let _busy1b = eps[1].enter();
        let cursor = AtomicUsize::new(0);
        for _ in 0..4 {
            let chosen = pick(Balance::LeastInFlight, &eps, &cursor, None).expect("non-empty");
            assert_eq!(chosen.url(), eps[2].url());
        }
    }

    #[test]
    fn excluded_endpoint_is_skipped_unless_it_is_the_only_one() {
        let eps = endpoints(2);
        let cursor = AtomicUsize::new(0);
        for policy in [Balance::RoundRobin, Balance::LeastInFlight] {
            for _ in 0..3 {
                let chosen = pick(policy, &eps, &cursor, Some(&eps[0])).expect("non-empty");
                assert_eq!(chosen.url(), eps[1].url());
            }
        }
        let single = endpoints(1);
        let chosen = pick(Balance::RoundRobin, &single, &cursor, Some(&single[0])).expect("non-empty");
        assert_eq!(chosen.url(), single[0].url());
        assert!(pick(Balance::RoundRobin, &[], &cursor, None).is_none());
    }
}
