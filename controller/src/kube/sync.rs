//! SDApps as the registry's source in Kubernetes mode. The SDApp objects are the truth (so the
//! admin API, `kubectl apply` and GitOps declare apps alike); the registry mirrors the watched
//! SDApp cache so every app gets a route, load tracking and the autoscaler. Two ways in:
//! - [`SdAppSync`]: a task that, on every SDApp watch event, upserts the registry entry of each cached
//!   SDApp and removes the entries of SDApps that left the cache;
//! - [`deploy`] and [`delete`]: the admin API's `POST`/`DELETE /v1/apps`, which write the SDApp
//!   first and then update the registry at once, so the answer already reflects the change.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sdplane_wire::admin::{AppSpec, AppStatus};
use tokio_util::sync::CancellationToken;

use super::apps::{self, app_spec};
use super::backend::KubeBackend;
use super::crd::SDApp;
use super::error::Error as KubeError;
use crate::error::{Error, Result};
use crate::registry::Registry;
use crate::registry::state::ResolvedModel;

/// The registry entry of `app`, or `None` while it is being deleted (a foreground deletion keeps
/// the object, with a deletion timestamp, until its pods are gone). The path is the model's place
/// under `models_root` (the same volume replica pods mount); `parameters` stays 0 because
/// Kubernetes sizes pods from the SDApp's `resources`, not from the weights.
pub fn registry_entry(models_root: &Path, app: &SDApp) -> Option<(ResolvedModel, AppSpec)> {
    if app.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let name = app.metadata.name.clone()?;
    let spec = app_spec(&app.spec);
    let model = ResolvedModel {
        app: name,
        model: spec.model.clone(),
        path: models_root.join(&spec.model),
        parameters: 0,
    };
    Some((model, spec))
}

/// `POST /v1/apps` in Kubernetes mode: create the SDApp for `model` (already resolved and checked
/// against the models directory). An existing SDApp of the same model is updated in place when
/// the spec differs (`false`: not new, 200); one serving another file is a name conflict (409).
pub async fn deploy(
    backend: &KubeBackend,
    registry: &Registry,
    models_root: &Path,
    model: ResolvedModel,
    mut spec: AppSpec,
) -> Result<(AppStatus, bool)> {
    spec.model = model.model.clone();
    let api = backend.apps_api();
    let (stored, created) = match apps::create_app(&api, &spec).await {
        Ok(stored) => (stored, true),
        Err(KubeError::AlreadyExists(name)) => {
            let existing = apps::get_app(&api, &name)
                .await?
                .ok_or_else(|| KubeError::NotFound(name.clone()))?;
            if existing.spec.model != spec.model {
                return Err(Error::NameConflict {
                    app: name,
                    existing: existing.spec.model,
                    requested: spec.model,
                });
            }
            if existing.metadata.deletion_timestamp.is_some() {
                // Re-creating it now would race the garbage collector; the caller retries.
                return Err(KubeError::AlreadyExists(name).into());
            }
            let stored = if app_spec(&existing.spec) == spec {
                existing
            } else {
                apps::update_app(&api, &name, &spec).await?
            };
            (stored, false)
        }
        Err(e) => return Err(e.into()),
    };
    let (entry, spec) =
        registry_entry(models_root, &stored).ok_or(KubeError::MissingField("metadata.name"))?;
    let (status, _) = registry.upsert(entry, spec).await?;
    Ok((status, created))
}

/// `DELETE /v1/apps/<name>` in Kubernetes mode: delete the SDApp (its Deployment and Service
/// follow), then forget the app. 404 when there is no such SDApp.
pub async fn delete(backend: &KubeBackend, registry: &Registry, name: String) -> Result<()> {
    match apps::delete_app(&backend.apps_api(), &name).await {
        Ok(()) => {}
        Err(KubeError::InvalidName(_)) => return Err(Error::AppNotFound(name)),
        Err(e) if e.is_not_found() => return Err(Error::AppNotFound(name)),
        Err(e) => return Err(e.into()),
    }
    match registry.delete(name).await {
        // The sync task may have seen the SDApp go first.
        Ok(()) | Err(Error::AppNotFound(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Mirrors the SDApp cache into the registry.
pub struct SdAppSync {
    backend: Arc<KubeBackend>,
    registry: Registry,
    models_root: PathBuf,
    /// Apps the registry holds because of an SDApp (or held at start, from `apps.json`): only
    /// these are removed when absent from the cache, so an app the admin API just created is
    /// not dropped by a sync that runs before the watch delivers its SDApp.
    known: BTreeSet<String>,
}

impl SdAppSync {
    /// A sync over `backend`'s SDApp cache. Apps already in the registry (persisted from an
    /// earlier run) count as known, so the first sync removes those whose SDApp is gone.
    pub async fn new(backend: Arc<KubeBackend>, registry: Registry, models_root: PathBuf) -> Result<Self> {
        let known = registry.list().await?.into_iter().map(|s| s.name).collect();
        Ok(Self {
            backend,
            registry,
            models_root,
            known,
        })
    }

    /// One pass: upsert every cached SDApp, remove known apps no longer cached. Returns the
    /// names added or changed and the names removed.
    pub async fn sync_once(&mut self) -> Result<(Vec<String>, Vec<String>)> {
        let mut seen = BTreeSet::new();
        let mut changed = Vec::new();
        for app in self.backend.cached_apps() {
            let Some((model, spec)) = registry_entry(&self.models_root, &app) else {
                continue;
            };
            let name = model.app.clone();
            match self.registry.upsert(model, spec).await {
                Ok((_, true)) => changed.push(name.clone()),
                Ok((_, false)) => {}
                Err(Error::Unavailable) => return Err(Error::Unavailable),
                Err(e) => {
                    tracing::warn!(app = %name, kind = e.kind(), error = %e, "cannot register SDApp");
                }
            }
            seen.insert(name);
        }
        let mut removed = Vec::new();
        for gone in self.known.difference(&seen) {
            match self.registry.delete(gone.clone()).await {
                Ok(()) => {
                    tracing::info!(app = %gone, "SDApp gone: app removed");
                    removed.push(gone.clone());
                }
                Err(Error::AppNotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        self.known = seen;
        Ok((changed, removed))
    }

    /// Wait for the first full SDApp list, sync, then sync again on every SDApp event, until
    /// `shutdown`. `ready` fires after the first sync, so the reconcile loop never acts on a
    /// registry that has not yet seen the cluster's SDApps.
    pub async fn run(mut self, ready: tokio::sync::oneshot::Sender<()>, shutdown: CancellationToken) {
        let changed = self.backend.sdapps_changed();
        tokio::select! {
            up = self.backend.sdapps_ready() => if !up { return },
            () = shutdown.cancelled() => return,
        }
        let mut ready = Some(ready);
        loop {
            match self.sync_once().await {
                Ok((changed, removed)) => {
                    if !changed.is_empty() || !removed.is_empty() {
                        tracing::info!(
                            ?changed,
                            ?removed,
                            apps = self.known.len(),
                            "registry synced from SDApps"
                        );
                    }
                }
                // The registry task is gone: the controller is stopping.
                Err(Error::Unavailable) => return,
                // Retried on the next event; the registry keeps what it had.
                Err(e) => tracing::warn!(kind = e.kind(), error = %e, "SDApp sync failed"),
            }
            if let Some(ready) = ready.take() {
                let _ = ready.send(());
            }
            tokio::select! {
                () = changed.notified() => {}
                () = shutdown.cancelled() => return,
            }
        }
    }
}
