//! `sdplane generate`: the pipeline in-process, no server. For quick use and for checking the
//! pipeline against other implementations (`--init-latents` takes diffusers' `latents`).

use std::path::{Path, PathBuf};

use anyhow::Context;
use sdplane_wire::api::SchedulerKind;

use crate::device::{DTypeChoice, DeviceChoice};
use crate::engine::{GenerationParams, Generator, StepControl};

use super::generator::CandleGenerator;
use super::npy::NpyF32;

/// `sdplane generate` configuration.
#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    /// Model file (`.safetensors`, single-file SD1/SD2/SDXL layout).
    #[arg(long, env = "SDPLANE_MODEL")]
    pub model: PathBuf,
    /// Text prompt.
    #[arg(long)]
    pub prompt: String,
    /// What the image should not show (classifier-free guidance's unconditional text).
    #[arg(long, default_value = "")]
    pub negative_prompt: String,
    /// Denoising steps (default: the family's).
    #[arg(long)]
    pub steps: Option<u32>,
    /// Guidance scale; guidance is off at 1 or below (default: the family's).
    #[arg(long)]
    pub guidance: Option<f64>,
    /// Image width in pixels (default: the family's native size, or the init image's).
    #[arg(long)]
    pub width: Option<u32>,
    /// Image height in pixels.
    #[arg(long)]
    pub height: Option<u32>,
    /// Seed of the noise stream (default: random, printed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Sampler: ddim, euler, euler_a, dpmpp_2m or dpmpp_2m_karras (default: the family's).
    #[arg(long)]
    pub scheduler: Option<SchedulerKind>,
    /// img2img source image (PNG or JPEG), resized to the output size.
    #[arg(long)]
    pub init_image: Option<PathBuf>,
    /// img2img strength in (0, 1]: how much of the schedule is re-run (default 0.8; 1 for
    /// inpainting models, which then start from pure noise).
    #[arg(long)]
    pub strength: Option<f64>,
    /// Inpainting models only: mask (PNG or JPEG) resized to the output size; white (luma ≥ 128)
    /// is repainted, black kept. Needs --init-image.
    #[arg(long, requires = "init_image")]
    pub mask_image: Option<PathBuf>,
    /// Starting noise as a float32 `.npy` of shape [num_images, C, H/8, W/8] instead of the
    /// seed's (diffusers' `latents`: unit variance; the scheduler's initial sigma is applied after).
    #[arg(long)]
    pub init_latents: Option<PathBuf>,
    /// Number of images; each gets its own noise from the one seeded stream.
    #[arg(long, default_value_t = 1)]
    pub num_images: u32,
    /// Device: cpu or cuda:N.
    #[arg(long, env = "SDPLANE_DEVICE", default_value = "cpu")]
    pub device: DeviceChoice,
    /// Weight dtype (default: f32 on CPU, f16 on GPU).
    #[arg(long, env = "SDPLANE_DTYPE", value_enum)]
    pub dtype: Option<DTypeChoice>,
    /// Output PNG; several images are written as FILE-0.png, FILE-1.png, ...
    #[arg(long)]
    pub out: PathBuf,
}

/// Where image `index` of `count` goes: `out` itself for one image, else `stem-index.ext`.
pub fn output_path(out: &Path, index: usize, count: usize) -> PathBuf {
    if count <= 1 {
        return out.to_path_buf();
    }
    let stem = out
        .file_stem()
        .map_or_else(|| "image".into(), |s| s.to_string_lossy().into_owned());
    let ext = out
        .extension()
        .map_or_else(|| "png".into(), |e| e.to_string_lossy().into_owned());
    out.with_file_name(format!("{stem}-{index}.{ext}"))
}

/// Run `sdplane generate`.
pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let progress = |fraction: f64, phase: &str| tracing::debug!(fraction, phase, "loading");
    let generator = CandleGenerator::load(&args.model, args.device, args.dtype, &progress)
        .with_context(|| format!("cannot load {}", args.model.display()))?;
    let load_seconds = started.elapsed().as_secs_f64();
    let info = generator.model_info().clone();
    let multiple = generator.size_multiple();

    let source = match &args.init_image {
        Some(path) => Some(
            image::open(path)
                .with_context(|| format!("cannot read --init-image {}", path.display()))?
                .to_rgb8(),
        ),
        None => None,
    };
    // With an init image and no size, follow its size (rounded down to what the model takes).
    let fit = |side: u32| (side / multiple).max(1) * multiple;
    let (width, height) = match (&source, args.width, args.height) {
        (_, Some(w), Some(h)) => (w, h),
        (Some(img), w, h) => (w.unwrap_or(fit(img.width())), h.unwrap_or(fit(img.height()))),
        (None, w, h) => (
            w.unwrap_or(info.defaults.width),
            h.unwrap_or(info.defaults.height),
        ),
    };
    for (name, side) in [("--width", width), ("--height", height)] {
        anyhow::ensure!(
            side % multiple == 0 && (info.limits.min_side..=info.limits.max_side).contains(&side),
            "{name} {side} must be a multiple of {multiple} within {}..={}",
            info.limits.min_side,
            info.limits.max_side
        );
    }
    anyhow::ensure!(args.num_images >= 1, "--num-images must be at least 1");
    anyhow::ensure!(
        args.mask_image.is_none() || info.inpainting,
        "--mask-image needs an inpainting model; {} is {}",
        args.model.display(),
        info.family_label
    );
    let strength = args
        .strength
        .unwrap_or_else(|| crate::engine::default_strength(info.inpainting));
    anyhow::ensure!(
        strength > 0.0 && strength <= 1.0,
        "--strength {strength} must be in (0, 1]"
    );
    // PIL's Lanczos, as diffusers' `VaeImageProcessor` resizes.
    let fit_to_output = |img: &image::RgbImage| {
        image::imageops::resize(img, width, height, image::imageops::FilterType::Lanczos3)
    };
    let init_image = source.as_ref().map(fit_to_output);
    let mask_image = match &args.mask_image {
        Some(path) => {
            let rgb = image::open(path)
                .with_context(|| format!("cannot read --mask-image {}", path.display()))?
                .to_rgb8();
            Some(super::inpaint::mask_luma(&fit_to_output(&rgb)))
        }
        None => None,
    };
    let factor = generator.model().vae_spatial_factor() as u32;
    let init_latents = match &args.init_latents {
        Some(path) => {
            let shape = [
                args.num_images as usize,
                generator.model().latent_channels(),
                (height / factor) as usize,
                (width / factor) as usize,
            ];
            let array = NpyF32::read(path).with_context(|| format!("--init-latents {}", path.display()))?;
            Some(
                array
                    .expect_shape(&shape)
                    .with_context(|| format!("--init-latents {}", path.display()))?,
            )
        }
        None => None,
    };
    let params = GenerationParams {
        prompt: args.prompt,
        negative_prompt: args.negative_prompt,
        steps: args.steps.unwrap_or(info.defaults.num_inference_steps),
        guidance_scale: args.guidance.unwrap_or(info.defaults.guidance_scale),
        width,
        height,
        seed: args.seed.unwrap_or_else(rand::random),
        scheduler: args.scheduler.unwrap_or(info.defaults.scheduler),
        num_images: args.num_images,
        init_image,
        strength,
        init_latents,
        mask_image,
    };
    println!(
        "model {} ({}), {}x{}, {} steps {}, guidance {}, seed {}",
        info.model,
        info.family_label,
        width,
        height,
        params.steps,
        params.scheduler.as_str(),
        params.guidance_scale,
        params.seed
    );
    let mut on_step = |_: u32, _: u32| StepControl::Continue;
    let (output, timings) = generator.generate_timed(&params, &mut on_step)?;
    let count = output.images.len();
    for (i, image) in output.images.iter().enumerate() {
        let path = output_path(&args.out, i, count);
        image
            .save(&path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    let steps: Vec<String> = timings
        .steps
        .iter()
        .map(|d| format!("{:.3}", d.as_secs_f64()))
        .collect();
    let mean = timings.steps.iter().map(|d| d.as_secs_f64()).sum::<f64>() / timings.steps.len().max(1) as f64;
    println!("seed {}", params.seed);
    println!("load {load_seconds:.3} s");
    println!("text-encode {:.3} s", timings.text_encode.as_secs_f64());
    if params.init_image.is_some() {
        println!("vae-encode {:.3} s", timings.vae_encode.as_secs_f64());
    }
    println!(
        "unet steps {} x mean {mean:.3} s: [{}]",
        timings.steps.len(),
        steps.join(", ")
    );
    println!("vae-decode {:.3} s", timings.vae_decode.as_secs_f64());
    println!("total {:.3} s", timings.total.as_secs_f64());
    if output.prompt_truncated {
        println!("note: the prompt was cut to the text encoder's 77-token window");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_images_get_numbered_names_beside_the_output() {
        let out = Path::new("/tmp/x/cat.png");
        assert_eq!(output_path(out, 0, 1), out);
        assert_eq!(output_path(out, 0, 2), Path::new("/tmp/x/cat-0.png"));
        assert_eq!(output_path(out, 1, 2), Path::new("/tmp/x/cat-1.png"));
    }
}
