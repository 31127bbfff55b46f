//! The kube-runtime `Controller` on SDApps: for each app, server-side apply its Deployment (at
//! the replica count the autoscaler chose) and Service, then write its status. Idempotent: the
//! same inputs make the same objects and the same status, and an unchanged status is not written
//! again, so a reconcile never triggers itself. Errors requeue with per-app exponential backoff.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::jiff::Timestamp;
use kube::Resource;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};

use super::crd::{SDApp, condition};
use super::error::{Error, Result};
use super::objects::{self, FIELD_MANAGER, MANAGED_BY, MANAGED_BY_LABEL, ObjectConfig};
use super::status::{self, Failure};

/// Periodic re-check of a healthy app (catches drift such as a hand-edited Deployment).
const RESYNC: Duration = Duration::from_secs(300);
/// First retry after a failed reconcile; doubles per consecutive failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(5);
/// Longest wait between retries of a failing app.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Replica counts the autoscaler asked for, per app, and the last count applied to the cluster.
/// Lost on restart on purpose: the running Deployment's `spec.replicas` is then adopted (see
/// [`desired_replicas`]).
#[derive(Debug, Default)]
pub struct ScaleTargets(Mutex<BTreeMap<String, Target>>);

/// One app's scale request and what was last written for it.
#[derive(Debug, Default, Clone, Copy)]
struct Target {
    wished: Option<u32>,
    applied: Option<u32>,
}

impl ScaleTargets {
    fn with<T>(&self, f: impl FnOnce(&mut BTreeMap<String, Target>) -> T) -> T {
        f(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Record the autoscaler's wish for `app`.
    pub fn set(&self, app: &str, replicas: u32) {
        self.with(|m| m.entry(app.to_string()).or_default().wished = Some(replicas));
    }

    /// The autoscaler's last wish for `app`.
    pub fn get(&self, app: &str) -> Option<u32> {
        self.with(|m| m.get(app).and_then(|t| t.wished))
    }

    /// Record that the Deployment of `app` was applied for a wish of `replicas`.
    pub fn set_applied(&self, app: &str, replicas: u32) {
        self.with(|m| m.entry(app.to_string()).or_default().applied = Some(replicas));
    }

    /// The wish last applied for `app`: the autoscaler repeats its wish every pass, and a wish
    /// already applied needs no API call (drift is the reconciler's job).
    pub fn applied(&self, app: &str) -> Option<u32> {
        self.with(|m| m.get(app).and_then(|t| t.applied))
    }

    /// Forget `app` (deleted).
    pub fn remove(&self, app: &str) {
        self.with(|m| m.remove(app));
    }
}

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub config: ObjectConfig,
    pub targets: Arc<ScaleTargets>,
    /// Publishes Kubernetes Events on SDApps (`kubectl describe sdapp` shows them).
    pub recorder: Recorder,
    /// Consecutive failures per app, for the backoff of [`error_policy`].
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    pub fn new(client: Client, config: ObjectConfig, targets: Arc<ScaleTargets>) -> Self {
        let recorder = Recorder::new(client.clone(), Reporter::from(FIELD_MANAGER));
        Self {
            client,
            config,
            targets,
            recorder,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Publish an Event on `app`; failing to publish is logged, never fatal.
    pub async fn event(&self, app: &SDApp, type_: EventType, reason: &str, note: String) {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &app.object_ref(&())).await {
            tracing::warn!(error = %e, reason, "could not publish event");
        }
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        self.failures.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Replicas the Deployment should have: the autoscaler's wish, else what runs now (adopting
/// replicas across a controller restart), else `minReplicas`; always within the app's bounds.
pub fn desired_replicas(app: &SDApp, wished: Option<u32>, running: Option<i32>) -> u32 {
    let running = running.and_then(|r| u32::try_from(r).ok());
    let want = wished.or(running).unwrap_or(app.spec.min_replicas);
    want.clamp(
        app.spec.min_replicas,
        app.spec.max_replicas.max(app.spec.min_replicas),
    )
}

/// Exponential backoff after `failures` consecutive failures: 5 s, 10 s, 20 s, … ≤ 300 s.
pub fn backoff(failures: u32) -> Duration {
    let factor = 2u32.saturating_pow(failures.saturating_sub(1));
    FIRST_BACKOFF.saturating_mul(factor).min(MAX_BACKOFF)
}

/// Server-side apply `app`'s Deployment at `replicas` and its Service; returns the Deployment
/// as the API server now has it (with status). Shared by reconcile and by scaling.
pub async fn apply_children(ctx: &Context, app: &SDApp, replicas: u32) -> Result<Deployment> {
    let name = app.name_any();
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let deployment = objects::deployment(app, replicas, &ctx.config)?;
    let service = objects::service(app, &ctx.config)?;
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ctx.config.namespace);
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), &ctx.config.namespace);
    let applied = deployments
        .patch(&name, &params, &Patch::Apply(&deployment))
        .await?;
    services.patch(&name, &params, &Patch::Apply(&service)).await?;
    Ok(applied)
}

/// Write `app`'s status when it differs from what the object already says; a `Failed`
/// condition turning true is also published as a Warning event.
async fn write_status(ctx: &Context, app: &SDApp, new: super::crd::SDAppStatus) -> Result<()> {
    if app.status.as_ref() == Some(&new) {
        return Ok(());
    }
    let was_failed = app
        .status
        .as_ref()
        .and_then(|s| status::condition_is(s, condition::FAILED))
        == Some(true);
    let failed = new
        .conditions
        .iter()
        .find(|c| c.type_ == condition::FAILED && c.status == "True");
    if let (false, Some(c)) = (was_failed, failed) {
        ctx.event(app, EventType::Warning, &c.reason, c.message.clone())
            .await;
    }
    let api: Api<SDApp> = Api::namespaced(ctx.client.clone(), &ctx.config.namespace);
    let patch = serde_json::json!({ "status": new });
    api.patch_status(&app.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// Bring one app's objects and status in line with its spec.
#[tracing::instrument(skip_all, fields(app = %app.name_any()))]
pub async fn reconcile(app: Arc<SDApp>, ctx: Arc<Context>) -> Result<Action> {
    let name = app.name_any();
    if app.metadata.deletion_timestamp.is_some() {
        // Owner references make the garbage collector delete the Deployment and Service.
        ctx.targets.remove(&name);
        return Ok(Action::await_change());
    }
    if let Err(e) = app.spec.validate() {
        tracing::warn!(error = %e, "SDApp spec is invalid; waiting for a corrected spec");
        let failure = Failure {
            reason: "InvalidSpec".into(),
            message: e.to_string(),
        };
        write_status(
            &ctx,
            &app,
            status::app_status(&app, None, 0, Some(failure), Timestamp::now()),
        )
        .await?;
        ctx.failures().remove(&name);
        return Ok(Action::await_change());
    }
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ctx.config.namespace);
    let running = deployments.get_opt(&name).await?.and_then(|d| d.spec.replicas);
    let replicas = desired_replicas(&app, ctx.targets.get(&name), running);
    let deployment = apply_children(&ctx, &app, replicas).await?;
    if let Some(wished) = ctx.targets.get(&name) {
        ctx.targets.set_applied(&name, wished);
    }
    let status = status::app_status(&app, Some(&deployment), replicas, None, Timestamp::now());
    write_status(&ctx, &app, status).await?;
    ctx.failures().remove(&name);
    tracing::debug!(replicas, "reconciled");
    Ok(Action::requeue(RESYNC))
}

/// Requeue a failed app with exponential backoff (per app, reset by a success).
pub fn error_policy(app: Arc<SDApp>, error: &Error, ctx: Arc<Context>) -> Action {
    let name = app.name_any();
    let failures = {
        let mut map = ctx.failures();
        let n = map.entry(name).or_insert(0);
        *n = n.saturating_add(1);
        *n
    };
    let wait = backoff(failures);
    tracing::warn!(app = %app.name_any(), error = %error, kind = error.kind(), failures, retry_in_s = wait.as_secs(), "reconcile failed");
    Action::requeue(wait)
}

/// Run the Controller (until its watches end; callers drop it to stop): SDApps trigger reconciles, and so do changes to the
/// Deployments and Services they own (e.g. pods becoming ready update the Ready condition).
pub async fn run(ctx: Arc<Context>) {
    let ns = ctx.config.namespace.clone();
    let client = ctx.client.clone();
    let owned = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"));
    Controller::new(
        Api::<SDApp>::namespaced(client.clone(), &ns),
        watcher::Config::default(),
    )
    .owns(Api::<Deployment>::namespaced(client.clone(), &ns), owned.clone())
    .owns(Api::<Service>::namespaced(client, &ns), owned)
    .run(reconcile, error_policy, ctx)
    .for_each(|result| async move {
        match result {
            Ok((app, _)) => tracing::trace!(app = %app.name, "reconcile done"),
            Err(e) => tracing::debug!(error = %e, "controller event"),
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::examples;

    #[test]
    fn desired_replicas_prefers_the_autoscaler_then_the_running_count_within_bounds() {
        let mut app = examples::sdxl_app("ml"); // min 0, max 2
        let cases = [
            (None, None, 0),
            (None, Some(1), 1),
            (Some(0), Some(2), 0),
            (Some(5), None, 2),
            (None, Some(-1), 0),
        ];
        for (i, (wished, running, want)) in cases.into_iter().enumerate() {
            assert_eq!(desired_replicas(&app, wished, running), want, "case {i}");
        }
        app.spec.min_replicas = 1;
        assert_eq!(
            desired_replicas(&app, Some(0), None),
            1,
            "min_replicas is a floor"
        );
    }

    #[test]
    fn backoff_doubles_from_five_seconds_and_caps_at_five_minutes() {
        let secs: Vec<u64> = [1, 2, 3, 4, 7, 50]
            .into_iter()
            .map(|n| backoff(n).as_secs())
            .collect();
        assert_eq!(secs, [5, 10, 20, 40, 300, 300]);
    }
}
