//! The committed CRD YAML (`deploy/crd/sdapp.yaml` and the chart's copy) must be what the Rust
//! types render. Regenerate with `SDPLANE_UPDATE_CRD=1 cargo test -p sdplane-controller crd`.

mod kube_crd {
    use std::path::PathBuf;

    use sdplane_controller::kube::crd::crd_yaml;

    fn repo_root() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
    }

    #[test]
    fn committed_crd_yaml_matches_the_rust_types() {
        let want = crd_yaml();
        let update = std::env::var_os("SDPLANE_UPDATE_CRD").is_some_and(|v| v == "1");
        let mut stale = Vec::new();
        for rel in ["deploy/crd/sdapp.yaml", "charts/sdplane/crds/sdapp.yaml"] {
            let path = repo_root().join(rel);
            if update {
                std::fs::create_dir_all(path.parent().expect("has a parent")).expect("create CRD folder");
                std::fs::write(&path, &want).expect("write CRD");
                continue;
            }
            if std::fs::read_to_string(&path).ok().as_deref() != Some(want.as_str()) {
                stale.push(rel);
            }
        }
        assert!(
            stale.is_empty(),
            "stale CRD YAML: {stale:?} differ from controller/src/kube/crd.rs.\n\
             Regenerate with: SDPLANE_UPDATE_CRD=1 cargo test -p sdplane-controller crd"
        );
    }

    #[test]
    fn crd_yaml_parses_back_as_a_crd() {
        let crd: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition =
            serde_yaml::from_str(&crd_yaml()).expect("valid YAML CRD");
        assert_eq!(crd.metadata.name.as_deref(), Some("sdapps.sdplane.io"));
    }
}
