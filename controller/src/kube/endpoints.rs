//! From EndpointSlices (kept current by a kube-runtime reflector, never by polling pods) and the
//! SDApps' status to what the controller's route table needs: each app's replica pods with their
//! address and phase. Pure: the backend passes snapshots of its reflector stores.

use std::collections::BTreeMap;
use std::time::SystemTime;

use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};

use super::crd::{SDApp, condition};
use super::objects::{APP_LABEL, REPLICA_PORT, SERVICE_NAME_LABEL};
use crate::backend::{AppObservation, ReplicaObservation, ReplicaPhase};

/// Each app's replicas as its EndpointSlices show them, and its `Failed` condition as the
/// reconciler wrote it. `started_at` gives the time a pod was first seen.
pub fn observations<'a>(
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    apps: impl IntoIterator<Item = &'a SDApp>,
    mut started_at: impl FnMut(&str) -> SystemTime,
) -> BTreeMap<String, AppObservation> {
    let mut out: BTreeMap<String, AppObservation> = BTreeMap::new();
    for app in apps {
        let Some(name) = app.metadata.name.clone() else {
            continue;
        };
        let failure = app.status.as_ref().and_then(|s| {
            s.conditions
                .iter()
                .find(|c| c.type_ == condition::FAILED && c.status == "True")
                .map(|c| format!("{}: {}", c.reason, c.message))
        });
        out.entry(name).or_default().failure = failure;
    }
    for slice in slices {
        let Some(app) = slice_app(slice) else { continue };
        let port = slice_port(slice);
        let replicas = &mut out.entry(app.to_string()).or_default().replicas;
        for endpoint in slice.endpoints.iter().flatten() {
            let Some(replica) = replica(endpoint, &slice.address_type, port, &mut started_at) else {
                continue;
            };
            // A dual-stack pod shows in one slice per address family: count it once.
            if !replicas.iter().any(|r| r.id == replica.id) {
                replicas.push(replica);
            }
        }
    }
    for obs in out.values_mut() {
        obs.replicas.sort_by(|a, b| a.id.cmp(&b.id));
    }
    out
}

/// Ready replica URLs of each app (what the router gets), from the same slices.
pub fn ready_endpoints(observations: &BTreeMap<String, AppObservation>) -> BTreeMap<String, Vec<String>> {
    observations
        .iter()
        .map(|(app, obs)| {
            (
                app.clone(),
                obs.ready().filter_map(|r| r.endpoint.clone()).collect(),
            )
        })
        .collect()
}

/// The app a slice belongs to: slices copy their Service's labels, and the Service is the app.
fn slice_app(slice: &EndpointSlice) -> Option<&str> {
    let labels = slice.metadata.labels.as_ref()?;
    labels
        .get(APP_LABEL)
        .or_else(|| labels.get(SERVICE_NAME_LABEL))
        .map(String::as_str)
}

/// The slice's `http` port, else the replica port.
fn slice_port(slice: &EndpointSlice) -> u16 {
    slice
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some("http"))
        .and_then(|p| p.port)
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or(REPLICA_PORT)
}

/// One endpoint as a replica: ready → `Ready`, terminating → `Draining`, else still loading
/// (the readiness probe sees 503 until weights are in).
fn replica(
    endpoint: &Endpoint,
    address_type: &str,
    port: u16,
    started_at: &mut impl FnMut(&str) -> SystemTime,
) -> Option<ReplicaObservation> {
    let address = endpoint.addresses.first()?;
    let conditions = endpoint.conditions.as_ref();
    // Nil `ready` means true and nil `terminating` means false (EndpointConditions API docs).
    let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
    let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
    let phase = match (terminating, ready) {
        (true, _) => ReplicaPhase::Draining,
        (false, true) => ReplicaPhase::Ready,
        (false, false) => ReplicaPhase::Loading,
    };
    let id = endpoint
        .target_ref
        .as_ref()
        .and_then(|r| r.name.clone())
        .unwrap_or_else(|| address.clone());
    let host = if address_type == "IPv6" {
        format!("[{address}]")
    } else {
        address.clone()
    };
    Some(ReplicaObservation {
        started_at: started_at(&id),
        id,
        endpoint: Some(format!("http://{host}:{port}")),
        phase,
        progress: None,
        reason: None,
        in_flight: 0,
    })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ObjectReference;
    use k8s_openapi::api::discovery::v1::{EndpointConditions, EndpointPort};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, Time};
    use k8s_openapi::jiff::Timestamp;

    use super::*;
    use crate::kube::crd::SDAppStatus;
    use crate::kube::examples;

    fn ep(pod: &str, ip: &str, ready: Option<bool>, terminating: Option<bool>) -> Endpoint {
        Endpoint {
            addresses: vec![ip.into()],
            conditions: Some(EndpointConditions {
                ready,
                serving: ready,
                terminating,
            }),
            target_ref: Some(ObjectReference {
                kind: Some("Pod".into()),
                name: Some(pod.into()),
                ..ObjectReference::default()
            }),
            ..Endpoint::default()
        }
    }

    fn slice(app: &str, family: &str, endpoints: Vec<Endpoint>) -> EndpointSlice {
        EndpointSlice {
            address_type: family.into(),
            endpoints: Some(endpoints),
            metadata: ObjectMeta {
                labels: Some(BTreeMap::from([
                    (SERVICE_NAME_LABEL.into(), app.into()),
                    (APP_LABEL.into(), app.into()),
                ])),
                ..ObjectMeta::default()
            },
            ports: Some(vec![EndpointPort {
                name: Some("http".into()),
                port: Some(9000),
                ..EndpointPort::default()
            }]),
        }
    }

    #[test]
    fn endpoint_conditions_map_to_replica_phases() {
        let slices = [slice(
            "sd-a",
            "IPv4",
            vec![
                ep("a-1", "10.0.0.1", Some(true), Some(false)),
                ep("a-2", "10.0.0.2", Some(false), None),
                ep("a-3", "10.0.0.3", Some(false), Some(true)),
                ep("a-4", "10.0.0.4", None, None),
            ],
        )];
        let obs = observations(&slices, [], |_| SystemTime::UNIX_EPOCH);
        let phases: Vec<_> = obs["sd-a"]
            .replicas
            .iter()
            .map(|r| (r.id.as_str(), r.phase))
            .collect();
        assert_eq!(
            phases,
            [
                ("a-1", ReplicaPhase::Ready),
                ("a-2", ReplicaPhase::Loading),
                ("a-3", ReplicaPhase::Draining),
                ("a-4", ReplicaPhase::Ready)
            ]
        );
        let ready = ready_endpoints(&obs);
        assert_eq!(ready["sd-a"], ["http://10.0.0.1:9000", "http://10.0.0.4:9000"]);
    }

    #[test]
    fn dual_stack_pods_count_once_and_ipv6_urls_are_bracketed() {
        let slices = [
            slice("sd-b", "IPv6", vec![ep("b-1", "fd00::1", Some(true), None)]),
            slice("sd-b", "IPv4", vec![ep("b-1", "10.0.0.9", Some(true), None)]),
        ];
        let obs = observations(&slices, [], |_| SystemTime::UNIX_EPOCH);
        assert_eq!(obs["sd-b"].replicas.len(), 1);
        assert_eq!(
            obs["sd-b"].replicas[0].endpoint.as_deref(),
            Some("http://[fd00::1]:9000")
        );
    }

    #[test]
    fn apps_without_pods_are_listed_with_their_failure() {
        let mut app = examples::sdxl_app("ml");
        app.status = Some(SDAppStatus {
            conditions: vec![Condition {
                type_: "Failed".into(),
                status: "True".into(),
                reason: "ProgressDeadlineExceeded".into(),
                message: "pods never became ready".into(),
                observed_generation: None,
                last_transition_time: Time(Timestamp::UNIX_EPOCH),
            }],
            ..SDAppStatus::default()
        });
        let obs = observations([], [&app], |_| SystemTime::UNIX_EPOCH);
        let got = &obs["sd-sd-xl-base-1-0"];
        assert!(got.replicas.is_empty());
        assert_eq!(
            got.failure.as_deref(),
            Some("ProgressDeadlineExceeded: pods never became ready")
        );
    }

    #[test]
    fn slices_of_other_services_are_ignored() {
        let mut foreign = slice("x", "IPv4", vec![ep("x-1", "10.0.0.5", Some(true), None)]);
        foreign.metadata.labels = None;
        assert!(observations([&foreign], [], |_| SystemTime::UNIX_EPOCH).is_empty());
    }
}
