//! Table tests for the per-app Deployment and Service.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::super::crd::{AppResources, CpuMemory};
use super::super::examples;
use super::*;

fn container(d: &Deployment) -> &Container {
    &d.spec.template.spec.as_ref().expect("pod spec").containers[0]
}

#[test]
fn deployment_runs_the_replica_role_on_the_mounted_model() {
    let d = deployment(&examples::sdxl_app("ml"), 0, &examples::config("ml")).expect("valid app");
    let c = container(&d);
    assert_eq!(
        c.args.as_deref().expect("args"),
        [
            "replica",
            "--model",
            "/models/sd_xl_base_1.0.safetensors",
            "--listen",
            "0.0.0.0:9000"
        ]
    );
    assert_eq!(c.image.as_deref(), Some("ghcr.io/sdplane/sdplane:0.1.0"));
    let mount = &c.volume_mounts.as_ref().expect("mounts")[0];
    assert_eq!(
        (mount.mount_path.as_str(), mount.read_only),
        ("/models", Some(true))
    );
    assert_eq!(d.metadata.namespace.as_deref(), Some("ml"));
}

#[test]
fn replicas_field_carries_the_scale_including_zero() {
    let (app, cfg) = (examples::sdxl_app("ml"), examples::config("ml"));
    for n in [0, 1, 3] {
        let d = deployment(&app, n, &cfg).expect("valid app");
        assert_eq!(d.spec.replicas, Some(n as i32));
    }
}

#[test]
fn objects_carry_managed_by_and_app_labels_and_an_owner_reference() {
    let (app, cfg) = (examples::sdxl_app("ml"), examples::config("ml"));
    let d = deployment(&app, 1, &cfg).expect("valid app");
    let s = service(&app, &cfg).expect("valid app");
    for meta in [&d.metadata, &s.metadata] {
        let labels = meta.labels.as_ref().expect("labels");
        assert_eq!(labels[MANAGED_BY_LABEL], "sdplane");
        assert_eq!(labels[APP_LABEL], "sd-sd-xl-base-1-0");
        let owner = &meta.owner_references.as_ref().expect("owner")[0];
        assert_eq!(
            (owner.kind.as_str(), owner.api_version.as_str()),
            ("SDApp", "sdplane.io/v1alpha1")
        );
        assert_eq!(
            (owner.uid.as_str(), owner.controller),
            (examples::EXAMPLE_UID, Some(true))
        );
    }
    let selector = d.spec.selector.match_labels.clone().expect("selector");
    assert_eq!(Some(&selector), s.spec.as_ref().and_then(|s| s.selector.as_ref()));
    assert_eq!(selector, selector_labels("sd-sd-xl-base-1-0"));
}

#[test]
fn app_without_uid_cannot_own_objects() {
    let mut app = examples::sdxl_app("ml");
    app.metadata.uid = None;
    let err = deployment(&app, 1, &examples::config("ml")).expect_err("no uid");
    assert_eq!(err.kind(), "missing_field");
}

#[test]
fn readiness_probes_the_health_path_and_liveness_waits_for_the_load() {
    let d = deployment(&examples::sdxl_app("ml"), 1, &examples::config("ml")).expect("valid app");
    let c = container(&d);
    let ready = c
        .readiness_probe
        .as_ref()
        .and_then(|p| p.http_get.as_ref())
        .expect("http readiness");
    assert_eq!(ready.path.as_deref(), Some("/v1/health"));
    assert_eq!(ready.port, IntOrString::String("http".into()));
    let live = c.liveness_probe.as_ref().expect("liveness");
    assert!(live.tcp_socket.is_some());
    assert!(live.initial_delay_seconds.unwrap_or(0) >= 60);
}

#[test]
fn resources_merge_app_values_over_controller_defaults() {
    struct Case {
        app: Option<AppResources>,
        default_gpus: Option<u32>,
        requests: &'static [(&'static str, &'static str)],
        limits: &'static [(&'static str, &'static str)],
        tolerates_gpu_taint: bool,
    }
    let cases = [
        Case {
            app: None,
            default_gpus: None,
            requests: &[("cpu", "1"), ("memory", "4Gi")],
            limits: &[],
            tolerates_gpu_taint: false,
        },
        Case {
            app: examples::sdxl_app("ml").spec.resources,
            default_gpus: None,
            requests: &[("cpu", "2"), ("memory", "12Gi")],
            limits: &[("memory", "16Gi"), ("nvidia.com/gpu", "1")],
            tolerates_gpu_taint: true,
        },
        Case {
            app: None,
            default_gpus: Some(2),
            requests: &[("cpu", "1"), ("memory", "4Gi")],
            limits: &[("nvidia.com/gpu", "2")],
            tolerates_gpu_taint: true,
        },
        Case {
            app: Some(AppResources {
                requests: Some(CpuMemory {
                    cpu: Some("500m".into()),
                    memory: None,
                }),
                limits: None,
                gpus: Some(0),
            }),
            default_gpus: Some(1),
            requests: &[("cpu", "500m"), ("memory", "4Gi")],
            limits: &[],
            tolerates_gpu_taint: false,
        },
    ];
    for (i, case) in cases.into_iter().enumerate() {
        let mut app = examples::sdxl_app("ml");
        app.spec.resources = case.app;
        let mut cfg = examples::config("ml");
        cfg.default_resources.gpus = case.default_gpus;
        let d = deployment(&app, 1, &cfg).expect("valid app");
        let r = container(&d).resources.clone().expect("resources");
        let as_map = |pairs: &[(&str, &str)]| {
            let m: BTreeMap<String, Quantity> = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
                .collect();
            (!m.is_empty()).then_some(m)
        };
        assert_eq!(r.requests, as_map(case.requests), "case {i} requests");
        assert_eq!(r.limits, as_map(case.limits), "case {i} limits");
        let tolerations = d.spec.template.spec.and_then(|p| p.tolerations);
        assert_eq!(
            tolerations.is_some(),
            case.tolerates_gpu_taint,
            "case {i} tolerations"
        );
    }
}

#[test]
fn models_volume_is_a_host_path_or_a_read_only_claim() {
    let app = examples::sdxl_app("ml");
    let mut cfg = examples::config("ml");
    for (spec, host, claim) in [
        ("hostPath:/srv/models", Some("/srv/models"), None),
        ("pvc:models", None, Some("models")),
    ] {
        cfg.models_volume = spec.parse().expect(spec);
        let d = deployment(&app, 1, &cfg).expect("valid app");
        let vol = d
            .spec
            .template
            .spec
            .and_then(|p| p.volumes)
            .expect("volumes")
            .remove(0);
        assert_eq!(vol.host_path.map(|h| h.path).as_deref(), host);
        let pvc = vol.persistent_volume_claim;
        assert_eq!(pvc.as_ref().map(|c| c.claim_name.as_str()), claim);
        if let Some(pvc) = pvc {
            assert_eq!(pvc.read_only, Some(true));
        }
    }
    for bad in ["", "hostPath:relative", "pvc:", "nfs:server:/x"] {
        assert!(bad.parse::<ModelsVolume>().is_err(), "{bad}");
    }
}

#[test]
fn image_override_replaces_the_controller_image() {
    let mut app = examples::sdxl_app("ml");
    app.spec.image = Some("registry.local/sdplane:cuda".into());
    let d = deployment(&app, 1, &examples::config("ml")).expect("valid app");
    assert_eq!(
        container(&d).image.as_deref(),
        Some("registry.local/sdplane:cuda")
    );
}

#[test]
fn invalid_spec_builds_no_deployment() {
    let mut app = examples::sdxl_app("ml");
    app.spec.model = "../../etc/shadow".into();
    assert_eq!(
        deployment(&app, 1, &examples::config("ml"))
            .expect_err("escape")
            .kind(),
        "invalid_spec"
    );
}

#[test]
fn service_exposes_port_9000_by_name() {
    let s = service(&examples::sdxl_app("ml"), &examples::config("ml")).expect("valid app");
    let port = &s.spec.and_then(|s| s.ports).expect("ports")[0];
    assert_eq!(
        (port.port, port.target_port.clone()),
        (9000, Some(IntOrString::String("http".into())))
    );
}
