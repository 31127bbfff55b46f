//! Family detection from the header alone (CHECKPOINTS.md §2): the weights decide the
//! architecture; metadata and marker tensors only fill in what weights cannot tell
//! (prediction type, turbo, resolution). Every decision records where it came from.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::header::{CheckpointError, Header};
use super::layout::{TextEncoderLayout, UnetLayout, VaeLayout};
use super::{lookalike, settings};

/// Model family (architecture).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    Sd1,
    Sd2,
    Sdxl,
    SdxlRefiner,
}

/// UNet input variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Variant {
    Base,
    /// 9 input channels: latent, mask, masked-image latent.
    Inpaint,
}

/// Key naming of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelLayout {
    /// CompVis `ldm` (SD1/SD2 originals).
    Ldm,
    /// Stability `generative-models` (SDXL, turbo files).
    Sgm,
    /// A diffusers `save_pretrained` folder: one file (or shard set) per component, diffusers
    /// and transformers parameter names, hyperparameters in each component's `config.json`.
    Diffusers,
}

/// What the UNet predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Prediction {
    Epsilon,
    V,
}

/// Whether the model is an adversarially distilled turbo model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Distillation {
    None,
    Turbo,
}

/// Where a decision came from, strongest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The user said so (flag, sidecar).
    User,
    /// Tensor shapes.
    TensorShapes,
    /// Marker tensors such as `v_pred`, `ztsnr`.
    Marker,
    /// `modelspec.*` metadata consistent with the weights.
    Metadata,
    /// A key-layout hint (e.g. SD2 in SGM layout → likely SD-Turbo).
    LayoutHint,
    /// A probe of tensor values.
    Probe,
    /// The family's documented default.
    FamilyDefault,
    /// A diffusers folder's `config.json`/`scheduler_config.json`.
    Config,
}

impl Source {
    pub fn describe(self) -> &'static str {
        match self {
            Self::User => "user override",
            Self::TensorShapes => "tensor shapes",
            Self::Marker => "marker tensor",
            Self::Metadata => "modelspec metadata",
            Self::LayoutHint => "key layout hint",
            Self::Probe => "weight probe",
            Self::FamilyDefault => "family default",
            Self::Config => "config.json",
        }
    }
}

/// A value with where it came from and whether it is certain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decided<T> {
    pub value: T,
    pub source: Source,
    /// False when the weights cannot settle it (e.g. SD2 eps vs v without metadata).
    pub certain: bool,
}

/// Everything header-only detection knows about a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Detection {
    pub family: Family,
    pub variant: Variant,
    pub layout: ModelLayout,
    pub prediction: Decided<Prediction>,
    /// Zero-terminal-SNR schedule (`ztsnr` marker).
    pub zero_snr: bool,
    pub distillation: Decided<Distillation>,
    /// `(width, height)`.
    pub native_resolution: Decided<(u32, u32)>,
    /// Dominant weight dtype as written in the header (`F32`, `F16`, `BF16`).
    pub dtype: String,
    /// Total number of parameters (elements) in the file.
    pub parameters: u64,
    pub unet: UnetLayout,
    /// In conditioning order (SDXL: CLIP-L then bigG).
    pub text_encoders: Vec<TextEncoderLayout>,
    pub vae: VaeLayout,
    /// Raw `__metadata__` (the `modelspec.*` keys matter).
    pub metadata: BTreeMap<String, String>,
    /// Contradictions and oddities that did not stop detection.
    pub warnings: Vec<String>,
}

impl Detection {
    /// Short machine name of the family: `sd1`, `sd2`, `sdxl`, `sdxl_refiner`.
    pub fn family_name(&self) -> &'static str {
        match self.family {
            Family::Sd1 => "sd1",
            Family::Sd2 => "sd2",
            Family::Sdxl => "sdxl",
            Family::SdxlRefiner => "sdxl_refiner",
        }
    }

    /// Human label for listings: `SD 1.x`, `SD 2.x (v-pred?)`, `SDXL base`, `SDXL turbo`, …
    /// A `?` marks a guess the weights cannot settle.
    pub fn family_label(&self) -> String {
        let guess = |d: bool| if d { "" } else { "?" };
        let turbo = self.distillation.value == Distillation::Turbo;
        let mut label = match self.family {
            Family::Sd1 => "SD 1.x".to_string(),
            Family::Sd2 if turbo => format!("SD-Turbo{}", guess(self.distillation.certain)),
            Family::Sd2 => {
                let p = match self.prediction.value {
                    Prediction::V => "v-pred",
                    Prediction::Epsilon => "eps",
                };
                format!("SD 2.x ({p}{})", guess(self.prediction.certain))
            }
            Family::Sdxl if turbo => format!("SDXL turbo{}", guess(self.distillation.certain)),
            Family::Sdxl => "SDXL base".to_string(),
            Family::SdxlRefiner => "SDXL refiner".to_string(),
        };
        if self.family != Family::Sd2 && self.prediction.value == Prediction::V {
            label.push_str(" (v-pred)");
        }
        if self.variant == Variant::Inpaint {
            label.push_str(" inpaint");
        }
        label
    }
}

/// UNet prefix in both LDM and SGM files (§2.1).
pub const UNET_PREFIX: &str = "model.diffusion_model.";
/// VAE prefix in both LDM and SGM files (§2.1).
pub const VAE_PREFIX: &str = "first_stage_model.";
/// CLIP ViT-L/14 in SD1 (LDM) files.
pub const LDM_CLIP_PREFIX: &str = "cond_stage_model.transformer.";
/// OpenCLIP ViT-H in SD2 (LDM) files.
pub const LDM_OPEN_CLIP_PREFIX: &str = "cond_stage_model.model.";
/// SGM first embedder: CLIP-L (SDXL base) …
pub const SGM_CLIP_PREFIX: &str = "conditioner.embedders.0.transformer.";
/// … or OpenCLIP (SDXL refiner bigG, SD-Turbo ViT-H).
pub const SGM_OPEN_CLIP_0_PREFIX: &str = "conditioner.embedders.0.model.";
/// SGM second embedder: OpenCLIP bigG (SDXL base).
pub const SGM_OPEN_CLIP_1_PREFIX: &str = "conditioner.embedders.1.model.";

/// Number of SDXL micro-conditioning time ids (§4.4): base (orig h/w, crop top/left, target
/// h/w) and refiner (orig h/w, crop top/left, aesthetic score).
const SDXL_BASE_TIME_IDS: usize = 6;
const SDXL_REFINER_TIME_IDS: usize = 5;

/// diffusers' threshold for "this file also holds EMA weights" (§3.1).
const EMA_KEY_THRESHOLD: usize = 100;

/// Decide what a checkpoint is from its header. Unknown or unsupported architectures give
/// `CheckpointError::Unsupported`/`Unknown` naming what was found.
pub fn detect(header: &Header) -> Result<Detection, CheckpointError> {
    lookalike::refuse_look_alikes(header)?;
    if !header.has(&format!("{UNET_PREFIX}input_blocks.0.0.weight")) {
        return Err(lookalike::missing_unet(header));
    }
    let mut unet = UnetLayout::derive(header, UNET_PREFIX)?;
    let variant = match unet.in_channels {
        4 => Variant::Base,
        9 => Variant::Inpaint,
        other => return Err(lookalike::refuse_in_channels(other)),
    };
    if unet.out_channels != 4 {
        return Err(CheckpointError::Unsupported {
            what: "UNet that does not predict 4 latent channels".into(),
            found: format!("out_channels = {}", unet.out_channels),
        });
    }
    let mut warnings = Vec::new();
    let (family, layout, text_encoders) = classify(header, &mut unet, &mut warnings)?;
    let vae = VaeLayout::derive(header, VAE_PREFIX)?.ok_or_else(|| CheckpointError::Unsupported {
        what: "checkpoint without a VAE".into(),
        found: format!("no `{VAE_PREFIX}encoder.conv_in.weight`"),
    })?;
    if vae.latent_channels != unet.out_channels {
        warnings.push(format!(
            "VAE latent channels {} differ from the UNet's {}",
            vae.latent_channels, unet.out_channels
        ));
    }
    let ema_keys = header.keys_with_prefix("model_ema.").count();
    if ema_keys > EMA_KEY_THRESHOLD {
        warnings.push(format!(
            "file also holds {ema_keys} EMA tensors; the non-EMA weights are used"
        ));
    }

    let decided = settings::decide(header, family, variant, layout);
    warnings.extend(decided.warnings);
    let (dtype, parameters) = dtype_and_parameters(header);
    Ok(Detection {
        family,
        variant,
        layout,
        prediction: decided.prediction,
        zero_snr: decided.zero_snr,
        distillation: decided.distillation,
        native_resolution: decided.native_resolution,
        dtype,
        parameters,
        unet,
        text_encoders,
        vae,
        metadata: header.metadata.clone(),
        warnings,
    })
}

/// Family, layout and text encoders from the UNet's structure and the towers present
/// (§2.3 steps 2–5, by structure so that tiny test models classify like real ones).
fn classify(
    header: &Header,
    unet: &mut UnetLayout,
    warnings: &mut Vec<String>,
) -> Result<(Family, ModelLayout, Vec<TextEncoderLayout>), CheckpointError> {
    let hf = |p| TextEncoderLayout::derive_hf(header, p);
    let open = |p| TextEncoderLayout::derive_open_clip(header, p);
    let missing = |what: &str| CheckpointError::Unsupported {
        what: format!("{what} checkpoint without its text encoder"),
        found: format!(
            "no tower under the expected prefixes (context width {})",
            unet.context_dim
        ),
    };
    if unet.mid_transformer_depth == 0 {
        // §2.3 step 2a: SSD-1B, Vega and KOALA drop the mid-block attention.
        return Err(CheckpointError::Unsupported {
            what: "pruned SDXL-derived UNet (SSD-1B/Vega-style)".into(),
            found: format!("no `{UNET_PREFIX}middle_block.1` attention"),
        });
    }
    let Some(adm) = unet.adm_in_channels else {
        return if unet.linear_projection {
            // SD2: OpenCLIP ViT-H, LDM or SGM (SD-Turbo) layout.
            let (layout, te) = match (open(LDM_OPEN_CLIP_PREFIX)?, open(SGM_OPEN_CLIP_0_PREFIX)?) {
                (Some(te), _) => (ModelLayout::Ldm, te),
                (None, Some(te)) => (ModelLayout::Sgm, te),
                (None, None) => return Err(missing("SD 2.x")),
            };
            check_context(unet.context_dim, &[&te], warnings);
            Ok((Family::Sd2, layout, vec![te]))
        } else {
            let (layout, te) = match (hf(LDM_CLIP_PREFIX)?, hf(SGM_CLIP_PREFIX)?) {
                (Some(te), _) => (ModelLayout::Ldm, te),
                (None, Some(te)) => (ModelLayout::Sgm, te),
                (None, None) => return Err(missing("SD 1.x")),
            };
            if !te.has_text_model_segment {
                warnings.push("old CLIP key naming without `text_model.`; loader inserts it".into());
            }
            check_context(unet.context_dim, &[&te], warnings);
            Ok((Family::Sd1, layout, vec![te]))
        };
    };
    if !unet.linear_projection {
        return Err(CheckpointError::Unsupported {
            what: "UNet with label_emb and 1×1-conv attention projections".into(),
            found: format!("label_emb input {adm}, proj_in rank 4"),
        });
    }
    let (family, encoders, time_ids) = match (hf(SGM_CLIP_PREFIX)?, open(SGM_OPEN_CLIP_1_PREFIX)?) {
        (Some(clip), Some(big_g)) => (Family::Sdxl, vec![clip, big_g], SDXL_BASE_TIME_IDS),
        _ => match open(SGM_OPEN_CLIP_0_PREFIX)? {
            Some(big_g) => (Family::SdxlRefiner, vec![big_g], SDXL_REFINER_TIME_IDS),
            None => return Err(missing("SDXL")),
        },
    };
    let pooled_tower = encoders.last().ok_or_else(|| missing("SDXL"))?;
    let pooled = pooled_tower
        .projection_dim
        .ok_or_else(|| CheckpointError::Unsupported {
            what: "SDXL checkpoint without the pooled text projection".into(),
            found: format!("no `{}text_projection`", pooled_tower.prefix),
        })?;
    // §4.6: adm = pooled width + time ids × addition_time_embed_dim.
    let time_part = adm
        .checked_sub(pooled)
        .filter(|t| *t > 0 && t.is_multiple_of(time_ids))
        .ok_or_else(|| CheckpointError::Unsupported {
            what: "SDXL conditioning sizes that do not fit the text_time scheme".into(),
            found: format!("label_emb input {adm}, pooled width {pooled}, {time_ids} time ids"),
        })?;
    unet.addition_time_embed_dim = Some(time_part / time_ids);
    let refs: Vec<&TextEncoderLayout> = encoders.iter().collect();
    check_context(unet.context_dim, &refs, warnings);
    Ok((family, ModelLayout::Sgm, encoders))
}

/// §2.3 cross-check: the UNet's cross-attention width is the sum of the towers' widths.
fn check_context(context_dim: usize, encoders: &[&TextEncoderLayout], warnings: &mut Vec<String>) {
    let widths: usize = encoders.iter().map(|t| t.width).sum();
    if widths != context_dim {
        warnings.push(format!(
            "text encoder width {widths} does not match the UNet's cross-attention width {context_dim}"
        ));
    }
}

/// The floating dtype holding the most elements, and the total element count.
pub(super) fn dtype_and_parameters(header: &Header) -> (String, u64) {
    let mut per_dtype: BTreeMap<&str, u64> = BTreeMap::new();
    let mut total = 0u64;
    for t in header.tensors.values() {
        total += t.numel();
        if matches!(t.dtype.as_str(), "F16" | "BF16" | "F32" | "F64") {
            *per_dtype.entry(t.dtype.as_str()).or_default() += t.numel();
        }
    }
    let dtype = per_dtype
        .into_iter()
        .max_by_key(|(_, n)| *n)
        .map_or("F32", |(d, _)| d);
    (dtype.to_string(), total)
}

#[cfg(test)]
#[path = "detect_tests.rs"]
mod tests;
