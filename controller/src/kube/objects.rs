//! Pure construction of the objects the controller owns per app: one Deployment of replica pods
//! and one Service in front of them. No I/O here, so every field is covered by table tests and
//! dumped for schema validation (`tests/k8s/validate_objects.py`).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, HTTPGetAction, HostPathVolumeSource,
    PersistentVolumeClaimVolumeSource, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, SeccompProfile, SecurityContext, Service, ServicePort, ServiceSpec,
    TCPSocketAction, Toleration, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

use super::crd::{AppResources, CpuMemory, SDApp};
use super::error::{Error, Result};

/// Label every object the controller creates carries (Kubernetes recommended labels).
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY: &str = "sdplane";
/// Label naming the app an object belongs to.
pub const APP_LABEL: &str = "sdplane.io/app";
/// Label the EndpointSlice controller puts on slices, naming their Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Port the replica container listens on and the Service exposes.
pub const REPLICA_PORT: u16 = 9000;
/// Where the models volume is mounted in replica pods.
pub const MODELS_MOUNT: &str = "/models";
/// Extended resource name of the NVIDIA device plugin.
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";
/// Field manager of every server-side apply the controller makes.
pub const FIELD_MANAGER: &str = "sdplane";
/// The replica's health path: 200 when ready, 503 while loading (the readiness probe).
pub const HEALTH_PATH: &str = "/v1/health";
/// UID the image's non-root user has (see `Dockerfile`).
pub const RUN_AS_USER: i64 = 10001;

/// Where replica pods find model files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelsVolume {
    /// A directory on every node (single-node clusters, pre-synced node disks).
    HostPath(String),
    /// A PersistentVolumeClaim (ReadOnlyMany or ReadWriteMany for more than one node).
    Pvc(String),
}

impl std::str::FromStr for ModelsVolume {
    type Err = Error;

    /// `hostPath:/srv/models` or `pvc:claim-name`.
    fn from_str(s: &str) -> Result<Self> {
        match s.split_once(':') {
            Some(("hostPath" | "hostpath", path)) if path.starts_with('/') => Ok(Self::HostPath(path.into())),
            Some(("pvc", claim)) if !claim.is_empty() => Ok(Self::Pvc(claim.into())),
            _ => Err(Error::InvalidSpec(format!(
                "models volume `{s}` must be `hostPath:/absolute/dir` or `pvc:claim-name`"
            ))),
        }
    }
}

/// Cluster-wide settings the per-app objects are built from (from `KubeArgs`).
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectConfig {
    /// Namespace of SDApps and their objects.
    pub namespace: String,
    /// Replica image when the SDApp names none (the controller's own image).
    pub image: String,
    /// `IfNotPresent`, `Always` or `Never`.
    pub image_pull_policy: String,
    pub models_volume: ModelsVolume,
    /// Resources of replica pods when the SDApp sets none.
    pub default_resources: AppResources,
    /// Seconds before the Deployment reports `ProgressDeadlineExceeded` (the app's Failed state).
    pub progress_deadline_s: i32,
}

/// Labels that select one app's pods (also the Deployment's immutable selector).
pub fn selector_labels(app: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
        (APP_LABEL.to_string(), app.to_string()),
    ])
}

/// Labels of every object of one app: the selector plus descriptive ones.
pub fn object_labels(app: &str) -> BTreeMap<String, String> {
    let mut labels = selector_labels(app);
    labels.insert("app.kubernetes.io/name".into(), "sdplane-replica".into());
    labels.insert("app.kubernetes.io/component".into(), "replica".into());
    labels.insert("app.kubernetes.io/instance".into(), app.to_string());
    labels
}

/// Metadata shared by the Deployment and the Service: name, namespace, labels, and an owner
/// reference to the SDApp so that deleting the app garbage-collects its objects.
fn child_meta(app: &SDApp, cfg: &ObjectConfig) -> Result<ObjectMeta> {
    let name = app.name_any();
    let owner = app
        .controller_owner_ref(&())
        .ok_or(Error::MissingField("SDApp metadata.uid"))?;
    Ok(ObjectMeta {
        name: Some(name.clone()),
        namespace: Some(cfg.namespace.clone()),
        labels: Some(object_labels(&name)),
        owner_references: Some(vec![owner]),
        ..ObjectMeta::default()
    })
}

/// The replica Deployment of `app` with `replicas` pods (0 when scaled to zero).
pub fn deployment(app: &SDApp, replicas: u32, cfg: &ObjectConfig) -> Result<Deployment> {
    app.spec.validate()?;
    let name = app.name_any();
    let resources = merged_resources(app.spec.resources.as_ref(), &cfg.default_resources);
    let gpus = resources.gpus.unwrap_or(0);
    let image = app.spec.image.clone().unwrap_or_else(|| cfg.image.clone());
    let model_path = format!("{MODELS_MOUNT}/{}", app.spec.model);
    let container = Container {
        name: "replica".into(),
        image: Some(image),
        image_pull_policy: Some(cfg.image_pull_policy.clone()),
        args: Some(vec![
            "replica".into(),
            "--model".into(),
            model_path,
            "--listen".into(),
            format!("0.0.0.0:{REPLICA_PORT}"),
        ]),
        ports: Some(vec![ContainerPort {
            name: Some("http".into()),
            container_port: i32::from(REPLICA_PORT),
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        resources: Some(resource_requirements(&resources)),
        // The replica answers 200 on its health path only once weights are loaded, so pods join
        // the Service (and the route table) exactly when they can serve.
        readiness_probe: Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some(HEALTH_PATH.into()),
                port: IntOrString::String("http".into()),
                ..HTTPGetAction::default()
            }),
            period_seconds: Some(2),
            timeout_seconds: Some(2),
            failure_threshold: Some(2),
            ..Probe::default()
        }),
        // Liveness is a TCP check, not the health path: that answers 503 for the whole load,
        // which takes minutes for SDXL from a network volume, and must not restart the pod. The
        // replica listens at once, so an accepting socket means the process is alive.
        liveness_probe: Some(Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::String("http".into()),
                ..TCPSocketAction::default()
            }),
            initial_delay_seconds: Some(60),
            period_seconds: Some(20),
            timeout_seconds: Some(5),
            failure_threshold: Some(3),
            ..Probe::default()
        }),
        volume_mounts: Some(vec![
            VolumeMount {
                name: "models".into(),
                mount_path: MODELS_MOUNT.into(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
            // The root filesystem is read-only; scratch space for anything that needs a temp file.
            VolumeMount {
                name: "tmp".into(),
                mount_path: "/tmp".into(),
                ..VolumeMount::default()
            },
        ]),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    };
    let pod = PodSpec {
        containers: vec![container],
        volumes: Some(vec![
            models_volume(&cfg.models_volume),
            Volume {
                name: "tmp".into(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Volume::default()
            },
        ]),
        // Replicas never talk to the API server: no token in the pod (least privilege).
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(RUN_AS_USER),
            run_as_group: Some(RUN_AS_USER),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..SeccompProfile::default()
            }),
            ..PodSecurityContext::default()
        }),
        // GPU nodes are commonly tainted with the device plugin's resource name.
        tolerations: (gpus > 0).then(|| {
            vec![Toleration {
                key: Some(GPU_RESOURCE.into()),
                operator: Some("Exists".into()),
                effect: Some("NoSchedule".into()),
                ..Toleration::default()
            }]
        }),
        ..PodSpec::default()
    };
    Ok(Deployment {
        metadata: child_meta(app, cfg)?,
        spec: DeploymentSpec {
            replicas: Some(i32::try_from(replicas).unwrap_or(i32::MAX)),
            selector: LabelSelector {
                match_labels: Some(selector_labels(&name)),
                ..LabelSelector::default()
            },
            progress_deadline_seconds: Some(cfg.progress_deadline_s),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(object_labels(&name)),
                    annotations: Some(BTreeMap::from([(
                        "sdplane.io/model".into(),
                        app.spec.model.clone(),
                    )])),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod),
            },
            ..DeploymentSpec::default()
        },
        status: None,
    })
}

/// The Service in front of `app`'s replicas; its EndpointSlices feed the route table.
pub fn service(app: &SDApp, cfg: &ObjectConfig) -> Result<Service> {
    Ok(Service {
        metadata: child_meta(app, cfg)?,
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector_labels(&app.name_any())),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: i32::from(REPLICA_PORT),
                target_port: Some(IntOrString::String("http".into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    })
}

/// The app's resources, each field falling back to the controller default.
pub fn merged_resources(app: Option<&AppResources>, default: &AppResources) -> AppResources {
    let pair = |a: Option<&CpuMemory>, d: Option<&CpuMemory>| -> Option<CpuMemory> {
        let cpu = a
            .and_then(|p| p.cpu.clone())
            .or_else(|| d.and_then(|p| p.cpu.clone()));
        let memory = a
            .and_then(|p| p.memory.clone())
            .or_else(|| d.and_then(|p| p.memory.clone()));
        (cpu.is_some() || memory.is_some()).then_some(CpuMemory { cpu, memory })
    };
    AppResources {
        requests: pair(app.and_then(|a| a.requests.as_ref()), default.requests.as_ref()),
        limits: pair(app.and_then(|a| a.limits.as_ref()), default.limits.as_ref()),
        gpus: app.and_then(|a| a.gpus).or(default.gpus),
    }
}

/// Container resources; GPUs go in limits only (extended resources default requests to limits).
fn resource_requirements(r: &AppResources) -> ResourceRequirements {
    let to_map = |p: Option<&CpuMemory>| {
        let mut map = BTreeMap::new();
        if let Some(p) = p {
            if let Some(cpu) = &p.cpu {
                map.insert("cpu".to_string(), Quantity(cpu.clone()));
            }
            if let Some(memory) = &p.memory {
                map.insert("memory".to_string(), Quantity(memory.clone()));
            }
        }
        map
    };
    let requests = to_map(r.requests.as_ref());
    let mut limits = to_map(r.limits.as_ref());
    if let Some(gpus) = r.gpus.filter(|&g| g > 0) {
        limits.insert(GPU_RESOURCE.to_string(), Quantity(gpus.to_string()));
    }
    ResourceRequirements {
        requests: (!requests.is_empty()).then_some(requests),
        limits: (!limits.is_empty()).then_some(limits),
        ..ResourceRequirements::default()
    }
}

/// The read-only models volume.
fn models_volume(v: &ModelsVolume) -> Volume {
    match v {
        ModelsVolume::HostPath(path) => Volume {
            name: "models".into(),
            host_path: Some(HostPathVolumeSource {
                path: path.clone(),
                type_: Some("Directory".into()),
            }),
            ..Volume::default()
        },
        ModelsVolume::Pvc(claim) => Volume {
            name: "models".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim.clone(),
                read_only: Some(true),
            }),
            ..Volume::default()
        },
    }
}

#[cfg(test)]
#[path = "objects_tests.rs"]
mod tests;
