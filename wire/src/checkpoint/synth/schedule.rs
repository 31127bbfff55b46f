//! The DDPM noise-schedule buffers LDM files store at the top level (and SGM's
//! `denoiser.sigmas`), computed for the one schedule every in-scope family trains with.

/// DDPM training steps of every in-scope family (CHECKPOINTS.md §5).
pub const TRAIN_TIMESTEPS: usize = 1000;

/// LDM DDPM schedule buffers stored at the top level of SD1/SD2 files (§1.3), in the order
/// `ldm.models.diffusion.ddpm.register_schedule` registers them.
pub const LDM_SCHEDULE_BUFFERS: [&str; 12] = [
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
];

/// Values of an LDM schedule buffer (or SGM `sigmas`) for the scaled-linear schedule every
/// in-scope family trains with: β from 0.00085 to 0.012 over 1000 steps, linear in √β (§5).
pub fn schedule_buffer(name: &str) -> Option<Vec<f64>> {
    let n = TRAIN_TIMESTEPS;
    let (lo, hi) = (0.00085f64.sqrt(), 0.012f64.sqrt());
    let betas: Vec<f64> = (0..n)
        .map(|i| (lo + (hi - lo) * i as f64 / (n - 1) as f64).powi(2))
        .collect();
    let mut cumprod = Vec::with_capacity(n);
    let mut acc = 1.0;
    for b in &betas {
        acc *= 1.0 - b;
        cumprod.push(acc);
    }
    let prev = |i: usize| if i == 0 { 1.0 } else { cumprod[i - 1] };
    // ldm `register_schedule` with v_posterior = 0.
    let post_var = |i: usize| betas[i] * (1.0 - prev(i)) / (1.0 - cumprod[i]);
    let values: Vec<f64> = (0..n)
        .map(|i| {
            let (b, a) = (betas[i], cumprod[i]);
            match name {
                "betas" => Some(b),
                "alphas_cumprod" => Some(a),
                "alphas_cumprod_prev" => Some(prev(i)),
                "sqrt_alphas_cumprod" => Some(a.sqrt()),
                "sqrt_one_minus_alphas_cumprod" => Some((1.0 - a).sqrt()),
                "log_one_minus_alphas_cumprod" => Some((1.0 - a).ln()),
                "sqrt_recip_alphas_cumprod" => Some((1.0 / a).sqrt()),
                "sqrt_recipm1_alphas_cumprod" => Some((1.0 / a - 1.0).sqrt()),
                "posterior_variance" => Some(post_var(i)),
                // Clipped because the variance is 0 at the start of the chain.
                "posterior_log_variance_clipped" => Some(post_var(i).max(1e-20).ln()),
                "posterior_mean_coef1" => Some(b * prev(i).sqrt() / (1.0 - a)),
                "posterior_mean_coef2" => Some((1.0 - prev(i)) * (1.0 - b).sqrt() / (1.0 - a)),
                "sigmas" => Some(((1.0 - a) / a).sqrt()),
                _ => None,
            }
        })
        .collect::<Option<_>>()?;
    Some(values)
}
