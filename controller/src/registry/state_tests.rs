//! Registry behaviour without I/O: deploy rules, activation, idle scale-to-zero, cold starts,
//! failure and eviction, driven with explicit instants.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use sdplane_wire::admin::{ActivityReport, AppActivity, AppSpec, AppState};
use tokio::time::Instant;

use super::*;
use crate::backend::{AppObservation, ReplicaObservation, ReplicaPhase};

const IDLE: Duration = Duration::from_secs(300);

fn policy() -> Policy {
    Policy {
        idle_timeout: IDLE,
        target_concurrency: 1,
        scale_down_window: Duration::from_secs(30),
    }
}

fn spec(model: &str) -> AppSpec {
    AppSpec {
        model: model.into(),
        min_replicas: 0,
        max_replicas: 2,
        idle_timeout_s: None,
        target_concurrency: None,
    }
}

fn model(app: &str, file: &str) -> ResolvedModel {
    ResolvedModel {
        app: app.into(),
        model: file.into(),
        path: format!("/models/{file}").into(),
        parameters: 1000,
    }
}

fn registry_with(app: &str, file: &str) -> RegistryState {
    let mut r = RegistryState::new(policy(), Default::default());
    r.deploy(model(app, file), spec(file)).expect("deploy");
    r
}

fn replica(phase: ReplicaPhase, port: u16) -> ReplicaObservation {
    ReplicaObservation {
        id: format!("r{port}"),
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        phase,
        progress: (phase == ReplicaPhase::Loading).then_some(0.5),
        reason: None,
        started_at: SystemTime::now(),
        in_flight: 0,
    }
}

fn seen(app: &str, replicas: Vec<ReplicaObservation>) -> BTreeMap<String, AppObservation> {
    BTreeMap::from([(
        app.to_string(),
        AppObservation {
            replicas,
            ..Default::default()
        },
    )])
}

fn desired(r: &mut RegistryState, app: &str, now: Instant) -> u32 {
    let (plan, _) = r.plan(now);
    plan.into_iter()
        .find(|(d, _)| d.name == app)
        .map(|(_, n)| n)
        .expect("app in plan")
}

#[test]
fn deploying_the_same_file_again_is_idempotent_and_bumps_the_generation() {
    let mut r = registry_with("sd-x", "x.safetensors");
    let first = r.file().apps[0].generation;
    let (status, created) = r
        .deploy(model("sd-x", "x.safetensors"), spec("x.safetensors"))
        .expect("redeploy");
    assert!(!created);
    assert_eq!(status.state, AppState::ScaledToZero);
    assert_eq!(r.file().apps.len(), 1);
    assert!(r.file().apps[0].generation > first);
}

#[test]
fn two_files_mapping_to_one_name_conflict_and_the_error_names_both() {
    let mut r = registry_with("sd-x", "a/x.safetensors");
    let err = r
        .deploy(model("sd-x", "b/x.safetensors"), spec("b/x.safetensors"))
        .expect_err("conflict");
    let text = err.to_string();
    assert_eq!(err.status().as_u16(), 409);
    assert!(
        text.contains("a/x.safetensors") && text.contains("b/x.safetensors"),
        "{text}"
    );
}

#[test]
fn many_activations_of_a_cold_app_ask_for_one_replica() {
    let mut r = registry_with("sd-x", "x.safetensors");
    let t0 = Instant::now();
    assert_eq!(desired(&mut r, "sd-x", t0), 0, "a never-used app stays at zero");
    for _ in 0..50 {
        let route = r.activate("sd-x", t0).expect("activate");
        assert_eq!(route.state, AppState::Starting);
    }
    assert_eq!(desired(&mut r, "sd-x", t0), 1);
    assert!(matches!(r.activate("sd-nope", t0), Err(Error::AppNotFound(_))));
}

#[test]
fn an_idle_app_scales_to_zero_after_its_idle_timeout_and_not_before() {
    let mut r = registry_with("sd-x", "x.safetensors");
    let t0 = Instant::now();
    r.activate("sd-x", t0).expect("activate");
    r.observed(seen("sd-x", vec![replica(ReplicaPhase::Ready, 1)]), t0);
    assert_eq!(desired(&mut r, "sd-x", t0 + IDLE - Duration::from_secs(1)), 1);
    assert_eq!(desired(&mut r, "sd-x", t0 + IDLE), 0);
}

#[test]
fn per_app_idle_timeout_overrides_the_default() {
    let mut r = RegistryState::new(policy(), Default::default());
    let short = AppSpec {
        idle_timeout_s: Some(3),
        ..spec("x.safetensors")
    };
    r.deploy(model("sd-x", "x.safetensors"), short).expect("deploy");
    let t0 = Instant::now();
    r.activate("sd-x", t0).expect("activate");
    assert_eq!(desired(&mut r, "sd-x", t0 + Duration::from_secs(2)), 1);
    assert_eq!(desired(&mut r, "sd-x", t0 + Duration::from_secs(3)), 0);
}

#[test]
fn router_activity_keeps_an_app_warm_and_in_flight_work_is_never_scaled_away() {
    let mut r = registry_with("sd-x", "x.safetensors");
    let t0 = Instant::now();
    r.activate("sd-x", t0).expect("activate");
    r.observed(seen("sd-x", vec![replica(ReplicaPhase::Ready, 1)]), t0);
    let busy = ActivityReport {
        apps: BTreeMap::from([(
            "sd-x".to_string(),
            AppActivity {
                in_flight: 1,
                idle_seconds: 0.0,
            },
        )]),
    };
    let later = t0 + IDLE * 3;
    r.activity(&busy, later);
    assert_eq!(
        desired(&mut r, "sd-x", later + IDLE * 2),
        1,
        "a request in flight holds its replica"
    );
    let quiet = ActivityReport {
        apps: BTreeMap::from([(
            "sd-x".to_string(),
            AppActivity {
                in_flight: 0,
                idle_seconds: 10.0,
            },
        )]),
    };
    r.activity(&quiet, later + Duration::from_secs(10));
    assert_eq!(desired(&mut r, "sd-x", later + IDLE - Duration::from_secs(1)), 1);
    assert_eq!(desired(&mut r, "sd-x", later + IDLE), 0);
}

#[test]
fn a_cold_start_is_measured_from_activation_to_the_first_ready_replica() {
    let mut r = registry_with("sd-x", "x.safetensors");
    let t0 = Instant::now();
    r.activate("sd-x", t0).expect("activate");
    r.plan(t0);
    let (events, _) = r.observed(
        seen("sd-x", vec![replica(ReplicaPhase::Loading, 1)]),
        t0 + Duration::from_secs(4),
    );
    assert!(events.is_empty());
    assert_eq!(r.routes().apps["sd-x"].state, AppState::Loading);
    let (events, _) = r.observed(
        seen("sd-x", vec![replica(ReplicaPhase::Ready, 1)]),
        t0 + Duration::from_secs(7),
    );
    assert_eq!(
        events,
        vec![Event::ColdStart {
            app: "sd-x".into(),
            seconds: 7.0
        }]
    );
    let route = &r.routes().apps["sd-x"];
    assert_eq!(route.state, AppState::Ready);
    assert_eq!(route.endpoints, vec!["http://127.0.0.1:1".to_string()]);
    assert_eq!(route.estimated_cold_start_seconds, 7.0);
    assert_eq!(
        r.file().apps[0].cold_start.count,
        1,
        "history is persisted with the app"
    );
}

#[test]
fn a_failed_app_is_not_woken_until_redeployed() {
    let mut r = registry_with("sd-x", "x.safetensors");
    let t0 = Instant::now();
    r.activate("sd-x", t0).expect("activate");
    let failed = AppObservation {
        failure: Some("bad weights".into()),
        ..Default::default()
    };
    r.observed(BTreeMap::from([("sd-x".to_string(), failed)]), t0);
    let route = r.activate("sd-x", t0).expect("activate");
    assert_eq!(route.state, AppState::Failed);
    assert_eq!(route.reason.as_deref(), Some("bad weights"));
    assert_eq!(desired(&mut r, "sd-x", t0), 0);
    r.deploy(model("sd-x", "x.safetensors"), spec("x.safetensors"))
        .expect("redeploy");
    assert_eq!(
        r.activate("sd-x", t0).expect("activate").state,
        AppState::Starting
    );
    assert_eq!(desired(&mut r, "sd-x", t0), 1);
}

#[test]
fn replicas_found_running_after_a_restart_get_a_full_idle_timeout() {
    let mut r = registry_with("sd-x", "x.safetensors");
    let t0 = Instant::now();
    r.observed(seen("sd-x", vec![replica(ReplicaPhase::Ready, 1)]), t0);
    assert_eq!(desired(&mut r, "sd-x", t0 + Duration::from_secs(1)), 1);
    assert_eq!(desired(&mut r, "sd-x", t0 + IDLE), 0);
}

#[test]
fn replicas_of_deleted_apps_are_reported_for_removal() {
    let mut r = registry_with("sd-x", "x.safetensors");
    r.delete("sd-x").expect("delete");
    assert!(matches!(r.delete("sd-x"), Err(Error::AppNotFound(_))));
    let (_, orphans) = r.observed(
        seen("sd-x", vec![replica(ReplicaPhase::Ready, 1)]),
        Instant::now(),
    );
    assert_eq!(orphans, vec!["sd-x".to_string()]);
}

#[test]
fn eviction_picks_the_least_recently_used_idle_app() {
    let mut r = RegistryState::new(policy(), Default::default());
    for (app, file) in [
        ("sd-a", "a.safetensors"),
        ("sd-b", "b.safetensors"),
        ("sd-c", "c.safetensors"),
    ] {
        r.deploy(model(app, file), spec(file)).expect("deploy");
    }
    let t0 = Instant::now();
    r.activate("sd-a", t0 + Duration::from_secs(5)).expect("a");
    r.activate("sd-b", t0).expect("b");
    let mut all = seen("sd-a", vec![replica(ReplicaPhase::Ready, 1)]);
    all.extend(seen("sd-b", vec![replica(ReplicaPhase::Ready, 2)]));
    r.observed(all, t0 + Duration::from_secs(6));
    let t_evict = t0 + Duration::from_secs(6);
    assert_eq!(
        r.evict_for("sd-c", t_evict),
        Some("sd-b".to_string()),
        "b was used longest ago"
    );
    assert_eq!(desired(&mut r, "sd-b", t0 + Duration::from_secs(7)), 0);
    // The router still remembers b's old request: that must not undo the eviction.
    let stale = ActivityReport {
        apps: BTreeMap::from([(
            "sd-b".to_string(),
            AppActivity {
                in_flight: 0,
                idle_seconds: 8.0,
            },
        )]),
    };
    r.activity(&stale, t0 + Duration::from_secs(8));
    assert_eq!(desired(&mut r, "sd-b", t0 + Duration::from_secs(8)), 0);
    assert_eq!(
        r.evict_for("sd-a", t_evict),
        Some("sd-b".to_string()),
        "b still holds memory until it stops"
    );
    assert_eq!(r.evict_for("sd-b", t_evict), Some("sd-a".to_string()));
    // A new request wakes an evicted app again.
    r.activate("sd-b", t0 + Duration::from_secs(9)).expect("b");
    assert_eq!(desired(&mut r, "sd-b", t0 + Duration::from_secs(9)), 1);
}

#[test]
fn the_route_table_version_changes_only_with_its_content() {
    let mut r = registry_with("sd-x", "x.safetensors");
    let t0 = Instant::now();
    let v0 = r.routes().version;
    r.plan(t0);
    r.observed(BTreeMap::new(), t0);
    assert_eq!(r.routes().version, v0);
    r.activate("sd-x", t0).expect("activate");
    assert!(r.routes().version > v0);
}

#[test]
fn upserting_an_unchanged_sdapp_keeps_the_app_and_a_new_file_replaces_it() {
    let mut r = registry_with("sd-x", "x.safetensors");
    let t0 = Instant::now();
    r.activate("sd-x", t0).expect("activate");
    let generation = r.file().apps[0].generation;
    let (_, changed) = r
        .upsert(model("sd-x", "x.safetensors"), spec("x.safetensors"))
        .expect("upsert");
    assert!(!changed);
    assert_eq!(r.file().apps[0].generation, generation, "no redeploy");
    assert_eq!(desired(&mut r, "sd-x", t0), 1, "the activation is kept");

    let bigger = AppSpec {
        max_replicas: 3,
        ..spec("x.safetensors")
    };
    let (status, changed) = r.upsert(model("sd-x", "x.safetensors"), bigger).expect("upsert");
    assert!(changed);
    assert_eq!(status.spec.max_replicas, 3);

    // The SDApp now names another file: the app is replaced, not refused as a conflict.
    let (status, changed) = r
        .upsert(model("sd-x", "y/x.safetensors"), spec("y/x.safetensors"))
        .expect("upsert");
    assert!(changed);
    assert_eq!(status.model, "y/x.safetensors");
    assert_eq!(r.file().apps.len(), 1);
    assert_eq!(desired(&mut r, "sd-x", t0), 0, "a new app starts cold");
}
