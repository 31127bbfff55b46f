//! What every handler shares: the model's lifecycle (loading → ready | failed), admission,
//! metrics, the usage probe and the limits from the command line.

use std::sync::{Arc, OnceLock, PoisonError, RwLock};
use std::time::Duration;

use prometheus::Registry;
use sdplane_wire::api::ReplicaState;
use tokio_util::sync::CancellationToken;

use super::admission::Admission;
use super::error::ServerError;
use super::metrics::ReplicaMetrics;
use super::usage::UsageProbe;
use crate::engine::Generator;

/// Where the model is in its life.
#[derive(Clone)]
pub enum Lifecycle {
    Loading {
        progress: f64,
        phase: String,
    },
    Ready {
        generator: Arc<dyn Generator>,
        load_seconds: f64,
    },
    Failed {
        reason: String,
    },
}

/// A copy of the lifecycle for health answers.
#[derive(Debug, Clone, PartialEq)]
pub struct LifecycleView {
    pub state: ReplicaState,
    pub progress: f64,
    pub phase: Option<String>,
    pub reason: Option<String>,
    pub load_seconds: Option<f64>,
}

/// Shared by all handlers through `Arc`.
pub struct AppState {
    lifecycle: RwLock<Lifecycle>,
    pub admission: Admission,
    pub registry: Registry,
    pub metrics: ReplicaMetrics,
    pub usage: UsageProbe,
    /// Model file stem (`model` in answers), known before the model is loaded.
    pub model_stem: String,
    pub device: String,
    pub request_timeout: Duration,
    /// Bytes a request may need beyond the weights; set once the model is loaded.
    pub memory_budget_bytes: OnceLock<u64>,
    pub started: tokio::time::Instant,
    /// Parent of every request's cancel token: cancelled when shutdown's grace runs out.
    pub work: CancellationToken,
}

impl AppState {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        admission: Admission,
        registry: Registry,
        metrics: ReplicaMetrics,
        usage: UsageProbe,
        model_stem: String,
        device: String,
        request_timeout: Duration,
    ) -> Self {
        Self {
            lifecycle: RwLock::new(Lifecycle::Loading {
                progress: 0.0,
                phase: "starting".into(),
            }),
            admission,
            registry,
            metrics,
            usage,
            model_stem,
            device,
            request_timeout,
            memory_budget_bytes: OnceLock::new(),
            started: tokio::time::Instant::now(),
            work: CancellationToken::new(),
        }
    }

    /// Record load progress (ignored once ready or failed).
    pub fn set_progress(&self, progress: f64, phase: &str) {
        let mut lifecycle = self.lifecycle.write().unwrap_or_else(PoisonError::into_inner);
        if let Lifecycle::Loading { .. } = *lifecycle {
            let progress = if progress.is_finite() {
                progress.clamp(0.0, 1.0)
            } else {
                0.0
            };
            *lifecycle = Lifecycle::Loading {
                progress,
                phase: phase.to_string(),
            };
        }
    }

    pub fn set_ready(&self, generator: Arc<dyn Generator>, load_seconds: f64) {
        *self.lifecycle.write().unwrap_or_else(PoisonError::into_inner) = Lifecycle::Ready {
            generator,
            load_seconds,
        };
    }

    pub fn set_failed(&self, reason: String) {
        *self.lifecycle.write().unwrap_or_else(PoisonError::into_inner) = Lifecycle::Failed { reason };
    }

    /// The generator once ready; otherwise the 503 to answer.
    pub fn generator(&self) -> Result<Arc<dyn Generator>, ServerError> {
        match &*self.lifecycle.read().unwrap_or_else(PoisonError::into_inner) {
            Lifecycle::Ready { generator, .. } => Ok(Arc::clone(generator)),
            Lifecycle::Loading { progress, .. } => Err(ServerError::Loading {
                percent: progress * 100.0,
                retry_after_secs: loading_retry_after(self.started.elapsed().as_secs_f64(), *progress),
            }),
            Lifecycle::Failed { reason } => Err(ServerError::LoadFailed(reason.clone())),
        }
    }

    pub fn view(&self) -> LifecycleView {
        match &*self.lifecycle.read().unwrap_or_else(PoisonError::into_inner) {
            Lifecycle::Loading { progress, phase } => LifecycleView {
                state: ReplicaState::Loading,
                progress: *progress,
                phase: Some(phase.clone()),
                reason: None,
                load_seconds: None,
            },
            Lifecycle::Ready { load_seconds, .. } => LifecycleView {
                state: ReplicaState::Ready,
                progress: 1.0,
                phase: None,
                reason: None,
                load_seconds: Some(*load_seconds),
            },
            Lifecycle::Failed { reason } => LifecycleView {
                state: ReplicaState::Failed,
                progress: 0.0,
                phase: None,
                reason: Some(reason.clone()),
                load_seconds: None,
            },
        }
    }

    /// The memory budget, unlimited until the load sets it.
    pub fn memory_budget(&self) -> u64 {
        self.memory_budget_bytes.get().copied().unwrap_or(u64::MAX)
    }
}

/// Seconds until loading is likely done, from the time spent so far and the progress made:
/// the rest at the same pace, between 1 and 60 s so clients neither spin nor give up.
pub fn loading_retry_after(elapsed_secs: f64, progress: f64) -> u64 {
    // Below 1% the pace says nothing yet; assume as long again as so far.
    let remaining = if progress >= 0.01 {
        elapsed_secs * (1.0 - progress) / progress
    } else {
        elapsed_secs
    };
    if remaining.is_finite() {
        remaining.ceil().clamp(1.0, 60.0) as u64
    } else {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loading_retry_after_follows_the_pace_within_bounds() {
        for (elapsed, progress, want) in [
            (10.0, 0.5, 10),
            (3.0, 0.75, 1),
            (0.2, 0.0, 1),
            (30.0, 0.005, 30),
            (100.0, 0.1, 60),
            (5.0, 1.0, 1),
        ] {
            assert_eq!(
                loading_retry_after(elapsed, progress),
                want,
                "{elapsed} {progress}"
            );
        }
    }
}
