//! The registry's data and every change to it, free of I/O: apps and their specs, the load the
//! routers report, what the backend observed, cold-start clocks, and the derived views (app
//! status, route table). Owned by the registry task (`super`); times are `tokio::time::Instant`
//! so tests drive it with `tokio::time::pause()`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use sdplane_wire::admin::{ActivityReport, AppRoute, AppSpec, AppState, AppStatus, RouteTable};
use tokio::time::Instant;

use super::store::{AppRecord, RegistryFile};
use crate::autoscaler::{AppLoad, desired_replicas};
use crate::backend::{AppDeployment, AppObservation, ReplicaPhase};
use crate::error::{Error, Result};

/// Controller-wide defaults an `AppSpec` may override.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    pub idle_timeout: Duration,
    pub target_concurrency: u32,
    /// How long a peak of in-flight requests keeps its replicas before scale-in.
    pub scale_down_window: Duration,
}

/// One app's record plus what is known about it at run time.
#[derive(Debug)]
struct App {
    record: AppRecord,
    last_activity: Option<Instant>,
    in_flight: u32,
    peak_in_flight: u32,
    peak_at: Option<Instant>,
    /// When the current cold start began (activation with no replica running).
    activated_at: Option<Instant>,
    /// An activation is waiting for its first replica to show up.
    waking: bool,
    /// When the app was scaled to zero to make room for another; until an activation (a new
    /// request) clears it, router activity reports do not wake the app.
    evicted_at: Option<Instant>,
    obs: AppObservation,
    desired: u32,
}

impl App {
    fn new(record: AppRecord) -> Self {
        Self {
            record,
            last_activity: None,
            in_flight: 0,
            peak_in_flight: 0,
            peak_at: None,
            activated_at: None,
            waking: false,
            evicted_at: None,
            obs: AppObservation::default(),
            desired: 0,
        }
    }

    fn active_replicas(&self) -> u32 {
        u32::try_from(self.obs.active().count()).unwrap_or(u32::MAX)
    }

    fn ready_replicas(&self) -> u32 {
        u32::try_from(self.obs.ready().count()).unwrap_or(u32::MAX)
    }

    fn failed(&self) -> bool {
        self.obs.failure.is_some()
    }

    /// State, load progress and reason, as users and the router see them.
    fn state(&self) -> (AppState, Option<f64>, Option<String>) {
        if let Some(reason) = &self.obs.failure {
            return (AppState::Failed, None, Some(reason.clone()));
        }
        if self.ready_replicas() > 0 {
            return (AppState::Ready, Some(1.0), None);
        }
        let loading = self.obs.active().filter(|r| r.phase == ReplicaPhase::Loading);
        let progress = loading
            .filter_map(|r| r.progress)
            .fold(None, |m: Option<f64>, p| Some(m.map_or(p, |m| m.max(p))));
        if let Some(progress) = progress {
            return (AppState::Loading, Some(progress), None);
        }
        if self.active_replicas() > 0 || self.waking || self.desired > 0 {
            return (AppState::Starting, None, self.obs.waiting.clone());
        }
        (AppState::ScaledToZero, None, None)
    }

    fn idle_timeout(&self, policy: &Policy) -> Duration {
        self.record
            .spec
            .idle_timeout_s
            .map(Duration::from_secs)
            .unwrap_or(policy.idle_timeout)
    }

    fn route(&self) -> AppRoute {
        let (state, progress, reason) = self.state();
        AppRoute {
            state,
            endpoints: self.obs.ready().filter_map(|r| r.endpoint.clone()).collect(),
            progress,
            reason,
            estimated_cold_start_seconds: self.record.cold_start.estimate_seconds(),
            replicas_ready: self.ready_replicas(),
            replicas_total: self.active_replicas(),
        }
    }

    fn deployment(&self) -> AppDeployment {
        AppDeployment {
            name: self.record.name.clone(),
            model: self.record.spec.model.clone(),
            model_path: self.record.model_path.clone(),
            generation: self.record.generation,
            parameters: self.record.parameters,
        }
    }
}

/// A model file resolved and checked by the admin API, ready to deploy.
#[derive(Debug, Clone)]
pub struct ResolvedModel {
    pub app: String,
    /// Path relative to the models directory (canonical form), stored as `spec.model`.
    pub model: String,
    pub path: PathBuf,
    pub parameters: u64,
}

/// What happened when an app scaled, for metrics and logs.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    ColdStart { app: String, seconds: f64 },
    Scale { app: String, from: u32, to: u32 },
}

/// The registry.
#[derive(Debug)]
pub struct RegistryState {
    policy: Policy,
    apps: BTreeMap<String, App>,
    next_generation: u64,
    routes: RouteTable,
}

impl RegistryState {
    /// From what was persisted.
    pub fn new(policy: Policy, file: RegistryFile) -> Self {
        let apps = file
            .apps
            .into_iter()
            .map(|r| (r.name.clone(), App::new(r)))
            .collect();
        let mut state = Self {
            policy,
            apps,
            next_generation: file.next_generation.max(1),
            routes: RouteTable::default(),
        };
        state.refresh_routes();
        state
    }

    /// What to persist.
    pub fn file(&self) -> RegistryFile {
        RegistryFile {
            next_generation: self.next_generation,
            apps: self.apps.values().map(|a| a.record.clone()).collect(),
        }
    }

    /// Deploy (or redeploy) `model` as its app; `true` when the app is new. Redeploying the same
    /// file updates the spec and bumps the generation (clearing a failed state).
    pub fn deploy(&mut self, model: ResolvedModel, mut spec: AppSpec) -> Result<(AppStatus, bool)> {
        spec.model = model.model.clone();
        let generation = self.next_generation;
        let created = match self.apps.get_mut(&model.app) {
            Some(app) if app.record.model_path != model.path => {
                return Err(Error::NameConflict {
                    app: model.app,
                    existing: app.record.spec.model.clone(),
                    requested: model.model,
                });
            }
            Some(app) => {
                app.record.spec = spec;
                app.record.parameters = model.parameters;
                app.record.generation = generation;
                app.obs.failure = None;
                false
            }
            None => {
                let record = AppRecord {
                    name: model.app.clone(),
                    spec,
                    model_path: model.path,
                    parameters: model.parameters,
                    generation,
                    cold_start: Default::default(),
                };
                self.apps.insert(model.app.clone(), App::new(record));
                true
            }
        };
        self.next_generation += 1;
        self.refresh_routes();
        let status = self
            .status(&model.app, Instant::now())
            .ok_or(Error::AppNotFound(model.app))?;
        Ok((status, created))
    }

    /// Make `model.app` serve `model` with `spec`, whatever it served before: the Kubernetes
    /// mode, where the SDApp is the source of truth and may change its model file. `true` when
    /// something changed; an unchanged app keeps its generation, load and cold-start clock.
    pub fn upsert(&mut self, model: ResolvedModel, mut spec: AppSpec) -> Result<(AppStatus, bool)> {
        spec.model = model.model.clone();
        let changed = match self.apps.get(&model.app) {
            Some(app) if app.record.spec == spec && app.record.model_path == model.path => false,
            Some(app) => {
                if app.record.model_path != model.path {
                    // Another file under the same name: a new app, not a redeploy.
                    self.apps.remove(&model.app);
                }
                true
            }
            None => true,
        };
        if changed {
            let (status, _created) = self.deploy(model, spec)?;
            return Ok((status, true));
        }
        let status = self
            .status(&model.app, Instant::now())
            .ok_or(Error::AppNotFound(model.app))?;
        Ok((status, false))
    }

    /// Forget an app (the reconcile loop then removes its replicas).
    pub fn delete(&mut self, name: &str) -> Result<()> {
        self.apps
            .remove(name)
            .ok_or_else(|| Error::AppNotFound(name.to_string()))?;
        self.refresh_routes();
        Ok(())
    }

    /// Whether `name` is a deployed app.
    pub fn contains(&self, name: &str) -> bool {
        self.apps.contains_key(name)
    }

    /// The app (if any) serving this model file.
    pub fn app_for_model(&self, model: &str) -> Option<(String, AppState)> {
        self.apps
            .values()
            .find(|a| a.record.spec.model == model)
            .map(|a| (a.record.name.clone(), a.state().0))
    }

    pub fn status(&self, name: &str, now: Instant) -> Option<AppStatus> {
        let app = self.apps.get(name)?;
        let (state, progress, reason) = app.state();
        Some(AppStatus {
            name: app.record.name.clone(),
            model: app.record.spec.model.clone(),
            spec: app.record.spec.clone(),
            state,
            reason,
            progress,
            replicas_desired: app.desired,
            replicas_ready: app.ready_replicas(),
            replicas_total: app.active_replicas(),
            url_path: format!("/{}/v1/generate", app.record.name),
            idle_seconds: app
                .last_activity
                .map(|t| now.saturating_duration_since(t).as_secs_f64()),
            idle_timeout_s: app.idle_timeout(&self.policy).as_secs(),
            estimated_cold_start_seconds: app.record.cold_start.estimate_seconds(),
            cold_starts: app.record.cold_start.count,
        })
    }

    pub fn list(&self, now: Instant) -> Vec<AppStatus> {
        self.apps
            .keys()
            .filter_map(|name| self.status(name, now))
            .collect()
    }

    /// The router asks for a cold app. Idempotent: many calls make one wake-up.
    pub fn activate(&mut self, name: &str, now: Instant) -> Result<AppRoute> {
        let app = self
            .apps
            .get_mut(name)
            .ok_or_else(|| Error::AppNotFound(name.to_string()))?;
        if !app.failed() {
            app.evicted_at = None;
            app.last_activity = Some(app.last_activity.map_or(now, |t| t.max(now)));
            if app.ready_replicas() == 0 && !app.waking {
                app.waking = true;
                app.activated_at.get_or_insert(now);
            }
        }
        let route = app.route();
        self.refresh_routes();
        Ok(route)
    }

    /// Load reported by a router.
    pub fn activity(&mut self, report: &ActivityReport, now: Instant) {
        let window = self.policy.scale_down_window;
        for (name, load) in &report.apps {
            let Some(app) = self.apps.get_mut(name) else {
                continue;
            };
            let idle = Duration::try_from_secs_f64(load.idle_seconds.max(0.0)).unwrap_or(Duration::MAX);
            let seen = now.checked_sub(idle).unwrap_or(now);
            if app.evicted_at.is_some() {
                // Reports about an evicted app describe requests from before the eviction (or
                // ones finishing on its draining replica); only a new request, which reaches the
                // controller as an activation, wakes it again. Comparing report times with the
                // eviction instant instead would race with the report's own delay.
                continue;
            }
            // Several routers may report; the latest activity anywhere wins.
            if load.in_flight > 0 || app.last_activity.is_none_or(|t| seen > t) {
                app.last_activity = Some(if load.in_flight > 0 { now } else { seen });
            }
            app.in_flight = load.in_flight;
            let expired = app
                .peak_at
                .is_none_or(|t| now.saturating_duration_since(t) >= window);
            if load.in_flight >= app.peak_in_flight || expired {
                app.peak_in_flight = load.in_flight;
                app.peak_at = Some(now);
            }
        }
    }

    /// What each app should run now, with scale events. Starts cold-start clocks for apps that
    /// go from nothing to something.
    pub fn plan(&mut self, now: Instant) -> (Vec<(AppDeployment, u32)>, Vec<Event>) {
        let mut plan = Vec::with_capacity(self.apps.len());
        let mut events = Vec::new();
        for app in self.apps.values_mut() {
            let load = AppLoad {
                min_replicas: app.record.spec.min_replicas,
                max_replicas: app.record.spec.max_replicas,
                target_concurrency: app
                    .record
                    .spec
                    .target_concurrency
                    .unwrap_or(self.policy.target_concurrency),
                idle_timeout: app.idle_timeout(&self.policy),
                in_flight: app.in_flight,
                recent_peak_in_flight: app.peak_in_flight,
                idle_for: app.last_activity.map(|t| now.saturating_duration_since(t)),
                current: app.active_replicas(),
                failed: app.failed(),
            };
            let desired = desired_replicas(&load);
            if desired != app.desired {
                events.push(Event::Scale {
                    app: app.record.name.clone(),
                    from: app.desired,
                    to: desired,
                });
            }
            if desired > 0 && app.active_replicas() == 0 && app.ready_replicas() == 0 {
                app.activated_at.get_or_insert(now);
            }
            if desired == 0 {
                app.waking = false;
                if app.active_replicas() == 0 {
                    app.activated_at = None;
                }
            }
            app.desired = desired;
            plan.push((app.deployment(), desired));
        }
        self.refresh_routes();
        (plan, events)
    }

    /// What the backend reports. Returns cold starts that completed, and apps the backend runs
    /// that the registry no longer has (to be removed).
    pub fn observed(
        &mut self,
        mut observed: BTreeMap<String, AppObservation>,
        now: Instant,
    ) -> (Vec<Event>, Vec<String>) {
        let mut events = Vec::new();
        for app in self.apps.values_mut() {
            let obs = observed.remove(&app.record.name).unwrap_or_default();
            let adopted = obs.active().next().is_some() && app.last_activity.is_none() && !app.waking;
            app.obs = obs;
            if adopted {
                // Replicas found running (e.g. adopted after a controller restart) count as
                // active now, so they get a full idle timeout instead of being stopped at once.
                app.last_activity = Some(now);
            }
            if app.active_replicas() > 0 || app.failed() {
                app.waking = false;
            }
            if app.failed() {
                app.activated_at = None;
            } else if app.ready_replicas() > 0
                && let Some(started) = app.activated_at.take()
            {
                let seconds = now.saturating_duration_since(started).as_secs_f64();
                app.record.cold_start.record(seconds);
                events.push(Event::ColdStart {
                    app: app.record.name.clone(),
                    seconds,
                });
            }
        }
        let orphans = observed.into_keys().collect();
        self.refresh_routes();
        (events, orphans)
    }

    /// Pick the least recently used app that can give its memory back for `for_app`: running,
    /// nothing in flight, no `min_replicas` to keep. It is scaled to zero (as if idle).
    pub fn evict_for(&mut self, for_app: &str, now: Instant) -> Option<String> {
        let victim = self
            .apps
            .values()
            .filter(|a| a.record.name != for_app)
            .filter(|a| a.active_replicas() > 0 && a.in_flight == 0 && a.record.spec.min_replicas == 0)
            .min_by_key(|a| a.last_activity)?
            .record
            .name
            .clone();
        if let Some(app) = self.apps.get_mut(&victim) {
            app.last_activity = None;
            app.peak_in_flight = 0;
            app.evicted_at = Some(now);
        }
        Some(victim)
    }

    /// The table routers long-poll; its version changes only when its content does.
    pub fn routes(&self) -> &RouteTable {
        &self.routes
    }

    fn refresh_routes(&mut self) {
        let apps: BTreeMap<String, AppRoute> =
            self.apps.iter().map(|(n, a)| (n.clone(), a.route())).collect();
        if apps != self.routes.apps {
            self.routes = RouteTable {
                version: self.routes.version + 1,
                apps,
            };
        }
    }

    /// Desired and ready replicas per app, for gauges.
    pub fn replica_counts(&self) -> Vec<(String, u32, u32)> {
        self.apps
            .values()
            .map(|a| (a.record.name.clone(), a.desired, a.ready_replicas()))
            .collect()
    }

    /// Restart counters the backend reports, per app.
    pub fn restarts(&self) -> Vec<(String, u64)> {
        self.apps
            .values()
            .map(|a| (a.record.name.clone(), a.obs.restarts))
            .collect()
    }
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
