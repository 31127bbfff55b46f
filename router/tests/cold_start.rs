//! Cold apps over real loopback HTTP: 202 with Retry-After, one activation for many requests,
//! `Prefer: wait`, failed apps, and reads that never wake an app.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use sdplane_wire::admin::{AppRoute, AppState, ModelFileEntry};
use sdplane_wire::api::ScalingUpBody;
use serde_json::Value;
use support::{FakeController, TestRouter, Upstream, route, sample, within};

fn generate(router: &TestRouter, app: &str) -> reqwest::RequestBuilder {
    reqwest::Client::new()
        .post(format!("{}/{app}/v1/generate", router.url))
        .json(&serde_json::json!({"prompt": "a beautiful landscape"}))
}

#[tokio::test]
async fn cold_app_answers_202_with_retry_after_and_a_scaling_up_body() {
    let ctl = FakeController::start(None).await;
    ctl.set_app("sd-a", route(AppState::ScaledToZero, &[]));
    let router = TestRouter::start(&ctl, None, |p| p.retry_after_min = Duration::from_secs(2)).await;

    let response = generate(&router, "sd-a").send().await.unwrap();
    assert_eq!(response.status(), 202);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let body: ScalingUpBody = response.json().await.unwrap();
    assert_eq!(body.status, "scaling_up");
    assert_eq!(body.app, "sd-a");
    assert_eq!(body.retry_after_seconds, retry_after);
    // The fake's estimate is 12 s and this start has just begun: retry at half of it.
    assert_eq!(body.estimated_ready_seconds, 12.0);
    assert_eq!(retry_after, 6);
    assert!(body.message.contains("retry after 6 s"), "{}", body.message);
    assert_eq!(ctl.activation_count(), 1);
    router.stop().await;
}

#[tokio::test]
async fn loading_app_answers_202_with_progress_and_without_a_new_activation() {
    let ctl = FakeController::start(None).await;
    ctl.set_app(
        "sd-a",
        AppRoute {
            progress: Some(0.25),
            ..route(AppState::Loading, &[])
        },
    );
    let router = TestRouter::start(&ctl, None, |_| {}).await;

    let response = generate(&router, "sd-a").send().await.unwrap();
    assert_eq!(response.status(), 202);
    let body: ScalingUpBody = response.json().await.unwrap();
    assert_eq!(body.status, "loading");
    assert_eq!(body.progress, Some(0.25));
    assert!(body.message.contains("25%"), "{}", body.message);
    assert_eq!(ctl.activation_count(), 0, "the controller is already starting it");
    router.stop().await;
}

#[tokio::test]
async fn twenty_concurrent_cold_requests_make_one_activation_call() {
    let ctl = FakeController::start(None).await;
    ctl.set_app("sd-a", route(AppState::ScaledToZero, &[]));
    let router = TestRouter::start(&ctl, None, |_| {}).await;
    ctl.close_activations();

    let requests: Vec<_> = (0..20)
        .map(|_| tokio::spawn(generate(&router, "sd-a").send()))
        .collect();
    // All twenty are inside the router (counted in flight, reported at once on the cold hit)
    // while the one activation call is still unanswered.
    ctl.wait_report(|r| r.apps.get("sd-a").is_some_and(|a| a.in_flight == 20))
        .await;
    assert_eq!(ctl.activation_count(), 1);
    ctl.open_activations();
    for r in requests {
        let response = within("a cold answer", r).await.unwrap().unwrap();
        assert_eq!(response.status(), 202);
    }
    assert_eq!(ctl.activation_count(), 1);
    let metrics = router.metrics().await;
    assert_eq!(
        sample(
            &metrics,
            "sdplane_router_activations_total{app=\"sd-a\",outcome=\"ok\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&metrics, "sdplane_router_cold_hits_total{app=\"sd-a\"}"),
        Some(20.0)
    );
    router.stop().await;
}

#[tokio::test]
async fn prefer_wait_holds_the_request_and_answers_200_once_the_app_is_ready() {
    let up = Upstream::start("a").await;
    let ctl = FakeController::start(None).await;
    ctl.set_app("sd-a", route(AppState::ScaledToZero, &[]));
    let router = TestRouter::start(&ctl, None, |_| {}).await;

    let held = tokio::spawn(generate(&router, "sd-a").header("prefer", "wait=30").send());
    ctl.wait_activations(1).await;
    ctl.set_app(
        "sd-a",
        AppRoute {
            progress: Some(0.5),
            ..route(AppState::Loading, &[])
        },
    );
    ctl.set_app("sd-a", route(AppState::Ready, &[&up.url]));
    let response = within("the held request", held).await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    let waited: f64 = response.headers()["x-cold-start-seconds"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((0.0..30.0).contains(&waited), "{waited}");
    assert_eq!(response.headers()["preference-applied"], "wait=30");
    let echo: Value = response.json().await.unwrap();
    assert_eq!(echo["path"], "/v1/generate");
    assert!(
        echo["body_len"].as_u64().unwrap() > 0,
        "the held body is forwarded intact"
    );
    router.stop().await;
}

#[tokio::test]
async fn prefer_wait_that_runs_out_answers_202() {
    let ctl = FakeController::start(None).await;
    ctl.set_app("sd-a", route(AppState::ScaledToZero, &[]));
    // The client asks for 30 s; the router caps holds at 1 s.
    let router = TestRouter::start(&ctl, None, |p| p.max_wait = Duration::from_secs(1)).await;

    let started = tokio::time::Instant::now();
    let response = generate(&router, "sd-a")
        .header("prefer", "wait=30")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let held = started.elapsed();
    assert!(
        held >= Duration::from_secs(1) && held < Duration::from_secs(10),
        "{held:?}"
    );
    assert_eq!(response.headers()["preference-applied"], "wait=1");
    let body: ScalingUpBody = response.json().await.unwrap();
    assert_eq!(body.status, "scaling_up");
    router.stop().await;
}

#[tokio::test]
async fn failed_app_answers_503_with_reason_and_retry_after() {
    let ctl = FakeController::start(None).await;
    let reason = "replica exited with status 1: CUDA out of memory";
    ctl.set_app(
        "sd-a",
        AppRoute {
            reason: Some(reason.into()),
            ..route(AppState::Failed, &[])
        },
    );
    let router = TestRouter::start(&ctl, None, |p| p.retry_after_failed = Duration::from_secs(45)).await;

    let response = generate(&router, "sd-a").send().await.unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "45");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["type"], "app_failed");
    assert!(body["error"]["message"].as_str().unwrap().contains(reason));
    assert_eq!(ctl.activation_count(), 0, "a failed app waits for its redeploy");

    let health = reqwest::get(format!("{}/sd-a/v1/health", router.url))
        .await
        .unwrap();
    assert_eq!(health.status(), 503);
    let health: Value = health.json().await.unwrap();
    assert_eq!(health["status"], "failed");
    assert_eq!(health["reason"], reason);
    router.stop().await;
}

#[tokio::test]
async fn activation_that_reports_failure_answers_503() {
    let ctl = FakeController::start(None).await;
    ctl.set_app("sd-a", route(AppState::ScaledToZero, &[]));
    ctl.script_activation(Box::new(|_, r| {
        r.state = AppState::Failed;
        r.reason = Some("model file missing".into());
    }));
    let router = TestRouter::start(&ctl, None, |_| {}).await;
    let response = generate(&router, "sd-a")
        .header("prefer", "wait=5")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("model file missing")
    );
    router.stop().await;
}

#[tokio::test]
async fn health_and_models_of_a_cold_app_never_activate_it() {
    let ctl = FakeController::start(None).await;
    ctl.set_app("sd-a", route(AppState::ScaledToZero, &[]));
    ctl.set_model(ModelFileEntry {
        file: "a.safetensors".into(),
        size_bytes: 1234,
        app_name: "sd-a".into(),
        family: Some("sdxl".into()),
        family_label: Some("SDXL base".into()),
        dtype: Some("f16".into()),
        parameters: Some(3_500_000_000),
        error: None,
        deployed_app: Some("sd-a".into()),
        app_state: Some(AppState::ScaledToZero),
    });
    let router = TestRouter::start(&ctl, None, |_| {}).await;

    for _ in 0..3 {
        let health = reqwest::get(format!("{}/sd-a/v1/health", router.url))
            .await
            .unwrap();
        assert_eq!(health.status(), 200);
        let health: Value = health.json().await.unwrap();
        assert_eq!(health["status"], "scaled_to_zero");
        assert_eq!(health["replicas_ready"], 0);

        let models = reqwest::get(format!("{}/sd-a/v1/models", router.url))
            .await
            .unwrap();
        assert_eq!(models.status(), 200);
        let models: Value = models.json().await.unwrap();
        assert_eq!(models["file"], "a.safetensors");
        assert_eq!(models["model"], "a");
        assert_eq!(models["family"], "sdxl");
        assert_eq!(models["status"], "scaled_to_zero");
    }
    // Other reads of a cold app are refused without waking it either.
    let other = reqwest::get(format!("{}/sd-a/v1/generate", router.url))
        .await
        .unwrap();
    assert_eq!(other.status(), 503);
    assert!(other.headers().get("retry-after").is_some());
    assert_eq!(ctl.activation_count(), 0);
    // Health polling is not activity: it must not keep an app from scaling to zero.
    assert!(
        ctl.reports().iter().all(|r| !r.apps.contains_key("sd-a")),
        "{:?}",
        ctl.reports()
    );
    router.stop().await;
}

#[tokio::test]
async fn health_of_a_ready_app_includes_what_its_replica_says() {
    let up = Upstream::start("a").await;
    let ctl = FakeController::start(None).await;
    ctl.set_app("sd-a", route(AppState::Ready, &[&up.url]));
    let router = TestRouter::start(&ctl, None, |_| {}).await;

    let health: Value = reqwest::get(format!("{}/sd-a/v1/health", router.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ready");
    assert_eq!(health["replicas_ready"], 1);
    assert_eq!(health["replica"]["status"], "ready");
    assert_eq!(health["replica"]["uptime_seconds"], 3.5);
    // When ready, models come from the replica itself.
    let models: Value = reqwest::get(format!("{}/sd-a/v1/models", router.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["upstream"], "a");
    router.stop().await;
}

#[tokio::test]
async fn cold_hit_is_reported_to_the_controller_at_once() {
    let ctl = FakeController::start(None).await;
    ctl.set_app("sd-a", route(AppState::ScaledToZero, &[]));
    // A period far beyond the test's patience: only the cold hit itself can trigger a report.
    let router = TestRouter::start(&ctl, None, |p| p.activity_interval = Duration::from_secs(60)).await;
    ctl.close_activations();
    let request = tokio::spawn(generate(&router, "sd-a").send());
    let report = ctl.wait_report(|r| r.apps.contains_key("sd-a")).await;
    assert_eq!(report.apps["sd-a"].in_flight, 1);
    assert_eq!(report.apps["sd-a"].idle_seconds, 0.0);
    ctl.open_activations();
    within("the cold answer", request).await.unwrap().unwrap();
    router.stop().await;
}
