//! Leader gating of the SDApp Controller, against a `tower_test` mock API server.

use std::collections::BTreeSet;
use std::time::Duration;

use http::{Request, Response};
use kube::client::Body;

use super::*;
use crate::kube::examples;

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// Answer every list request with an empty list and leave watch requests pending (as a quiet
/// API server would), until `paths` holds the three collections the Controller watches.
/// Returns the held watch responders so the watches stay open.
async fn serve_lists(
    handle: &mut Handle,
    paths: &mut BTreeSet<String>,
) -> Vec<tower_test::mock::SendResponse<Response<Body>>> {
    let mut held = Vec::new();
    while paths.len() < 3 {
        let (request, send) = tokio::time::timeout(Duration::from_secs(5), handle.next_request())
            .await
            .expect("the controller lists its objects")
            .expect("client alive");
        let query = request.uri().query().unwrap_or_default().to_string();
        if query.contains("watch=true") {
            held.push(send);
            continue;
        }
        let owned_only = query.contains("labelSelector=app.kubernetes.io%2Fmanaged-by%3Dsdplane");
        paths.insert(format!("{} owned_only={owned_only}", request.uri().path()));
        let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "1"}, "items": []});
        let body = Body::from(serde_json::to_vec(&list).expect("json"));
        send.send_response(Response::builder().body(body).expect("response"));
    }
    held
}

#[tokio::test]
async fn sdapp_controller_runs_only_while_this_replica_leads() {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let ctx = Arc::new(Context::new(
        Client::new(service, "ml"),
        examples::config("ml"),
        Arc::default(),
    ));
    let (leading, rx) = watch::channel(false);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(run_while_leading(ctx, rx, shutdown.clone()));

    // A follower sends nothing.
    assert!(
        tokio::time::timeout(Duration::from_millis(200), handle.next_request())
            .await
            .is_err()
    );

    leading.send_replace(true);
    let mut paths = BTreeSet::new();
    let held = serve_lists(&mut handle, &mut paths).await;
    assert_eq!(
        paths,
        BTreeSet::from([
            "/api/v1/namespaces/ml/services owned_only=true".to_string(),
            "/apis/apps/v1/namespaces/ml/deployments owned_only=true".to_string(),
            "/apis/sdplane.io/v1alpha1/namespaces/ml/sdapps owned_only=false".to_string(),
        ])
    );

    // Losing the lease stops the Controller at once (the run loop drops its receiver clone);
    // leading again starts a fresh one, which lists anew while the old watches are still open.
    leading.send_replace(false);
    tokio::time::timeout(Duration::from_secs(5), async {
        while leading.receiver_count() > 1 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the controller stops when leadership is lost");
    leading.send_replace(true);
    let mut again = BTreeSet::new();
    let _held_again = serve_lists(&mut handle, &mut again).await;
    assert_eq!(again, paths);
    drop(held);

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("stops on shutdown")
        .expect("no panic");
}
