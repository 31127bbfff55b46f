//! Where apps are declared, and so what the admin API's `POST`/`DELETE /v1/apps` write: the one
//! place that branches on the backend mode.
//! - Local: the registry (`apps.json`) is the truth; the backend runs child processes.
//! - Kubernetes: `SDApp` objects are the truth (`kubectl apply` and GitOps declare apps alike);
//!   `kube::sync` mirrors them into the registry.

use std::path::Path;
use std::sync::Arc;

use sdplane_wire::admin::{AppSpec, AppStatus};

use crate::backend::Backend;
use crate::backend::local::LocalBackend;
use crate::error::Result;
use crate::kube::{KubeBackend, sync};
use crate::registry::Registry;
use crate::registry::state::ResolvedModel;

/// The running backend, with the way its apps are declared.
#[derive(Clone)]
pub enum AppSource {
    /// Apps live in the registry; replicas are child processes on this machine.
    Local(Arc<LocalBackend>),
    /// Apps live in SDApp objects; replicas are pods of one Deployment per app.
    Kubernetes(Arc<KubeBackend>),
}

impl AppSource {
    /// The backend the reconcile loop drives.
    pub fn backend(&self) -> Arc<dyn Backend> {
        match self {
            Self::Local(b) => b.clone(),
            Self::Kubernetes(b) => b.clone(),
        }
    }

    /// Deploy `model` (resolved and checked against the models directory under `models_root`)
    /// with `spec`; `true` when the app is new.
    pub async fn deploy(
        &self,
        registry: &Registry,
        models_root: &Path,
        model: ResolvedModel,
        spec: AppSpec,
    ) -> Result<(AppStatus, bool)> {
        match self {
            Self::Local(_) => registry.deploy(model, spec).await,
            Self::Kubernetes(kube) => sync::deploy(kube, registry, models_root, model, spec).await,
        }
    }

    /// Delete app `name` (404 when there is none).
    pub async fn delete(&self, registry: &Registry, name: String) -> Result<()> {
        match self {
            Self::Local(_) => registry.delete(name).await,
            Self::Kubernetes(kube) => sync::delete(kube, registry, name).await,
        }
    }
}
