//! Example objects: an `SDApp` as a user would write it and a typical cluster configuration.
//! Tests build from them, and the object dump validated against the Kubernetes schemas
//! (`tests/k8s/validate_objects.py`) is rendered from them, so what is documented is what is checked.

use kube::api::ObjectMeta;

use super::crd::{AppResources, CpuMemory, SDApp, SDAppSpec};
use super::objects::{ModelsVolume, ObjectConfig};

/// UID the examples give their SDApp (the API server assigns a real one).
pub const EXAMPLE_UID: &str = "5f0c4a4e-2d7e-4a59-9d0b-1f7f0d3c9a11";

/// An SDApp for `sd_xl_base_1.0.safetensors` with one GPU, as stored by the API server.
pub fn sdxl_app(namespace: &str) -> SDApp {
    let mut app = SDApp::new(
        "sd-sd-xl-base-1-0",
        SDAppSpec {
            model: "sd_xl_base_1.0.safetensors".into(),
            min_replicas: 0,
            max_replicas: 2,
            idle_timeout_seconds: Some(300),
            target_concurrency: Some(2),
            resources: Some(AppResources {
                requests: Some(CpuMemory {
                    cpu: Some("2".into()),
                    memory: Some("12Gi".into()),
                }),
                limits: Some(CpuMemory {
                    cpu: None,
                    memory: Some("16Gi".into()),
                }),
                gpus: Some(1),
            }),
            image: None,
        },
    );
    app.metadata = ObjectMeta {
        name: Some("sd-sd-xl-base-1-0".into()),
        namespace: Some(namespace.into()),
        uid: Some(EXAMPLE_UID.into()),
        generation: Some(1),
        ..ObjectMeta::default()
    };
    app
}

/// A controller configuration with models on a PVC and CPU-only defaults.
pub fn config(namespace: &str) -> ObjectConfig {
    ObjectConfig {
        namespace: namespace.into(),
        image: "ghcr.io/sdplane/sdplane:0.1.0".into(),
        image_pull_policy: "IfNotPresent".into(),
        models_volume: ModelsVolume::Pvc("sdplane-models".into()),
        default_resources: AppResources {
            requests: Some(CpuMemory {
                cpu: Some("1".into()),
                memory: Some("4Gi".into()),
            }),
            limits: None,
            gpus: None,
        },
        progress_deadline_s: 600,
    }
}
