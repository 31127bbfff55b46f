//! Kubernetes mode of the controller: the `SDApp` custom resource, the per-app Deployment and
//! Service, the reconciler that keeps them, the EndpointSlice view that feeds the route table,
//! leader election on a Lease, and the `Backend` implementation tying them together.
//!
//! Entry points for the rest of the controller:
//! - [`KubeArgs`] (flatten into the controller's args) and [`start`] → `Arc<KubeBackend>`;
//! - [`apps::create_app`], [`apps::get_app`], [`apps::list_apps`], [`apps::delete_app`] with
//!   [`KubeBackend::apps_api`] for the admin API;
//! - [`sync`]: SDApps as the registry's source (the sync task, and the admin API's deploy and
//!   delete in Kubernetes mode).

pub mod apps;
pub mod backend;
pub mod crd;
pub mod endpoints;
pub mod error;
pub mod examples;
pub mod lease;
pub mod objects;
pub mod reconcile;
pub mod status;
pub mod sync;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use backend::KubeBackend;
pub use crd::{SDApp, SDAppSpec, SDAppStatus};
pub use error::{Error, Result};
use objects::{ModelsVolume, ObjectConfig};

/// Which backend runs replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum BackendKind {
    /// Child processes on this machine (the embedded default).
    #[default]
    Local,
    /// One Deployment + Service per app in a Kubernetes namespace.
    Kubernetes,
}

/// Kubernetes-mode options of `sdplane controller` (flattened into the controller's args).
#[derive(Debug, Clone, clap::Args)]
pub struct KubeArgs {
    /// Where replicas run: `local` child processes or `kubernetes` Deployments.
    #[arg(long, env = "SDPLANE_BACKEND", value_enum, default_value_t = BackendKind::Local)]
    pub backend: BackendKind,
    /// Namespace of SDApps and the Deployments, Services and Lease the controller manages.
    #[arg(long, env = "SDPLANE_NAMESPACE", default_value = "default")]
    pub namespace: String,
    /// Models volume of replica pods: `hostPath:/dir/on/node` or `pvc:claim-name` (mounted read-only).
    #[arg(long, env = "SDPLANE_MODELS_VOLUME", default_value = "pvc:sdplane-models")]
    pub models_volume: ModelsVolume,
    /// Image of replica pods (normally the controller's own image); required with `--backend kubernetes`.
    #[arg(long, env = "SDPLANE_REPLICA_IMAGE")]
    pub replica_image: Option<String>,
    /// Image pull policy of replica pods.
    #[arg(long, env = "SDPLANE_REPLICA_IMAGE_PULL_POLICY", default_value = "IfNotPresent",
          value_parser = ["IfNotPresent", "Always", "Never"])]
    pub replica_image_pull_policy: String,
    /// `nvidia.com/gpu` devices per replica pod when the SDApp does not say (0: CPU only).
    #[arg(long, env = "SDPLANE_REPLICA_GPUS", default_value_t = 0)]
    pub replica_gpus: u32,
    /// CPU request of replica pods when the SDApp does not say (Kubernetes quantity).
    #[arg(long, env = "SDPLANE_REPLICA_CPU_REQUEST")]
    pub replica_cpu_request: Option<String>,
    /// Memory request of replica pods when the SDApp does not say (Kubernetes quantity).
    #[arg(long, env = "SDPLANE_REPLICA_MEMORY_REQUEST")]
    pub replica_memory_request: Option<String>,
    /// CPU limit of replica pods when the SDApp does not say (Kubernetes quantity).
    #[arg(long, env = "SDPLANE_REPLICA_CPU_LIMIT")]
    pub replica_cpu_limit: Option<String>,
    /// Memory limit of replica pods when the SDApp does not say (Kubernetes quantity).
    #[arg(long, env = "SDPLANE_REPLICA_MEMORY_LIMIT")]
    pub replica_memory_limit: Option<String>,
    /// How long a rollout may take before the app is marked Failed (`ProgressDeadlineExceeded`).
    #[arg(long, env = "SDPLANE_REPLICA_PROGRESS_DEADLINE", default_value = "10m", value_parser = humantime::parse_duration)]
    pub replica_progress_deadline: Duration,
    /// Name of the leader-election Lease shared by controller replicas.
    #[arg(long, env = "SDPLANE_LEASE_NAME", default_value = "sdplane-controller")]
    pub lease_name: String,
    /// This replica's identity in the Lease (the chart passes the pod name; default: hostname).
    #[arg(long, env = "SDPLANE_POD_NAME")]
    pub identity: Option<String>,
}

impl KubeArgs {
    /// Validate into the configuration the object builders use.
    pub fn object_config(&self) -> Result<ObjectConfig> {
        let image = self
            .replica_image
            .clone()
            .filter(|i| !i.trim().is_empty())
            .ok_or_else(|| {
                Error::Config(
                    "--replica-image (SDPLANE_REPLICA_IMAGE) is required with --backend kubernetes".into(),
                )
            })?;
        let pair = |cpu: &Option<String>, memory: &Option<String>| {
            (cpu.is_some() || memory.is_some()).then(|| crd::CpuMemory {
                cpu: cpu.clone(),
                memory: memory.clone(),
            })
        };
        let default_resources = crd::AppResources {
            requests: pair(&self.replica_cpu_request, &self.replica_memory_request),
            limits: pair(&self.replica_cpu_limit, &self.replica_memory_limit),
            gpus: (self.replica_gpus > 0).then_some(self.replica_gpus),
        };
        for q in [
            &self.replica_cpu_request,
            &self.replica_memory_request,
            &self.replica_cpu_limit,
            &self.replica_memory_limit,
        ]
        .into_iter()
        .flatten()
        {
            if !crd::is_quantity(q) {
                return Err(Error::Config(format!("`{q}` is not a Kubernetes quantity")));
            }
        }
        Ok(ObjectConfig {
            namespace: self.namespace.clone(),
            image,
            image_pull_policy: self.replica_image_pull_policy.clone(),
            models_volume: self.models_volume.clone(),
            default_resources,
            progress_deadline_s: i32::try_from(self.replica_progress_deadline.as_secs()).unwrap_or(i32::MAX),
        })
    }

    /// This replica's Lease identity: `--identity`, else the hostname (the pod name in a pod).
    pub fn identity(&self) -> String {
        self.identity
            .clone()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| format!("sdplane-controller-{}", std::process::id()))
    }
}

/// Connect to the cluster (in-cluster service account, else kubeconfig) and start the backend.
pub async fn start(args: &KubeArgs, shutdown: CancellationToken) -> Result<Arc<KubeBackend>> {
    let config = args.object_config()?;
    let client = kube::Client::try_default()
        .await
        .map_err(|e| Error::Config(e.to_string()))?;
    let identity = args.identity();
    tracing::info!(namespace = %config.namespace, %identity, "starting the kubernetes backend");
    Ok(KubeBackend::start(
        client,
        config,
        &args.lease_name,
        &identity,
        lease::LeaseTiming::default(),
        shutdown,
    ))
}
