//! The replica server's request path over real loopback HTTP, driven by a test `Generator`:
//! answers, validation errors, admission (429), deadlines (504), disconnects, metrics and the
//! OpenAPI document. (The real binary with a real tiny model: root `tests/replica_http.rs`.)

mod server_support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{Value, json};
use server_support::{Replica, StepGenerator, error_of, wait_count};

#[tokio::test]
async fn generate_returns_the_image_the_parameters_used_and_compute_metrics() {
    let replica = Replica::started_ready(StepGenerator::new(Duration::from_millis(5)), &[]).await;
    let response = replica
        .http
        .post(format!("{}/v1/generate", replica.base))
        .header("x-request-id", "abc-123")
        .json(&json!({"prompt": "a red square", "width": 96, "num_images": 2, "scheduler": "ddim"}))
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-request-id"], "abc-123");
    for h in ["x-queue-time", "x-inference-time", "x-total-time"] {
        let v: f64 = response.headers()[h]
            .to_str()
            .expect("ascii")
            .parse()
            .expect("seconds");
        assert!(v >= 0.0, "{h}");
    }
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["status"], "success");
    assert_eq!(body["model"], "tiny");
    assert_eq!(body["prompt"], "a red square");
    assert_eq!(body["images"].as_array().map(Vec::len), Some(2));
    assert!(
        body["image"]
            .as_str()
            .expect("image")
            .starts_with("data:image/png;base64,")
    );
    let p = &body["parameters"];
    assert_eq!((p["width"].as_u64(), p["height"].as_u64()), (Some(96), Some(64)));
    assert_eq!(
        (p["num_inference_steps"].as_u64(), p["scheduler"].as_str()),
        (Some(4), Some("ddim"))
    );
    assert!(p["seed"].as_u64().is_some(), "a seed is drawn and returned");
    assert_eq!(p["strength"], Value::Null);
    let m = &body["compute_metrics"];
    assert_eq!(m["denoising_steps"], 4);
    assert!(m["inference_seconds"].as_f64().expect("inference") >= 0.02);
    assert!(
        m["query_duration_seconds"].as_f64().expect("duration")
            >= m["inference_seconds"].as_f64().expect("i")
    );
    assert!(m["replica_memory_mb"].as_f64().expect("rss") > 0.0);
    assert!(m["replica_num_cpus"].as_u64().expect("cpus") >= 1);
    for gpu in [
        "replica_gpu_memory_allocated_mb",
        "replica_gpu_memory_total_mb",
        "replica_gpu_utilization_percent",
    ] {
        assert_eq!(m[gpu], Value::Null, "{gpu}");
    }

    let png = replica
        .post(json!({"prompt": "x", "seed": 7, "format": "png"}))
        .await;
    assert_eq!(png.status(), 200);
    assert_eq!(png.headers()["content-type"], "image/png");
    assert_eq!(png.headers()["x-seed"], "7");
    let metrics: Value =
        serde_json::from_str(png.headers()["x-compute-metrics"].to_str().expect("ascii")).expect("json");
    assert_eq!(metrics["denoising_steps"], 4);
    assert!(
        png.headers()["x-request-id"].to_str().expect("ascii").len() >= 16,
        "an id is generated"
    );
    let bytes = png.bytes().await.expect("body");
    let img = image::load_from_memory_with_format(&bytes, image::ImageFormat::Png)
        .expect("a PNG")
        .to_rgb8();
    assert_eq!((img.dimensions(), img.get_pixel(0, 0)[0]), ((64, 64), 7));
    replica.stop().await.expect("clean stop");
}

#[tokio::test]
async fn bad_requests_get_json_errors_with_the_right_status_and_the_field_named() {
    let replica = Replica::started_ready(
        StepGenerator::new(Duration::ZERO),
        &["--max-body-bytes", "2048", "--memory-budget-mb", "10"],
    )
    .await;
    let cases = [
        (
            json!({"prompt": "x", "colour": "red"}),
            400,
            "invalid_json",
            "colour",
        ),
        (
            json!({"prompt": "x", "width": 100}),
            400,
            "invalid_parameter",
            "width",
        ),
        (
            json!({"prompt": "x", "width": "wide"}),
            400,
            "invalid_json",
            "width",
        ),
        (
            json!({"prompt": "x", "num_inference_steps": 0}),
            400,
            "invalid_parameter",
            "1..=200",
        ),
        (
            json!({"prompt": "x", "scheduler": "plms"}),
            400,
            "invalid_json",
            "plms",
        ),
        (json!({"negative_prompt": "x"}), 400, "invalid_json", "prompt"),
        (
            json!({"prompt": "x", "strength": 0.5}),
            400,
            "invalid_parameter",
            "init_image",
        ),
        (
            json!({"prompt": "x", "init_image": "bm90IGFuIGltYWdl"}),
            400,
            "invalid_parameter",
            "init_image",
        ),
        (json!({"prompt": "x".repeat(3000)}), 413, "body_too_large", ""),
        (
            json!({"prompt": "x", "width": 256, "height": 256}),
            422,
            "too_large_for_memory",
            "MB",
        ),
    ];
    for (body, status, kind, mention) in cases {
        let (got, got_kind, message) = error_of(replica.post(body.clone()).await).await;
        assert_eq!((got, got_kind.as_str()), (status, kind), "{body}: {message}");
        assert!(
            message.contains(mention),
            "{body}: {message} should mention {mention}"
        );
    }
    let url = format!("{}/v1/generate", replica.base);
    let syntax = replica
        .http
        .post(&url)
        .header("content-type", "application/json")
        .body("{\"prompt\": ")
        .send()
        .await;
    assert_eq!(error_of(syntax.expect("POST")).await.0, 400);
    let text = replica
        .http
        .post(&url)
        .header("content-type", "text/plain")
        .body("{\"prompt\": \"x\"}")
        .send()
        .await;
    assert_eq!(error_of(text.expect("POST")).await.1, "unsupported_media_type");
    let (status, kind, _) = error_of(
        replica
            .http
            .get(format!("{}/v2/nothing", replica.base))
            .send()
            .await
            .expect("GET"),
    )
    .await;
    assert_eq!((status, kind.as_str()), (404, "not_found"));
    let (status, kind, _) = error_of(replica.http.get(&url).send().await.expect("GET")).await;
    assert_eq!((status, kind.as_str()), (405, "method_not_allowed"));
    let (status, kind, message) = error_of(replica.post(json!({"prompt": "panic, please"})).await).await;
    assert_eq!((status, kind.as_str()), (500, "internal"), "{message}");
    assert_eq!(
        replica.post(json!({"prompt": "fine"})).await.status(),
        200,
        "the worker is free again"
    );
    replica.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_full_queue_answers_429_with_retry_after_and_frees_up_afterwards() {
    let generator = StepGenerator::new(Duration::from_millis(20));
    let replica = Replica::started_ready(
        Arc::clone(&generator),
        &["--max-queue", "1", "--max-concurrency", "1"],
    )
    .await;
    let mut started = generator.started.subscribe();
    let warmups = *started.borrow();
    let body = json!({"prompt": "x", "num_inference_steps": 25});
    let first = tokio::spawn(replica.post(body.clone()));
    wait_count(&mut started, warmups + 1).await;
    let second = tokio::spawn(replica.post(body.clone()));
    // The second is in the queue once health counts it.
    for _ in 0..500 {
        if replica.get_json("/v1/health").await.1["queue_depth"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let refused = replica.post(body.clone()).await;
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!(retry_after >= 1);
    assert_eq!(error_of(refused).await.1, "queue_full");
    assert_eq!(first.await.expect("task").status(), 200);
    assert_eq!(second.await.expect("task").status(), 200);
    assert_eq!(replica.post(body).await.status(), 200);
    let text = replica
        .http
        .get(format!("{}/metrics", replica.base))
        .send()
        .await
        .expect("GET")
        .text()
        .await
        .expect("text");
    assert!(
        text.contains("sdplane_replica_requests_total{status=\"429\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("sdplane_replica_requests_total{status=\"200\"} 3"),
        "{text}"
    );
    replica.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_request_over_its_deadline_gets_504_and_its_work_is_cancelled() {
    let generator = StepGenerator::new(Duration::from_millis(10));
    let replica = Replica::started_ready(Arc::clone(&generator), &["--request-timeout", "150ms"]).await;
    let mut cancelled = generator.cancelled.subscribe();
    let (status, kind, _) = error_of(
        replica
            .post(json!({"prompt": "x", "num_inference_steps": 200}))
            .await,
    )
    .await;
    assert_eq!((status, kind.as_str()), (504, "timeout"));
    wait_count(&mut cancelled, 1).await;
    assert!(
        generator.steps_run.load(Ordering::SeqCst) < 100,
        "stopped between steps long before the end"
    );
    replica.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_client_that_disconnects_cancels_its_running_generation() {
    let generator = StepGenerator::new(Duration::from_millis(10));
    let replica = Replica::started_ready(Arc::clone(&generator), &[]).await;
    let mut started = generator.started.subscribe();
    let mut cancelled = generator.cancelled.subscribe();
    let warmups = *started.borrow();
    let impatient = reqwest::Client::new();
    let request = impatient
        .post(format!("{}/v1/generate", replica.base))
        .json(&json!({"prompt": "x", "num_inference_steps": 200}))
        .send();
    let client = tokio::spawn(request);
    wait_count(&mut started, warmups + 1).await;
    client.abort();
    wait_count(&mut cancelled, 1).await;
    assert!(generator.steps_run.load(Ordering::SeqCst) < 150);
    replica.stop().await.expect("clean stop");
}

#[tokio::test]
async fn openapi_document_and_metrics_are_served() {
    let replica = Replica::started_ready(StepGenerator::new(Duration::ZERO), &[]).await;
    let (status, doc) = replica.get_json("/openapi.json").await;
    assert_eq!(status, 200);
    assert!(doc["paths"]["/v1/generate"]["post"].is_object(), "{doc}");
    let text = replica
        .http
        .get(format!("{}/metrics", replica.base))
        .send()
        .await
        .expect("GET")
        .text()
        .await
        .expect("text");
    for name in [
        "sdplane_replica_model_load_seconds",
        "sdplane_replica_queue_depth",
        "sdplane_replica_in_flight",
    ] {
        assert!(text.contains(name), "{name}");
    }
    replica.stop().await.expect("clean stop");
}
