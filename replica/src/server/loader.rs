//! Loading the model off the async runtime, then one warm-up generation (smallest size, one
//! step) so lazy initialisation is paid before the first real request, then `ready`.

use std::sync::Arc;

use tokio::sync::oneshot;

use super::state::AppState;
use super::usage::UsageProbe;
use crate::engine::{EngineError, GenerationParams, Generator, LoadProgress, StepControl};

/// Builds the generator, reporting progress. Runs on its own thread.
pub type Loader = Box<dyn FnOnce(LoadProgress<'_>) -> Result<Arc<dyn Generator>, EngineError> + Send>;

/// Share of the progress bar given to reading weights; the warm-up takes the rest.
const WEIGHTS_SHARE: f64 = 0.95;

/// Start loading on a plain thread (not the blocking pool, so a shutdown during a long load
/// does not wait for it). The receiver gets `Err(reason)` if the load or warm-up fails.
pub fn spawn(
    state: Arc<AppState>,
    loader: Loader,
    memory_budget_mb: Option<u64>,
) -> std::io::Result<oneshot::Receiver<Result<(), String>>> {
    let (tx, rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("sdplane-load".into())
        .spawn(move || {
            let result = load_and_warm(&state, loader, memory_budget_mb);
            match &result {
                Ok(()) => {}
                Err(reason) => state.set_failed(reason.clone()),
            }
            let _ = tx.send(result);
        })?;
    Ok(rx)
}

fn load_and_warm(state: &AppState, loader: Loader, memory_budget_mb: Option<u64>) -> Result<(), String> {
    let started = std::time::Instant::now();
    let progress = |fraction: f64, phase: &str| state.set_progress(fraction * WEIGHTS_SHARE, phase);
    let generator = loader(&progress).map_err(|e| format!("cannot load the model: {e}"))?;
    tracing::info!(
        seconds = started.elapsed().as_secs_f64(),
        "weights loaded; warming up"
    );

    state.set_progress(WEIGHTS_SHARE, "warm-up");
    let warm_started = std::time::Instant::now();
    let params = warm_up_params(generator.as_ref());
    generator
        .generate(&params, &mut |_, _| StepControl::Continue)
        .map_err(|e| format!("warm-up generation failed: {e}"))?;
    let warm_seconds = warm_started.elapsed().as_secs_f64();
    // A first guess for Retry-After until real generations are timed: the warm-up's one step
    // at the smallest size, scaled to the default step count (a lower bound of a real request).
    let defaults = &generator.model_info().defaults;
    state
        .admission
        .set_prior(warm_seconds * f64::from(defaults.num_inference_steps));

    let budget = memory_budget_bytes(memory_budget_mb, &state.usage);
    match budget {
        Some(bytes) => tracing::info!(budget_mb = bytes / (1024 * 1024), "memory budget per request"),
        None => tracing::warn!("no memory budget given or measurable; requests are not size-checked"),
    }
    let _ = state.memory_budget_bytes.set(budget.unwrap_or(u64::MAX));

    let load_seconds = started.elapsed().as_secs_f64();
    state.metrics.load_seconds.set(load_seconds);
    state.set_ready(generator, load_seconds);
    tracing::info!(load_seconds, warm_up_seconds = warm_seconds, "ready");
    Ok(())
}

/// The cheapest real generation: smallest side, one step, no classifier-free guidance (one UNet
/// row instead of two: every kernel still runs once, which is all the warm-up is for), family
/// defaults otherwise.
fn warm_up_params(generator: &dyn Generator) -> GenerationParams {
    let info = generator.model_info();
    let side = info.limits.min_side;
    GenerationParams {
        prompt: String::new(),
        negative_prompt: String::new(),
        steps: 1,
        guidance_scale: 0.0,
        width: side,
        height: side,
        seed: 0,
        scheduler: info.defaults.scheduler,
        num_images: 1,
        init_image: None,
        strength: 1.0,
        init_latents: None,
        mask_image: None,
    }
}

/// `--memory-budget-mb` if given, else what is free after loading: device memory on a GPU,
/// host memory on CPU.
fn memory_budget_bytes(flag_mb: Option<u64>, usage: &UsageProbe) -> Option<u64> {
    if let Some(mb) = flag_mb {
        return Some(mb.saturating_mul(1024 * 1024));
    }
    match usage.gpu() {
        Some(gpu) => gpu.free_bytes(),
        None => usage.available_memory_bytes(),
    }
}
