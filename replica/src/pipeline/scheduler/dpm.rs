//! DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2, midpoint form) as diffusers'
//! `DPMSolverMultistepScheduler` defaults: `algorithm_type = dpmsolver++`, `solver_order = 2`,
//! `solver_type = midpoint`, `final_sigmas_type = zero` (so the last step is first order),
//! optionally on Karras sigmas.

use candle_core::Tensor;
use sdplane_wire::checkpoint::Prediction;

use super::schedule;
use super::{NoiseFn, Scheduler, SchedulerConfig, combine};

/// Second-order multistep sampler; keeps the previous step's predicted clean sample.
pub struct DpmSolver {
    prediction: Prediction,
    timesteps: Vec<f64>,
    /// One per step plus the final 0.
    sigmas: Vec<f64>,
    /// Predicted clean sample of the previous step, and that step's index.
    previous: Option<(usize, Tensor)>,
}

/// `(α_t, σ_t)` of the variance-preserving process at k-diffusion noise level `sigma`.
fn alpha_sigma(sigma: f64) -> (f64, f64) {
    let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
    (alpha, sigma * alpha)
}

/// Half log-SNR `λ = ln α − ln σ` (+∞ at σ = 0).
fn lambda(sigma: f64) -> f64 {
    let (a, s) = alpha_sigma(sigma);
    a.ln() - s.ln()
}

impl DpmSolver {
    pub fn new(config: SchedulerConfig, steps: usize, karras: bool) -> Self {
        let train = schedule::train_sigmas(&schedule::alphas_cumprod());
        let (timesteps, mut sigmas) = if karras {
            let log_sigmas: Vec<f64> = train.iter().map(|s| s.ln()).collect();
            let (min, max) = (train[0], train[train.len() - 1]);
            let sigmas = schedule::karras_sigmas(min, max, steps);
            let timesteps = sigmas
                .iter()
                .map(|&s| schedule::sigma_to_t(s, &log_sigmas).round_ties_even())
                .collect();
            (timesteps, sigmas)
        } else {
            let timesteps = schedule::dpm_timesteps(config.spacing, steps, config.steps_offset);
            let sigmas = timesteps.iter().map(|&t| schedule::interp(t, &train)).collect();
            (timesteps, sigmas)
        };
        sigmas.push(0.0);
        Self {
            prediction: config.prediction,
            timesteps,
            sigmas,
            previous: None,
        }
    }

    /// Noise level of each step plus the final 0.
    pub fn sigmas(&self) -> &[f64] {
        &self.sigmas
    }
}

impl Scheduler for DpmSolver {
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
        let (sigma_s, sigma_t) = (self.sigmas[index], self.sigmas[index + 1]);
        let (alpha_s, sig_s) = alpha_sigma(sigma_s);
        // The data prediction x0 (dpmsolver++ works on x0 for both prediction types).
        let x0 = match self.prediction {
            Prediction::Epsilon => combine(sample, 1.0 / alpha_s, model_output, -sig_s / alpha_s)?,
            Prediction::V => combine(sample, alpha_s, model_output, -sig_s)?,
        };
        let (alpha_t, sig_t) = alpha_sigma(sigma_t);
        let h = lambda(sigma_t) - lambda(sigma_s);
        // σ_t/σ_s·x − α_t(e^{−h} − 1)·D, with D = x0 (first order) or the midpoint extrapolation.
        let ratio = if sig_s > 0.0 { sig_t / sig_s } else { 0.0 };
        let coeff = -alpha_t * ((-h).exp() - 1.0);
        let last = index + 1 == self.timesteps.len();
        let d = match self.previous.take() {
            // Second order when the previous step was the one just before and this is not the
            // final step (`lower_order_final` with `final_sigmas_type = zero`).
            Some((prev_index, prev_x0)) if prev_index + 1 == index && !last => {
                let h0 = lambda(sigma_s) - lambda(self.sigmas[index - 1]);
                let r0 = h0 / h;
                // D0 + ½·D1 with D1 = (x0 − x0_prev)/r0
                combine(&x0, 1.0 + 0.5 / r0, &prev_x0, -0.5 / r0)?
            }
            _ => x0.clone(),
        };
        self.previous = Some((index, x0));
        combine(sample, ratio, &d, coeff)
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, index: usize) -> candle_core::Result<Tensor> {
        let (alpha, sigma) = alpha_sigma(self.sigmas[index]);
        combine(original, alpha, noise, sigma)
    }
}
