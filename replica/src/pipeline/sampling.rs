//! The sampling loop: text conditioning with classifier-free guidance, starting latents
//! (seeded noise, given noise, or an img2img source noised to `strength`), the inpainting
//! channels for 9-channel UNets, the scheduler steps with cancellation, and the VAE decode to
//! RGB bytes. Mirrors diffusers' `StableDiffusionPipeline`/`StableDiffusionXLPipeline` (and
//! their img2img and inpainting variants) so the same inputs give the same images.

use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use sdplane_wire::checkpoint::Variant;

use crate::engine::{EngineError, GenerationOutput, GenerationParams, StepControl};
use crate::model::{SdModel, TextConditioning};

use super::family::{FamilySettings, REFINER_AESTHETIC, TimeIds};
use super::inpaint;
use super::noise::NoiseStream;
use super::scheduler::{self, schedule};

/// Where the time of one generation went (printed by `sdplane generate`, logged by the server).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Timings {
    pub text_encode: Duration,
    /// img2img and inpainting: the VAE encodes of the source (and masked) image.
    pub vae_encode: Duration,
    /// One entry per UNet step run.
    pub steps: Vec<Duration>,
    pub vae_decode: Duration,
    pub total: Duration,
}

fn model_err(e: impl std::fmt::Display) -> EngineError {
    EngineError::Model(e.to_string())
}

fn invalid(field: &'static str, message: impl Into<String>) -> EngineError {
    EngineError::InvalidParameter {
        field,
        message: message.into(),
    }
}

/// Latent height and width for an image, or which side is not a multiple of `multiple`.
pub fn latent_size(
    width: u32,
    height: u32,
    multiple: u32,
    vae_factor: usize,
) -> Result<(usize, usize), EngineError> {
    for (field, side) in [("width", width), ("height", height)] {
        if side == 0 || side % multiple != 0 {
            return Err(invalid(
                field,
                format!("{side} must be a positive multiple of {multiple} for this model"),
            ));
        }
    }
    Ok((height as usize / vae_factor, width as usize / vae_factor))
}

/// Conditioning for the UNet: context, pooled vectors and time ids, batched as
/// `[uncond × n, cond × n]` with guidance or `[cond × n]` without.
struct Conditioning {
    context: Tensor,
    pooled: Option<Tensor>,
    time_ids: Option<Tensor>,
    prompt_truncated: bool,
    negative_truncated: bool,
}

/// Repeat each of `rows` (each `[1, ...]`) `n` times along dim 0, in order.
fn repeat_rows(rows: &[Tensor], n: usize) -> candle_core::Result<Tensor> {
    let mut parts = Vec::with_capacity(rows.len() * n);
    for row in rows {
        parts.extend(std::iter::repeat_n(row.clone(), n));
    }
    Tensor::cat(&parts, 0)
}

fn encode(
    model: &SdModel,
    settings: &FamilySettings,
    params: &GenerationParams,
    guided: bool,
) -> Result<Conditioning, EngineError> {
    let n = params.num_images as usize;
    let zero_negative = guided && settings.zero_empty_negative && params.negative_prompt.is_empty();
    let prompts: Vec<&str> = if guided && !zero_negative {
        vec![params.negative_prompt.as_str(), params.prompt.as_str()]
    } else {
        vec![params.prompt.as_str()]
    };
    let TextConditioning {
        context,
        pooled,
        truncated,
    } = model.encode_prompts(&prompts).map_err(model_err)?;
    let cond_row = prompts.len() - 1;
    let row = |t: &Tensor, i: usize| t.narrow(0, i, 1);
    let (context, pooled) = (|| -> candle_core::Result<(Tensor, Option<Tensor>)> {
        let cond_ctx = row(&context, cond_row)?;
        let cond_pooled = pooled.as_ref().map(|p| row(p, cond_row)).transpose()?;
        if !guided {
            return Ok((
                repeat_rows(&[cond_ctx], n)?,
                cond_pooled.map(|p| repeat_rows(&[p], n)).transpose()?,
            ));
        }
        // diffusers SDXL: `negative_prompt_embeds = torch.zeros_like(prompt_embeds)` (and pooled).
        let (un_ctx, un_pooled) = if zero_negative {
            (
                cond_ctx.zeros_like()?,
                cond_pooled.as_ref().map(Tensor::zeros_like).transpose()?,
            )
        } else {
            (row(&context, 0)?, pooled.as_ref().map(|p| row(p, 0)).transpose()?)
        };
        let ctx = repeat_rows(&[un_ctx, cond_ctx], n)?;
        let pooled = match (un_pooled, cond_pooled) {
            (Some(u), Some(c)) => Some(repeat_rows(&[u, c], n)?),
            _ => None,
        };
        Ok((ctx, pooled))
    })()
    .map_err(model_err)?;
    let time_ids = time_ids(settings.time_ids, params, guided, n, context.device()).map_err(model_err)?;
    Ok(Conditioning {
        context,
        pooled,
        time_ids,
        prompt_truncated: truncated.get(cond_row).copied().unwrap_or(false),
        negative_truncated: guided && !zero_negative && truncated.first().copied().unwrap_or(false),
    })
}

/// SDXL micro-conditioning (CHECKPOINTS.md §4.4): original size = target size = the requested
/// size, crop (0, 0), as diffusers does when none is given; the refiner's aesthetic score.
fn time_ids(
    kind: TimeIds,
    params: &GenerationParams,
    guided: bool,
    n: usize,
    device: &Device,
) -> candle_core::Result<Option<Tensor>> {
    let (h, w) = (f64::from(params.height), f64::from(params.width));
    let rows: Vec<Vec<f32>> = match kind {
        TimeIds::None => return Ok(None),
        TimeIds::Base => {
            let ids = [h, w, 0.0, 0.0, h, w].map(|v| v as f32).to_vec();
            vec![ids; if guided { 2 * n } else { n }]
        }
        TimeIds::Refiner => {
            let ids = |score: f64| [h, w, 0.0, 0.0, score].map(|v| v as f32).to_vec();
            let (cond, uncond) = REFINER_AESTHETIC;
            let mut rows = Vec::new();
            if guided {
                rows.extend(std::iter::repeat_n(ids(uncond), n));
            }
            rows.extend(std::iter::repeat_n(ids(cond), n));
            rows
        }
    };
    let width = rows.first().map_or(0, Vec::len);
    let count = rows.len();
    Tensor::from_vec(rows.concat(), (count, width), device).map(Some)
}

/// img2img: the source image as `[1, 3, H, W]` in [-1, 1] (diffusers `VaeImageProcessor`).
fn image_tensor(image: &image::RgbImage, device: &Device) -> candle_core::Result<Tensor> {
    let (w, h) = image.dimensions();
    let data: Vec<f32> = image
        .as_raw()
        .iter()
        .map(|&v| f32::from(v) / 127.5 - 1.0)
        .collect();
    Tensor::from_vec(data, (h as usize, w as usize, 3), device)?
        .permute((2, 0, 1))?
        .unsqueeze(0)?
        .contiguous()
}

/// Decoded `[1, 3, H, W]` in [-1, 1] to RGB bytes: `round(clamp(x/2 + 0.5, 0, 1) · 255)`,
/// as diffusers' `numpy_to_pil`.
fn to_rgb(image: &Tensor) -> Result<image::RgbImage, EngineError> {
    let (_, _, h, w) = image.dims4().map_err(model_err)?;
    let bytes: Vec<u8> = (|| -> candle_core::Result<Vec<u8>> {
        let x = image
            .to_dtype(DType::F32)?
            .affine(0.5, 0.5)?
            .clamp(0f32, 1f32)?
            .affine(255.0, 0.0)?
            .round()?;
        x.squeeze(0)?
            .permute((1, 2, 0))?
            .flatten_all()?
            .to_dtype(DType::U8)?
            .to_vec1::<u8>()
    })()
    .map_err(model_err)?;
    image::RgbImage::from_raw(w as u32, h as u32, bytes)
        .ok_or_else(|| model_err("decoded image has the wrong size"))
}

/// Run one generation. `size_multiple` is what sides must be multiples of.
pub(crate) fn generate(
    model: &SdModel,
    settings: &FamilySettings,
    size_multiple: u32,
    params: &GenerationParams,
    on_step: &mut dyn FnMut(u32, u32) -> StepControl,
) -> Result<(GenerationOutput, Timings), EngineError> {
    let started = Instant::now();
    let mut timings = Timings::default();
    let device = model.device().clone();
    let factor = model.vae_spatial_factor();
    let (lh, lw) = latent_size(params.width, params.height, size_multiple, factor)?;
    let channels = model.latent_channels();
    let n = params.num_images as usize;
    if n == 0 {
        return Err(invalid("num_images", "must be at least 1"));
    }
    let steps = params.steps as usize;
    if steps == 0 || steps > schedule::TRAIN_STEPS {
        return Err(invalid(
            "num_inference_steps",
            format!(
                "{steps} is outside 1..={} (the training steps)",
                schedule::TRAIN_STEPS
            ),
        ));
    }
    // diffusers: guidance only when the scale is above 1 (a scale of 1 is the conditional alone).
    let guided = params.guidance_scale > 1.0;
    let latent_shape = [n, channels, lh, lw];
    let given_noise = match &params.init_latents {
        Some(values) if values.len() != latent_shape.iter().product::<usize>() => {
            return Err(invalid(
                "init_latents",
                format!(
                    "{} values, need {latent_shape:?} = {} (unit-variance noise)",
                    values.len(),
                    latent_shape.iter().product::<usize>()
                ),
            ));
        }
        Some(values) => {
            Some(Tensor::from_vec(values.clone(), latent_shape.as_slice(), &device).map_err(model_err)?)
        }
        None => None,
    };

    let mut sched = scheduler::build(settings.scheduler(params.scheduler), steps);
    let inpainting = model.detection.variant == Variant::Inpaint;
    if params.mask_image.is_some() && !inpainting {
        return Err(invalid(
            "mask_image",
            "this model is not an inpainting model (its UNet takes 4 channels, not 9)",
        ));
    }
    // diffusers' inpainting pipeline starts from pure noise at full strength
    // (`is_strength_max`) and from the noised source image below it, like img2img.
    let from_image = params
        .init_image
        .as_ref()
        .filter(|_| !(inpainting && params.strength >= 1.0));
    let start = match from_image {
        Some(_) => {
            let start = schedule::img2img_start(steps, params.strength);
            if start >= steps {
                return Err(invalid(
                    "strength",
                    format!(
                        "{} × {steps} steps leaves no step to run; raise strength or steps",
                        params.strength
                    ),
                ));
            }
            start
        }
        None => 0,
    };

    let t0 = Instant::now();
    let cond = encode(model, settings, params, guided)?;
    timings.text_encode = t0.elapsed();

    let mut stream = NoiseStream::new(params.seed);
    let source = match &params.init_image {
        Some(image) => {
            if image.dimensions() != (params.width, params.height) {
                return Err(invalid(
                    "init_image",
                    format!(
                        "{:?} pixels, expected {}×{}",
                        image.dimensions(),
                        params.width,
                        params.height
                    ),
                ));
            }
            Some(image_tensor(image, &device).map_err(model_err)?)
        }
        None => None,
    };
    if let Some(mask) = &params.mask_image
        && mask.dimensions() != (params.width, params.height)
    {
        return Err(invalid(
            "mask_image",
            format!(
                "{:?} pixels, expected {}×{}",
                mask.dimensions(),
                params.width,
                params.height
            ),
        ));
    }
    let unet_rows = if guided { 2 * n } else { n };
    let t_mask = Instant::now();
    let extra_channels = if inpainting {
        Some(
            inpaint::unet_extra_channels(
                model,
                settings.vae_scale,
                params,
                source.as_ref(),
                unet_rows,
                (lh, lw),
            )
            .map_err(model_err)?,
        )
    } else {
        None
    };
    timings.vae_encode = t_mask.elapsed();

    let mut latents = match from_image.and(source.as_ref()) {
        None => {
            let noise = match given_noise {
                Some(t) => t,
                None => stream.tensor(&latent_shape, &device).map_err(model_err)?,
            };
            noise.affine(sched.init_noise_sigma(), 0.0).map_err(model_err)?
        }
        Some(pixels) => {
            let t1 = Instant::now();
            let (mean, std) = model.vae_encode(pixels).map_err(model_err)?;
            // diffusers `retrieve_latents(sample_mode="sample")`: mean + std·ε, ε from our stream.
            let eps = stream.tensor(mean.dims(), &device).map_err(model_err)?;
            let clean = (|| -> candle_core::Result<Tensor> {
                let sample = (mean.to_dtype(DType::F32)? + (std.to_dtype(DType::F32)? * eps)?)?;
                repeat_rows(&[sample.affine(settings.vae_scale, 0.0)?], n)
            })()
            .map_err(model_err)?;
            let noise = match given_noise {
                Some(t) => t,
                None => stream.tensor(&latent_shape, &device).map_err(model_err)?,
            };
            timings.vae_encode += t1.elapsed();
            sched.add_noise(&clean, &noise, start).map_err(model_err)?
        }
    };

    let total = (steps - start) as u32;
    let dtype = model.dtype();
    for (done, index) in (start..steps).enumerate() {
        let t_step = Instant::now();
        let timestep = sched.timesteps()[index];
        let step = || -> Result<Tensor, EngineError> {
            let x = sched.scale_model_input(&latents, index).map_err(model_err)?;
            let x = if guided {
                Tensor::cat(&[&x, &x], 0).map_err(model_err)?
            } else {
                x
            };
            let x = x.to_dtype(dtype).map_err(model_err)?;
            let x = match &extra_channels {
                Some(extra) => Tensor::cat(&[&x, extra], 1).map_err(model_err)?,
                None => x,
            };
            let out = model
                .unet_forward(
                    &x,
                    timestep,
                    &cond.context,
                    cond.pooled.as_ref(),
                    cond.time_ids.as_ref(),
                )
                .map_err(model_err)?
                .to_dtype(DType::F32)
                .map_err(model_err)?;
            if !guided {
                return Ok(out);
            }
            // ε = ε_uncond + g·(ε_cond − ε_uncond)
            let (uncond, cond_out) = (
                out.narrow(0, 0, n).map_err(model_err)?,
                out.narrow(0, n, n).map_err(model_err)?,
            );
            let diff = (cond_out - &uncond).map_err(model_err)?;
            (uncond + diff.affine(params.guidance_scale, 0.0).map_err(model_err)?).map_err(model_err)
        };
        let model_output = step()?;
        let mut fresh = || stream.tensor(&latent_shape, &device);
        latents = sched
            .step(&model_output, index, &latents, &mut fresh)
            .map_err(model_err)?;
        timings.steps.push(t_step.elapsed());
        tracing::debug!(step = done + 1, total, timestep, "denoising step");
        if on_step(done as u32 + 1, total) == StepControl::Cancel {
            return Err(EngineError::Cancelled);
        }
    }

    let t2 = Instant::now();
    let mut images = Vec::with_capacity(n);
    for i in 0..n {
        // One image at a time keeps the decode's peak to a single image.
        let z = latents
            .narrow(0, i, 1)
            .and_then(|z| z.affine(1.0 / settings.vae_scale, 0.0))
            .map_err(model_err)?;
        images.push(to_rgb(&model.vae_decode(&z).map_err(model_err)?)?);
    }
    timings.vae_decode = t2.elapsed();
    timings.total = started.elapsed();
    let output = GenerationOutput {
        images,
        prompt_truncated: cond.prompt_truncated,
        negative_prompt_truncated: cond.negative_truncated,
        denoising_steps: total,
    };
    Ok((output, timings))
}
