//! Samplers that match diffusers' schedulers numerically: DDIM, Euler, Euler ancestral and
//! DPM-Solver++ 2M (optionally on Karras sigmas), for epsilon and v prediction.
//!
//! - `schedule`: betas, sigmas and timestep spacing as pure functions.
//! - `ddim`, `euler`, `dpm`: one sampler each, stepping candle tensors with f64 coefficients.
//!
//! A sampler is built for the full step count; img2img runs only the steps from
//! `schedule::img2img_start` on (diffusers' `get_timesteps` + `set_begin_index`), so step
//! indices are always positions in the full schedule.

pub mod ddim;
pub mod dpm;
pub mod euler;
pub mod schedule;

use candle_core::Tensor;
use sdplane_wire::api::SchedulerKind;
use sdplane_wire::checkpoint::Prediction;

pub use schedule::Spacing;

/// Supplies fresh unit-variance noise shaped like the sample (Euler ancestral's per-step noise).
pub type NoiseFn<'a> = &'a mut dyn FnMut() -> candle_core::Result<Tensor>;

/// What decides a sampler's numbers besides its kind and step count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedulerConfig {
    pub kind: SchedulerKind,
    pub prediction: Prediction,
    pub spacing: Spacing,
    /// diffusers `steps_offset` (1 in the SD1/SD2/SDXL hub configs), used by `leading` spacing.
    pub steps_offset: usize,
}

/// One sampler: the timesteps it visits and how it moves the latents between them.
pub trait Scheduler: Send {
    /// Timesteps handed to the UNet, one per step, highest first.
    fn timesteps(&self) -> &[f64];

    /// Standard deviation the starting noise is scaled to (diffusers `init_noise_sigma`); 1 for
    /// samplers that work in the variance-preserving parametrisation (DDIM, DPM-Solver++).
    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    /// The UNet input at step `index`: unchanged by default; k-diffusion samplers (Euler)
    /// divide by `√(σ² + 1)`.
    fn scale_model_input(&self, sample: &Tensor, _index: usize) -> candle_core::Result<Tensor> {
        Ok(sample.clone())
    }

    /// The sample after step `index`, given the UNet output (after guidance) at that step.
    fn step(
        &mut self,
        model_output: &Tensor,
        index: usize,
        sample: &Tensor,
        noise: NoiseFn<'_>,
    ) -> candle_core::Result<Tensor>;

    /// Clean latents noised to the level of step `index` (img2img's starting point).
    fn add_noise(&self, original: &Tensor, noise: &Tensor, index: usize) -> candle_core::Result<Tensor>;
}

/// Build the sampler `config` names for `steps` denoising steps (`steps` ≥ 1).
pub fn build(config: SchedulerConfig, steps: usize) -> Box<dyn Scheduler> {
    let steps = steps.max(1);
    match config.kind {
        SchedulerKind::Ddim => Box::new(ddim::Ddim::new(config, steps)),
        SchedulerKind::Euler => Box::new(euler::Euler::new(config, steps, false)),
        SchedulerKind::EulerA => Box::new(euler::Euler::new(config, steps, true)),
        SchedulerKind::Dpmpp2m => Box::new(dpm::DpmSolver::new(config, steps, false)),
        SchedulerKind::Dpmpp2mKarras => Box::new(dpm::DpmSolver::new(config, steps, true)),
    }
}

/// `a·x + b·y` on tensors of any float dtype, with f64 coefficients.
pub(crate) fn combine(x: &Tensor, a: f64, y: &Tensor, b: f64) -> candle_core::Result<Tensor> {
    x.affine(a, 0.0)? + y.affine(b, 0.0)?
}

/// The predicted clean sample from a k-diffusion-style output at noise level `sigma`,
/// where the UNet saw `x / √(σ² + 1)` (diffusers' Euler and DPM++ in sigma space).
pub(crate) fn predicted_original_sigma(
    prediction: Prediction,
    model_output: &Tensor,
    sample: &Tensor,
    sigma: f64,
) -> candle_core::Result<Tensor> {
    match prediction {
        Prediction::Epsilon => combine(sample, 1.0, model_output, -sigma),
        // v = α·ε − σ_t·x0 in variance-preserving terms; solved for x0 in sigma space.
        Prediction::V => {
            let s2 = sigma * sigma + 1.0;
            combine(model_output, -sigma / s2.sqrt(), sample, 1.0 / s2)
        }
    }
}
