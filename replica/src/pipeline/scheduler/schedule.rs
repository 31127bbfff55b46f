//! The training noise schedule and the choice of inference timesteps, as pure functions.
//!
//! Every in-scope family was trained with diffusers' "scaled_linear" betas from 0.00085 to
//! 0.012 over 1000 steps (CHECKPOINTS.md §5; the LDM configs' `linear_start`/`linear_end`).
//! Timestep spacings follow diffusers' `set_timesteps` for each scheduler class, rounding
//! included (NumPy rounds half to even, hence `round_ties_even`).

/// Training steps of every Stable Diffusion model (`num_train_timesteps`).
pub const TRAIN_STEPS: usize = 1000;
/// First beta of the scaled-linear schedule (SD1/SD2/SDXL `beta_start`).
pub const BETA_START: f64 = 0.00085;
/// Last beta of the scaled-linear schedule (SD1/SD2/SDXL `beta_end`).
pub const BETA_END: f64 = 0.012;
/// Karras et al. 2022 (EDM) §5's `rho`, diffusers' default for Karras sigmas.
pub const KARRAS_RHO: f64 = 7.0;

/// How inference timesteps are spread over the training steps (diffusers `timestep_spacing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spacing {
    /// Multiples of `TRAIN_STEPS / steps` from 0, shifted by `steps_offset` (SD1/SD2/SDXL hub configs).
    Leading,
    /// Evenly from 0 to `TRAIN_STEPS - 1`.
    Linspace,
    /// Counting down from the last training step (turbo models: one step lands on t = 999).
    Trailing,
}

/// `ᾱ_t` for t in 0..1000: the cumulative product of `1 − β_t` with
/// `β_t = linspace(√BETA_START, √BETA_END, TRAIN_STEPS)_t²`.
pub fn alphas_cumprod() -> Vec<f64> {
    let (a, b) = (BETA_START.sqrt(), BETA_END.sqrt());
    let last = (TRAIN_STEPS - 1) as f64;
    let mut prod = 1.0;
    (0..TRAIN_STEPS)
        .map(|i| {
            let beta = (a + (b - a) * i as f64 / last).powi(2);
            prod *= 1.0 - beta;
            prod
        })
        .collect()
}

/// The k-diffusion noise level of each training step: `σ_t = √((1 − ᾱ_t) / ᾱ_t)`.
pub fn train_sigmas(alphas_cumprod: &[f64]) -> Vec<f64> {
    alphas_cumprod.iter().map(|a| ((1.0 - a) / a).sqrt()).collect()
}

/// Timesteps of DDIM, Euler and Euler-ancestral (`DDIMScheduler`/`EulerDiscreteScheduler`
/// `set_timesteps`), highest first. Euler's `linspace` keeps fractional timesteps; DDIM's
/// are rounded, so `round_linspace` picks which.
pub fn spaced_timesteps(
    spacing: Spacing,
    steps: usize,
    steps_offset: usize,
    round_linspace: bool,
) -> Vec<f64> {
    let train = TRAIN_STEPS as f64;
    let n = steps as f64;
    match spacing {
        Spacing::Leading => {
            let ratio = (TRAIN_STEPS / steps) as f64;
            (0..steps)
                .rev()
                .map(|i| (i as f64 * ratio).round_ties_even() + steps_offset as f64)
                .collect()
        }
        Spacing::Linspace => (0..steps)
            .rev()
            .map(|i| {
                let t = linspace_at(0.0, train - 1.0, steps, i);
                if round_linspace { t.round_ties_even() } else { t }
            })
            .collect(),
        Spacing::Trailing => {
            // np.arange(1000, 0, -1000/steps).round() - 1
            let ratio = train / n;
            (0..steps)
                .map(|i| (train - i as f64 * ratio).round_ties_even() - 1.0)
                .collect()
        }
    }
}

/// Timesteps of `DPMSolverMultistepScheduler.set_timesteps` without Karras sigmas. Its
/// `leading` and `linspace` spread `steps + 1` points and drop the last (lowest) one.
pub fn dpm_timesteps(spacing: Spacing, steps: usize, steps_offset: usize) -> Vec<f64> {
    let train = TRAIN_STEPS as f64;
    match spacing {
        Spacing::Leading => {
            let ratio = (TRAIN_STEPS / (steps + 1)) as f64;
            (1..=steps)
                .rev()
                .map(|i| i as f64 * ratio + steps_offset as f64)
                .collect()
        }
        Spacing::Linspace => (1..=steps)
            .rev()
            .map(|i| linspace_at(0.0, train - 1.0, steps + 1, i).round_ties_even())
            .collect(),
        Spacing::Trailing => spaced_timesteps(Spacing::Trailing, steps, steps_offset, true),
    }
}

/// `np.linspace(start, end, count)[i]`, computed the way NumPy does (step from the start).
fn linspace_at(start: f64, end: f64, count: usize, i: usize) -> f64 {
    if count <= 1 {
        return start;
    }
    let step = (end - start) / (count - 1) as f64;
    if i == count - 1 {
        end
    } else {
        start + i as f64 * step
    }
}

/// `np.interp(t, arange(len(table)), table)`: the table read at a fractional index.
pub fn interp(t: f64, table: &[f64]) -> f64 {
    let Some(&last) = table.last() else { return 0.0 };
    if t <= 0.0 {
        return table[0];
    }
    let lo = t.floor() as usize;
    if lo + 1 >= table.len() {
        return last;
    }
    let w = t - lo as f64;
    table[lo] + w * (table[lo + 1] - table[lo])
}

/// Karras et al. 2022 (EDM, eq. 5) noise levels from `sigma_max` down to `sigma_min`.
pub fn karras_sigmas(sigma_min: f64, sigma_max: f64, steps: usize) -> Vec<f64> {
    let (min_inv, max_inv) = (sigma_min.powf(1.0 / KARRAS_RHO), sigma_max.powf(1.0 / KARRAS_RHO));
    (0..steps)
        .map(|i| {
            let ramp = if steps > 1 {
                i as f64 / (steps - 1) as f64
            } else {
                0.0
            };
            (max_inv + ramp * (min_inv - max_inv)).powf(KARRAS_RHO)
        })
        .collect()
}

/// The fractional training timestep whose sigma is `sigma`, interpolating in log-sigma
/// (diffusers' `_sigma_to_t`). `log_sigmas` ascends with t.
pub fn sigma_to_t(sigma: f64, log_sigmas: &[f64]) -> f64 {
    let n = log_sigmas.len();
    if n < 2 {
        return 0.0;
    }
    let log_sigma = sigma.max(1e-10).ln();
    // The last index whose log-sigma is at or below ours, kept so that `hi` exists.
    let below = log_sigmas.iter().filter(|&&l| log_sigma - l >= 0.0).count();
    let lo = below.saturating_sub(1).min(n - 2);
    let hi = lo + 1;
    let (l0, l1) = (log_sigmas[lo], log_sigmas[hi]);
    let w = ((l0 - log_sigma) / (l0 - l1)).clamp(0.0, 1.0);
    (1.0 - w) * lo as f64 + w * hi as f64
}

/// The step img2img starts at for `strength`, as diffusers' `get_timesteps`:
/// `steps − min(⌊steps·strength⌋, steps)`. Returns `steps` when nothing would be denoised.
pub fn img2img_start(steps: usize, strength: f64) -> usize {
    let init = ((steps as f64 * strength).floor() as usize).min(steps);
    steps - init
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_starts_and_ends_at_the_published_betas() {
        let ac = alphas_cumprod();
        assert_eq!(ac.len(), 1000);
        assert!((ac[0] - (1.0 - BETA_START)).abs() < 1e-12);
        assert!((ac[999] / ac[998] - (1.0 - BETA_END)).abs() < 1e-12);
        // ᾱ_999 as diffusers computes it in float32: 0.0046600 (golden data holds all 1000).
        assert!((ac[999] - 0.004_660_1).abs() < 1e-6, "{}", ac[999]);
    }

    #[test]
    fn leading_spacing_matches_the_sd_hub_configs() {
        assert_eq!(
            spaced_timesteps(Spacing::Leading, 4, 1, true),
            [751.0, 501.0, 251.0, 1.0]
        );
        assert_eq!(
            spaced_timesteps(Spacing::Leading, 3, 1, true),
            [667.0, 334.0, 1.0]
        );
    }

    #[test]
    fn trailing_spacing_puts_one_step_on_the_last_training_step() {
        assert_eq!(spaced_timesteps(Spacing::Trailing, 1, 1, true), [999.0]);
        assert_eq!(
            spaced_timesteps(Spacing::Trailing, 4, 1, true),
            [999.0, 749.0, 499.0, 249.0]
        );
        assert_eq!(
            spaced_timesteps(Spacing::Trailing, 3, 0, true),
            [999.0, 666.0, 332.0]
        );
    }

    #[test]
    fn linspace_spacing_keeps_fractions_for_euler_and_rounds_for_ddim() {
        assert_eq!(
            spaced_timesteps(Spacing::Linspace, 3, 0, false),
            [999.0, 499.5, 0.0]
        );
        assert_eq!(
            spaced_timesteps(Spacing::Linspace, 3, 0, true),
            [999.0, 500.0, 0.0]
        );
    }

    #[test]
    fn dpm_leading_spreads_one_more_point_and_drops_it() {
        // 1000 // 5 = 200: [0, 200, 400, 600, 800] reversed, last dropped, + 1
        assert_eq!(
            dpm_timesteps(Spacing::Leading, 4, 1),
            [801.0, 601.0, 401.0, 201.0]
        );
        assert_eq!(
            dpm_timesteps(Spacing::Linspace, 4, 1),
            [999.0, 749.0, 500.0, 250.0]
        );
    }

    #[test]
    fn interp_reads_between_table_entries_and_clamps_outside() {
        let table = [0.0, 10.0, 20.0];
        assert_eq!(interp(0.5, &table), 5.0);
        assert_eq!(interp(-3.0, &table), 0.0);
        assert_eq!(interp(7.0, &table), 20.0);
        assert_eq!(interp(2.0, &table), 20.0);
    }

    #[test]
    fn sigma_to_t_inverts_the_training_sigmas() {
        let sigmas = train_sigmas(&alphas_cumprod());
        let logs: Vec<f64> = sigmas.iter().map(|s| s.ln()).collect();
        for t in [0usize, 1, 250, 998, 999] {
            assert!((sigma_to_t(sigmas[t], &logs) - t as f64).abs() < 1e-9, "t {t}");
        }
        let mid = (sigmas[10] * sigmas[11]).sqrt();
        let t = sigma_to_t(mid, &logs);
        assert!(t > 10.0 && t < 11.0, "{t}");
    }

    #[test]
    fn karras_sigmas_run_from_max_to_min() {
        let s = karras_sigmas(0.03, 14.6, 5);
        assert!((s[0] - 14.6).abs() < 1e-9 && (s[4] - 0.03).abs() < 1e-12);
        assert!(s.windows(2).all(|w| w[0] > w[1]));
    }

    #[test]
    fn img2img_start_follows_diffusers_get_timesteps() {
        assert_eq!(img2img_start(30, 0.75), 8); // int(22.5) = 22 steps run
        assert_eq!(img2img_start(4, 1.0), 0);
        assert_eq!(img2img_start(4, 0.2), 4); // int(0.8) = 0: nothing to denoise
        assert_eq!(img2img_start(10, 1.7), 0);
    }
}
