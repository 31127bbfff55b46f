//! The replica server's life over real loopback HTTP, driven by a test `Generator`: loading
//! with progress, warm-up, ready, a failed load and exit, graceful shutdown.

mod server_support;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use server_support::{Replica, StepGenerator, error_of, gate, wait_count};

#[tokio::test]
async fn health_says_loading_with_progress_then_ready_after_a_one_step_unguided_warm_up() {
    let generator = StepGenerator::new(Duration::ZERO);
    let (gate, reached, release) = gate();
    let replica = Replica::start(Arc::clone(&generator), &[], Some(gate)).await;
    reached.await.expect("loader reached 50%");

    let (status, body) = replica.get_json("/v1/health").await;
    assert_eq!(status, 503);
    assert_eq!(body["status"], "loading");
    assert_eq!(body["phase"], "unet");
    assert!(body["progress"].as_f64().expect("progress") > 0.4, "{body}");
    let refused = replica.post(json!({"prompt": "cat"})).await;
    assert!(refused.headers().contains_key("retry-after"));
    assert_eq!(error_of(refused).await.0, 503);
    let (status, _) = replica.get_json("/v1/models").await;
    assert_eq!(status, 503);

    release.send(Ok(())).expect("loader waits");
    replica.wait_ready().await;
    let (_, body) = replica.get_json("/v1/health").await;
    assert_eq!(body["progress"], 1.0);
    assert!(body["load_seconds"].as_f64().is_some());
    assert_eq!(body["gpu"], Value::Null);
    let warm = generator
        .first_call
        .lock()
        .expect("lock")
        .clone()
        .expect("warm-up ran");
    assert_eq!((warm.steps, warm.width, warm.height), (1, 32, 32));
    assert!(
        warm.guidance_scale <= 1.0,
        "the warm-up skips guidance: {}",
        warm.guidance_scale
    );
    let (status, models) = replica.get_json("/v1/models").await;
    assert_eq!((status, models["family"].as_str()), (200, Some("sd1")));
    replica.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_failed_load_is_reported_then_the_server_exits_with_the_reason() {
    let (gate, _reached, release) = gate();
    let replica = Replica::start(
        StepGenerator::new(Duration::ZERO),
        &["--failed-exit-grace", "300ms"],
        Some(gate),
    )
    .await;
    release
        .send(Err("tensor `unet.x` is missing".into()))
        .expect("loader waits");
    let mut seen_failed = false;
    for _ in 0..200 {
        let Ok(r) = replica
            .http
            .get(format!("{}/v1/health", replica.base))
            .send()
            .await
        else {
            break;
        };
        let body: Value = r.json().await.expect("json");
        if body["status"] == "failed" {
            assert!(body["reason"].as_str().unwrap_or("").contains("unet.x"), "{body}");
            seen_failed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(seen_failed, "health never said failed");
    let result = tokio::time::timeout(Duration::from_secs(10), replica.done)
        .await
        .expect("exits after grace");
    let error = result.expect("task").expect_err("a failed load is an error exit");
    assert!(error.to_string().contains("unet.x"), "{error}");
}

#[tokio::test]
async fn shutdown_lets_in_flight_work_finish_and_exits_cleanly() {
    let generator = StepGenerator::new(Duration::from_millis(10));
    let replica = Replica::started_ready(Arc::clone(&generator), &[]).await;
    let mut started = generator.started.subscribe();
    let warmups = *started.borrow();
    let in_flight = tokio::spawn(replica.post(json!({"prompt": "x", "num_inference_steps": 20})));
    wait_count(&mut started, warmups + 1).await;
    let base = replica.base.clone();
    replica.stop().await.expect("exit 0");
    assert_eq!(in_flight.await.expect("task").status(), 200);
    assert!(
        reqwest::get(format!("{base}/v1/health")).await.is_err(),
        "no longer listening"
    );
}

#[tokio::test]
async fn shutdown_cancels_work_that_outlasts_the_grace() {
    let generator = StepGenerator::new(Duration::from_millis(10));
    let replica = Replica::started_ready(Arc::clone(&generator), &["--shutdown-grace", "100ms"]).await;
    let mut started = generator.started.subscribe();
    let warmups = *started.borrow();
    let in_flight = tokio::spawn(replica.post(json!({"prompt": "x", "num_inference_steps": 200})));
    wait_count(&mut started, warmups + 1).await;
    replica.stop().await.expect("exit 0");
    let (status, kind, _) = error_of(in_flight.await.expect("task")).await;
    assert_eq!((status, kind.as_str()), (503, "shutting_down"));
    assert_eq!(*generator.cancelled.borrow(), 1);
}
