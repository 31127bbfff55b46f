//! What an SDApp's status says, computed from its Deployment: replica counts and the `Ready`,
//! `ScaledToZero` and `Failed` conditions. Pure, so every transition is a table test.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use super::crd::{SDApp, SDAppStatus, condition};

/// Why the app cannot run, when it cannot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// CamelCase reason (`InvalidSpec`, `ProgressDeadlineExceeded`, `FailedCreate`).
    pub reason: String,
    pub message: String,
}

/// A failure the Deployment reports: its rollout passed `progressDeadlineSeconds` (pods crash or
/// never become ready), or the ReplicaSet could not create pods (quota, admission).
pub fn deployment_failure(deployment: &Deployment) -> Option<Failure> {
    let conditions = deployment.status.as_ref()?.conditions.as_ref()?;
    conditions.iter().find_map(|c| {
        let (type_, status) = (c.type_.as_deref()?, c.status.as_deref()?);
        let failed =
            (type_ == "Progressing" && status == "False") || (type_ == "ReplicaFailure" && status == "True");
        failed.then(|| Failure {
            reason: c.reason.clone().unwrap_or_else(|| type_.to_string()),
            message: c.message.clone().unwrap_or_default(),
        })
    })
}

/// Status of `app` given its Deployment (absent before the first apply), the replicas the
/// autoscaler wants, and a failure found while reconciling (e.g. an invalid spec).
pub fn app_status(
    app: &SDApp,
    deployment: Option<&Deployment>,
    desired: u32,
    failure: Option<Failure>,
    now: Timestamp,
) -> SDAppStatus {
    let ready = deployment
        .and_then(|d| d.status.as_ref())
        .and_then(|s| s.ready_replicas)
        .and_then(|r| u32::try_from(r).ok())
        .unwrap_or(0);
    let failure = failure.or_else(|| deployment.and_then(deployment_failure));
    let generation = app.metadata.generation;
    let previous = app
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let make = |type_: &str, is: bool, reason: &str, message: String| {
        condition(previous, type_, is, reason, message, generation, now)
    };
    let ready_cond = match (ready, desired) {
        (0, 0) => make(
            condition::READY,
            false,
            "ScaledToZero",
            "no replica runs; a request starts one".into(),
        ),
        (0, _) => make(
            condition::READY,
            false,
            "Starting",
            format!("0 of {desired} replicas ready"),
        ),
        (n, _) => make(
            condition::READY,
            true,
            "ReplicasReady",
            format!("{n} of {desired} replicas ready"),
        ),
    };
    let zero_cond = if desired == 0 && ready == 0 {
        make(
            condition::SCALED_TO_ZERO,
            true,
            "Idle",
            "scaled to zero while idle".into(),
        )
    } else {
        make(
            condition::SCALED_TO_ZERO,
            false,
            "Active",
            format!("{desired} replicas wanted"),
        )
    };
    let failed_cond = match &failure {
        Some(f) => make(condition::FAILED, true, &f.reason, f.message.clone()),
        None => make(condition::FAILED, false, "AsExpected", String::new()),
    };
    SDAppStatus {
        conditions: vec![ready_cond, zero_cond, failed_cond],
        replicas_ready: ready,
        replicas_desired: desired,
        observed_generation: generation,
    }
}

/// One condition; its `lastTransitionTime` stays the previous one while `status` is unchanged,
/// as the Kubernetes API conventions ask.
fn condition(
    previous: &[Condition],
    type_: &str,
    is: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    let status = if is { "True" } else { "False" };
    let since = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time: since,
    }
}

/// The `True`/`False` value of condition `type_`, if present.
pub fn condition_is(status: &SDAppStatus, type_: &str) -> Option<bool> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status == "True")
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::{DeploymentCondition, DeploymentStatus};

    use super::*;
    use crate::kube::examples;

    fn deployment_with(ready: i32, conditions: Vec<DeploymentCondition>) -> Deployment {
        Deployment {
            status: Some(DeploymentStatus {
                ready_replicas: Some(ready),
                conditions: Some(conditions),
                ..DeploymentStatus::default()
            }),
            ..Deployment::default()
        }
    }

    fn dcond(type_: &str, status: &str, reason: &str) -> DeploymentCondition {
        DeploymentCondition {
            type_: Some(type_.into()),
            status: Some(status.into()),
            reason: Some(reason.into()),
            message: Some(format!("{type_} {reason}")),
            ..DeploymentCondition::default()
        }
    }

    #[test]
    fn conditions_follow_ready_and_desired_replicas() {
        // (ready, desired, deployment conditions) -> (Ready, ScaledToZero, Failed, failed reason)
        let cases = [
            (0, 0, vec![], (false, true, false, "AsExpected")),
            (0, 1, vec![], (false, false, false, "AsExpected")),
            (
                1,
                1,
                vec![dcond("Progressing", "True", "NewReplicaSetAvailable")],
                (true, false, false, "AsExpected"),
            ),
            (
                0,
                1,
                vec![dcond("Progressing", "False", "ProgressDeadlineExceeded")],
                (false, false, true, "ProgressDeadlineExceeded"),
            ),
            (
                0,
                2,
                vec![dcond("ReplicaFailure", "True", "FailedCreate")],
                (false, false, true, "FailedCreate"),
            ),
            // Ready pods while scaling down to zero: not yet scaled to zero.
            (1, 0, vec![], (true, false, false, "AsExpected")),
        ];
        let app = examples::sdxl_app("ml");
        for (i, (ready, desired, conds, want)) in cases.into_iter().enumerate() {
            let d = deployment_with(ready, conds);
            let s = app_status(&app, Some(&d), desired, None, Timestamp::UNIX_EPOCH);
            let got = (
                condition_is(&s, condition::READY).expect("Ready"),
                condition_is(&s, condition::SCALED_TO_ZERO).expect("ScaledToZero"),
                condition_is(&s, condition::FAILED).expect("Failed"),
                s.conditions[2].reason.as_str(),
            );
            assert_eq!(got, want, "case {i}");
            assert_eq!(
                (s.replicas_ready, s.replicas_desired),
                (ready as u32, desired),
                "case {i}"
            );
            assert_eq!(s.observed_generation, Some(1));
        }
    }

    #[test]
    fn reconcile_failure_wins_over_a_healthy_deployment() {
        let failure = Failure {
            reason: "InvalidSpec".into(),
            message: "bad model".into(),
        };
        let s = app_status(
            &examples::sdxl_app("ml"),
            None,
            0,
            Some(failure),
            Timestamp::UNIX_EPOCH,
        );
        assert_eq!(condition_is(&s, condition::FAILED), Some(true));
        assert_eq!(s.conditions[2].message, "bad model");
    }

    #[test]
    fn transition_time_changes_only_when_the_status_flips() {
        let mut app = examples::sdxl_app("ml");
        let t0 = Timestamp::from_second(1_000).expect("valid");
        let t1 = Timestamp::from_second(2_000).expect("valid");
        app.status = Some(app_status(&app, None, 0, None, t0));
        let same = app_status(&app, None, 0, None, t1);
        assert_eq!(same.conditions[0].last_transition_time, Time(t0));
        let flipped = app_status(&app, Some(&deployment_with(1, vec![])), 1, None, t1);
        assert_eq!(flipped.conditions[0].last_transition_time, Time(t1));
        // Failed stayed False, so its time is kept.
        assert_eq!(flipped.conditions[2].last_transition_time, Time(t0));
    }
}
