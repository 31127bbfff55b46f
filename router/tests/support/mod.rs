//! Real parts for router tests over loopback: a fake controller serving the internal API from a
//! scriptable route table, tiny HTTP replicas, and a router started on `127.0.0.1:0`.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use bytes::Bytes;
use futures::StreamExt;
use sdplane_router::{ProxyArgs, RouterConfig};
use sdplane_wire::admin::{
    ActivityReport, AppRoute, AppSpec, AppState, AppStatus, ModelFileEntry, ModelFileList, RouteTable,
};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long any awaited event may take before a test fails instead of hanging.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Await `fut` or fail the test after `EVENT_TIMEOUT`.
pub async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(EVENT_TIMEOUT, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// What the activation handler does to the table (default: the app becomes `starting`).
pub type ActivationScript = Box<dyn Fn(&str, &mut AppRoute) + Send + Sync>;

pub struct ControllerState {
    table: watch::Sender<RouteTable>,
    activations: watch::Sender<usize>,
    /// Activation calls block until this is true.
    activation_gate: watch::Sender<bool>,
    script: Mutex<ActivationScript>,
    reports: watch::Sender<Vec<ActivityReport>>,
    models: Mutex<Vec<ModelFileEntry>>,
    token: Option<String>,
    pub route_polls: watch::Sender<usize>,
    /// While set, route polls answer 503 (a controller restarting).
    away: std::sync::atomic::AtomicBool,
}

/// A controller speaking the internal API from a table the test edits.
pub struct FakeController {
    pub url: String,
    pub state: Arc<ControllerState>,
    server: JoinHandle<()>,
}

pub fn route(state: AppState, endpoints: &[&str]) -> AppRoute {
    AppRoute {
        state,
        endpoints: endpoints.iter().map(|s| s.to_string()).collect(),
        progress: None,
        reason: None,
        estimated_cold_start_seconds: 12.0,
        replicas_ready: endpoints.len() as u32,
        replicas_total: endpoints.len() as u32,
    }
}

impl FakeController {
    pub async fn start(token: Option<&str>) -> Self {
        let state = Arc::new(ControllerState {
            table: watch::channel(RouteTable {
                version: 1,
                apps: BTreeMap::new(),
            })
            .0,
            activations: watch::channel(0).0,
            activation_gate: watch::channel(true).0,
            script: Mutex::new(Box::new(|_, r: &mut AppRoute| r.state = AppState::Starting)),
            reports: watch::channel(Vec::new()).0,
            models: Mutex::new(Vec::new()),
            token: token.map(str::to_string),
            route_polls: watch::channel(0).0,
            away: std::sync::atomic::AtomicBool::new(false),
        });
        let app = Router::new()
            .route("/internal/v1/routes", get(routes))
            .route("/internal/v1/apps/{name}/activate", post(activate))
            .route("/internal/v1/activity", post(activity))
            .route("/v1/apps/{name}", get(app_status))
            .route("/v1/models", get(models))
            .with_state(Arc::clone(&state));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { url, state, server }
    }

    /// Stop answering (as a crashed controller would).
    pub fn stop(&self) {
        self.server.abort();
    }

    /// Put or replace one app and bump the version.
    pub fn set_app(&self, name: &str, route: AppRoute) {
        self.state.table.send_modify(|t| {
            t.apps.insert(name.to_string(), route);
            t.version += 1;
        });
    }

    pub fn remove_app(&self, name: &str) {
        self.state.table.send_modify(|t| {
            t.apps.remove(name);
            t.version += 1;
        });
    }

    /// Answer route polls with 503 (`true`) or normally again (`false`).
    pub fn set_away(&self, away: bool) {
        self.state.away.store(away, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn version(&self) -> u64 {
        self.state.table.borrow().version
    }

    pub fn set_model(&self, entry: ModelFileEntry) {
        self.state.models.lock().unwrap().push(entry);
    }

    pub fn script_activation(&self, script: ActivationScript) {
        *self.state.script.lock().unwrap() = script;
    }

    /// Hold activation calls until `open_activations`.
    pub fn close_activations(&self) {
        self.state.activation_gate.send_replace(false);
    }

    pub fn open_activations(&self) {
        self.state.activation_gate.send_replace(true);
    }

    pub fn activation_count(&self) -> usize {
        *self.state.activations.borrow()
    }

    pub async fn wait_activations(&self, n: usize) {
        let mut rx = self.state.activations.subscribe();
        within("activations", rx.wait_for(|c| *c >= n)).await.unwrap();
    }

    /// Wait for an activity report satisfying `pred`; returns it.
    pub async fn wait_report(&self, pred: impl Fn(&ActivityReport) -> bool) -> ActivityReport {
        let mut rx = self.state.reports.subscribe();
        let reports = within("an activity report", rx.wait_for(|rs| rs.iter().any(&pred)))
            .await
            .unwrap();
        reports.iter().find(|r| pred(r)).cloned().unwrap()
    }

    pub fn reports(&self) -> Vec<ActivityReport> {
        self.state.reports.borrow().clone()
    }
}

impl Drop for FakeController {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn authorized(state: &ControllerState, headers: &HeaderMap) -> bool {
    match &state.token {
        None => true,
        Some(t) => headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(&format!("Bearer {t}")),
    }
}

#[derive(Deserialize)]
struct After {
    after: Option<u64>,
}

async fn routes(
    State(s): State<Arc<ControllerState>>,
    headers: HeaderMap,
    Query(q): Query<After>,
) -> Response {
    s.route_polls.send_modify(|n| *n += 1);
    if !authorized(&s, &headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let mut rx = s.table.subscribe();
    if let Some(after) = q.after {
        // Hold like the real controller: answer when the version moves, else after a while.
        let _ = tokio::time::timeout(Duration::from_secs(25), rx.wait_for(|t| t.version != after)).await;
    }
    if s.away.load(std::sync::atomic::Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "restarting").into_response();
    }
    let table = rx.borrow().clone();
    axum::Json(table).into_response()
}

async fn activate(
    State(s): State<Arc<ControllerState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    if !authorized(&s, &headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    s.activations.send_modify(|n| *n += 1);
    let mut gate = s.activation_gate.subscribe();
    let _ = gate.wait_for(|open| *open).await;
    let mut answer = None;
    s.table.send_if_modified(|t| {
        let Some(r) = t.apps.get_mut(&name) else {
            return false;
        };
        (s.script.lock().unwrap())(&name, r);
        answer = Some(r.clone());
        t.version += 1;
        true
    });
    match answer {
        Some(r) => axum::Json(r).into_response(),
        None => (StatusCode::NOT_FOUND, "no such app").into_response(),
    }
}

async fn activity(
    State(s): State<Arc<ControllerState>>,
    headers: HeaderMap,
    axum::Json(report): axum::Json<ActivityReport>,
) -> StatusCode {
    if !authorized(&s, &headers) {
        return StatusCode::UNAUTHORIZED;
    }
    s.reports.send_modify(|r| r.push(report));
    StatusCode::NO_CONTENT
}

async fn app_status(State(s): State<Arc<ControllerState>>, Path(name): Path<String>) -> Response {
    let table = s.table.borrow().clone();
    let Some(r) = table.apps.get(&name) else {
        return (StatusCode::NOT_FOUND, "no such app").into_response();
    };
    let model = format!("{}.safetensors", name.trim_start_matches("sd-"));
    axum::Json(AppStatus {
        name: name.clone(),
        model: model.clone(),
        spec: AppSpec {
            model,
            min_replicas: 0,
            max_replicas: 1,
            idle_timeout_s: None,
            target_concurrency: None,
        },
        state: r.state,
        reason: r.reason.clone(),
        progress: r.progress,
        replicas_desired: 0,
        replicas_ready: r.replicas_ready,
        replicas_total: r.replicas_total,
        url_path: format!("/{name}/v1/generate"),
        idle_seconds: None,
        idle_timeout_s: 300,
        estimated_cold_start_seconds: r.estimated_cold_start_seconds,
        cold_starts: 0,
    })
    .into_response()
}

async fn models(State(s): State<Arc<ControllerState>>) -> Response {
    let models = s.models.lock().unwrap().clone();
    axum::Json(ModelFileList {
        models_dir: "models".into(),
        models,
    })
    .into_response()
}

/// A tiny replica. `/v1/stream` sends its first chunk, then waits for the test to allow the
/// rest; `/v1/hang` never answers; everything else echoes what it received as JSON.
pub struct Upstream {
    pub url: String,
    pub addr: SocketAddr,
    release: mpsc::UnboundedSender<()>,
    server: JoinHandle<()>,
}

#[derive(Clone)]
struct UpstreamState {
    name: String,
    release: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<()>>>,
}

impl Upstream {
    pub async fn start(name: &str) -> Self {
        let (release, rx) = mpsc::unbounded_channel();
        let state = UpstreamState {
            name: name.to_string(),
            release: Arc::new(tokio::sync::Mutex::new(rx)),
        };
        let app = Router::new()
            .route("/v1/stream", get(stream))
            .route("/v1/hang", any(std::future::pending::<()>))
            .route("/v1/health", get(health))
            .fallback(echo)
            .with_state(state);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            url: format!("http://{addr}"),
            addr,
            release,
            server,
        }
    }

    /// Let `/v1/stream` send its next chunk.
    pub fn release_chunk(&self) {
        self.release.send(()).unwrap();
    }

    pub fn stop(&self) {
        self.server.abort();
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn echo(State(s): State<UpstreamState>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let mut len = 0usize;
    let mut chunks = 0usize;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        len += chunk.map(|c| c.len()).unwrap_or(0);
        chunks += 1;
    }
    let headers: HashMap<String, String> = parts
        .headers
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let mut response = axum::Json(serde_json::json!({
        "upstream": s.name,
        "method": parts.method.as_str(),
        "path": parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or(""),
        "headers": headers,
        "body_len": len,
        "body_chunks": chunks,
    }))
    .into_response();
    // Hop-by-hop headers the router must not pass back.
    response
        .headers_mut()
        .insert("connection", "x-upstream-hop".parse().unwrap());
    response
        .headers_mut()
        .insert("x-upstream-hop", "1".parse().unwrap());
    response
}

async fn stream(State(s): State<UpstreamState>) -> Response {
    let release = Arc::clone(&s.release);
    let body = futures::stream::unfold(0u32, move |i| {
        let release = Arc::clone(&release);
        async move {
            if i == 3 {
                return None;
            }
            if i > 0 {
                release.lock().await.recv().await?;
            }
            Some((Ok::<_, std::io::Error>(Bytes::from(format!("chunk{i};"))), i + 1))
        }
    });
    Body::from_stream(body).into_response()
}

async fn health(State(s): State<UpstreamState>) -> Response {
    axum::Json(serde_json::json!({
        "status": "ready", "progress": 1.0, "model": s.name, "device": "cpu",
        "uptime_seconds": 3.5, "load_seconds": 1.25, "queue_depth": 0, "in_flight": 0, "gpu": null
    }))
    .into_response()
}

/// A replica that reads a request's headers and then dies: the connection closes with no answer.
/// With `partial_body`, it first sends a 200 head promising more body than it sends.
pub async fn dying_upstream(partial_body: bool) -> (String, JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let mut seen = Vec::new();
            let mut buf = [0u8; 4096];
            while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                match socket.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                }
            }
            if partial_body {
                let _ = socket
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{\"status\":")
                    .await;
                let _ = socket.flush().await;
            }
            drop(socket);
        }
    });
    (url, task)
}

/// A router under test.
pub struct TestRouter {
    pub url: String,
    pub shutdown: CancellationToken,
    task: JoinHandle<sdplane_router::Result<()>>,
}

impl TestRouter {
    /// Start a router against `controller` and wait until it has loaded its first table.
    pub async fn start(
        controller: &FakeController,
        token: Option<&str>,
        tweak: impl FnOnce(&mut ProxyArgs),
    ) -> Self {
        let router = Self::start_unready(&controller.url, token, tweak).await;
        router.wait_version(controller.version()).await;
        router
    }

    pub async fn start_unready(
        controller_url: &str,
        token: Option<&str>,
        tweak: impl FnOnce(&mut ProxyArgs),
    ) -> Self {
        let mut proxy = ProxyArgs {
            activity_interval: Duration::from_millis(50),
            ..ProxyArgs::default()
        };
        tweak(&mut proxy);
        let config = RouterConfig::new(controller_url, token, &proxy).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(sdplane_router::serve(config, listener, shutdown.clone()));
        Self { url, shutdown, task }
    }

    /// Wait until `/healthz` reports at least `version` (the router took the table in).
    pub async fn wait_version(&self, version: u64) {
        let client = reqwest::Client::new();
        within("the router to load the route table", async {
            loop {
                if let Ok(r) = client.get(format!("{}/healthz", self.url)).send().await
                    && let Ok(v) = r.json::<serde_json::Value>().await
                    && v["route_table_version"]
                        .as_u64()
                        .is_some_and(|have| have >= version)
                {
                    return;
                }
                // The router exposes no push signal for table loads; poll its health briskly.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.url))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        within("the router to stop", self.task).await.unwrap().unwrap();
    }
}

/// The value of the first sample line starting with `prefix` in Prometheus text.
pub fn sample(metrics: &str, prefix: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}
