//! `Backend` for Kubernetes: scaling sets an app's Deployment `spec.replicas` by server-side
//! apply, observation reads EndpointSlices and SDApp status from reflectors, and removal deletes
//! nothing (the SDApp is the source of truth; its objects follow it by owner reference).
//! Leader-gated: only the replica holding the Lease reconciles and scales, so two controllers
//! never fight over `spec.replicas`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::runtime::events::EventType;
use kube::runtime::reflector::{self, ObjectRef, Store, reflector};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use super::crd::SDApp;
use super::error::Error;
use super::lease::{LeaderElector, LeaseTiming};
use super::objects::{MANAGED_BY, MANAGED_BY_LABEL};
use super::reconcile::{self, Context, ScaleTargets, desired_replicas};
use super::{apps, endpoints};
use crate::backend::{AppDeployment, AppObservation, Backend, BackendError, BoxFuture};

/// The Kubernetes backend. Cheap to share (`Arc`); background tasks stop with the token given
/// to [`KubeBackend::start`].
pub struct KubeBackend {
    ctx: Arc<Context>,
    leading: watch::Receiver<bool>,
    slices: Store<EndpointSlice>,
    apps: Store<SDApp>,
    /// Notified on every SDApp watch event (added, changed, deleted, relisted).
    apps_changed: Arc<Notify>,
    /// When each pod was first seen, for `ReplicaObservation::started_at`.
    first_seen: Mutex<HashMap<String, SystemTime>>,
}

impl KubeBackend {
    /// A backend over already-running reflector stores and a leadership signal (tests drive
    /// these directly; [`KubeBackend::start`] wires the real ones).
    pub fn new(
        ctx: Arc<Context>,
        leading: watch::Receiver<bool>,
        slices: Store<EndpointSlice>,
        apps: Store<SDApp>,
    ) -> Self {
        Self {
            ctx,
            leading,
            slices,
            apps,
            apps_changed: Arc::new(Notify::new()),
            first_seen: Mutex::new(HashMap::new()),
        }
    }

    /// Start everything Kubernetes mode runs in the background until `shutdown`: the leader
    /// election on Lease `lease_name`, reflectors on the namespace's EndpointSlices (of sdplane
    /// Services only) and SDApps, and — while leading — the SDApp Controller.
    pub fn start(
        client: Client,
        config: super::objects::ObjectConfig,
        lease_name: &str,
        identity: &str,
        timing: LeaseTiming,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let ns = config.namespace.clone();
        let (leading_tx, leading) = watch::channel(false);
        let elector = LeaderElector::new(
            Api::<Lease>::namespaced(client.clone(), &ns),
            lease_name,
            identity,
            timing,
        );
        tokio::spawn(elector.run(leading_tx, shutdown.clone()));

        // Slices copy their Service's labels, so this selects exactly the app Services' slices.
        let ours = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"));
        let slices = spawn_reflector(
            Api::<EndpointSlice>::namespaced(client.clone(), &ns),
            ours,
            None,
            &shutdown,
        );
        let apps_changed = Arc::new(Notify::new());
        let apps = spawn_reflector(
            Api::<SDApp>::namespaced(client.clone(), &ns),
            watcher::Config::default(),
            Some(apps_changed.clone()),
            &shutdown,
        );

        let ctx = Arc::new(Context::new(client, config, Arc::new(ScaleTargets::default())));
        tokio::spawn(run_while_leading(ctx.clone(), leading.clone(), shutdown));
        let mut backend = Self::new(ctx, leading, slices, apps);
        backend.apps_changed = apps_changed;
        Arc::new(backend)
    }

    /// Whether this controller replica holds the Lease (only the leader scales).
    pub fn is_leader(&self) -> bool {
        *self.leading.borrow()
    }

    /// A receiver that changes when leadership does (for readiness: route to the leader).
    pub fn leadership(&self) -> watch::Receiver<bool> {
        self.leading.clone()
    }

    /// The SDApp API of this backend's namespace, for [`apps::create_app`] and friends.
    pub fn apps_api(&self) -> Api<SDApp> {
        Api::namespaced(self.ctx.client.clone(), &self.ctx.config.namespace)
    }

    /// Notified whenever the SDApp cache may have changed (see [`super::sync`]). Whoever fills
    /// the cache without [`KubeBackend::start`] (tests) notifies it.
    pub fn sdapps_changed(&self) -> Arc<Notify> {
        self.apps_changed.clone()
    }

    /// Wait until the SDApp cache holds the first full list; `false` if it never will (its
    /// watch task ended first).
    pub async fn sdapps_ready(&self) -> bool {
        self.apps.wait_until_ready().await.is_ok()
    }

    /// SDApps as the reflector last saw them (the registry in Kubernetes mode).
    pub fn cached_apps(&self) -> Vec<Arc<SDApp>> {
        let mut apps = self.apps.state();
        apps.sort_by_key(|a| a.name_any());
        apps
    }

    async fn scale(&self, app: &str, replicas: u32) -> Result<(), Error> {
        if !self.is_leader() {
            return Err(Error::NotLeader);
        }
        self.ctx.targets.set(app, replicas);
        if self.ctx.targets.applied(app) == Some(replicas) {
            return Ok(());
        }
        let sdapp = match self.cached_app(app) {
            Some(sdapp) => sdapp,
            None => Arc::new(
                apps::get_app(&self.apps_api(), app)
                    .await?
                    .ok_or_else(|| Error::NoSdApp(app.to_string()))?,
            ),
        };
        let effective = desired_replicas(&sdapp, Some(replicas), None);
        reconcile::apply_children(&self.ctx, &sdapp, effective).await?;
        self.ctx.targets.set_applied(app, replicas);
        tracing::info!(app, replicas = effective, "scaled deployment");
        let note = format!("scaled to {effective} replicas (autoscaler asked for {replicas})");
        self.ctx.event(&sdapp, EventType::Normal, "Scaled", note).await;
        Ok(())
    }

    /// The SDApp `name` as the reflector last saw it.
    fn cached_app(&self, name: &str) -> Option<Arc<SDApp>> {
        self.apps
            .get(&ObjectRef::new(name).within(&self.ctx.config.namespace))
    }

    /// Every SDApp as the admin API's app spec, by name: what the registry should hold in
    /// Kubernetes mode (SDApps applied with kubectl included).
    pub fn registered_apps(&self) -> BTreeMap<String, sdplane_wire::admin::AppSpec> {
        self.cached_apps()
            .iter()
            .map(|a| (a.name_any(), apps::app_spec(&a.spec)))
            .collect()
    }

    fn observations(&self) -> BTreeMap<String, AppObservation> {
        let slices = self.slices.state();
        let apps = self.apps.state();
        let mut seen = self.first_seen.lock().unwrap_or_else(PoisonError::into_inner);
        let obs = endpoints::observations(
            slices.iter().map(AsRef::as_ref),
            apps.iter().map(AsRef::as_ref),
            |pod| *seen.entry(pod.to_string()).or_insert_with(SystemTime::now),
        );
        // Forget pods that are gone so the map does not grow forever.
        let live: std::collections::HashSet<&str> = obs
            .values()
            .flat_map(|o| o.replicas.iter().map(|r| r.id.as_str()))
            .collect();
        seen.retain(|pod, _| live.contains(pod.as_str()));
        obs
    }
}

/// Map backend errors to the controller's `BackendError`, keeping the message.
fn orchestrator(e: Error) -> BackendError {
    BackendError::Orchestrator(format!("{} ({})", e, e.kind()))
}

impl Backend for KubeBackend {
    fn name(&self) -> &'static str {
        "kubernetes"
    }

    fn ensure<'a>(
        &'a self,
        app: &'a AppDeployment,
        replicas: u32,
    ) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async move { self.scale(&app.name, replicas).await.map_err(orchestrator) })
    }

    fn observe(&self) -> BoxFuture<'_, Result<BTreeMap<String, AppObservation>, BackendError>> {
        Box::pin(async move { Ok(self.observations()) })
    }

    /// Forget the app's scale target. The SDApp is the source of truth here, so nothing is
    /// deleted: an app leaves the registry only after its SDApp is gone (the admin API's DELETE
    /// or `kubectl delete`), and its Deployment and Service follow by owner reference. Deleting
    /// the SDApp here would let a registry that has not yet synced a new SDApp destroy it.
    fn remove<'a>(&'a self, app: &'a str) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async move {
            self.ctx.targets.remove(app);
            Ok(())
        })
    }
}

/// A reflector store of `api`'s objects, kept current by a watch task (with kube-runtime's
/// default backoff on errors) until `shutdown`.
/// `changed` (if any) is notified after every event the store applied, deletions included.
fn spawn_reflector<K>(
    api: Api<K>,
    config: watcher::Config,
    changed: Option<Arc<Notify>>,
    shutdown: &CancellationToken,
) -> Store<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = reflector(writer, watcher(api, config)).default_backoff();
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        let drive = stream.for_each(|event| {
            match event {
                Ok(_) => {
                    if let Some(changed) = &changed {
                        changed.notify_one();
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, kind = std::any::type_name::<K>(), "watch error; retrying with backoff");
                }
            }
            async {}
        });
        tokio::select! {
            () = drive => {}
            () = shutdown.cancelled() => {}
        }
    });
    reader
}

/// Run the SDApp Controller whenever this replica leads, stopping it when leadership is lost.
async fn run_while_leading(
    ctx: Arc<Context>,
    mut leading: watch::Receiver<bool>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            became = leading.wait_for(|l| *l) => if became.is_err() { return },
            () = shutdown.cancelled() => return,
        }
        tracing::info!("leading: starting the SDApp controller");
        let mut lost = leading.clone();
        // Stop acting the moment leadership is lost: drop the Controller (its watches and any
        // in-flight reconcile, whose server-side applies are idempotent) instead of waiting for
        // a graceful drain, which lasts as long as its open watches and so could outlive the lease.
        tokio::select! {
            () = reconcile::run(ctx.clone()) => {}
            changed = lost.wait_for(|l| !*l) => if changed.is_err() { return },
            () = shutdown.cancelled() => return,
        }
        tracing::info!("no longer leading: SDApp controller stopped");
    }
}

#[cfg(test)]
#[path = "backend_tests.rs"]
mod tests;
