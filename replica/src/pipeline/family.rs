//! Per-family sampling settings and what `/v1/models` reports: defaults, limits, the VAE
//! scaling factor and the scheduler spacing, all decided from the header `Detection`.

use std::collections::BTreeMap;
use std::path::Path;

use sdplane_wire::api::{GenerationDefaults, GenerationLimits, ModelInfo, SchedulerKind};
use sdplane_wire::checkpoint::{Detection, Distillation, Family, Prediction, Variant};

use super::scheduler::{SchedulerConfig, Spacing};

/// VAE latent scaling of SD1/SD2 (LDM configs `scale_factor: 0.18215`; diffusers
/// `AutoencoderKL.scaling_factor` of SD1.5/SD2.1).
pub const VAE_SCALE_SD: f64 = 0.18215;
/// VAE latent scaling of SDXL (SGM `sd_xl_base.yaml` `scale_factor: 0.13025`; CHECKPOINTS.md §5).
pub const VAE_SCALE_SDXL: f64 = 0.13025;
/// diffusers `steps_offset` of the SD1/SD2/SDXL hub scheduler configs.
pub const STEPS_OFFSET: usize = 1;
/// Smallest and largest image side served: 64 px is one latent block of 8×8 for SD; 2048 px
/// is twice SDXL's native side, past which these UNets produce tiling artefacts and memory
/// grows quadratically.
pub const MIN_SIDE: u32 = 64;
pub const MAX_SIDE: u32 = 2048;
/// Upper bound on steps: DDIM/Euler converge well before 150 (5× the default 30); it bounds
/// how long one request can hold the replica.
pub const MAX_STEPS: u32 = 150;
/// Images per request, each its own noise; bounds one request's memory and time.
pub const MAX_NUM_IMAGES: u32 = 8;
/// Prompt length in characters; CLIP reads 77 tokens (~300 characters of English) and the
/// rest is reported as truncated, so this only bounds tokenizer work.
pub const MAX_PROMPT_CHARS: u32 = 4000;
/// SDXL refiner aesthetic scores for the conditional and unconditional rows (diffusers
/// `StableDiffusionXLImg2ImgPipeline` defaults `aesthetic_score=6.0`, `negative_aesthetic_score=2.5`).
pub const REFINER_AESTHETIC: (f64, f64) = (6.0, 2.5);

/// Which SDXL micro-conditioning time ids the UNet takes (CHECKPOINTS.md §4.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeIds {
    /// SD1/SD2: none.
    None,
    /// SDXL base: `[orig_h, orig_w, crop_top, crop_left, target_h, target_w]`.
    Base,
    /// SDXL refiner: `[orig_h, orig_w, crop_top, crop_left, aesthetic_score]`.
    Refiner,
}

/// Everything the sampling loop needs to know about the family.
#[derive(Debug, Clone, PartialEq)]
pub struct FamilySettings {
    pub vae_scale: f64,
    pub prediction: Prediction,
    pub spacing: Spacing,
    pub time_ids: TimeIds,
    /// diffusers SDXL `force_zeros_for_empty_prompt`: an empty negative prompt conditions on
    /// zeros rather than on the encoding of "".
    pub zero_empty_negative: bool,
    pub defaults: GenerationDefaults,
}

impl FamilySettings {
    /// Settings for a detected checkpoint.
    pub fn for_detection(detection: &Detection) -> Self {
        let xl = matches!(detection.family, Family::Sdxl | Family::SdxlRefiner);
        let turbo = detection.distillation.value == Distillation::Turbo;
        let (width, height) = detection.native_resolution.value;
        let defaults = if turbo {
            // SD-Turbo / SDXL-Turbo model cards: 1 step, guidance 0, Euler ancestral, 512².
            GenerationDefaults {
                num_inference_steps: 1,
                guidance_scale: 0.0,
                scheduler: SchedulerKind::EulerA,
                width,
                height,
            }
        } else if xl {
            // SDXL hub config: EulerDiscreteScheduler; diffusers' SDXL pipeline guidance 5.0.
            GenerationDefaults {
                num_inference_steps: 30,
                guidance_scale: 5.0,
                scheduler: SchedulerKind::Euler,
                width,
                height,
            }
        } else {
            // SD1/SD2: DDIM (the SD2-v hub scheduler) at the usual 7.5 guidance.
            GenerationDefaults {
                num_inference_steps: 30,
                guidance_scale: 7.5,
                scheduler: SchedulerKind::Ddim,
                width,
                height,
            }
        };
        Self {
            vae_scale: if xl { VAE_SCALE_SDXL } else { VAE_SCALE_SD },
            prediction: detection.prediction.value,
            // Turbo models were distilled on the last training steps: diffusers PR #7131's fix.
            spacing: if turbo {
                Spacing::Trailing
            } else {
                Spacing::Leading
            },
            time_ids: match detection.family {
                Family::Sdxl => TimeIds::Base,
                Family::SdxlRefiner => TimeIds::Refiner,
                Family::Sd1 | Family::Sd2 => TimeIds::None,
            },
            zero_empty_negative: xl,
            defaults,
        }
    }

    /// The scheduler configuration for a request's sampler.
    pub fn scheduler(&self, kind: SchedulerKind) -> SchedulerConfig {
        SchedulerConfig {
            kind,
            prediction: self.prediction,
            spacing: self.spacing,
            steps_offset: STEPS_OFFSET,
        }
    }
}

/// `/v1/models` for a loaded model. `size_multiple` is what image sides must be multiples of
/// (VAE factor × UNet downsampling), so the smallest side is rounded up to it.
pub fn model_info(
    path: &Path,
    detection: &Detection,
    settings: &FamilySettings,
    dtype: &str,
    device: &str,
    size_multiple: u32,
) -> ModelInfo {
    let file = path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    // A diffusers folder's whole name is the model (`my.model/` has no extension to strip).
    let model = if path.is_dir() {
        file.clone()
    } else {
        path.file_stem()
            .map_or_else(|| file.clone(), |n| n.to_string_lossy().into_owned())
    };
    let turbo = detection.distillation.value == Distillation::Turbo;
    let family_label = match (detection.family, turbo) {
        (Family::Sd1, _) => "Stable Diffusion 1.x".to_string(),
        (Family::Sd2, false) => "Stable Diffusion 2.x".to_string(),
        (Family::Sd2, true) => "SD-Turbo (SD 2.1)".to_string(),
        (Family::Sdxl, false) => "SDXL base".to_string(),
        (Family::Sdxl, true) => "SDXL base (turbo)".to_string(),
        (Family::SdxlRefiner, _) => "SDXL refiner".to_string(),
    };
    let inpainting = detection.variant == Variant::Inpaint;
    let family_label = if inpainting {
        format!("{family_label} inpainting")
    } else {
        family_label
    };
    let mut detected_by = BTreeMap::new();
    detected_by.insert("family".to_string(), "tensor shapes".to_string());
    detected_by.insert(
        "prediction".to_string(),
        detection.prediction.source.describe().to_string(),
    );
    detected_by.insert(
        "distillation".to_string(),
        detection.distillation.source.describe().to_string(),
    );
    detected_by.insert(
        "native_resolution".to_string(),
        detection.native_resolution.source.describe().to_string(),
    );
    let multiple = size_multiple.max(1);
    let min_side = MIN_SIDE.div_ceil(multiple) * multiple;
    ModelInfo {
        file,
        model,
        family: detection.family_name().to_string(),
        family_label,
        detected_by,
        prediction: match settings.prediction {
            Prediction::Epsilon => "epsilon".to_string(),
            Prediction::V => "v_prediction".to_string(),
        },
        dtype: dtype.to_string(),
        device: device.to_string(),
        native_width: settings.defaults.width,
        native_height: settings.defaults.height,
        inpainting,
        defaults: settings.defaults.clone(),
        limits: GenerationLimits {
            min_side,
            max_side: MAX_SIDE.max(min_side),
            max_steps: MAX_STEPS,
            max_num_images: MAX_NUM_IMAGES,
            max_prompt_chars: MAX_PROMPT_CHARS,
        },
    }
}
