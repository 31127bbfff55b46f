//! Euler and Euler ancestral (Karras et al. 2022, Algorithm 2 with no churn; k-diffusion's
//! `sample_euler_ancestral` with η = 1), as diffusers' `EulerDiscreteScheduler` and
//! `EulerAncestralDiscreteScheduler` with linear sigma interpolation.

use candle_core::Tensor;
use sdplane_wire::checkpoint::Prediction;

use super::schedule::{self, Spacing};
use super::{NoiseFn, Scheduler, SchedulerConfig, combine, predicted_original_sigma};

/// Euler sampler in sigma space; `ancestral` adds fresh noise each step.
pub struct Euler {
    prediction: Prediction,
    ancestral: bool,
    timesteps: Vec<f64>,
    /// One per step plus the final 0.
    sigmas: Vec<f64>,
    init_noise_sigma: f64,
}

impl Euler {
    pub fn new(config: SchedulerConfig, steps: usize, ancestral: bool) -> Self {
        let train = schedule::train_sigmas(&schedule::alphas_cumprod());
        let timesteps = schedule::spaced_timesteps(config.spacing, steps, config.steps_offset, false);
        let mut sigmas: Vec<f64> = timesteps.iter().map(|&t| schedule::interp(t, &train)).collect();
        sigmas.push(0.0);
        let max_sigma = sigmas.iter().copied().fold(0.0, f64::max);
        // diffusers: `linspace`/`trailing` start at σ_max, otherwise at √(σ_max² + 1).
        let init_noise_sigma = match config.spacing {
            Spacing::Linspace | Spacing::Trailing => max_sigma,
            Spacing::Leading => (max_sigma * max_sigma + 1.0).sqrt(),
        };
        Self {
            prediction: config.prediction,
            ancestral,
            timesteps,
            sigmas,
            init_noise_sigma,
        }
    }

    /// Noise level of each step plus the final 0.
    pub fn sigmas(&self) -> &[f64] {
        &self.sigmas
    }
}

impl Scheduler for Euler {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        self.init_noise_sigma
    }

    fn scale_model_input(&self, sample: &Tensor, index: usize) -> candle_core::Result<Tensor> {
        let sigma = self.sigmas[index];
        sample.affine(1.0 / (sigma * sigma + 1.0).sqrt(), 0.0)
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        index: usize,
        sample: &Tensor,
        noise: NoiseFn<'_>,
    ) -> candle_core::Result<Tensor> {
        let (sigma, sigma_next) = (self.sigmas[index], self.sigmas[index + 1]);
        let x0 = predicted_original_sigma(self.prediction, model_output, sample, sigma)?;
        // Move along the ODE direction d = (x − x0)/σ, to σ_down (ancestral) or σ_next.
        let (sigma_to, sigma_up) = if self.ancestral {
            let up = (sigma_next * sigma_next * (sigma * sigma - sigma_next * sigma_next) / (sigma * sigma))
                .sqrt();
            ((sigma_next * sigma_next - up * up).max(0.0).sqrt(), up)
        } else {
            (sigma_next, 0.0)
        };
        // x + d·(σ_to − σ) = x·(σ_to/σ) + x0·(1 − σ_to/σ)
        let ratio = sigma_to / sigma;
        let moved = combine(sample, ratio, &x0, 1.0 - ratio)?;
        if self.ancestral {
            // diffusers draws this noise on every step, the last one (σ_up = 0) included.
            let fresh = noise()?.to_dtype(moved.dtype())?;
            moved + fresh.affine(sigma_up, 0.0)?
        } else {
            Ok(moved)
        }
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, index: usize) -> candle_core::Result<Tensor> {
        combine(original, 1.0, noise, self.sigmas[index])
    }
}
