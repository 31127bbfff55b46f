//! Reconcile and error-policy flows against a mock API server: each request's method, path and
//! body is checked, so these pin down exactly what the controller sends to Kubernetes.

mod kube_support;

mod kube_reconcile {
    use std::sync::Arc;
    use std::time::Duration;

    use http::{Method, StatusCode};
    use k8s_openapi::jiff::Timestamp;
    use kube::runtime::controller::Action;
    use sdplane_controller::kube::examples;
    use sdplane_controller::kube::reconcile::{Context, ScaleTargets, error_policy, reconcile};
    use sdplane_controller::kube::status::app_status;
    use serde_json::{Value, json};

    use super::kube_support::{echo, echo_with_status, mock_client, reply, run_scenario, status_error};

    const DEPLOY: &str = "/apis/apps/v1/namespaces/ml/deployments/sd-sd-xl-base-1-0";
    const SERVICE: &str = "/api/v1/namespaces/ml/services/sd-sd-xl-base-1-0";
    const STATUS: &str = "/apis/sdplane.io/v1alpha1/namespaces/ml/sdapps/sd-sd-xl-base-1-0/status";
    const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/ml/events";

    fn context(client: kube::Client) -> Arc<Context> {
        Arc::new(Context::new(
            client,
            examples::config("ml"),
            Arc::new(ScaleTargets::default()),
        ))
    }

    fn app_json() -> Value {
        serde_json::to_value(examples::sdxl_app("ml")).expect("app serialises")
    }

    fn conditions(status_patch: &Value) -> Vec<(String, String, String)> {
        status_patch["status"]["conditions"]
            .as_array()
            .expect("conditions")
            .iter()
            .map(|c| {
                let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
                (s("type"), s("status"), s("reason"))
            })
            .collect()
    }

    fn cond(t: &str, s: &str, r: &str) -> (String, String, String) {
        (t.into(), s.into(), r.into())
    }

    #[tokio::test]
    async fn new_app_gets_a_deployment_at_zero_a_service_and_scaled_to_zero_status() {
        let (client, mut api) = mock_client("ml");
        let ctx = context(client);
        let app = Arc::new(examples::sdxl_app("ml"));
        let scenario = async move {
            api.expect(
                Method::GET,
                DEPLOY,
                reply(StatusCode::NOT_FOUND, status_error(404, "NotFound")),
            )
            .await;
            let deploy = api.expect(Method::PATCH, DEPLOY, echo).await;
            assert!(deploy.query.contains("fieldManager=sdplane"), "{}", deploy.query);
            assert!(deploy.query.contains("force=true"), "{}", deploy.query);
            assert_eq!(
                deploy.content_type.as_deref(),
                Some("application/apply-patch+yaml")
            );
            assert_eq!(deploy.body["kind"], "Deployment");
            assert_eq!(deploy.body["spec"]["replicas"], 0);
            assert_eq!(deploy.body["metadata"]["ownerReferences"][0]["kind"], "SDApp");
            let svc = api.expect(Method::PATCH, SERVICE, echo).await;
            assert!(svc.query.contains("fieldManager=sdplane"), "{}", svc.query);
            assert_eq!(svc.body["spec"]["ports"][0]["port"], 9000);
            let status = api
                .expect(Method::PATCH, STATUS, reply(StatusCode::OK, app_json()))
                .await;
            assert_eq!(
                status.content_type.as_deref(),
                Some("application/merge-patch+json")
            );
            assert_eq!(
                conditions(&status.body),
                [
                    cond("Ready", "False", "ScaledToZero"),
                    cond("ScaledToZero", "True", "Idle"),
                    cond("Failed", "False", "AsExpected")
                ]
            );
            assert_eq!(status.body["status"]["replicasDesired"], 0);
            assert_eq!(status.body["status"]["observedGeneration"], 1);
            api.expect_silence(Duration::from_millis(50)).await;
        };
        let action = run_scenario(reconcile(app, ctx), scenario)
            .await
            .expect("reconcile succeeds");
        assert_eq!(action, Action::requeue(Duration::from_secs(300)));
    }

    #[tokio::test]
    async fn running_deployment_is_adopted_at_its_current_scale_and_reported_ready() {
        let (client, mut api) = mock_client("ml");
        let ctx = context(client);
        let app = Arc::new(examples::sdxl_app("ml"));
        let scenario = async move {
            let running = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "sd-sd-xl-base-1-0"},
                "spec": {"replicas": 2, "selector": {}, "template": {}}});
            api.expect(Method::GET, DEPLOY, reply(StatusCode::OK, running))
                .await;
            let deploy = api
                .expect(
                    Method::PATCH,
                    DEPLOY,
                    echo_with_status(json!({"readyReplicas": 2})),
                )
                .await;
            assert_eq!(
                deploy.body["spec"]["replicas"], 2,
                "a controller restart keeps running replicas"
            );
            api.expect(Method::PATCH, SERVICE, echo).await;
            let status = api
                .expect(Method::PATCH, STATUS, reply(StatusCode::OK, app_json()))
                .await;
            assert_eq!(
                conditions(&status.body)[0],
                cond("Ready", "True", "ReplicasReady")
            );
            assert_eq!(status.body["status"]["replicasReady"], 2);
        };
        run_scenario(reconcile(app, ctx), scenario)
            .await
            .expect("reconcile succeeds");
    }

    #[tokio::test]
    async fn autoscaler_target_wins_over_the_running_count() {
        let (client, mut api) = mock_client("ml");
        let ctx = context(client);
        ctx.targets.set("sd-sd-xl-base-1-0", 1);
        let app = Arc::new(examples::sdxl_app("ml"));
        let scenario = async move {
            api.expect(
                Method::GET,
                DEPLOY,
                reply(StatusCode::NOT_FOUND, status_error(404, "NotFound")),
            )
            .await;
            let deploy = api.expect(Method::PATCH, DEPLOY, echo).await;
            assert_eq!(deploy.body["spec"]["replicas"], 1);
            api.expect(Method::PATCH, SERVICE, echo).await;
            let status = api
                .expect(Method::PATCH, STATUS, reply(StatusCode::OK, app_json()))
                .await;
            assert_eq!(conditions(&status.body)[0], cond("Ready", "False", "Starting"));
        };
        run_scenario(reconcile(app, ctx), scenario)
            .await
            .expect("reconcile succeeds");
    }

    #[tokio::test]
    async fn unchanged_status_is_not_written_again() {
        let (client, mut api) = mock_client("ml");
        let ctx = context(client);
        let mut app = examples::sdxl_app("ml");
        app.status = Some(app_status(&app, None, 0, None, Timestamp::UNIX_EPOCH));
        let scenario = async move {
            api.expect(
                Method::GET,
                DEPLOY,
                reply(StatusCode::NOT_FOUND, status_error(404, "NotFound")),
            )
            .await;
            api.expect(Method::PATCH, DEPLOY, echo).await;
            api.expect(Method::PATCH, SERVICE, echo).await;
            api.expect_silence(Duration::from_millis(100)).await;
        };
        run_scenario(reconcile(Arc::new(app), ctx), scenario)
            .await
            .expect("reconcile succeeds");
    }

    #[tokio::test]
    async fn invalid_spec_writes_failed_status_and_creates_nothing() {
        let (client, mut api) = mock_client("ml");
        let ctx = context(client);
        let mut app = examples::sdxl_app("ml");
        app.spec.model = "../outside.safetensors".into();
        let scenario = async move {
            let event = api.expect(Method::POST, EVENTS, echo).await;
            assert_eq!(event.body["type"], "Warning");
            assert_eq!(event.body["reason"], "InvalidSpec");
            assert_eq!(event.body["regarding"]["kind"], "SDApp");
            let status = api
                .expect(Method::PATCH, STATUS, reply(StatusCode::OK, app_json()))
                .await;
            assert_eq!(conditions(&status.body)[2], cond("Failed", "True", "InvalidSpec"));
            let message = status.body["status"]["conditions"][2]["message"]
                .as_str()
                .unwrap_or_default();
            assert!(message.contains("inside the models volume"), "{message}");
            api.expect_silence(Duration::from_millis(100)).await;
        };
        let action = run_scenario(reconcile(Arc::new(app), ctx), scenario)
            .await
            .expect("reconcile succeeds");
        assert_eq!(
            action,
            Action::await_change(),
            "a bad spec waits for an edit, not a timer"
        );
    }

    #[tokio::test]
    async fn app_being_deleted_is_left_to_garbage_collection() {
        let (client, mut api) = mock_client("ml");
        let ctx = context(client);
        ctx.targets.set("sd-sd-xl-base-1-0", 1);
        let mut app = examples::sdxl_app("ml");
        app.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            Timestamp::now(),
        ));
        let scenario = async move { api.expect_silence(Duration::from_millis(100)).await };
        let action = run_scenario(reconcile(Arc::new(app), ctx.clone()), scenario)
            .await
            .expect("reconcile succeeds");
        assert_eq!(action, Action::await_change());
        assert_eq!(ctx.targets.get("sd-sd-xl-base-1-0"), None);
    }

    #[tokio::test]
    async fn api_errors_fail_the_reconcile_and_back_off_exponentially_until_a_success() {
        let (client, mut api) = mock_client("ml");
        let ctx = context(client);
        let app = Arc::new(examples::sdxl_app("ml"));
        let failing = async {
            let err = reconcile(app.clone(), ctx.clone()).await.expect_err("500 fails");
            assert_eq!(err.kind(), "kube_api");
            let waits: Vec<Action> = (0..3)
                .map(|_| error_policy(app.clone(), &err, ctx.clone()))
                .collect();
            assert_eq!(
                waits,
                [5, 10, 20].map(|s| Action::requeue(Duration::from_secs(s))),
                "backoff doubles per consecutive failure"
            );
            reconcile(app.clone(), ctx.clone())
                .await
                .expect("then the API recovers");
            assert_eq!(
                error_policy(app.clone(), &err, ctx.clone()),
                Action::requeue(Duration::from_secs(5)),
                "a success resets the backoff"
            );
        };
        let scenario = async move {
            let unavailable = status_error(500, "InternalError");
            api.expect(
                Method::GET,
                DEPLOY,
                reply(StatusCode::INTERNAL_SERVER_ERROR, unavailable),
            )
            .await;
            api.expect(
                Method::GET,
                DEPLOY,
                reply(StatusCode::NOT_FOUND, status_error(404, "NotFound")),
            )
            .await;
            api.expect(Method::PATCH, DEPLOY, echo).await;
            api.expect(Method::PATCH, SERVICE, echo).await;
            api.expect(Method::PATCH, STATUS, reply(StatusCode::OK, app_json()))
                .await;
        };
        run_scenario(failing, scenario).await;
    }
}
