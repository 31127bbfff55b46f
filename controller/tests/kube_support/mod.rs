//! A mock Kubernetes API server for tests without a cluster (the kube-rs/controller-rs
//! `fixtures.rs` pattern): `tower_test::mock` stands behind a real `kube::Client`, and a scenario
//! task answers each request after checking its method, path, query and body. Every wait is
//! bounded, so a missing or extra request fails the test instead of hanging it.

#![allow(dead_code)] // Each test binary uses a different part of the fixture.

use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use kube::Client;
use kube::client::Body;
use serde_json::Value;

/// The server side of the mock.
pub struct ApiServer(tower_test::mock::Handle<Request<Body>, Response<Body>>);

/// Longest a test waits for the next request or for the code under test to finish.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(5);

/// A client whose every request reaches the returned [`ApiServer`].
pub fn mock_client(namespace: &str) -> (Client, ApiServer) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(service, namespace.to_string()), ApiServer(handle))
}

/// A request the code under test made.
#[derive(Debug)]
pub struct Seen {
    pub method: Method,
    pub path: String,
    pub query: String,
    pub content_type: Option<String>,
    /// The JSON (or YAML-as-JSON) body, `Null` when empty.
    pub body: Value,
}

impl ApiServer {
    /// Wait for the next request, check its method and path, answer what `answer` makes of it,
    /// and return what was sent for further checks.
    pub async fn expect(
        &mut self,
        method: Method,
        path: &str,
        answer: impl FnOnce(&Seen) -> (StatusCode, Value),
    ) -> Seen {
        self.expect_where(method, path, |p| p == path, answer).await
    }

    /// [`ApiServer::expect`] for a path under `prefix` (objects with generated names).
    pub async fn expect_under(
        &mut self,
        method: Method,
        prefix: &str,
        answer: impl FnOnce(&Seen) -> (StatusCode, Value),
    ) -> Seen {
        self.expect_where(method, prefix, |p| p.starts_with(prefix), answer)
            .await
    }

    async fn expect_where(
        &mut self,
        method: Method,
        path: &str,
        path_matches: impl Fn(&str) -> bool,
        answer: impl FnOnce(&Seen) -> (StatusCode, Value),
    ) -> Seen {
        let next = tokio::time::timeout(STEP_TIMEOUT, self.0.next_request()).await;
        let Ok(Some((request, send))) = next else {
            panic!("expected {method} {path}, but no request came");
        };
        let (parts, body) = request.into_parts();
        let bytes = body.collect_bytes().await.expect("request body");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .or_else(|_| serde_yaml::from_slice(&bytes))
                .expect("request body is JSON or YAML")
        };
        let seen = Seen {
            method: parts.method.clone(),
            path: parts.uri.path().to_string(),
            query: parts.uri.query().unwrap_or_default().to_string(),
            content_type: parts
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            body,
        };
        assert!(
            seen.method == method && path_matches(&seen.path),
            "expected {method} {path}, got {seen:?}"
        );
        let (status, reply) = answer(&seen);
        let response = Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Body::from(serde_json::to_vec(&reply).expect("reply serialises")))
            .expect("valid response");
        send.send_response(response);
        seen
    }

    /// Fail if any request arrives within `window` (the code under test should be done).
    pub async fn expect_silence(&mut self, window: Duration) {
        if let Ok(Some((request, _))) = tokio::time::timeout(window, self.0.next_request()).await {
            panic!("unexpected request {} {}", request.method(), request.uri());
        }
    }
}

/// Answer `status` with `body`.
pub fn reply(status: StatusCode, body: Value) -> impl FnOnce(&Seen) -> (StatusCode, Value) {
    move |_| (status, body)
}

/// Answer 200 with the object sent (what the API server does for an apply/replace, minus defaults).
pub fn echo(seen: &Seen) -> (StatusCode, Value) {
    (StatusCode::OK, seen.body.clone())
}

/// Answer 200 with the object sent plus `status` (the object as a cluster with pods shows it).
pub fn echo_with_status(status: Value) -> impl FnOnce(&Seen) -> (StatusCode, Value) {
    move |seen| {
        let mut body = seen.body.clone();
        body["status"] = status;
        (StatusCode::OK, body)
    }
}

/// A Kubernetes `Status` error body with `code` and `reason` (`NotFound`, `Conflict`, ...).
pub fn status_error(code: u16, reason: &str) -> Value {
    serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": format!("mock {reason}"), "reason": reason, "code": code
    })
}

/// Run the code under test and the scenario side by side, both under [`STEP_TIMEOUT`] × 4.
pub async fn run_scenario<T, A, B>(under_test: A, scenario: B) -> T
where
    A: std::future::Future<Output = T>,
    B: std::future::Future<Output = ()>,
{
    let both = async { tokio::join!(under_test, scenario).0 };
    tokio::time::timeout(STEP_TIMEOUT * 4, both)
        .await
        .expect("scenario timed out")
}
