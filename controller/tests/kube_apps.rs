//! The admin API's view of SDApps (create, get, list, delete) against a mock API server.

mod kube_support;

mod kube_apps {
    use std::time::Duration;

    use http::{Method, StatusCode};
    use kube::Api;
    use sdplane_controller::kube::apps::{app_spec, create_app, delete_app, get_app, list_apps, sdapp_spec};
    use sdplane_controller::kube::{SDApp, examples};
    use sdplane_wire::admin::AppSpec;
    use serde_json::json;

    use super::kube_support::{echo, mock_client, reply, run_scenario, status_error};

    const SDAPPS: &str = "/apis/sdplane.io/v1alpha1/namespaces/ml/sdapps";

    fn spec(model: &str) -> AppSpec {
        AppSpec {
            model: model.into(),
            min_replicas: 0,
            max_replicas: 2,
            idle_timeout_s: Some(120),
            target_concurrency: None,
        }
    }

    #[tokio::test]
    async fn create_posts_an_sdapp_named_by_the_app_name_rule() {
        let (client, mut api) = mock_client("ml");
        let apps: Api<SDApp> = Api::namespaced(client, "ml");
        let scenario = async move {
            let seen = api.expect(Method::POST, SDAPPS, echo).await;
            assert_eq!(seen.body["apiVersion"], "sdplane.io/v1alpha1");
            assert_eq!(seen.body["kind"], "SDApp");
            assert_eq!(seen.body["metadata"]["name"], "sd-sd-xl-base-1-0");
            assert_eq!(
                seen.body["metadata"]["labels"]["app.kubernetes.io/managed-by"],
                "sdplane"
            );
            assert_eq!(
                seen.body["spec"],
                json!({"model": "sd_xl_base_1.0.safetensors", "minReplicas": 0, "maxReplicas": 2, "idleTimeoutSeconds": 120})
            );
        };
        let created = run_scenario(create_app(&apps, &spec("sd_xl_base_1.0.safetensors")), scenario)
            .await
            .expect("created");
        assert_eq!(app_spec(&created.spec), spec("sd_xl_base_1.0.safetensors"));
    }

    #[tokio::test]
    async fn creating_an_existing_app_says_so() {
        let (client, mut api) = mock_client("ml");
        let apps: Api<SDApp> = Api::namespaced(client, "ml");
        let scenario = async move {
            api.expect(
                Method::POST,
                SDAPPS,
                reply(StatusCode::CONFLICT, status_error(409, "AlreadyExists")),
            )
            .await;
        };
        let err = run_scenario(create_app(&apps, &spec("a.safetensors")), scenario)
            .await
            .expect_err("exists");
        assert_eq!(err.kind(), "app_exists");
    }

    #[tokio::test]
    async fn invalid_specs_and_names_are_refused_before_any_request() {
        let (client, mut api) = mock_client("ml");
        let apps: Api<SDApp> = Api::namespaced(client, "ml");
        let scenario = async move { api.expect_silence(Duration::from_millis(100)).await };
        let calls = async {
            let mut bad_bounds = spec("a.safetensors");
            bad_bounds.min_replicas = 3;
            [
                create_app(&apps, &spec("../etc/x.safetensors"))
                    .await
                    .expect_err("escape")
                    .kind(),
                create_app(&apps, &bad_bounds)
                    .await
                    .expect_err("min > max")
                    .kind(),
                create_app(&apps, &spec("!!!.safetensors"))
                    .await
                    .expect_err("no name")
                    .kind(),
                delete_app(&apps, "Not_A_Name")
                    .await
                    .expect_err("bad name")
                    .kind(),
                get_app(&apps, "sd-x/../y").await.expect_err("bad name").kind(),
            ]
        };
        let kinds = run_scenario(calls, scenario).await;
        assert_eq!(
            kinds,
            [
                "invalid_spec",
                "invalid_spec",
                "invalid_app_name",
                "invalid_app_name",
                "invalid_app_name"
            ]
        );
    }

    #[tokio::test]
    async fn get_list_and_delete_map_api_answers() {
        let (client, mut api) = mock_client("ml");
        let apps: Api<SDApp> = Api::namespaced(client, "ml");
        let mut b = examples::sdxl_app("ml");
        b.metadata.name = Some("sd-b".into());
        let mut a = b.clone();
        a.metadata.name = Some("sd-a".into());
        let list = json!({"apiVersion": "sdplane.io/v1alpha1", "kind": "SDAppList", "metadata": {},
                          "items": [serde_json::to_value(&b).expect("json"), serde_json::to_value(&a).expect("json")]});
        let scenario = async move {
            api.expect(
                Method::GET,
                &format!("{SDAPPS}/sd-gone"),
                reply(StatusCode::NOT_FOUND, status_error(404, "NotFound")),
            )
            .await;
            api.expect(Method::GET, SDAPPS, reply(StatusCode::OK, list)).await;
            api.expect(
                Method::DELETE,
                &format!("{SDAPPS}/sd-gone"),
                reply(StatusCode::NOT_FOUND, status_error(404, "NotFound")),
            )
            .await;
        };
        let calls = async {
            let missing = get_app(&apps, "sd-gone").await.expect("absent is no error");
            let names: Vec<_> = list_apps(&apps)
                .await
                .expect("list")
                .into_iter()
                .filter_map(|a| a.metadata.name)
                .collect();
            let deleted = delete_app(&apps, "sd-gone")
                .await
                .expect_err("nothing to delete")
                .kind();
            (missing.is_none(), names, deleted)
        };
        let (missing, names, deleted) = run_scenario(calls, scenario).await;
        assert!(missing);
        assert_eq!(names, ["sd-a", "sd-b"], "sorted by name");
        assert_eq!(deleted, "app_not_found");
    }

    #[test]
    fn admin_and_sdapp_specs_convert_both_ways() {
        let admin = AppSpec {
            model: "m.safetensors".into(),
            min_replicas: 1,
            max_replicas: 3,
            idle_timeout_s: None,
            target_concurrency: Some(4),
        };
        assert_eq!(app_spec(&sdapp_spec(&admin)), admin);
    }
}
