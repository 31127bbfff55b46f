//! Leader election against a mock API server: acquire, renew, follow, take over an expired
//! Lease, lose a write race, step down when renewals fail, release on shutdown. Time is paused
//! where expiry matters, so waiting out a 15 s lease costs nothing.

mod kube_support;

mod kube_lease {
    use std::time::Duration;

    use http::{Method, StatusCode};
    use k8s_openapi::api::coordination::v1::Lease;
    use kube::Api;
    use sdplane_controller::kube::lease::{LeaderElector, LeaseTiming};
    use serde_json::{Value, json};
    use tokio::sync::watch;
    use tokio_util::sync::CancellationToken;

    use super::kube_support::{ApiServer, Seen, echo, mock_client, reply, run_scenario, status_error};

    const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/ml/leases";
    const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/ml/leases/sdplane-controller";

    fn elector(identity: &str) -> (LeaderElector, ApiServer) {
        let (client, api) = mock_client("ml");
        let leases: Api<Lease> = Api::namespaced(client, "ml");
        (
            LeaderElector::new(leases, "sdplane-controller", identity, LeaseTiming::default()),
            api,
        )
    }

    fn lease(holder: Option<&str>, renew: &str, transitions: i32, rv: &str) -> Value {
        json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "sdplane-controller", "namespace": "ml", "resourceVersion": rv},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15, "renewTime": renew,
                     "acquireTime": "2026-01-01T00:00:00.000000Z", "leaseTransitions": transitions}
        })
    }

    fn ok(body: Value) -> impl FnOnce(&Seen) -> (StatusCode, Value) {
        reply(StatusCode::OK, body)
    }

    fn not_found() -> impl FnOnce(&Seen) -> (StatusCode, Value) {
        reply(StatusCode::NOT_FOUND, status_error(404, "NotFound"))
    }

    #[tokio::test]
    async fn absent_lease_is_created_and_held_by_us() {
        let (mut elector, mut api) = elector("pod-a");
        let scenario = async move {
            api.expect(Method::GET, LEASE, not_found()).await;
            let created = api.expect(Method::POST, LEASES, echo).await;
            assert_eq!(created.body["metadata"]["name"], "sdplane-controller");
            assert_eq!(created.body["spec"]["holderIdentity"], "pod-a");
            assert_eq!(created.body["spec"]["leaseDurationSeconds"], 15);
            assert_eq!(created.body["spec"]["leaseTransitions"], 0);
            assert!(created.body["spec"]["renewTime"].is_string());
        };
        let lead = run_scenario(elector.try_acquire_or_renew(), scenario)
            .await
            .expect("round succeeds");
        assert!(lead && elector.is_leader());
    }

    #[tokio::test]
    async fn own_lease_is_renewed_conditionally_on_its_resource_version() {
        let (mut elector, mut api) = elector("pod-a");
        let scenario = async move {
            api.expect(
                Method::GET,
                LEASE,
                ok(lease(Some("pod-a"), "2026-01-01T00:00:00.000000Z", 3, "41")),
            )
            .await;
            let renewed = api.expect(Method::PUT, LEASE, echo).await;
            assert_eq!(
                renewed.body["metadata"]["resourceVersion"], "41",
                "write is optimistic"
            );
            assert_eq!(renewed.body["spec"]["holderIdentity"], "pod-a");
            assert_eq!(
                renewed.body["spec"]["leaseTransitions"], 3,
                "a renewal is no transition"
            );
            assert_eq!(
                renewed.body["spec"]["acquireTime"], "2026-01-01T00:00:00.000000Z",
                "acquire time kept"
            );
            assert_ne!(
                renewed.body["spec"]["renewTime"], "2026-01-01T00:00:00.000000Z",
                "renew time bumped"
            );
        };
        assert!(
            run_scenario(elector.try_acquire_or_renew(), scenario)
                .await
                .expect("round succeeds")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn live_foreign_lease_is_followed_until_it_stops_changing_for_its_duration() {
        let (mut elector, mut api) = elector("pod-b");
        let held = lease(Some("pod-a"), "2026-01-01T00:00:00.000000Z", 0, "7");
        let renewed = lease(Some("pod-a"), "2026-01-01T00:00:10.000000Z", 0, "8");
        // t=0 s: held; t=10 s: pod-a renews (the record changes); t=24 s: silent for 14 s.
        for (step, body) in [(0, held.clone()), (10, renewed.clone()), (14, renewed.clone())] {
            tokio::time::advance(Duration::from_secs(step)).await;
            let scenario = async {
                api.expect(Method::GET, LEASE, ok(body)).await;
            };
            let lead = run_scenario(elector.try_acquire_or_renew(), scenario)
                .await
                .expect("round succeeds");
            assert!(!lead, "follows while pod-a's record changed less than 15 s ago");
        }
        tokio::time::advance(Duration::from_secs(1)).await; // 15 s since the record last changed
        let scenario = async {
            api.expect(Method::GET, LEASE, ok(renewed.clone())).await;
            let taken = api.expect(Method::PUT, LEASE, echo).await;
            assert_eq!(taken.body["spec"]["holderIdentity"], "pod-b");
            assert_eq!(taken.body["spec"]["leaseTransitions"], 1);
            assert_eq!(taken.body["metadata"]["resourceVersion"], "8");
        };
        assert!(
            run_scenario(elector.try_acquire_or_renew(), scenario)
                .await
                .expect("round succeeds")
        );
    }

    #[tokio::test]
    async fn released_lease_is_taken_over_at_once() {
        let (mut elector, mut api) = elector("pod-b");
        let scenario = async move {
            api.expect(
                Method::GET,
                LEASE,
                ok(lease(None, "2026-01-01T00:00:00.000000Z", 4, "9")),
            )
            .await;
            let taken = api.expect(Method::PUT, LEASE, echo).await;
            assert_eq!(taken.body["spec"]["holderIdentity"], "pod-b");
            assert_eq!(taken.body["spec"]["leaseTransitions"], 5);
        };
        assert!(
            run_scenario(elector.try_acquire_or_renew(), scenario)
                .await
                .expect("round succeeds")
        );
    }

    #[tokio::test]
    async fn lost_write_race_means_following_not_failing() {
        let (mut elector, mut api) = elector("pod-b");
        let scenario = async move {
            api.expect(Method::GET, LEASE, not_found()).await;
            api.expect(
                Method::POST,
                LEASES,
                reply(StatusCode::CONFLICT, status_error(409, "AlreadyExists")),
            )
            .await;
        };
        let lead = run_scenario(elector.try_acquire_or_renew(), scenario)
            .await
            .expect("a lost race is no error");
        assert!(!lead && !elector.is_leader());
    }

    #[tokio::test(start_paused = true)]
    async fn leader_steps_down_when_renewals_fail_past_the_deadline_and_releases_on_shutdown() {
        let (elector, mut api) = elector("pod-a");
        let (tx, mut leading) = watch::channel(false);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(elector.run(tx, shutdown.clone()));

        api.expect(Method::GET, LEASE, not_found()).await;
        api.expect(Method::POST, LEASES, echo).await;
        leading
            .wait_for(|l| *l)
            .await
            .expect("leads after creating the lease");
        let started = tokio::time::Instant::now();
        // The API server fails every round from now on: leadership holds through short trouble…
        loop {
            api.expect(
                Method::GET,
                LEASE,
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    status_error(503, "ServiceUnavailable"),
                ),
            )
            .await;
            tokio::task::yield_now().await;
            if !*leading.borrow() {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(12),
                "still leading past the renew deadline"
            );
        }
        // …and is given up once the 10 s renew deadline has passed.
        assert!(
            started.elapsed() >= Duration::from_secs(10),
            "stepped down early: {:?}",
            started.elapsed()
        );

        // Lead again, then shut down: the lease is handed back (empty holder, 1 s duration).
        api.expect(
            Method::GET,
            LEASE,
            ok(lease(Some("pod-a"), "2026-01-01T00:00:00.000000Z", 0, "3")),
        )
        .await;
        api.expect(Method::PUT, LEASE, echo).await;
        leading.wait_for(|l| *l).await.expect("leads again");
        shutdown.cancel();
        api.expect(
            Method::GET,
            LEASE,
            ok(lease(Some("pod-a"), "2026-01-01T00:00:02.000000Z", 0, "4")),
        )
        .await;
        let released = api.expect(Method::PUT, LEASE, echo).await;
        assert!(
            released.body["spec"]["holderIdentity"].is_null(),
            "{}",
            released.body
        );
        assert_eq!(released.body["spec"]["leaseDurationSeconds"], 1);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("elector stops")
            .expect("no panic");
        assert!(!*leading.borrow());
    }
}
