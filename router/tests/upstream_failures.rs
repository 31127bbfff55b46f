//! Replica failures classified by cause over real loopback connections: a replica dying
//! mid-request (502), breaking off its body, or not answering in time (504).
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use sdplane_wire::admin::AppState;
use serde_json::Value;
use support::{FakeController, TestRouter, Upstream, dying_upstream, route, sample};

#[tokio::test]
async fn replica_dying_mid_request_answers_a_clear_502_json() {
    let (url, _task) = dying_upstream(false).await;
    let ctl = FakeController::start(None).await;
    ctl.set_app("sd-a", route(AppState::Ready, &[&url]));
    let router = TestRouter::start(&ctl, None, |_| {}).await;

    let response = reqwest::Client::new()
        .post(format!("{}/sd-a/v1/generate", router.url))
        .json(&serde_json::json!({"prompt": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "error");
    assert_eq!(body["error"]["type"], "upstream_reset");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("sd-a") && message.contains("closed the connection"),
        "{message}"
    );
    let metrics = router.metrics().await;
    assert_eq!(
        sample(
            &metrics,
            "sdplane_router_upstream_errors_total{app=\"sd-a\",kind=\"reset\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &metrics,
            "sdplane_router_requests_total{app=\"sd-a\",class=\"5xx\"}"
        ),
        Some(1.0)
    );
    router.stop().await;
}

#[tokio::test]
async fn replica_breaking_off_its_body_cuts_the_client_off_and_is_counted() {
    let (url, _task) = dying_upstream(true).await;
    let ctl = FakeController::start(None).await;
    ctl.set_app("sd-a", route(AppState::Ready, &[&url]));
    let router = TestRouter::start(&ctl, None, |_| {}).await;

    let response = reqwest::get(format!("{}/sd-a/v1/models", router.url))
        .await
        .unwrap();
    // The head was already forwarded; the body cannot be completed.
    assert_eq!(response.status(), 200);
    assert!(
        response.bytes().await.is_err(),
        "a truncated body must not look complete"
    );
    let metrics = router.metrics().await;
    assert_eq!(
        sample(
            &metrics,
            "sdplane_router_upstream_errors_total{app=\"sd-a\",kind=\"body\"}"
        ),
        Some(1.0)
    );
    router.stop().await;
}

#[tokio::test]
async fn replica_slower_than_the_upstream_timeout_answers_504() {
    let up = Upstream::start("a").await;
    let ctl = FakeController::start(None).await;
    ctl.set_app("sd-a", route(AppState::Ready, &[&up.url]));
    let router = TestRouter::start(&ctl, None, |p| p.upstream_timeout = Duration::from_millis(300)).await;

    let response = reqwest::Client::new()
        .post(format!("{}/sd-a/v1/hang", router.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 504);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["type"], "upstream_timeout");
    let metrics = router.metrics().await;
    assert_eq!(
        sample(
            &metrics,
            "sdplane_router_upstream_errors_total{app=\"sd-a\",kind=\"timeout\"}"
        ),
        Some(1.0)
    );
    router.stop().await;
}
