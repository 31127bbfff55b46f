//! Proxying to ready replicas over real loopback HTTP: paths, headers, streaming, balancing,
//! retries, unknown apps, the router's own health and metrics.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashMap;

use futures::StreamExt;
use sdplane_router::Balance;
use sdplane_wire::admin::AppState;
use serde_json::Value;
use support::{FakeController, TestRouter, Upstream, route, sample, within};

/// A loopback address nothing listens on (bound, then released).
async fn closed_port_url() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    drop(l);
    url
}

#[tokio::test]
async fn requests_are_proxied_with_path_query_request_id_and_no_hop_headers() {
    let up = Upstream::start("a").await;
    let ctl = FakeController::start(None).await;
    ctl.set_app("sd-a", route(AppState::Ready, &[&up.url]));
    let router = TestRouter::start(&ctl, None, |_| {}).await;

    let response = reqwest::Client::new()
        .post(format!("{}/sd-a/v1/anything/deeper?x=1&y=2", router.url))
        .header("connection", "x-client-hop")
        .header("x-client-hop", "1")
        .header("x-custom", "kept")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers().get("x-request-id").is_some(),
        "the router adds a request id"
    );
    assert!(
        response.headers().get("x-upstream-hop").is_none(),
        "hop-by-hop headers are stripped on the way back"
    );
    let echo: Value = response.json().await.unwrap();
    assert_eq!(echo["path"], "/v1/anything/deeper?x=1&y=2");
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["body_len"], 5);
    let headers = &echo["headers"];
    assert_eq!(headers["x-custom"], "kept");
    assert!(
        headers.get("x-client-hop").is_none(),
        "headers named by Connection are stripped"
    );
    assert!(headers["x-request-id"].as_str().is_some_and(|id| !id.is_empty()));
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1");

    let given = reqwest::Client::new()
        .get(format!("{}/sd-a/v1/x", router.url))
        .header("x-request-id", "client-chosen-id")
        .send()
        .await
        .unwrap();
    assert_eq!(given.headers()["x-request-id"], "client-chosen-id");
    let echo: Value = given.json().await.unwrap();
    assert_eq!(
        echo["headers"]["x-request-id"], "client-chosen-id",
        "a client's id is kept"
    );
    router.stop().await;
}

#[tokio::test]
async fn response_bodies_stream_through_chunk_by_chunk() {
    let up = Upstream::start("a").await;
    let ctl = FakeController::start(None).await;
    ctl.set_app("sd-a", route(AppState::Ready, &[&up.url]));
    let router = TestRouter::start(&ctl, None, |_| {}).await;

    let response = reqwest::get(format!("{}/sd-a/v1/stream", router.url))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    // Each later chunk is only produced after the client saw the one before: a router that
    // buffered the body would never deliver the first chunk and this test would time out.
    let mut seen = String::new();
    for i in 0..3 {
        while !seen.contains(&format!("chunk{i};")) {
            let chunk = within("the next streamed chunk", body.next())
                .await
                .unwrap()
                .unwrap();
            seen.push_str(std::str::from_utf8(&chunk).unwrap());
        }
        up.release_chunk();
    }
    assert_eq!(seen, "chunk0;chunk1;chunk2;");
    router.stop().await;
}

#[tokio::test]
async fn request_bodies_stream_to_the_replica_unbuffered() {
    let up = Upstream::start("a").await;
    let ctl = FakeController::start(None).await;
    ctl.set_app("sd-a", route(AppState::Ready, &[&up.url]));
    let router = TestRouter::start(&ctl, None, |_| {}).await;

    let chunks = (0..64).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![7u8; 16 * 1024])));
    let body = reqwest::Body::wrap_stream(futures::stream::iter(chunks));
    let response = reqwest::Client::new()
        .post(format!("{}/sd-a/v1/generate", router.url))
        .body(body)
        .send()
        .await
        .unwrap();
    let echo: Value = response.json().await.unwrap();
    assert_eq!(echo["body_len"], 64 * 16 * 1024);
    assert_eq!(
        echo["headers"]["transfer-encoding"], "chunked",
        "the unknown-length body stays streamed"
    );
    router.stop().await;
}

#[tokio::test]
async fn round_robin_spreads_requests_across_ready_replicas() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let ctl = FakeController::start(None).await;
    ctl.set_app("sd-a", route(AppState::Ready, &[&a.url, &b.url]));
    let router = TestRouter::start(&ctl, None, |p| p.balance = Balance::RoundRobin).await;

    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..6 {
        let echo: Value = reqwest::get(format!("{}/sd-a/v1/who", router.url))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        *counts
            .entry(echo["upstream"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    assert_eq!(counts.get("a"), Some(&3), "{counts:?}");
    assert_eq!(counts.get("b"), Some(&3), "{counts:?}");
    router.stop().await;
}

#[tokio::test]
async fn least_in_flight_avoids_the_busy_replica() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let ctl = FakeController::start(None).await;
    ctl.set_app("sd-a", route(AppState::Ready, &[&a.url, &b.url]));
    let router = TestRouter::start(&ctl, None, |p| p.balance = Balance::LeastInFlight).await;

    // Occupy one replica with a streamed answer that stays open.
    let held = reqwest::get(format!("{}/sd-a/v1/stream", router.url))
        .await
        .unwrap();
    let mut held_body = held.bytes_stream();
    within("the first chunk", held_body.next())
        .await
        .unwrap()
        .unwrap();
    // The stream is open on one replica; every other request must go to the other one.
    let mut others = Vec::new();
    for _ in 0..4 {
        let echo: Value = reqwest::get(format!("{}/sd-a/v1/who", router.url))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        others.push(echo["upstream"].as_str().unwrap().to_string());
    }
    others.dedup();
    assert_eq!(others.len(), 1, "all went to the idle replica: {others:?}");
    a.release_chunk();
    b.release_chunk();
    a.release_chunk();
    b.release_chunk();
    drop(held_body);
    router.stop().await;
}

#[tokio::test]
async fn reads_retry_once_on_another_replica_when_one_refuses_connections() {
    let live = Upstream::start("live").await;
    let dead = closed_port_url().await;
    let ctl = FakeController::start(None).await;
    ctl.set_app("sd-a", route(AppState::Ready, &[&dead, &live.url]));
    let router = TestRouter::start(&ctl, None, |_| {}).await;

    for _ in 0..4 {
        let response = reqwest::get(format!("{}/sd-a/v1/who", router.url)).await.unwrap();
        assert_eq!(response.status(), 200);
        let echo: Value = response.json().await.unwrap();
        assert_eq!(echo["upstream"], "live");
    }
    let metrics = router.metrics().await;
    assert!(
        sample(
            &metrics,
            "sdplane_router_upstream_errors_total{app=\"sd-a\",kind=\"connect\"}"
        )
        .unwrap()
            >= 1.0,
        "{metrics}"
    );
    router.stop().await;
}

#[tokio::test]
async fn a_generate_to_a_replica_refusing_connections_answers_502_json() {
    let dead = closed_port_url().await;
    let ctl = FakeController::start(None).await;
    ctl.set_app("sd-a", route(AppState::Ready, &[&dead]));
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
    assert_eq!(body["error"]["type"], "upstream_connect");
    router.stop().await;
}

#[tokio::test]
async fn unknown_app_answers_404_saying_how_to_list_apps() {
    let ctl = FakeController::start(None).await;
    ctl.set_app("sd-a", route(AppState::ScaledToZero, &[]));
    let router = TestRouter::start(&ctl, None, |_| {}).await;

    let response = reqwest::Client::new()
        .post(format!("{}/sd-nope/v1/generate", router.url))
        .json(&serde_json::json!({"prompt": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["type"], "unknown_app");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("deploy_sd.sh --list") && message.contains("GET /v1/apps"),
        "{message}"
    );
    assert_eq!(ctl.activation_count(), 0);

    let stray = reqwest::get(format!("{}/not-an-app-path", router.url))
        .await
        .unwrap();
    assert_eq!(stray.status(), 404);
    let body: Value = stray.json().await.unwrap();
    assert_eq!(body["error"]["type"], "not_found");
    let wrong_method = reqwest::Client::new()
        .post(format!("{}/healthz", router.url))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_method.status(), 405);
    let body: Value = wrong_method.json().await.unwrap();
    assert_eq!(body["error"]["type"], "method_not_allowed");
    router.stop().await;
}

#[tokio::test]
async fn router_answers_503_until_its_first_route_table_arrives() {
    let ctl = FakeController::start(Some("right-token")).await;
    // Wrong token: the controller refuses every poll, so the table never loads.
    let router = TestRouter::start_unready(&ctl.url, Some("wrong-token"), |_| {}).await;
    let mut polls = ctl.state.route_polls.subscribe();
    within("a refused poll", polls.wait_for(|n| *n >= 1))
        .await
        .unwrap();
    let health = reqwest::get(format!("{}/healthz", router.url)).await.unwrap();
    assert_eq!(health.status(), 503);
    let response = reqwest::get(format!("{}/sd-a/v1/health", router.url))
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert!(response.headers().get("retry-after").is_some());
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["type"], "routes_not_loaded");
    router.stop().await;
}

#[tokio::test]
async fn controller_token_is_sent_and_the_last_table_serves_while_the_controller_is_away() {
    let up = Upstream::start("a").await;
    let ctl = FakeController::start(Some("s3cret")).await;
    ctl.set_app("sd-a", route(AppState::Ready, &[&up.url]));
    let router = TestRouter::start(&ctl, Some("s3cret"), |_| {}).await;
    ctl.stop();
    for _ in 0..3 {
        let response = reqwest::get(format!("{}/sd-a/v1/who", router.url)).await.unwrap();
        assert_eq!(response.status(), 200);
    }
    router.stop().await;
}

#[tokio::test]
async fn metrics_expose_sdplane_router_names_with_bounded_app_labels() {
    let up = Upstream::start("a").await;
    let ctl = FakeController::start(None).await;
    ctl.set_app("sd-a", route(AppState::Ready, &[&up.url]));
    ctl.set_app("sd-b", route(AppState::ScaledToZero, &[]));
    let router = TestRouter::start(&ctl, None, |_| {}).await;
    let client = reqwest::Client::new();
    client
        .get(format!("{}/sd-a/v1/who", router.url))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    client
        .post(format!("{}/sd-b/v1/generate", router.url))
        .body("{}")
        .send()
        .await
        .unwrap();
    client
        .get(format!("{}/sd-zzz/v1/who", router.url))
        .send()
        .await
        .unwrap();

    let metrics = router.metrics().await;
    for name in [
        "sdplane_router_requests_total",
        "sdplane_router_request_duration_seconds_bucket",
        "sdplane_router_in_flight_requests",
        "sdplane_router_cold_hits_total",
        "sdplane_router_scaling_up_responses_total",
        "sdplane_router_activations_total",
        "sdplane_router_upstream_errors_total",
        "sdplane_router_route_table_version",
    ] {
        assert!(metrics.contains(name), "{name} missing from\n{metrics}");
    }
    assert_eq!(
        sample(
            &metrics,
            "sdplane_router_requests_total{app=\"sd-a\",class=\"2xx\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &metrics,
            "sdplane_router_scaling_up_responses_total{app=\"sd-b\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &metrics,
            "sdplane_router_requests_total{app=\"unknown\",class=\"4xx\"}"
        ),
        Some(1.0)
    );
    assert!(!metrics.contains("sd-zzz"), "unknown names never become labels");

    // An app that leaves the table leaves the metrics too.
    ctl.remove_app("sd-b");
    router.wait_version(ctl.version()).await;
    let metrics = router.metrics().await;
    assert!(!metrics.contains("app=\"sd-b\""), "{metrics}");
    router.stop().await;
}

#[tokio::test]
async fn router_keeps_the_last_table_while_the_controller_fails_and_resyncs_after() {
    let up = Upstream::start("a").await;
    let ctl = FakeController::start(None).await;
    ctl.set_app("sd-a", route(AppState::Ready, &[&up.url]));
    let router = TestRouter::start(&ctl, None, |_| {}).await;

    ctl.set_away(true);
    let polls_before = *ctl.state.route_polls.borrow();
    // This change wakes the held poll, which now fails; the router must retry on its own.
    ctl.set_app("sd-b", route(AppState::ScaledToZero, &[]));
    let mut polls = ctl.state.route_polls.subscribe();
    within("retried polls", polls.wait_for(|n| *n >= polls_before + 3))
        .await
        .unwrap();
    let served = reqwest::get(format!("{}/sd-a/v1/who", router.url)).await.unwrap();
    assert_eq!(served.status(), 200, "the last table still routes");
    let not_yet = reqwest::get(format!("{}/sd-b/v1/health", router.url))
        .await
        .unwrap();
    assert_eq!(not_yet.status(), 404, "the failed update was not half-applied");

    ctl.set_away(false);
    router.wait_version(ctl.version()).await;
    let health = reqwest::get(format!("{}/sd-b/v1/health", router.url))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let metrics = router.metrics().await;
    assert!(sample(&metrics, "sdplane_router_controller_errors_total{op=\"routes\"}").unwrap() >= 2.0);
    router.stop().await;
}
