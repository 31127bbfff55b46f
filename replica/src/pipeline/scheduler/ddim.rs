//! DDIM (Song et al. 2020) with η = 0, as diffusers' `DDIMScheduler` with the SD hub settings:
//! `clip_sample = false`, `set_alpha_to_one = false` (the step after t = 0 uses ᾱ_0).

use candle_core::Tensor;
use sdplane_wire::checkpoint::Prediction;

use super::schedule::{self, TRAIN_STEPS};
use super::{NoiseFn, Scheduler, SchedulerConfig, combine};

/// Deterministic DDIM sampler.
pub struct Ddim {
    prediction: Prediction,
    timesteps: Vec<f64>,
    alphas_cumprod: Vec<f64>,
    /// How far back each step jumps: `TRAIN_STEPS / steps` (integer division, as diffusers).
    jump: usize,
}

impl Ddim {
    pub fn new(config: SchedulerConfig, steps: usize) -> Self {
        Self {
            prediction: config.prediction,
            timesteps: schedule::spaced_timesteps(config.spacing, steps, config.steps_offset, true),
            alphas_cumprod: schedule::alphas_cumprod(),
            jump: TRAIN_STEPS / steps,
        }
    }

    fn alpha_at(&self, t: f64) -> f64 {
        // `set_alpha_to_one = false`: before the first training step, ᾱ_0 stands in.
        if t < 0.0 {
            self.alphas_cumprod[0]
        } else {
            self.alphas_cumprod[(t as usize).min(TRAIN_STEPS - 1)]
        }
    }
}

impl Scheduler for Ddim {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn step(
        &mut self,
        model_output: &Tensor,
        index: usize,
        sample: &Tensor,
        _noise: NoiseFn<'_>,
    ) -> candle_core::Result<Tensor> {
        let t = self.timesteps[index];
        let a_t = self.alpha_at(t);
        let a_prev = self.alpha_at(t - self.jump as f64);
        let (sa, sb) = (a_t.sqrt(), (1.0 - a_t).sqrt());
        let (x0, eps) = match self.prediction {
            Prediction::Epsilon => (
                combine(sample, 1.0 / sa, model_output, -sb / sa)?,
                model_output.clone(),
            ),
            Prediction::V => (
                combine(sample, sa, model_output, -sb)?,
                combine(model_output, sa, sample, sb)?,
            ),
        };
        combine(&x0, a_prev.sqrt(), &eps, (1.0 - a_prev).sqrt())
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, index: usize) -> candle_core::Result<Tensor> {
        let a = self.alpha_at(self.timesteps[index]);
        combine(original, a.sqrt(), noise, (1.0 - a).sqrt())
    }
}
