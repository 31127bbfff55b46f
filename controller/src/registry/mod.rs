//! The app registry, owned by one task and reached through a cheap cloneable handle with
//! `mpsc` + `oneshot` (STYLE.md, after TGI's queue). The task applies each command to
//! `RegistryState`, persists it when an app's record changed, publishes the route table on a
//! `watch` channel (what router long-polls wait on) and records metrics.
//!
//! - `state`: the data and its rules, without I/O.
//! - `store`: `apps.json` in the state directory.

pub mod state;
pub mod store;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use sdplane_wire::admin::{ActivityReport, AppRoute, AppSpec, AppState, AppStatus, RouteTable};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::time::Instant;

use self::state::{Event, RegistryState, ResolvedModel};
use self::store::Store;
use crate::backend::{AppDeployment, AppObservation};
use crate::error::{Error, Result};
use crate::metrics::Metrics;

/// Commands waiting for the task; API calls beyond this wait for room.
const QUEUE_DEPTH: usize = 256;

enum Command {
    Deploy {
        model: ResolvedModel,
        spec: AppSpec,
        reply: oneshot::Sender<Result<(AppStatus, bool)>>,
    },
    Upsert {
        model: ResolvedModel,
        spec: AppSpec,
        reply: oneshot::Sender<Result<(AppStatus, bool)>>,
    },
    Delete {
        name: String,
        reply: oneshot::Sender<Result<()>>,
    },
    Status {
        name: String,
        reply: oneshot::Sender<Option<AppStatus>>,
    },
    List {
        reply: oneshot::Sender<Vec<AppStatus>>,
    },
    ModelApps {
        reply: oneshot::Sender<BTreeMap<String, (String, AppState)>>,
    },
    Activate {
        name: String,
        reply: oneshot::Sender<Result<AppRoute>>,
    },
    Activity {
        report: ActivityReport,
    },
    Plan {
        reply: oneshot::Sender<Vec<(AppDeployment, u32)>>,
    },
    Observed {
        observed: BTreeMap<String, AppObservation>,
        reply: oneshot::Sender<Vec<String>>,
    },
    EvictFor {
        app: String,
        reply: oneshot::Sender<Option<String>>,
    },
}

/// Cheap handle to the registry task.
#[derive(Clone)]
pub struct Registry {
    tx: mpsc::Sender<Command>,
    routes: watch::Receiver<RouteTable>,
    wake: Arc<Notify>,
}

impl Registry {
    /// Start the task with the persisted registry. It ends when every handle is dropped.
    pub fn spawn(state: RegistryState, store: Store, metrics: Metrics) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let (routes_tx, routes) = watch::channel(state.routes().clone());
        let wake = Arc::new(Notify::new());
        tokio::spawn(run(state, store, metrics, rx, routes_tx));
        Self { tx, routes, wake }
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).await.map_err(|_| Error::Unavailable)?;
        rx.await.map_err(|_| Error::Unavailable)
    }

    /// Deploy `model`; `true` when the app is new. Wakes the reconcile loop.
    pub async fn deploy(&self, model: ResolvedModel, spec: AppSpec) -> Result<(AppStatus, bool)> {
        let result = self.ask(|reply| Command::Deploy { model, spec, reply }).await?;
        self.wake.notify_one();
        result
    }

    /// Make the app serve `model` with `spec` exactly (Kubernetes mode, from its SDApp); `true`
    /// when anything changed. Wakes the reconcile loop when it did.
    pub async fn upsert(&self, model: ResolvedModel, spec: AppSpec) -> Result<(AppStatus, bool)> {
        let result = self.ask(|reply| Command::Upsert { model, spec, reply }).await?;
        if matches!(result, Ok((_, true))) {
            self.wake.notify_one();
        }
        result
    }

    /// Delete an app; its replicas are stopped by the reconcile loop, woken now.
    pub async fn delete(&self, name: String) -> Result<()> {
        let result = self.ask(|reply| Command::Delete { name, reply }).await?;
        self.wake.notify_one();
        result
    }

    pub async fn status(&self, name: String) -> Result<AppStatus> {
        let missing = Error::AppNotFound(name.clone());
        self.ask(|reply| Command::Status { name, reply })
            .await?
            .ok_or(missing)
    }

    pub async fn list(&self) -> Result<Vec<AppStatus>> {
        self.ask(|reply| Command::List { reply }).await
    }

    /// Model file (relative path) → (app, state) of every deployed app.
    pub async fn model_apps(&self) -> Result<BTreeMap<String, (String, AppState)>> {
        self.ask(|reply| Command::ModelApps { reply }).await
    }

    /// Wake a cold app (idempotent) and return its route.
    pub async fn activate(&self, name: String) -> Result<AppRoute> {
        let route = self.ask(|reply| Command::Activate { name, reply }).await??;
        self.wake.notify_one();
        Ok(route)
    }

    pub async fn activity(&self, report: ActivityReport) -> Result<()> {
        self.tx
            .send(Command::Activity { report })
            .await
            .map_err(|_| Error::Unavailable)
    }

    /// The autoscaler's decision for every app.
    pub async fn plan(&self) -> Result<Vec<(AppDeployment, u32)>> {
        self.ask(|reply| Command::Plan { reply }).await
    }

    /// Hand over what the backend sees; returns apps it runs that are no longer deployed.
    pub async fn observed(&self, observed: BTreeMap<String, AppObservation>) -> Result<Vec<String>> {
        self.ask(|reply| Command::Observed { observed, reply }).await
    }

    /// Scale the least recently used idle app to zero to make room for `app`.
    pub async fn evict_for(&self, app: String) -> Result<Option<String>> {
        self.ask(|reply| Command::EvictFor { app, reply }).await
    }

    /// The route table, updated whenever its version changes.
    pub fn routes(&self) -> watch::Receiver<RouteTable> {
        self.routes.clone()
    }

    /// Notified when something needs the reconcile loop now (activation, deploy, delete).
    pub fn wake(&self) -> Arc<Notify> {
        self.wake.clone()
    }
}

async fn run(
    mut state: RegistryState,
    store: Store,
    metrics: Metrics,
    mut rx: mpsc::Receiver<Command>,
    routes: watch::Sender<RouteTable>,
) {
    let mut failed: BTreeSet<String> = BTreeSet::new();
    while let Some(command) = rx.recv().await {
        let now = Instant::now();
        let before = state.file();
        match command {
            Command::Deploy { model, spec, reply } => {
                let result = state.deploy(model, spec).and_then(|ok| {
                    store.save(&state.file())?;
                    Ok(ok)
                });
                if let Ok((status, created)) = &result {
                    failed.remove(&status.name);
                    tracing::info!(app = %status.name, model = %status.model, created, "app deployed");
                }
                let _ = reply.send(result);
            }
            Command::Upsert { model, spec, reply } => {
                let result = state.upsert(model, spec);
                if let Ok((status, true)) = &result {
                    failed.remove(&status.name);
                    tracing::info!(app = %status.name, model = %status.model, "app synced from its SDApp");
                }
                let _ = reply.send(result);
            }
            Command::Delete { name, reply } => {
                let result = state.delete(&name).and_then(|()| Ok(store.save(&state.file())?));
                if result.is_ok() {
                    tracing::info!(app = %name, "app deleted");
                }
                let _ = reply.send(result);
            }
            Command::Status { name, reply } => {
                let _ = reply.send(state.status(&name, now));
            }
            Command::List { reply } => {
                let _ = reply.send(state.list(now));
            }
            Command::ModelApps { reply } => {
                let map = state
                    .list(now)
                    .into_iter()
                    .map(|s| (s.model.clone(), (s.name, s.state)))
                    .collect();
                let _ = reply.send(map);
            }
            Command::Activate { name, reply } => {
                let _ = reply.send(state.activate(&name, now));
            }
            Command::Activity { report } => state.activity(&report, now),
            Command::Plan { reply } => {
                let (plan, events) = state.plan(now);
                record(&metrics, events);
                let _ = reply.send(plan);
            }
            Command::Observed { observed, reply } => {
                let (events, orphans) = state.observed(observed, now);
                record(&metrics, events);
                metrics.replicas(&state.replica_counts());
                metrics.restarts(&state.restarts());
                for status in state.list(now) {
                    let is_failed = status.state == AppState::Failed;
                    if is_failed && failed.insert(status.name.clone()) {
                        tracing::error!(app = %status.name, reason = status.reason.as_deref().unwrap_or(""), "app failed");
                        metrics.app_failed(&status.name);
                    } else if !is_failed {
                        failed.remove(&status.name);
                    }
                }
                let _ = reply.send(orphans);
            }
            Command::EvictFor { app, reply } => {
                let victim = state.evict_for(&app, now);
                if let Some(v) = &victim {
                    tracing::info!(app = %v, for_app = %app, "evicting least recently used idle app");
                }
                let _ = reply.send(victim);
            }
        }
        let after = state.file();
        if after != before
            && let Err(e) = store.save(&after)
        {
            tracing::error!(error = %e, "cannot persist the registry");
        }
        let table = state.routes();
        if table.version != routes.borrow().version {
            metrics.route_table(table.version);
            routes.send_replace(table.clone());
        }
    }
}

fn record(metrics: &Metrics, events: Vec<Event>) {
    for event in events {
        match event {
            Event::ColdStart { app, seconds } => {
                tracing::info!(app = %app, seconds, "cold start complete");
                metrics.cold_start(&app, seconds);
            }
            Event::Scale { app, from, to } => {
                tracing::info!(app = %app, from, to, "scaling");
                metrics.scale(&app, from, to);
            }
        }
    }
}
