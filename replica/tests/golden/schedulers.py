"""Scheduler goldens: diffusers' own schedulers driven by a fixed toy model.

Imported by make_goldens.py (see its header for the set-up); writes schedulers.json.
Each case records the timesteps, sigmas and initial noise sigma diffusers computes, then runs
the full denoising loop on a 16-value sample with the toy model
    out = 0.9 * tanh(scaled_input) + 0.1 * t / 1000
(fixed noise for Euler ancestral), and an img2img start at strength 0.6.
"""

import json

import numpy as np
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
)
import diffusers.schedulers.scheduling_euler_ancestral_discrete as euler_a_module

# SD1/SD2/SDXL training schedule (CHECKPOINTS.md §5).
BETAS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)
SAMPLE_LEN = 16
STRENGTH = 0.6


def make(kind, spacing, prediction):
    common = dict(BETAS, steps_offset=1, timestep_spacing=spacing, prediction_type=prediction)
    if kind == "ddim":
        return DDIMScheduler(clip_sample=False, set_alpha_to_one=False, **common)
    if kind == "euler":
        return EulerDiscreteScheduler(interpolation_type="linear", **common)
    if kind == "euler_a":
        return EulerAncestralDiscreteScheduler(**common)
    if kind == "dpmpp_2m":
        return DPMSolverMultistepScheduler(**common)
    if kind == "dpmpp_2m_karras":
        return DPMSolverMultistepScheduler(use_karras_sigmas=True, **common)
    raise ValueError(kind)


def toy_model(x, t):
    return 0.9 * torch.tanh(x) + 0.1 * float(t) / 1000.0


class FixedNoise:
    """Stands in for diffusers' randn_tensor so Euler ancestral's noise is known."""

    def __init__(self, rows):
        self.rows = rows
        self.used = 0

    def __call__(self, shape, generator=None, device=None, dtype=None, **_):
        row = self.rows[self.used % len(self.rows)]
        self.used += 1
        return torch.tensor(row, dtype=torch.float32).reshape(shape)


def run_loop(sched, sample, timesteps, noise_rows):
    fixed = FixedNoise(noise_rows)
    original = euler_a_module.randn_tensor
    euler_a_module.randn_tensor = fixed
    try:
        x = sample.clone()
        for t in timesteps:
            inp = sched.scale_model_input(x, t)
            out = toy_model(inp, t)
            x = sched.step(out, t, x).prev_sample
    finally:
        euler_a_module.randn_tensor = original
    return x, fixed.used


def case(kind, spacing, prediction, steps, rng):
    sched = make(kind, spacing, prediction)
    sched.set_timesteps(steps)
    timesteps = [float(t) for t in sched.timesteps]
    sigmas = [float(s) for s in sched.sigmas] if hasattr(sched, "sigmas") and kind != "ddim" else None
    init_sigma = float(sched.init_noise_sigma)
    sample = rng.standard_normal(SAMPLE_LEN).astype(np.float32)
    noise_rows = rng.standard_normal((steps, SAMPLE_LEN)).astype(np.float32)
    x = torch.tensor(sample) * init_sigma
    final, _ = run_loop(sched, x, sched.timesteps, noise_rows.tolist())

    # img2img, as the SD img2img pipeline: get_timesteps + set_begin_index + add_noise.
    sched2 = make(kind, spacing, prediction)
    sched2.set_timesteps(steps)
    init_timestep = min(int(steps * STRENGTH), steps)
    start = max(steps - init_timestep, 0)
    img = None
    if start < steps:
        clean = rng.standard_normal(SAMPLE_LEN).astype(np.float32)
        noise = rng.standard_normal(SAMPLE_LEN).astype(np.float32)
        ts = sched2.timesteps[start * sched2.order :]
        if hasattr(sched2, "set_begin_index"):
            sched2.set_begin_index(start * sched2.order)
        noised = sched2.add_noise(torch.tensor(clean), torch.tensor(noise), ts[:1])
        img_final, _ = run_loop(sched2, noised.clone(), ts, noise_rows[start:].tolist())
        img = dict(
            strength=STRENGTH,
            start=start,
            clean=clean.tolist(),
            noise=noise.tolist(),
            noised=noised.tolist(),
            final=img_final.tolist(),
        )
    return dict(
        scheduler=kind,
        spacing=spacing,
        prediction="v" if prediction == "v_prediction" else "epsilon",
        steps=steps,
        timesteps=timesteps,
        sigmas=sigmas,
        init_noise_sigma=init_sigma,
        sample=sample.tolist(),
        # Only Euler ancestral consumes per-step noise.
        noise=noise_rows.tolist() if kind == "euler_a" else None,
        final=final.tolist(),
        img2img=img,
    )


def write(path):
    rng = np.random.default_rng(20261124)
    cases = []
    for kind in ["ddim", "euler", "euler_a", "dpmpp_2m", "dpmpp_2m_karras"]:
        for spacing in ["leading", "trailing", "linspace"]:
            for prediction in ["epsilon", "v_prediction"]:
                for steps in [1, 4, 7, 30]:
                    if kind == "dpmpp_2m_karras" and spacing != "leading":
                        continue  # Karras sigmas ignore the spacing
                    cases.append(case(kind, spacing, prediction, steps, rng))
    ac = make("ddim", "leading", "epsilon").alphas_cumprod
    with open(path, "w") as f:
        json.dump(dict(alphas_cumprod=[float(a) for a in ac], cases=cases), f)
    print(f"wrote {path}: {len(cases)} scheduler cases")
