//! The local backend (embedded default): replicas are `sdplane replica` child processes on free
//! loopback ports, one supervisor task each (`supervisor`), placed on a GPU or within a memory
//! budget (`capacity`), remembered across controller restarts and adopted (`persist`).
//!
//! Restart policy: a replica that exits unexpectedly is replaced after an exponential backoff
//! (`backoff_base` doubling to `backoff_max`); `max_start_failures` exits in a row before ever
//! becoming ready mark the app failed with the replica's last stderr lines as the reason, until a
//! redeploy (new generation) clears it.

pub mod capacity;
mod persist;
mod process;
mod supervisor;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::capacity::{Capacity, Fit, Reservation};
use super::{
    AppDeployment, AppObservation, Backend, BackendError, BoxFuture, ReplicaObservation, ReplicaPhase,
};

/// How the local backend runs replicas.
#[derive(Debug, Clone)]
pub struct LocalConfig {
    /// The `sdplane` binary started as `replica` (normally this process's own executable).
    pub binary: PathBuf,
    /// Where `local-replicas.json` lives.
    pub state_dir: PathBuf,
    /// CPU-only memory budget in MiB; `None` = the machine's RAM less a tenth.
    pub memory_budget_mb: Option<u64>,
    /// Place replicas on GPUs (`--device cuda:0` under `CUDA_VISIBLE_DEVICES`) when NVML finds any.
    pub use_gpus: bool,
    /// SIGTERM → SIGKILL grace.
    pub stop_grace: Duration,
    /// Longest wait for a draining replica's in-flight requests to finish.
    pub drain_grace: Duration,
    /// Time for routers to receive a route table without a draining replica before its
    /// in-flight count is trusted.
    pub route_propagation: Duration,
    /// Longest wait for a new replica's `SDPLANE_LISTENING` line.
    pub listen_timeout: Duration,
    /// Health poll period.
    pub health_interval: Duration,
    /// Failed starts in a row before the app is marked failed.
    pub max_start_failures: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
}

impl LocalConfig {
    /// Defaults for a given binary and state directory.
    pub fn new(binary: PathBuf, state_dir: PathBuf) -> Self {
        Self {
            binary,
            state_dir,
            memory_budget_mb: None,
            use_gpus: true,
            stop_grace: Duration::from_secs(10),
            drain_grace: Duration::from_secs(60),
            route_propagation: Duration::from_secs(1),
            listen_timeout: Duration::from_secs(60),
            health_interval: Duration::from_millis(250),
            max_start_failures: 3,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
        }
    }
}

/// Replicas as local child processes.
#[derive(Clone)]
pub struct LocalBackend {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    config: LocalConfig,
    capacity: Capacity,
    http: reqwest::Client,
    state: Mutex<State>,
    next_seq: AtomicU64,
    tasks: TaskTracker,
    /// Woken when a replica's phase changes or it ends.
    changed: Arc<tokio::sync::Notify>,
}

#[derive(Default)]
struct State {
    apps: BTreeMap<String, AppRuntime>,
    shutting_down: bool,
}

/// One app's replicas and restart bookkeeping.
struct AppRuntime {
    deployment: AppDeployment,
    replicas: BTreeMap<u64, ReplicaEntry>,
    /// Unexpected exits since the last replica became ready (drives the backoff).
    consecutive_exits: u32,
    /// Exits before ever becoming ready, in a row (drives the failed state).
    start_failures: u32,
    failure: Option<String>,
    next_start_at: Option<Instant>,
    restarts: u64,
    waiting: Option<String>,
    removed: bool,
}

impl AppRuntime {
    fn new(deployment: AppDeployment) -> Self {
        Self {
            deployment,
            replicas: BTreeMap::new(),
            consecutive_exits: 0,
            start_failures: 0,
            failure: None,
            next_start_at: None,
            restarts: 0,
            waiting: None,
            removed: false,
        }
    }
}

struct ReplicaEntry {
    obs: ReplicaObservation,
    pid: Option<u32>,
    gpu: Option<u32>,
    memory_mb: u64,
    ever_ready: bool,
    /// Cancelled to stop the replica (after draining unless shutting down).
    stop: CancellationToken,
}

/// How one replica ended, as its supervisor reports it.
pub(crate) enum Ended {
    /// Stopped on purpose (scale-down, removal, shutdown).
    Stopped,
    /// Exited or failed without being asked to.
    Unexpected { reason: String },
}

impl LocalBackend {
    /// Start the backend: detect capacity and adopt the replicas a previous run left running.
    pub async fn start(config: LocalConfig) -> Result<Self, BackendError> {
        let capacity = Capacity::detect(config.memory_budget_mb, config.use_gpus);
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .map_err(|e| BackendError::Process(format!("cannot build HTTP client: {e}")))?;
        let inner = Arc::new(Inner {
            config,
            capacity,
            http,
            state: Mutex::new(State::default()),
            next_seq: AtomicU64::new(1),
            tasks: TaskTracker::new(),
            changed: Arc::new(tokio::sync::Notify::new()),
        });
        for record in persist::load(&inner.config.state_dir) {
            match persist::check(&record) {
                persist::Verdict::Adopt => {
                    tracing::info!(app = %record.app, pid = record.pid, endpoint = %record.endpoint, "adopting running replica");
                    inner.adopt(record);
                }
                persist::Verdict::Forget => {
                    tracing::info!(app = %record.app, pid = record.pid, "replica from the last run is gone")
                }
            }
        }
        inner.persist(&inner.lock());
        Ok(Self { inner })
    }

    /// The pids of every live replica of `app` (for tests and diagnostics).
    pub fn pids(&self, app: &str) -> Vec<u32> {
        let state = self.inner.lock();
        state
            .apps
            .get(app)
            .map(|rt| rt.replicas.values().filter_map(|r| r.pid).collect())
            .unwrap_or_default()
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere must not take the backend down with it: the state stays usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn persist(&self, state: &State) {
        let records = state
            .apps
            .values()
            .flat_map(|rt| {
                rt.replicas.values().filter_map(|r| {
                    Some(persist::ReplicaRecord {
                        app: rt.deployment.name.clone(),
                        model: rt.deployment.model.clone(),
                        model_path: rt.deployment.model_path.clone(),
                        generation: rt.deployment.generation,
                        parameters: rt.deployment.parameters,
                        memory_mb: r.memory_mb,
                        pid: r.pid?,
                        endpoint: r.obs.endpoint.clone()?,
                        gpu: r.gpu,
                        started_at_unix: persist::unix_seconds(r.obs.started_at),
                    })
                })
            })
            .collect();
        if let Err(e) = persist::save(&self.config.state_dir, records) {
            tracing::error!(error = %e, "cannot persist replica records; a restart will not adopt them");
        }
    }

    fn new_entry(&self, started_at: SystemTime, gpu: Option<u32>, memory_mb: u64) -> (u64, ReplicaEntry) {
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let entry = ReplicaEntry {
            obs: ReplicaObservation {
                id: format!("local-{seq}"),
                endpoint: None,
                phase: ReplicaPhase::Starting,
                progress: None,
                reason: None,
                started_at,
                in_flight: 0,
            },
            pid: None,
            gpu,
            memory_mb,
            ever_ready: false,
            stop: CancellationToken::new(),
        };
        (seq, entry)
    }

    fn adopt(self: &Arc<Self>, record: persist::ReplicaRecord) {
        let (seq, mut entry) = self.new_entry(record.started_at(), record.gpu, record.memory_mb);
        entry.pid = Some(record.pid);
        entry.obs.id = format!("pid-{}", record.pid);
        entry.obs.endpoint = Some(record.endpoint.clone());
        // Adopted replicas served before; a crash of one is a restart, not a failed start.
        entry.ever_ready = true;
        let stop = entry.stop.clone();
        let mut state = self.lock();
        let rt = state
            .apps
            .entry(record.app.clone())
            .or_insert_with(|| AppRuntime::new(record.deployment()));
        rt.replicas.insert(seq, entry);
        drop(state);
        let launch = supervisor::Launch::Adopt {
            pid: record.pid,
            endpoint: record.endpoint,
        };
        self.tasks
            .spawn(supervisor::supervise(self.clone(), record.app, seq, launch, stop));
    }

    /// Start one replica of `rt`'s app if it fits.
    fn start_one(self: &Arc<Self>, state: &mut State, app: &str) -> Result<(), BackendError> {
        let live: Vec<Reservation> = state
            .apps
            .values()
            .flat_map(|rt| rt.replicas.values())
            .map(|r| Reservation {
                gpu: r.gpu,
                memory_mb: r.memory_mb,
                loading: r.obs.phase != ReplicaPhase::Ready,
            })
            .collect();
        let Some(rt) = state.apps.get_mut(app) else {
            return Ok(());
        };
        let need_mb = rt.deployment.memory_mb(self.capacity.bytes_per_parameter());
        let gpu = match self.capacity.fit(need_mb, &live) {
            Fit::Place { gpu } => gpu,
            Fit::Full { free_mb } => {
                rt.waiting = Some(format!(
                    "waiting for memory: needs about {need_mb} MiB, {free_mb} MiB free"
                ));
                return Err(BackendError::NoCapacity {
                    app: app.to_string(),
                    needed_mb: need_mb,
                    free_mb,
                });
            }
        };
        let (seq, entry) = self.new_entry(SystemTime::now(), gpu, need_mb);
        let stop = entry.stop.clone();
        rt.replicas.insert(seq, entry);
        rt.waiting = None;
        let spec = process::SpawnSpec {
            app: app.to_string(),
            binary: self.config.binary.clone(),
            model_path: rt.deployment.model_path.clone(),
            gpu,
            listen_timeout: self.config.listen_timeout,
        };
        tracing::info!(app, seq, ?gpu, need_mb, "starting replica");
        self.tasks.spawn(supervisor::supervise(
            self.clone(),
            app.to_string(),
            seq,
            supervisor::Launch::Spawn(spec),
            stop,
        ));
        Ok(())
    }

    /// Supervisor callback: the process is up at `endpoint`.
    fn set_started(&self, app: &str, seq: u64, pid: u32, endpoint: String) {
        let mut state = self.lock();
        if let Some(r) = state.apps.get_mut(app).and_then(|rt| rt.replicas.get_mut(&seq)) {
            r.pid = Some(pid);
            r.obs.id = format!("pid-{pid}");
            r.obs.endpoint = Some(endpoint);
        }
        self.persist(&state);
    }

    /// Supervisor callback: a health answer (or `None` when the poll failed).
    fn set_health(&self, app: &str, seq: u64, health: &sdplane_wire::api::ReplicaHealth) {
        use sdplane_wire::api::ReplicaState;
        let mut state = self.lock();
        let Some(rt) = state.apps.get_mut(app) else { return };
        let Some(r) = rt.replicas.get_mut(&seq) else {
            return;
        };
        r.obs.in_flight = health.in_flight.saturating_add(health.queue_depth);
        if r.obs.phase == ReplicaPhase::Draining {
            return;
        }
        let before = r.obs.phase;
        match health.status {
            ReplicaState::Loading => {
                r.obs.phase = ReplicaPhase::Loading;
                r.obs.progress = Some(health.progress.clamp(0.0, 1.0));
            }
            ReplicaState::Ready => {
                r.obs.phase = ReplicaPhase::Ready;
                r.obs.progress = Some(1.0);
                if !r.ever_ready {
                    r.ever_ready = true;
                    rt.consecutive_exits = 0;
                    rt.start_failures = 0;
                    rt.next_start_at = None;
                }
            }
            ReplicaState::Failed => {
                r.obs.phase = ReplicaPhase::Failed;
                r.obs.reason = health.reason.clone();
            }
        }
        if r.obs.phase != before {
            self.changed.notify_one();
        }
    }

    /// Whether the replica should drain before stopping (not during shutdown).
    fn should_drain(&self) -> bool {
        !self.lock().shutting_down
    }

    /// Supervisor callback: the replica is gone.
    fn ended(&self, app: &str, seq: u64, how: Ended) {
        let mut state = self.lock();
        let Some(rt) = state.apps.get_mut(app) else { return };
        let Some(entry) = rt.replicas.remove(&seq) else {
            return;
        };
        if let Ended::Unexpected { reason } = how
            && !rt.removed
            && !entry.stop.is_cancelled()
        {
            rt.restarts += 1;
            rt.consecutive_exits = rt.consecutive_exits.saturating_add(1);
            if !entry.ever_ready {
                rt.start_failures = rt.start_failures.saturating_add(1);
            }
            let exp = rt.consecutive_exits.saturating_sub(1).min(16);
            let backoff = self
                .config
                .backoff_base
                .saturating_mul(1u32 << exp)
                .min(self.config.backoff_max);
            rt.next_start_at = Some(Instant::now() + backoff);
            tracing::warn!(app, seq, ?backoff, start_failures = rt.start_failures, %reason, "replica ended unexpectedly");
            if rt.start_failures >= self.config.max_start_failures {
                rt.failure = Some(format!(
                    "replica failed to start {} times in a row; last failure: {reason}",
                    rt.start_failures
                ));
            }
        }
        if rt.removed && rt.replicas.is_empty() {
            state.apps.remove(app);
        }
        self.persist(&state);
        self.changed.notify_one();
    }

    fn drain(rt: &mut AppRuntime, seq: u64) {
        if let Some(r) = rt.replicas.get_mut(&seq) {
            r.obs.phase = ReplicaPhase::Draining;
            r.stop.cancel();
        }
    }
}

impl Backend for LocalBackend {
    fn name(&self) -> &'static str {
        "local"
    }

    fn ensure<'a>(
        &'a self,
        app: &'a AppDeployment,
        replicas: u32,
    ) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async move {
            let inner = &self.inner;
            let mut state = inner.lock();
            if state.shutting_down {
                return Ok(());
            }
            let rt = state
                .apps
                .entry(app.name.clone())
                .or_insert_with(|| AppRuntime::new(app.clone()));
            rt.removed = false;
            if rt.deployment.generation != app.generation || rt.deployment.model_path != app.model_path {
                // A redeploy: forget failures and backoff of the previous generation.
                rt.consecutive_exits = 0;
                rt.start_failures = 0;
                rt.failure = None;
                rt.next_start_at = None;
            }
            rt.deployment = app.clone();
            let mut active: Vec<(bool, u64)> = rt
                .replicas
                .iter()
                .filter(|(_, r)| r.obs.phase != ReplicaPhase::Draining)
                .map(|(seq, r)| (r.obs.phase == ReplicaPhase::Ready, *seq))
                .collect();
            let want = replicas as usize;
            if active.len() > want {
                // Drain the least useful first: not-ready ones, then the newest ready ones.
                active.sort_by_key(|(ready, seq)| (*ready, std::cmp::Reverse(*seq)));
                for (_, seq) in active.iter().take(active.len() - want) {
                    tracing::info!(app = %app.name, seq, "draining replica");
                    Inner::drain(rt, *seq);
                }
                rt.waiting = None;
                return Ok(());
            }
            if active.len() == want || rt.failure.is_some() {
                rt.waiting = None;
                return Ok(());
            }
            if let Some(at) = rt.next_start_at {
                let now = Instant::now();
                if now < at {
                    rt.waiting = Some(format!(
                        "restarting in {:.1} s after a replica failure",
                        (at - now).as_secs_f64()
                    ));
                    return Ok(());
                }
            }
            for _ in active.len()..want {
                inner.start_one(&mut state, &app.name)?;
            }
            Ok(())
        })
    }

    fn observe(&self) -> BoxFuture<'_, Result<BTreeMap<String, AppObservation>, BackendError>> {
        Box::pin(async move {
            let state = self.inner.lock();
            Ok(state
                .apps
                .iter()
                .map(|(name, rt)| {
                    let obs = AppObservation {
                        replicas: rt.replicas.values().map(|r| r.obs.clone()).collect(),
                        failure: rt.failure.clone(),
                        restarts: rt.restarts,
                        waiting: rt.waiting.clone(),
                    };
                    (name.clone(), obs)
                })
                .collect())
        })
    }

    fn remove<'a>(&'a self, app: &'a str) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async move {
            let mut state = self.inner.lock();
            let Some(rt) = state.apps.get_mut(app) else {
                return Ok(());
            };
            rt.removed = true;
            let seqs: Vec<u64> = rt.replicas.keys().copied().collect();
            for seq in seqs {
                Inner::drain(rt, seq);
            }
            if rt.replicas.is_empty() {
                state.apps.remove(app);
            }
            Ok(())
        })
    }

    fn changes(&self) -> Option<Arc<tokio::sync::Notify>> {
        Some(self.inner.changed.clone())
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            {
                let mut state = self.inner.lock();
                state.shutting_down = true;
                for rt in state.apps.values_mut() {
                    let seqs: Vec<u64> = rt.replicas.keys().copied().collect();
                    for seq in seqs {
                        Inner::drain(rt, seq);
                    }
                }
            }
            self.inner.tasks.close();
            self.inner.tasks.wait().await;
            tracing::info!("all local replicas stopped");
        })
    }
}
