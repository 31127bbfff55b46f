//! The Kubernetes `Backend` against a mock API server: scaling is a server-side apply of the
//! Deployment's `spec.replicas` (leader only), observation comes from EndpointSlice and SDApp
//! reflector stores, removal only forgets the scale target (the SDApp is the source of truth).

mod kube_support;

mod kube_backend {
    use std::path::PathBuf;
    use std::sync::Arc;
    use std::time::Duration;

    use http::{Method, StatusCode};
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use kube::runtime::reflector::{self, Store};
    use kube::runtime::watcher;
    use sdplane_controller::backend::{AppDeployment, Backend, ReplicaPhase};
    use sdplane_controller::kube::reconcile::{Context, ScaleTargets};
    use sdplane_controller::kube::{KubeBackend, SDApp, examples};
    use serde_json::json;
    use tokio::sync::watch;

    use super::kube_support::{ApiServer, echo, mock_client, reply, run_scenario, status_error};

    const SDAPP: &str = "/apis/sdplane.io/v1alpha1/namespaces/ml/sdapps/sd-sd-xl-base-1-0";
    const DEPLOY: &str = "/apis/apps/v1/namespaces/ml/deployments/sd-sd-xl-base-1-0";
    const SERVICE: &str = "/api/v1/namespaces/ml/services/sd-sd-xl-base-1-0";
    const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/ml/events";

    fn deployment() -> AppDeployment {
        AppDeployment {
            name: "sd-sd-xl-base-1-0".into(),
            model: "sd_xl_base_1.0.safetensors".into(),
            model_path: PathBuf::from("/models/sd_xl_base_1.0.safetensors"),
            generation: 1,
            parameters: 2_567_463_684,
        }
    }

    /// A backend over stores filled with `slices` and `apps`, leading or not.
    fn backend(leading: bool, slices: Vec<EndpointSlice>, apps: Vec<SDApp>) -> (KubeBackend, ApiServer) {
        let (client, api) = mock_client("ml");
        let ctx = Arc::new(Context::new(
            client,
            examples::config("ml"),
            Arc::new(ScaleTargets::default()),
        ));
        let (_, leading) = watch::channel(leading);
        (KubeBackend::new(ctx, leading, filled(slices), filled(apps)), api)
    }

    fn filled<K>(objects: Vec<K>) -> Store<K>
    where
        K: kube::Resource<DynamicType = ()> + Clone + 'static,
    {
        let (reader, mut writer) = reflector::store();
        writer.apply_watcher_event(&watcher::Event::Init);
        for object in objects {
            writer.apply_watcher_event(&watcher::Event::InitApply(object));
        }
        writer.apply_watcher_event(&watcher::Event::InitDone);
        reader
    }

    fn slice(json: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(json).expect("valid EndpointSlice")
    }

    #[tokio::test]
    async fn leader_scales_by_applying_the_deployment_replicas() {
        let (backend, mut api) = backend(true, vec![], vec![]);
        let app_json = serde_json::to_value(examples::sdxl_app("ml")).expect("serialises");
        let scenario = async move {
            api.expect(Method::GET, SDAPP, reply(StatusCode::OK, app_json))
                .await;
            let d = api.expect(Method::PATCH, DEPLOY, echo).await;
            assert!(
                d.query.contains("fieldManager=sdplane") && d.query.contains("force=true"),
                "{}",
                d.query
            );
            assert_eq!(
                d.body["spec"]["replicas"], 2,
                "3 wanted, clamped to maxReplicas 2"
            );
            api.expect(Method::PATCH, SERVICE, echo).await;
            let event = api.expect(Method::POST, EVENTS, echo).await;
            assert_eq!(event.body["type"], "Normal");
            assert_eq!(event.body["reason"], "Scaled");
            api.expect_silence(Duration::from_millis(50)).await;
        };
        run_scenario(backend.ensure(&deployment(), 3), scenario)
            .await
            .expect("scale succeeds");
        assert_eq!(backend.name(), "kubernetes");
    }

    #[tokio::test]
    async fn a_repeated_wish_costs_no_api_call_and_cached_sdapps_need_no_read() {
        let (backend, mut api) = backend(true, vec![], vec![examples::sdxl_app("ml")]);
        let scenario = async move {
            // The SDApp comes from the reflector store: no GET.
            let d = api.expect(Method::PATCH, DEPLOY, echo).await;
            assert_eq!(d.body["spec"]["replicas"], 1);
            api.expect(Method::PATCH, SERVICE, echo).await;
            api.expect(Method::POST, EVENTS, echo).await;
            // The autoscaler repeats "1" every pass: nothing more is sent.
            api.expect_silence(Duration::from_millis(100)).await;
        };
        let calls = async {
            for _ in 0..5 {
                backend.ensure(&deployment(), 1).await.expect("scale succeeds");
            }
        };
        run_scenario(calls, scenario).await;
    }

    #[tokio::test]
    async fn scaling_to_zero_writes_zero_replicas() {
        let (backend, mut api) = backend(true, vec![], vec![]);
        let app_json = serde_json::to_value(examples::sdxl_app("ml")).expect("serialises");
        let scenario = async move {
            api.expect(Method::GET, SDAPP, reply(StatusCode::OK, app_json))
                .await;
            let d = api.expect(Method::PATCH, DEPLOY, echo).await;
            assert_eq!(d.body["spec"]["replicas"], 0);
            api.expect(Method::PATCH, SERVICE, echo).await;
            api.expect(Method::POST, EVENTS, echo).await;
        };
        run_scenario(backend.ensure(&deployment(), 0), scenario)
            .await
            .expect("scale succeeds");
    }

    #[tokio::test]
    async fn follower_refuses_to_scale_and_sends_nothing() {
        let (backend, mut api) = backend(false, vec![], vec![]);
        let scenario = async move { api.expect_silence(Duration::from_millis(100)).await };
        let err = run_scenario(backend.ensure(&deployment(), 1), scenario)
            .await
            .expect_err("not the leader");
        assert_eq!(err.kind(), "orchestrator");
        assert!(err.to_string().contains("not_leader"), "{err}");
    }

    #[tokio::test]
    async fn scaling_an_app_without_sdapp_is_a_clear_error() {
        let (backend, mut api) = backend(true, vec![], vec![]);
        let scenario = async move {
            api.expect(
                Method::GET,
                SDAPP,
                reply(StatusCode::NOT_FOUND, status_error(404, "NotFound")),
            )
            .await;
            api.expect_silence(Duration::from_millis(50)).await;
        };
        let err = run_scenario(backend.ensure(&deployment(), 1), scenario)
            .await
            .expect_err("no SDApp");
        let message = err.to_string();
        assert!(
            message.contains("app `sd-sd-xl-base-1-0` has no SDApp object"),
            "{message}"
        );
        assert!(message.contains("no_sdapp"), "{message}");
    }

    #[tokio::test]
    async fn observe_reports_replicas_from_endpoint_slices_and_failures_from_status() {
        let ready = slice(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"name": "sd-sd-xl-base-1-0-abcde", "namespace": "ml",
                         "labels": {"kubernetes.io/service-name": "sd-sd-xl-base-1-0", "sdplane.io/app": "sd-sd-xl-base-1-0"}},
            "ports": [{"name": "http", "port": 9000, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["10.1.0.7"], "conditions": {"ready": true}, "targetRef": {"kind": "Pod", "name": "p-1"}},
                {"addresses": ["10.1.0.8"], "conditions": {"ready": false}, "targetRef": {"kind": "Pod", "name": "p-2"}}
            ]
        }));
        let mut failing = examples::sdxl_app("ml");
        failing.metadata.name = Some("sd-broken".into());
        failing.status = Some(serde_json::from_value(json!({"conditions": [{
            "type": "Failed", "status": "True", "reason": "ProgressDeadlineExceeded", "message": "no pod became ready",
            "lastTransitionTime": "2026-01-01T00:00:00Z"}]})).expect("valid status"));
        let (backend, mut api) = backend(false, vec![ready], vec![examples::sdxl_app("ml"), failing]);
        let scenario = async move { api.expect_silence(Duration::from_millis(50)).await };
        let obs = run_scenario(backend.observe(), scenario)
            .await
            .expect("observe succeeds");
        let sdxl = &obs["sd-sd-xl-base-1-0"];
        let got: Vec<_> = sdxl
            .replicas
            .iter()
            .map(|r| (r.id.as_str(), r.endpoint.as_deref(), r.phase))
            .collect();
        assert_eq!(
            got,
            [
                ("p-1", Some("http://10.1.0.7:9000"), ReplicaPhase::Ready),
                ("p-2", Some("http://10.1.0.8:9000"), ReplicaPhase::Loading)
            ]
        );
        assert_eq!(sdxl.failure, None);
        assert_eq!(
            obs["sd-broken"].failure.as_deref(),
            Some("ProgressDeadlineExceeded: no pod became ready")
        );
        // A pod keeps its first-seen time across observations.
        let again = backend.observe().await.expect("observe succeeds");
        assert_eq!(
            again["sd-sd-xl-base-1-0"].replicas[0].started_at,
            sdxl.replicas[0].started_at
        );
    }

    #[tokio::test]
    async fn remove_forgets_the_scale_target_and_never_deletes_the_sdapp() {
        let (backend, mut api) = backend(true, vec![], vec![examples::sdxl_app("ml")]);
        let scenario = async move {
            for series in [None, Some(2)] {
                let d = api.expect(Method::PATCH, DEPLOY, echo).await;
                assert_eq!(d.body["spec"]["replicas"], 1);
                api.expect(Method::PATCH, SERVICE, echo).await;
                match series {
                    None => drop(api.expect(Method::POST, EVENTS, echo).await),
                    // The same event again: the recorder bumps the first one's series.
                    Some(count) => {
                        let e = api.expect_under(Method::PATCH, EVENTS, echo).await;
                        assert_eq!(e.body["series"]["count"], count);
                    }
                }
            }
            // No DELETE of the SDApp: it is the source of truth in Kubernetes mode.
            api.expect_silence(Duration::from_millis(100)).await;
        };
        let calls = async {
            backend.ensure(&deployment(), 1).await.expect("scale");
            backend.remove("sd-sd-xl-base-1-0").await.expect("remove");
            // The target was forgotten, so the same wish is applied again.
            backend.ensure(&deployment(), 1).await.expect("scale again");
        };
        run_scenario(calls, scenario).await;
    }
}
