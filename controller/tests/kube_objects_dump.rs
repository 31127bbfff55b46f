//! Writes every object the controller builds (CRD, example SDApp, Deployments, Service, Lease)
//! as YAML into one folder, for `tests/k8s/validate_objects.py` to check against the Kubernetes
//! schemas. Folder: `$SDPLANE_K8S_OBJECTS_DIR`, else `target/k8s-objects` in the workspace.

mod kube_objects_dump {
    use std::path::PathBuf;
    use std::time::Duration;

    use sdplane_controller::kube::crd::{SDApp, crd_yaml};
    use sdplane_controller::kube::examples;
    use sdplane_controller::kube::lease::held_lease;
    use sdplane_controller::kube::objects::{self, ModelsVolume};
    use sdplane_controller::kube::status::app_status;

    fn repo_root() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
    }

    fn out_dir() -> PathBuf {
        std::env::var_os("SDPLANE_K8S_OBJECTS_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo_root().join("target/k8s-objects"))
    }

    fn write(dir: &std::path::Path, name: &str, value: &impl serde::Serialize) {
        let yaml = serde_yaml::to_string(value).expect("object serialises");
        std::fs::write(dir.join(name), yaml).expect("write object");
    }

    #[test]
    fn kube_objects_are_dumped_for_schema_validation() {
        let dir = out_dir();
        std::fs::create_dir_all(&dir).expect("create dump folder");

        // The example users apply must parse as an SDApp and pass the controller's checks.
        let example_path = repo_root().join("charts/sdplane/examples/sdapp-sdxl.yaml");
        let example_text = std::fs::read_to_string(&example_path).expect("example SDApp exists");
        let mut example: SDApp = serde_yaml::from_str(&example_text).expect("example is an SDApp");
        example.spec.validate().expect("example spec is valid");
        std::fs::write(dir.join("sdapp-example.yaml"), &example_text).expect("copy example");
        std::fs::write(dir.join("crd-sdapp.yaml"), crd_yaml()).expect("write CRD");

        // As stored, with the status the controller writes.
        example.metadata = examples::sdxl_app("ml").metadata;
        example.status = Some(app_status(
            &example,
            None,
            0,
            None,
            k8s_openapi::jiff::Timestamp::now(),
        ));
        write(&dir, "sdapp-with-status.yaml", &example);

        let app = examples::sdxl_app("ml");
        let mut cfg = examples::config("ml");
        write(
            &dir,
            "deployment-gpu-pvc.yaml",
            &objects::deployment(&app, 1, &cfg).expect("deployment"),
        );
        cfg.models_volume = ModelsVolume::HostPath("/srv/models".into());
        let mut cpu_app = app.clone();
        cpu_app.spec.resources = None;
        write(
            &dir,
            "deployment-cpu-hostpath-zero.yaml",
            &objects::deployment(&cpu_app, 0, &cfg).expect("deployment"),
        );
        write(
            &dir,
            "service.yaml",
            &objects::service(&app, &cfg).expect("service"),
        );
        let mut lease = held_lease(
            "sdplane-controller",
            "sdplane-controller-7d9f-abcde",
            Duration::from_secs(15),
        );
        lease.metadata.namespace = Some("ml".into());
        write(&dir, "lease.yaml", &lease);

        for name in [
            "crd-sdapp.yaml",
            "sdapp-example.yaml",
            "sdapp-with-status.yaml",
            "deployment-gpu-pvc.yaml",
            "deployment-cpu-hostpath-zero.yaml",
            "service.yaml",
            "lease.yaml",
        ] {
            let text = std::fs::read_to_string(dir.join(name)).expect("dumped object");
            let value: serde_yaml::Value = serde_yaml::from_str(&text).expect("dump is YAML");
            assert!(
                value.get("apiVersion").is_some() && value.get("kind").is_some(),
                "{name} lacks apiVersion/kind"
            );
        }
    }
}
