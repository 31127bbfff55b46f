//! The route table as the request path reads it: an immutable `RouteSnapshot` per controller
//! version (app → ready endpoints, state, per-app counters), and `next_snapshot`, the pure step
//! that turns the controller's `RouteTable` into the next snapshot while keeping the live
//! counters (in-flight, turn cursor, metrics) of apps and endpoints that stay.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use http::Uri;
use http::uri::{Authority, Scheme};
use sdplane_wire::admin::{AppRoute, AppState, RouteTable};
use tokio::time::Instant;

use crate::activity::ActivityState;
use crate::metrics::{AppMetrics, Metrics};

/// One ready replica: where to send requests and how many are in flight there.
#[derive(Debug)]
pub struct Endpoint {
    url: String,
    scheme: Scheme,
    authority: Authority,
    /// Path prefix of the base URL without a trailing slash (usually empty).
    base_path: String,
    in_flight: AtomicU32,
}

impl Endpoint {
    /// Parse a base URL such as `http://127.0.0.1:9000` (only `http`; replicas speak plain HTTP).
    pub fn parse(url: &str) -> Result<Self, String> {
        let uri: Uri = url.parse().map_err(|e| format!("endpoint {url:?}: {e}"))?;
        let scheme = uri
            .scheme()
            .cloned()
            .ok_or_else(|| format!("endpoint {url:?} has no scheme"))?;
        if scheme != Scheme::HTTP {
            return Err(format!("endpoint {url:?}: only http:// replicas are supported"));
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| format!("endpoint {url:?} has no host"))?;
        if uri.query().is_some() {
            return Err(format!("endpoint {url:?} must not carry a query"));
        }
        let base_path = uri.path().trim_end_matches('/').to_string();
        Ok(Self {
            url: url.to_string(),
            scheme,
            authority,
            base_path,
            in_flight: AtomicU32::new(0),
        })
    }

    /// The base URL as the controller gave it.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Requests in flight on this endpoint through this router.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Count a request on this endpoint until the guard drops.
    pub fn enter(self: &Arc<Self>) -> EndpointLoad {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        EndpointLoad(Arc::clone(self))
    }

    /// The upstream URI for `path_and_query` (which starts with `/v1/`).
    pub fn uri(&self, path_and_query: &str) -> Result<Uri, http::Error> {
        let builder = Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone());
        if self.base_path.is_empty() {
            builder.path_and_query(path_and_query).build()
        } else {
            builder
                .path_and_query(format!("{}{path_and_query}", self.base_path))
                .build()
        }
    }
}

/// One request counted on an endpoint (for least-in-flight); uncounted on drop.
#[derive(Debug)]
pub struct EndpointLoad(Arc<Endpoint>);

impl Drop for EndpointLoad {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What lives as long as an app stays in the table, across table versions.
pub struct AppShared {
    /// The app name.
    pub name: String,
    /// In-flight count and last activity, reported to the controller.
    pub activity: ActivityState,
    /// Cached metric children.
    pub metrics: AppMetrics,
    /// Turn counter for endpoint choice.
    pub cursor: AtomicUsize,
}

/// One app in one snapshot.
pub struct AppEntry {
    /// The controller's view of the app.
    pub route: AppRoute,
    /// Ready endpoints that parsed.
    pub endpoints: Vec<Arc<Endpoint>>,
    /// Counters that outlive this snapshot.
    pub shared: Arc<AppShared>,
    /// When this router first saw the current cold start (starting/loading), for estimates.
    pub cold_since: Option<Instant>,
}

impl AppEntry {
    /// Whether a request can be proxied now.
    pub fn is_ready(&self) -> bool {
        !self.endpoints.is_empty()
    }
}

/// The route table at one controller version. Immutable; replaced whole on each update.
#[derive(Default)]
pub struct RouteSnapshot {
    /// `None` until the first table arrives from the controller.
    pub version: Option<u64>,
    apps: HashMap<String, AppEntry>,
}

impl RouteSnapshot {
    /// The entry for `app`, if deployed.
    pub fn app(&self, app: &str) -> Option<&AppEntry> {
        self.apps.get(app)
    }

    /// Every deployed app.
    pub fn apps(&self) -> impl Iterator<Item = &AppEntry> {
        self.apps.values()
    }

    /// Number of deployed apps.
    pub fn len(&self) -> usize {
        self.apps.len()
    }

    /// Whether no app is deployed.
    pub fn is_empty(&self) -> bool {
        self.apps.is_empty()
    }
}

/// Build the snapshot for `table`, reusing `prev`'s per-app and per-endpoint state for what
/// stays. Returns the snapshot and the apps that left (whose metric series should go).
pub fn next_snapshot(
    prev: &RouteSnapshot,
    table: RouteTable,
    now: Instant,
    metrics: &Metrics,
) -> (RouteSnapshot, Vec<String>) {
    let mut apps = HashMap::with_capacity(table.apps.len());
    for (name, route) in table.apps {
        let old = prev.apps.get(&name);
        let shared = match old {
            Some(o) => Arc::clone(&o.shared),
            None => Arc::new(AppShared {
                metrics: metrics.for_app(&name),
                name: name.clone(),
                activity: ActivityState::new(now),
                cursor: AtomicUsize::new(0),
            }),
        };
        let endpoints: Vec<Arc<Endpoint>> = route
            .endpoints
            .iter()
            .filter_map(|url| {
                if let Some(kept) = old.and_then(|o| o.endpoints.iter().find(|e| e.url == *url)) {
                    return Some(Arc::clone(kept));
                }
                match Endpoint::parse(url) {
                    Ok(e) => Some(Arc::new(e)),
                    Err(message) => {
                        tracing::warn!(app = %name, %message, "ignoring an endpoint the router cannot use");
                        None
                    }
                }
            })
            .collect();
        let cold = endpoints.is_empty() && !matches!(route.state, AppState::ScaledToZero | AppState::Failed);
        let cold_since = cold.then(|| old.and_then(|o| o.cold_since).unwrap_or(now));
        apps.insert(
            name,
            AppEntry {
                route,
                endpoints,
                shared,
                cold_since,
            },
        );
    }
    let removed = prev
        .apps
        .keys()
        .filter(|k| !apps.contains_key(*k))
        .cloned()
        .collect();
    (
        RouteSnapshot {
            version: Some(table.version),
            apps,
        },
        removed,
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn route(state: AppState, endpoints: &[&str]) -> AppRoute {
        AppRoute {
            state,
            endpoints: endpoints.iter().map(|s| s.to_string()).collect(),
            progress: None,
            reason: None,
            estimated_cold_start_seconds: 10.0,
            replicas_ready: endpoints.len() as u32,
            replicas_total: endpoints.len() as u32,
        }
    }

    fn table(version: u64, apps: &[(&str, AppRoute)]) -> RouteTable {
        RouteTable {
            version,
            apps: apps
                .iter()
                .map(|(n, r)| (n.to_string(), r.clone()))
                .collect::<BTreeMap<_, _>>(),
        }
    }

    fn metrics() -> Metrics {
        Metrics::new(&prometheus::Registry::new()).expect("register")
    }

    #[test]
    fn endpoint_urls_keep_a_base_path_and_refuse_other_schemes() {
        let e = Endpoint::parse("http://10.0.0.1:9000/prefix/").expect("valid");
        assert_eq!(
            e.uri("/v1/generate?x=1").expect("uri").to_string(),
            "http://10.0.0.1:9000/prefix/v1/generate?x=1"
        );
        let plain = Endpoint::parse("http://127.0.0.1:9000").expect("valid");
        assert_eq!(
            plain.uri("/v1/health").expect("uri").to_string(),
            "http://127.0.0.1:9000/v1/health"
        );
        assert!(Endpoint::parse("https://x:1").is_err());
        assert!(Endpoint::parse("127.0.0.1:9000").is_err());
    }

    #[test]
    fn counters_of_apps_and_endpoints_that_stay_survive_an_update() {
        let m = metrics();
        let t0 = Instant::now();
        let (s1, _) = next_snapshot(
            &RouteSnapshot::default(),
            table(
                1,
                &[(
                    "sd-a",
                    route(AppState::Ready, &["http://127.0.0.1:1", "http://127.0.0.1:2"]),
                )],
            ),
            t0,
            &m,
        );
        let a1 = s1.app("sd-a").expect("deployed");
        let _load = a1.endpoints[0].enter();
        let (s2, removed) = next_snapshot(
            &s1,
            table(
                2,
                &[(
                    "sd-a",
                    route(AppState::Ready, &["http://127.0.0.1:1", "http://127.0.0.1:3"]),
                )],
            ),
            t0,
            &m,
        );
        assert!(removed.is_empty());
        let a2 = s2.app("sd-a").expect("deployed");
        assert!(Arc::ptr_eq(&a1.shared, &a2.shared));
        assert_eq!(
            a2.endpoints[0].in_flight(),
            1,
            "the kept endpoint keeps its count"
        );
        assert_eq!(a2.endpoints[1].in_flight(), 0);
        assert_eq!(s2.version, Some(2));
    }

    #[test]
    fn cold_start_clock_starts_when_an_app_starts_and_stops_when_ready() {
        let m = metrics();
        let t0 = Instant::now();
        let t1 = t0 + std::time::Duration::from_secs(3);
        let empty = RouteSnapshot::default();
        let (s1, _) = next_snapshot(
            &empty,
            table(1, &[("sd-a", route(AppState::ScaledToZero, &[]))]),
            t0,
            &m,
        );
        assert_eq!(s1.app("sd-a").expect("deployed").cold_since, None);
        let (s2, _) = next_snapshot(&s1, table(2, &[("sd-a", route(AppState::Starting, &[]))]), t0, &m);
        assert_eq!(s2.app("sd-a").expect("deployed").cold_since, Some(t0));
        let (s3, _) = next_snapshot(&s2, table(3, &[("sd-a", route(AppState::Loading, &[]))]), t1, &m);
        assert_eq!(
            s3.app("sd-a").expect("deployed").cold_since,
            Some(t0),
            "loading continues the same start"
        );
        let (s4, _) = next_snapshot(
            &s3,
            table(4, &[("sd-a", route(AppState::Ready, &["http://127.0.0.1:1"]))]),
            t1,
            &m,
        );
        assert_eq!(s4.app("sd-a").expect("deployed").cold_since, None);
        let (s5, _) = next_snapshot(&s4, table(5, &[("sd-a", route(AppState::Failed, &[]))]), t1, &m);
        assert_eq!(s5.app("sd-a").expect("deployed").cold_since, None);
    }

    #[test]
    fn apps_leaving_the_table_are_reported_and_bad_endpoints_skipped() {
        let m = metrics();
        let t0 = Instant::now();
        let (s1, _) = next_snapshot(
            &RouteSnapshot::default(),
            table(
                1,
                &[
                    ("sd-a", route(AppState::Ready, &["http://127.0.0.1:1"])),
                    ("sd-b", route(AppState::Ready, &["ftp://x"])),
                ],
            ),
            t0,
            &m,
        );
        assert!(
            !s1.app("sd-b").expect("deployed").is_ready(),
            "an unusable endpoint is not a ready one"
        );
        let (s2, removed) = next_snapshot(
            &s1,
            table(2, &[("sd-b", route(AppState::ScaledToZero, &[]))]),
            t0,
            &m,
        );
        assert_eq!(removed, vec!["sd-a".to_string()]);
        assert!(s2.app("sd-a").is_none());
        assert_eq!(s2.len(), 1);
    }
}
