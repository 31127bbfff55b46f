//! Create, read, list and delete SDApps: what the admin API (`POST/GET/DELETE /v1/apps`) and so
//! `deploy_sd.sh` do in Kubernetes mode. The SDApp is the registry there, so `kubectl apply`,
//! GitOps and the admin API all declare apps the same way.

use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use sdplane_wire::admin::AppSpec;
use sdplane_wire::app_name::{app_name_for_file, is_valid_app_name};

use super::crd::{SDApp, SDAppSpec};
use super::error::{Error, Result};
use super::objects::{MANAGED_BY, MANAGED_BY_LABEL};

/// The SDApp spec for an admin-API app spec (fields the admin API has no say on stay unset,
/// so the controller defaults apply).
pub fn sdapp_spec(spec: &AppSpec) -> SDAppSpec {
    SDAppSpec {
        model: spec.model.clone(),
        min_replicas: spec.min_replicas,
        max_replicas: spec.max_replicas,
        idle_timeout_seconds: spec.idle_timeout_s,
        target_concurrency: spec.target_concurrency,
        resources: None,
        image: None,
    }
}

/// The admin-API view of an SDApp spec.
pub fn app_spec(spec: &SDAppSpec) -> AppSpec {
    AppSpec {
        model: spec.model.clone(),
        min_replicas: spec.min_replicas,
        max_replicas: spec.max_replicas,
        idle_timeout_s: spec.idle_timeout_seconds,
        target_concurrency: spec.target_concurrency,
    }
}

/// Create the SDApp for `spec`, named by the app-name rule from its model file. Returns it as
/// stored. `AlreadyExists` when an app of that name exists, `InvalidSpec` for a bad spec.
pub async fn create_app(api: &Api<SDApp>, spec: &AppSpec) -> Result<SDApp> {
    let spec = sdapp_spec(spec);
    spec.validate()?;
    let name = app_name_for_file(std::path::Path::new(&spec.model));
    if !is_valid_app_name(&name) {
        return Err(Error::InvalidName(name));
    }
    let mut app = SDApp::new(&name, spec);
    app.metadata = ObjectMeta {
        name: Some(name.clone()),
        labels: Some([(MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string())].into()),
        ..ObjectMeta::default()
    };
    match api
        .create(&PostParams::default(), &app)
        .await
        .map_err(Error::from)
    {
        Err(e) if e.is_conflict() => Err(Error::AlreadyExists(name)),
        other => other,
    }
}

/// Set the admin-API fields of SDApp `name` to `spec` with a JSON merge patch. Unset optional
/// fields are cleared (explicit `null`); fields the admin API has no say on (`resources`,
/// `image`) keep what `kubectl apply` gave them. `NotFound` when there is no such app.
pub async fn update_app(api: &Api<SDApp>, name: &str, spec: &AppSpec) -> Result<SDApp> {
    let spec = sdapp_spec(spec);
    spec.validate()?;
    if !is_valid_app_name(name) {
        return Err(Error::InvalidName(name.to_string()));
    }
    let patch = serde_json::json!({"spec": {
        "model": spec.model,
        "minReplicas": spec.min_replicas,
        "maxReplicas": spec.max_replicas,
        "idleTimeoutSeconds": spec.idle_timeout_seconds,
        "targetConcurrency": spec.target_concurrency,
    }});
    match api
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(Error::from)
    {
        Err(e) if e.is_not_found() => Err(Error::NotFound(name.to_string())),
        other => other,
    }
}

/// The SDApp named `name`, if it exists.
pub async fn get_app(api: &Api<SDApp>, name: &str) -> Result<Option<SDApp>> {
    if !is_valid_app_name(name) {
        return Err(Error::InvalidName(name.to_string()));
    }
    Ok(api.get_opt(name).await?)
}

/// Every SDApp in the namespace, sorted by name.
pub async fn list_apps(api: &Api<SDApp>) -> Result<Vec<SDApp>> {
    let mut apps = api.list(&ListParams::default()).await?.items;
    apps.sort_by_key(ResourceExt::name_any);
    Ok(apps)
}

/// Delete the SDApp `name`; its Deployment and Service follow by owner reference.
/// `NotFound` when there is no such app.
pub async fn delete_app(api: &Api<SDApp>, name: &str) -> Result<()> {
    if !is_valid_app_name(name) {
        return Err(Error::InvalidName(name.to_string()));
    }
    // Foreground: the SDApp disappears only after its pods, so a redeploy cannot race them.
    match api
        .delete(name, &DeleteParams::foreground())
        .await
        .map_err(Error::from)
    {
        Err(e) if e.is_not_found() => Err(Error::NotFound(name.to_string())),
        Err(e) => Err(e),
        Ok(_) => Ok(()),
    }
}
