//! The controller in Kubernetes mode end to end, against a mock API server: the admin API over
//! real HTTP writes SDApps (`POST` creates, `DELETE` deletes, errors map to statuses), and SDApps
//! appearing in the watched cache (as `kubectl apply` makes them) enter the registry and the
//! route table, are scaled to zero when idle and activated on demand, and leave when deleted.

mod kube_support;

mod kube_admin {
    use std::sync::Arc;
    use std::time::Duration;

    use clap::Parser;
    use http::{Method, StatusCode};
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use kube::runtime::reflector::{self, store::Writer};
    use kube::runtime::watcher;
    use sdplane_controller::kube::reconcile::{Context, ScaleTargets};
    use sdplane_controller::kube::{KubeBackend, SDApp, examples};
    use sdplane_controller::{AppSource, ControllerArgs, ControllerConfig};
    use sdplane_wire::checkpoint::detect::Family;
    use sdplane_wire::checkpoint::synth::SynthSpec;
    use serde_json::{Value, json};
    use tokio::net::TcpListener;
    use tokio::sync::watch;
    use tokio_util::sync::CancellationToken;

    use super::kube_support::{ApiServer, Seen, echo, mock_client, reply, run_scenario, status_error};

    const SDAPPS: &str = "/apis/sdplane.io/v1alpha1/namespaces/ml/sdapps";
    const V15: &str = "/apis/sdplane.io/v1alpha1/namespaces/ml/sdapps/sd-v1-5";
    const XL: &str = "sd-sd-xl-base-1-0";
    const XL_DEPLOY: &str = "/apis/apps/v1/namespaces/ml/deployments/sd-sd-xl-base-1-0";
    const XL_SERVICE: &str = "/api/v1/namespaces/ml/services/sd-sd-xl-base-1-0";
    const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/ml/events";

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ControllerArgs,
    }

    /// A controller in Kubernetes mode serving real HTTP, its mock API server, and the writer
    /// of its SDApp cache (standing in for the watch).
    struct Harness {
        base: String,
        http: reqwest::Client,
        api: ApiServer,
        sdapps: Writer<SDApp>,
        backend: Arc<KubeBackend>,
        _leading: watch::Sender<bool>,
        shutdown: CancellationToken,
        task: tokio::task::JoinHandle<sdplane_controller::Result<()>>,
        _dir: tempfile::TempDir,
    }

    /// Write a header-valid tiny SD1.5 checkpoint at `path` (data left sparse: only the header
    /// is read when deploying).
    fn write_checkpoint(path: &std::path::Path) {
        let mut header = serde_json::Map::new();
        let mut offset = 0u64;
        for t in SynthSpec::tiny(Family::Sd1).tensors() {
            let (dtype, size) = if t.is_integer() { ("I64", 8) } else { ("F16", 2) };
            let end = offset + t.numel() * size;
            header.insert(
                t.name.clone(),
                json!({"dtype": dtype, "shape": t.shape, "data_offsets": [offset, end]}),
            );
            offset = end;
        }
        let mut json = serde_json::to_vec(&header).expect("header");
        while !json.len().is_multiple_of(8) {
            json.push(b' ');
        }
        let mut bytes = (json.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(&json);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("dir");
        std::fs::write(path, &bytes).expect("write");
        let file = std::fs::OpenOptions::new().write(true).open(path).expect("open");
        file.set_len(bytes.len() as u64 + offset).expect("size");
    }

    impl Harness {
        async fn start(leading: bool, apps: Vec<SDApp>) -> Harness {
            Self::start_with(leading, apps, &[]).await
        }

        /// [`Harness::start`] with `persisted` apps already in `apps.json`, as an earlier run
        /// of the controller left it.
        async fn start_with(leading: bool, apps: Vec<SDApp>, persisted: &[&str]) -> Harness {
            let dir = tempfile::tempdir().expect("tempdir");
            let models = dir.path().join("models");
            write_checkpoint(&models.join("v1-5.safetensors"));
            write_checkpoint(&models.join("other/v1-5.safetensors"));
            let state = dir.path().join("state");
            let records: Vec<Value> = persisted
                .iter()
                .enumerate()
                .map(|(i, name)| {
                    json!({
                        "name": name,
                        "spec": {"model": format!("{name}.safetensors"), "min_replicas": 0, "max_replicas": 1,
                                 "idle_timeout_s": null, "target_concurrency": null},
                        "model_path": models.join(format!("{name}.safetensors")),
                        "parameters": 0,
                        "generation": i + 1,
                    })
                })
                .collect();
            std::fs::create_dir_all(&state).expect("state dir");
            let file = json!({"next_generation": persisted.len() + 1, "apps": records});
            std::fs::write(state.join("apps.json"), file.to_string()).expect("apps.json");
            let argv = [
                "test",
                "--models",
                models.to_str().expect("utf-8"),
                "--state-dir",
                state.to_str().expect("utf-8"),
                "--replica-binary",
                "/nonexistent/sdplane",
                "--routes-long-poll",
                "5s",
                "--reconcile-interval",
                "100ms",
                "--backend",
                "kubernetes",
                "--namespace",
                "ml",
            ];
            let cli = Cli::try_parse_from(argv).expect("arguments");
            let config = ControllerConfig::from_args(&cli.args).expect("config");

            let (client, api) = mock_client("ml");
            let ctx = Arc::new(Context::new(
                client,
                examples::config("ml"),
                Arc::new(ScaleTargets::default()),
            ));
            let (leading_tx, leading_rx) = watch::channel(leading);
            let (slices, mut slices_writer) = reflector::store::<EndpointSlice>();
            slices_writer.apply_watcher_event(&watcher::Event::Init);
            slices_writer.apply_watcher_event(&watcher::Event::InitDone);
            let (store, mut sdapps) = reflector::store::<SDApp>();
            sdapps.apply_watcher_event(&watcher::Event::Init);
            for app in apps {
                sdapps.apply_watcher_event(&watcher::Event::InitApply(app));
            }
            sdapps.apply_watcher_event(&watcher::Event::InitDone);
            let backend = Arc::new(KubeBackend::new(ctx, leading_rx, slices, store));

            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let base = format!("http://{}", listener.local_addr().expect("addr"));
            let shutdown = CancellationToken::new();
            let task = tokio::spawn(sdplane_controller::serve_with(
                config,
                listener,
                prometheus::Registry::new(),
                AppSource::Kubernetes(backend.clone()),
                CancellationToken::new(),
                shutdown.clone(),
            ));
            Harness {
                base,
                http: reqwest::Client::new(),
                api,
                sdapps,
                backend,
                _leading: leading_tx,
                shutdown,
                task,
                _dir: dir,
            }
        }

        async fn stop(self) {
            self.shutdown.cancel();
            self.task.await.expect("join").expect("served");
        }

        /// Apply a watch event to the SDApp cache and tell the controller, as the watch does.
        fn watch(&mut self, event: watcher::Event<SDApp>) {
            self.sdapps.apply_watcher_event(&event);
            self.backend.sdapps_changed().notify_one();
        }

        /// Route-table version and apps, waiting for a version other than `after` if given.
        async fn routes(&self, after: Option<u64>) -> (u64, Value) {
            let query = after.map(|v| format!("?after={v}")).unwrap_or_default();
            let (status, body) = call(
                &self.http,
                &self.base,
                "GET",
                &format!("/internal/v1/routes{query}"),
                None,
            )
            .await;
            assert_eq!(status, 200, "{body}");
            (body["version"].as_u64().expect("version"), body["apps"].clone())
        }
    }

    async fn call(
        http: &reqwest::Client,
        base: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = http.request(method, format!("{base}{path}"));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// The SDApp for `v1-5.safetensors` as the API server would store it.
    fn stored_v15(max_replicas: u32) -> Value {
        json!({
            "apiVersion": "sdplane.io/v1alpha1", "kind": "SDApp",
            "metadata": {"name": "sd-v1-5", "namespace": "ml", "uid": "u-1", "resourceVersion": "7"},
            "spec": {"model": "v1-5.safetensors", "minReplicas": 0, "maxReplicas": max_replicas}
        })
    }

    fn conflict(_: &Seen) -> (StatusCode, Value) {
        (StatusCode::CONFLICT, status_error(409, "AlreadyExists"))
    }

    #[tokio::test]
    async fn post_creates_the_sdapp_and_the_app_is_listed_and_routed_at_once() {
        let mut h = Harness::start(false, vec![]).await;
        let (http, base) = (h.http.clone(), h.base.clone());
        let post = call(
            &h.http,
            &h.base,
            "POST",
            "/v1/apps",
            Some(json!({"model": "./v1-5.safetensors", "max_replicas": 2, "idle_timeout_s": 60})),
        );
        let scenario = async {
            let seen = h.api.expect(Method::POST, SDAPPS, echo).await;
            assert_eq!(seen.body["kind"], "SDApp");
            assert_eq!(seen.body["metadata"]["name"], "sd-v1-5");
            assert_eq!(
                seen.body["spec"],
                json!({"model": "v1-5.safetensors", "minReplicas": 0, "maxReplicas": 2, "idleTimeoutSeconds": 60}),
                "the model path is the canonical one"
            );
        };
        let (status, body) = run_scenario(post, scenario).await;
        assert_eq!(status, 201, "{body}");
        assert_eq!(body["name"], "sd-v1-5");
        assert_eq!(body["state"], "scaled_to_zero");

        let (status, list) = call(&http, &base, "GET", "/v1/apps", None).await;
        assert_eq!(status, 200);
        assert_eq!(list["apps"][0]["name"], "sd-v1-5");
        assert_eq!(list["apps"][0]["spec"]["idle_timeout_s"], 60);
        let (_, apps) = h.routes(None).await;
        assert_eq!(apps["sd-v1-5"]["state"], "scaled_to_zero");

        // The watch then delivers the same SDApp: nothing changes.
        let (version, _) = h.routes(None).await;
        let mut stored = stored_v15(2);
        stored["spec"]["idleTimeoutSeconds"] = json!(60);
        let created: SDApp = serde_json::from_value(stored).expect("sdapp");
        h.watch(watcher::Event::Apply(created));
        let (status, app) = call(&http, &base, "GET", "/v1/apps/sd-v1-5", None).await;
        assert_eq!(status, 200);
        assert_eq!(app["spec"]["max_replicas"], 2);
        assert_eq!(h.routes(None).await.0, version);
        h.api.expect_silence(Duration::from_millis(100)).await;
        h.stop().await;
    }

    #[tokio::test]
    async fn posting_an_existing_app_is_idempotent_updates_its_spec_and_refuses_another_file() {
        let mut h = Harness::start(false, vec![]).await;
        let (http, base) = (h.http.clone(), h.base.clone());
        let same = call(
            &http,
            &base,
            "POST",
            "/v1/apps",
            Some(json!({"model": "v1-5.safetensors"})),
        );
        let scenario = async {
            h.api.expect(Method::POST, SDAPPS, conflict).await;
            h.api
                .expect(Method::GET, V15, reply(StatusCode::OK, stored_v15(1)))
                .await;
        };
        let (status, body) = run_scenario(same, scenario).await;
        assert_eq!(status, 200, "same model, same spec: {body}");
        assert_eq!(body["name"], "sd-v1-5");

        let bigger = call(
            &h.http,
            &h.base,
            "POST",
            "/v1/apps",
            Some(json!({"model": "v1-5.safetensors", "max_replicas": 3})),
        );
        let scenario = async {
            h.api.expect(Method::POST, SDAPPS, conflict).await;
            h.api
                .expect(Method::GET, V15, reply(StatusCode::OK, stored_v15(1)))
                .await;
            let patch = h
                .api
                .expect(Method::PATCH, V15, |_| (StatusCode::OK, stored_v15(3)))
                .await;
            assert_eq!(
                patch.content_type.as_deref(),
                Some("application/merge-patch+json")
            );
            assert_eq!(patch.body["spec"]["maxReplicas"], 3);
            assert_eq!(
                patch.body["spec"]["idleTimeoutSeconds"],
                Value::Null,
                "unset fields are cleared"
            );
            assert!(
                patch.body["spec"].get("resources").is_none(),
                "kubectl-owned fields are kept"
            );
        };
        let (status, body) = run_scenario(bigger, scenario).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["spec"]["max_replicas"], 3);

        let other = call(
            &http,
            &base,
            "POST",
            "/v1/apps",
            Some(json!({"model": "other/v1-5.safetensors"})),
        );
        let scenario = async {
            h.api.expect(Method::POST, SDAPPS, conflict).await;
            h.api
                .expect(Method::GET, V15, reply(StatusCode::OK, stored_v15(3)))
                .await;
        };
        let (status, body) = run_scenario(other, scenario).await;
        assert_eq!(status, 409, "{body}");
        assert_eq!(body["error"]["type"], "name_conflict");
        h.api.expect_silence(Duration::from_millis(100)).await;
        h.stop().await;
    }

    #[tokio::test]
    async fn bad_specs_are_refused_before_any_api_call_and_api_failures_are_bad_gateway() {
        let mut h = Harness::start(false, vec![]).await;
        let (http, base) = (h.http.clone(), h.base.clone());
        for (body, status) in [
            (json!({"model": "v1-5.safetensors", "max_replicas": 0}), 400),
            (json!({"model": "../v1-5.safetensors"}), 400),
            (json!({"model": "missing.safetensors"}), 404),
        ] {
            let (got, reply) = call(&http, &base, "POST", "/v1/apps", Some(body.clone())).await;
            assert_eq!(got, status, "{body} → {reply}");
        }
        h.api.expect_silence(Duration::from_millis(100)).await;

        let post = call(
            &http,
            &base,
            "POST",
            "/v1/apps",
            Some(json!({"model": "v1-5.safetensors"})),
        );
        let scenario = async {
            h.api
                .expect(
                    Method::POST,
                    SDAPPS,
                    reply(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        status_error(500, "InternalError"),
                    ),
                )
                .await;
        };
        let (status, body) = run_scenario(post, scenario).await;
        assert_eq!(status, 502, "{body}");
        assert_eq!(body["error"]["type"], "kube_api");
        let (status, _) = call(&http, &base, "GET", "/v1/apps/sd-v1-5", None).await;
        assert_eq!(status, 404, "a failed create leaves no app behind");
        h.stop().await;
    }

    #[tokio::test]
    async fn delete_deletes_the_sdapp_in_the_foreground_and_forgets_the_app() {
        let v15: SDApp = serde_json::from_value(stored_v15(1)).expect("sdapp");
        let mut h = Harness::start(false, vec![v15]).await;
        let (http, base) = (h.http.clone(), h.base.clone());
        // The first sync registers the cached SDApp (the route long-poll waits for it).
        let (mut version, mut apps) = h.routes(None).await;
        if apps.get("sd-v1-5").is_none() {
            (version, apps) = h.routes(Some(version)).await;
        }
        assert!(apps.get("sd-v1-5").is_some(), "{apps}");

        let delete = call(&http, &base, "DELETE", "/v1/apps/sd-v1-5", None);
        let scenario = async {
            let seen = h
                .api
                .expect(
                    Method::DELETE,
                    V15,
                    reply(
                        StatusCode::OK,
                        json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
                    ),
                )
                .await;
            assert_eq!(seen.body["propagationPolicy"], "Foreground");
        };
        let (status, body) = run_scenario(delete, scenario).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["status"], "deleted");
        let (_, apps) = h.routes(Some(version)).await;
        assert!(apps.get("sd-v1-5").is_none(), "{apps}");
        let (status, _) = call(&http, &base, "GET", "/v1/apps/sd-v1-5", None).await;
        assert_eq!(status, 404);

        let again = call(&http, &base, "DELETE", "/v1/apps/sd-v1-5", None);
        let scenario = async {
            h.api
                .expect(
                    Method::DELETE,
                    V15,
                    reply(StatusCode::NOT_FOUND, status_error(404, "NotFound")),
                )
                .await;
        };
        let (status, body) = run_scenario(again, scenario).await;
        assert_eq!(status, 404, "{body}");
        assert_eq!(body["error"]["type"], "unknown_app");
        h.stop().await;
    }

    #[tokio::test]
    async fn an_sdapp_applied_with_kubectl_enters_the_registry_and_leaves_when_deleted() {
        let mut h = Harness::start(false, vec![]).await;
        let (http, base) = (h.http.clone(), h.base.clone());
        let (v0, apps) = h.routes(None).await;
        assert_eq!(apps, json!({}));

        h.watch(watcher::Event::Apply(examples::sdxl_app("ml")));
        let (v1, apps) = h.routes(Some(v0)).await;
        assert_eq!(apps[XL]["state"], "scaled_to_zero", "{apps}");
        let (status, app) = call(&http, &base, "GET", &format!("/v1/apps/{XL}"), None).await;
        assert_eq!(status, 200);
        assert_eq!(app["model"], "sd_xl_base_1.0.safetensors");
        assert_eq!(app["spec"]["max_replicas"], 2);
        assert_eq!(app["spec"]["target_concurrency"], 2);
        assert_eq!(app["idle_timeout_s"], 300);

        h.watch(watcher::Event::Delete(examples::sdxl_app("ml")));
        let (_, apps) = h.routes(Some(v1)).await;
        assert_eq!(apps, json!({}));
        let (status, list) = call(&http, &base, "GET", "/v1/apps", None).await;
        assert_eq!(status, 200);
        assert_eq!(list["apps"], json!([]));
        h.api.expect_silence(Duration::from_millis(100)).await;
        h.stop().await;
    }

    #[tokio::test]
    async fn a_kubectl_app_is_activated_on_demand_and_scaled_to_zero_when_idle() {
        let mut app = examples::sdxl_app("ml");
        app.spec.idle_timeout_seconds = Some(1);
        let mut h = Harness::start(true, vec![app]).await;
        let (http, base) = (h.http.clone(), h.base.clone());
        let scenario = async {
            // Idle from the start: the leader writes zero replicas.
            let d = h.api.expect(Method::PATCH, XL_DEPLOY, echo).await;
            assert_eq!(d.body["spec"]["replicas"], 0);
            h.api.expect(Method::PATCH, XL_SERVICE, echo).await;
            h.api.expect(Method::POST, EVENTS, echo).await;

            // A router asks for the cold app.
            let (status, route) = call(
                &http,
                &base,
                "POST",
                &format!("/internal/v1/apps/{XL}/activate"),
                None,
            )
            .await;
            assert_eq!(status, 200, "{route}");
            assert_eq!(route["state"], "starting");
            let d = h.api.expect(Method::PATCH, XL_DEPLOY, echo).await;
            assert_eq!(d.body["spec"]["replicas"], 1);
            h.api.expect(Method::PATCH, XL_SERVICE, echo).await;
            // Another `Scaled` event of the same app: the recorder bumps the first one's series.
            let event = h.api.expect_under(Method::PATCH, EVENTS, echo).await;
            assert_eq!(event.body["series"]["count"], 2);

            // No traffic for its 1 s idle timeout: back to zero.
            let d = h.api.expect(Method::PATCH, XL_DEPLOY, echo).await;
            assert_eq!(d.body["spec"]["replicas"], 0);
            h.api.expect(Method::PATCH, XL_SERVICE, echo).await;
            let event = h.api.expect_under(Method::PATCH, EVENTS, echo).await;
            assert_eq!(event.body["series"]["count"], 3);
            h.api.expect_silence(Duration::from_millis(300)).await;
        };
        run_scenario(async {}, scenario).await;
        h.stop().await;
    }

    #[tokio::test]
    async fn apps_persisted_by_an_earlier_run_without_an_sdapp_are_dropped_at_the_first_sync() {
        let v15: SDApp = serde_json::from_value(stored_v15(1)).expect("sdapp");
        let h = Harness::start_with(false, vec![v15], &["sd-stale"]).await;
        let (mut version, mut apps) = h.routes(None).await;
        // Each long-poll answers at the next change; the first sync makes at most two.
        for _ in 0..2 {
            if apps.get("sd-stale").is_none() && apps.get("sd-v1-5").is_some() {
                break;
            }
            (version, apps) = h.routes(Some(version)).await;
        }
        assert!(apps.get("sd-stale").is_none(), "{apps}");
        assert!(apps.get("sd-v1-5").is_some(), "{apps}");
        h.stop().await;
    }
}
