//! The controller's command line (`ControllerArgs`, flattened by `sdplane up` too) and the
//! configuration validated from it once at start-up.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::backend::local::LocalConfig;
use crate::error::{Error, Result};
use crate::kube::{BackendKind, KubeArgs};
use crate::models::ModelsDir;

/// `sdplane controller` configuration.
#[derive(Debug, Clone, clap::Args)]
pub struct ControllerArgs {
    /// Folder of `.safetensors` model files; deployable paths are confined to it.
    #[arg(long, env = "SDPLANE_MODELS", default_value = "models")]
    pub models: PathBuf,
    /// Admin + internal API address.
    #[arg(long, env = "SDPLANE_ADMIN_LISTEN", default_value = "127.0.0.1:8001")]
    pub admin_listen: SocketAddr,
    /// Where the registry (`apps.json`) and local replica records live; default `<models>/.sdplane`,
    /// or `$XDG_STATE_HOME/sdplane` when the models folder is read-only.
    #[arg(long, env = "SDPLANE_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Bearer token required on the admin and internal API; open when unset.
    #[arg(long, env = "SDPLANE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Time without requests before an app scales to zero (per-app `idle_timeout_s` overrides).
    #[arg(long, env = "SDPLANE_IDLE_TIMEOUT", default_value = "300s", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,
    /// In-flight requests per replica before scaling out (per-app `target_concurrency` overrides).
    #[arg(long, env = "SDPLANE_TARGET_CONCURRENCY", default_value_t = 1)]
    pub target_concurrency: u32,
    /// How long a load peak keeps its extra replicas before scale-in.
    #[arg(long, env = "SDPLANE_SCALE_DOWN_WINDOW", default_value = "30s", value_parser = humantime::parse_duration)]
    pub scale_down_window: Duration,
    /// `sdplane` binary started as `replica` by the local backend; default: this executable.
    #[arg(long, env = "SDPLANE_REPLICA_BINARY")]
    pub replica_binary: Option<PathBuf>,
    /// Where local replicas run: `auto` puts each on a GPU when NVML finds one, `cpu` never does.
    #[arg(long, env = "SDPLANE_REPLICA_DEVICE", value_enum, default_value_t = ReplicaDevice::Auto)]
    pub replica_device: ReplicaDevice,
    /// Memory replicas may use on a CPU-only machine, MiB; default: RAM less a tenth.
    #[arg(long, env = "SDPLANE_MEMORY_BUDGET_MB")]
    pub memory_budget_mb: Option<u64>,
    /// SIGTERM → SIGKILL grace when a local replica is stopped.
    #[arg(long, env = "SDPLANE_STOP_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub stop_grace: Duration,
    /// Longest wait for a scaled-down replica's in-flight requests before it is stopped anyway.
    #[arg(long, env = "SDPLANE_DRAIN_GRACE", default_value = "60s", value_parser = humantime::parse_duration)]
    pub drain_grace: Duration,
    /// Failed starts in a row before an app is marked failed.
    #[arg(long, env = "SDPLANE_MAX_START_FAILURES", default_value_t = 3)]
    pub max_start_failures: u32,
    /// Period of the reconcile loop (it also runs at once on activation, deploy and delete).
    #[arg(long, env = "SDPLANE_RECONCILE_INTERVAL", default_value = "500ms", value_parser = humantime::parse_duration)]
    pub reconcile_interval: Duration,
    /// Longest a router's route-table long-poll is held before answering unchanged.
    #[arg(long, env = "SDPLANE_ROUTES_LONG_POLL", default_value = "25s", value_parser = humantime::parse_duration)]
    pub routes_long_poll: Duration,
    #[command(flatten)]
    pub kube: KubeArgs,
}

/// Device choice for local replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReplicaDevice {
    /// A GPU per replica when NVML finds GPUs, else CPU.
    Auto,
    /// CPU only, whatever GPUs exist (e.g. a build without CUDA).
    Cpu,
}

/// Validated controller settings.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    pub models: ModelsDir,
    pub state_dir: PathBuf,
    pub admin_token: Option<String>,
    pub idle_timeout: Duration,
    pub target_concurrency: u32,
    pub scale_down_window: Duration,
    pub reconcile_interval: Duration,
    pub long_poll: Duration,
    pub backend: BackendKind,
    pub local: LocalConfig,
    pub kube: KubeArgs,
}

impl ControllerConfig {
    /// Check the command line: the models folder exists, durations are positive, the state
    /// directory is writable, the token is usable.
    pub fn from_args(args: &ControllerArgs) -> Result<Self> {
        let models = ModelsDir::open(&args.models)?;
        let state_dir = match &args.state_dir {
            Some(dir) => dir.clone(),
            None => default_state_dir(models.root()),
        };
        std::fs::create_dir_all(&state_dir)
            .map_err(|e| Error::Config(format!("--state-dir {}: {e}", state_dir.display())))?;
        let admin_token = match args.admin_token.as_deref() {
            None => None,
            Some(t) if t.trim().is_empty() => return Err(Error::Config("--admin-token is empty".into())),
            Some(t) => Some(t.trim().to_string()),
        };
        for (flag, value) in [
            ("--idle-timeout", args.idle_timeout),
            ("--reconcile-interval", args.reconcile_interval),
            ("--routes-long-poll", args.routes_long_poll),
        ] {
            if value.is_zero() {
                return Err(Error::Config(format!("{flag} must be above zero")));
            }
        }
        if args.target_concurrency == 0 {
            return Err(Error::Config("--target-concurrency must be at least 1".into()));
        }
        let binary = match &args.replica_binary {
            Some(b) => b.clone(),
            None => std::env::current_exe()
                .map_err(|e| Error::Config(format!("cannot find this executable for replicas: {e}")))?,
        };
        let mut local = LocalConfig::new(binary, state_dir.clone());
        local.memory_budget_mb = args.memory_budget_mb;
        local.use_gpus = args.replica_device == ReplicaDevice::Auto;
        local.stop_grace = args.stop_grace;
        local.drain_grace = args.drain_grace;
        local.max_start_failures = args.max_start_failures.max(1);
        Ok(Self {
            models,
            state_dir,
            admin_token,
            idle_timeout: args.idle_timeout,
            target_concurrency: args.target_concurrency,
            scale_down_window: args.scale_down_window,
            reconcile_interval: args.reconcile_interval,
            long_poll: args.routes_long_poll,
            backend: args.kube.backend,
            local,
            kube: args.kube.clone(),
        })
    }
}

/// `<models>/.sdplane` when the models folder is writable, else `$XDG_STATE_HOME/sdplane`
/// (`~/.local/state/sdplane` per the XDG base-directory spec when unset).
fn default_state_dir(models: &Path) -> PathBuf {
    let beside = models.join(".sdplane");
    if std::fs::create_dir_all(&beside).is_ok() {
        return beside;
    }
    let xdg = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("."));
    xdg.join("sdplane")
}
