//! The autoscaler's decision, as a pure function (STYLE.md, after kube-rs/controller-rs: sans-IO
//! logic carries the cheap tests): given one app's settings, its load and how long it has been
//! idle, how many replicas should it have? The loop that feeds it lives in `reconcile`.

use std::time::Duration;

/// One app's settings and load at the moment of the decision.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AppLoad {
    pub min_replicas: u32,
    pub max_replicas: u32,
    /// In-flight requests one replica should carry before another is added (at least 1).
    pub target_concurrency: u32,
    pub idle_timeout: Duration,
    /// Requests in flight now, as the routers report them.
    pub in_flight: u32,
    /// Highest in-flight count over the recent scale-down window; scale-in follows this, not
    /// the instantaneous count, so a gap between two requests does not drop a replica.
    pub recent_peak_in_flight: u32,
    /// Time since the last request arrived or finished; `None` when none ever has (or since the
    /// app was evicted), which counts as idle forever.
    pub idle_for: Option<Duration>,
    /// Non-draining replicas the app has now.
    pub current: u32,
    /// Starting failed repeatedly: run nothing until a redeploy.
    pub failed: bool,
}

/// Replicas `app` should have.
///
/// - failed → 0;
/// - requests in flight, or a request within `idle_timeout` → enough replicas for the recent
///   peak at `target_concurrency` each, at least 1;
/// - idle past `idle_timeout` → 0 (scale to zero);
/// - always within `min_replicas..=max_replicas`;
/// - never fewer than now while requests are in flight (a replica serving one is not removed;
///   scale-in waits until the app is quiet, and draining covers the rest).
pub fn desired_replicas(app: &AppLoad) -> u32 {
    if app.failed {
        return 0;
    }
    let max = app.max_replicas.max(app.min_replicas);
    let recently_active = match app.idle_for {
        Some(idle) => idle < app.idle_timeout,
        None => false,
    };
    let busy = app.in_flight > 0;
    let by_load = if busy || recently_active {
        let load = app.in_flight.max(app.recent_peak_in_flight);
        load.div_ceil(app.target_concurrency.max(1)).max(1)
    } else {
        0
    };
    let mut desired = by_load.max(app.min_replicas).min(max);
    if busy {
        desired = desired.max(app.current.min(max));
    }
    desired
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: Duration = Duration::from_secs(300);

    fn app() -> AppLoad {
        AppLoad {
            min_replicas: 0,
            max_replicas: 4,
            target_concurrency: 2,
            idle_timeout: IDLE,
            in_flight: 0,
            recent_peak_in_flight: 0,
            idle_for: None,
            current: 0,
            failed: false,
        }
    }

    fn secs(s: u64) -> Option<Duration> {
        Some(Duration::from_secs(s))
    }

    #[test]
    fn decisions_follow_the_table() {
        let cases: Vec<(&str, AppLoad, u32)> = vec![
            ("never used stays at zero", app(), 0),
            (
                "min_replicas keeps a never-used app warm",
                AppLoad {
                    min_replicas: 1,
                    ..app()
                },
                1,
            ),
            (
                "a request a second ago wakes one replica",
                AppLoad {
                    idle_for: secs(1),
                    ..app()
                },
                1,
            ),
            (
                "just under the idle timeout keeps one",
                AppLoad {
                    idle_for: secs(299),
                    current: 1,
                    ..app()
                },
                1,
            ),
            (
                "at the idle timeout scales to zero",
                AppLoad {
                    idle_for: secs(300),
                    current: 1,
                    ..app()
                },
                0,
            ),
            (
                "idle past the timeout keeps min_replicas",
                AppLoad {
                    idle_for: secs(900),
                    current: 2,
                    min_replicas: 2,
                    ..app()
                },
                2,
            ),
            (
                "load scales out by target concurrency",
                AppLoad {
                    in_flight: 5,
                    idle_for: secs(0),
                    current: 1,
                    ..app()
                },
                3,
            ),
            (
                "scale-out stops at max_replicas",
                AppLoad {
                    in_flight: 50,
                    idle_for: secs(0),
                    current: 1,
                    ..app()
                },
                4,
            ),
            (
                "a recent peak keeps replicas through a lull",
                AppLoad {
                    in_flight: 0,
                    recent_peak_in_flight: 6,
                    idle_for: secs(2),
                    current: 3,
                    ..app()
                },
                3,
            ),
            (
                "in-flight work blocks scale-in below the current count",
                AppLoad {
                    in_flight: 1,
                    idle_for: secs(0),
                    current: 3,
                    ..app()
                },
                3,
            ),
            (
                "in-flight work past the idle timeout is not scaled to zero",
                AppLoad {
                    in_flight: 1,
                    idle_for: secs(1000),
                    current: 1,
                    ..app()
                },
                1,
            ),
            (
                "a failed app runs nothing",
                AppLoad {
                    failed: true,
                    in_flight: 3,
                    min_replicas: 1,
                    ..app()
                },
                0,
            ),
            (
                "zero target concurrency counts as one",
                AppLoad {
                    target_concurrency: 0,
                    in_flight: 3,
                    ..app()
                },
                3,
            ),
            (
                "max below min is lifted to min",
                AppLoad {
                    min_replicas: 2,
                    max_replicas: 1,
                    ..app()
                },
                2,
            ),
        ];
        for (name, load, want) in cases {
            assert_eq!(desired_replicas(&load), want, "{name}: {load:?}");
        }
    }
}
