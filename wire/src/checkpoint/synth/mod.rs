//! The complete `(key, shape)` list of a checkpoint in the real single-file layout (LDM for
//! SD1/SD2, SGM for SDXL), built from layout sizes alone: full-size specs reproduce the real
//! files' shapes, tiny specs give models small enough for tests. Pure and deterministic; the
//! replica's `make-test-model` fills these tensors with seeded random values.
//!
//! Key names follow what diffusers' `single_file_utils.py` converters read (CHECKPOINTS.md §3),
//! plus the buffers real files carry that loaders must ignore (§1.3).

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::checkpoint::detect::{
    Family, LDM_CLIP_PREFIX, LDM_OPEN_CLIP_PREFIX, ModelLayout, SGM_CLIP_PREFIX, SGM_OPEN_CLIP_0_PREFIX,
    SGM_OPEN_CLIP_1_PREFIX, UNET_PREFIX, VAE_PREFIX, Variant,
};
use crate::checkpoint::header::{Header, TensorInfo};
use crate::checkpoint::layout::{
    TextEncoderKind, TextEncoderLayout, UnetLayout, VaeLayout, heads_for_width, unet_heads,
};

mod keys;
mod schedule;

use keys::Tensors;
pub use schedule::{LDM_SCHEDULE_BUFFERS, TRAIN_TIMESTEPS, schedule_buffer};

/// CLIP BPE vocabulary size and context length of every SD text encoder (CLIP/OpenCLIP
/// tokenizer: 49408 tokens, 77 positions).
pub const CLIP_VOCAB: usize = 49408;
pub const CLIP_POSITIONS: usize = 77;

/// How a tensor's values should be filled (the writer decides the random numbers).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// Matrix/conv weight or embedding: N(0, 1)/sqrt(fan_in), fan_in = product of dims after the first.
    Normal,
    /// Norm scale: ones.
    Ones,
    /// Bias (including norm shifts): small values.
    Bias,
    /// Fixed value (OpenCLIP `logit_scale` = ln(1/0.07), CLIP's initial temperature).
    Constant(f32),
    /// `0..n` as I64 (CLIP `position_ids`).
    PositionIds,
    /// One of `LDM_SCHEDULE_BUFFERS`, or `sigmas` (SGM `denoiser.sigmas`), over `TRAIN_TIMESTEPS`.
    Schedule(&'static str),
}

/// One tensor of a synthetic checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub init: Init,
}

impl SynthTensor {
    /// `I64` for position ids, the file's float dtype otherwise.
    pub fn is_integer(&self) -> bool {
        self.init == Init::PositionIds
    }

    pub fn numel(&self) -> u64 {
        self.shape.iter().map(|&d| d as u64).product()
    }
}

/// Sizes of a synthetic checkpoint: exactly the layouts detection must recover from it.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthSpec {
    pub family: Family,
    pub variant: Variant,
    pub layout: ModelLayout,
    pub unet: UnetLayout,
    /// In conditioning order.
    pub text_encoders: Vec<TextEncoderLayout>,
    pub vae: VaeLayout,
}

/// UNet sizes; heads and time-embedding width follow the §4.6 rules.
struct UnetSizes<'a> {
    widths: &'a [usize],
    depths: &'a [usize],
    mid: usize,
    context: usize,
    linear: bool,
    /// `(pooled width, time ids, addition_time_embed_dim)` for SDXL-style UNets.
    text_time: Option<(usize, usize, usize)>,
}

fn unet(s: UnetSizes) -> UnetLayout {
    UnetLayout {
        prefix: UNET_PREFIX.into(),
        in_channels: 4,
        out_channels: 4,
        block_out_channels: s.widths.to_vec(),
        layers_per_block: 2,
        transformer_depth: s.depths.to_vec(),
        mid_transformer_depth: s.mid,
        attention_heads: s.widths.iter().map(|&w| unet_heads(w, s.linear)).collect(),
        context_dim: s.context,
        linear_projection: s.linear,
        time_embed_dim: 4 * s.widths[0],
        adm_in_channels: s.text_time.map(|(pooled, ids, dim)| pooled + ids * dim),
        addition_time_embed_dim: s.text_time.map(|(_, _, dim)| dim),
    }
}

fn tower(prefix: &str, kind: TextEncoderKind, width: usize, layers: usize) -> TextEncoderLayout {
    TextEncoderLayout {
        prefix: prefix.into(),
        kind,
        has_text_model_segment: kind == TextEncoderKind::HfClip,
        vocab_size: CLIP_VOCAB,
        max_positions: CLIP_POSITIONS,
        width,
        layers,
        heads: heads_for_width(width),
        intermediate_size: 4 * width,
        // OpenCLIP towers in SD files carry a square text_projection; CLIP-L carries none.
        projection_dim: (kind == TextEncoderKind::OpenClip).then_some(width),
    }
}

fn vae(widths: &[usize]) -> VaeLayout {
    VaeLayout {
        prefix: VAE_PREFIX.into(),
        block_out_channels: widths.to_vec(),
        layers_per_block: 2,
        latent_channels: 4,
        image_channels: 3,
    }
}

use TextEncoderKind::{HfClip, HfOpenClip, OpenClip};

impl SynthSpec {
    /// The real files' sizes: SD 1.5, SD 2.1, SDXL base 1.0, SDXL refiner 1.0 (§4.2, §4.5).
    pub fn full(family: Family) -> Self {
        let wide = [320, 640, 1280, 1280];
        let (unet_sizes, text_encoders, layout) = match family {
            Family::Sd1 => (
                UnetSizes {
                    widths: &wide,
                    depths: &[1, 1, 1, 0],
                    mid: 1,
                    context: 768,
                    linear: false,
                    text_time: None,
                },
                vec![tower(LDM_CLIP_PREFIX, HfClip, 768, 12)],
                ModelLayout::Ldm,
            ),
            Family::Sd2 => (
                UnetSizes {
                    widths: &wide,
                    depths: &[1, 1, 1, 0],
                    mid: 1,
                    context: 1024,
                    linear: true,
                    text_time: None,
                },
                vec![tower(LDM_OPEN_CLIP_PREFIX, OpenClip, 1024, 24)],
                ModelLayout::Ldm,
            ),
            Family::Sdxl => (
                UnetSizes {
                    widths: &[320, 640, 1280],
                    depths: &[0, 2, 10],
                    mid: 10,
                    context: 2048,
                    linear: true,
                    text_time: Some((1280, 6, 256)),
                },
                vec![
                    tower(SGM_CLIP_PREFIX, HfClip, 768, 12),
                    tower(SGM_OPEN_CLIP_1_PREFIX, OpenClip, 1280, 32),
                ],
                ModelLayout::Sgm,
            ),
            Family::SdxlRefiner => (
                UnetSizes {
                    widths: &[384, 768, 1536, 1536],
                    depths: &[0, 4, 4, 0],
                    mid: 4,
                    context: 1280,
                    linear: true,
                    text_time: Some((1280, 5, 256)),
                },
                vec![tower(SGM_OPEN_CLIP_0_PREFIX, OpenClip, 1280, 32)],
                ModelLayout::Sgm,
            ),
        };
        Self {
            family,
            variant: Variant::Base,
            layout,
            unet: unet(unet_sizes),
            text_encoders,
            vae: vae(&[128, 256, 512, 512]),
        }
    }

    /// A tiny model of the same structure: UNet widths [32, 64, 64], 2-layer text encoders of
    /// width 32..64 with the real vocabulary and context length, a 4-level VAE of width 32
    /// (latent factor 8). Every width is a multiple of 32 (GroupNorm's 32 groups).
    pub fn tiny(family: Family) -> Self {
        let narrow = [32, 64, 64];
        let (unet_sizes, text_encoders, layout) = match family {
            Family::Sd1 => (
                UnetSizes {
                    widths: &narrow,
                    depths: &[1, 1, 0],
                    mid: 1,
                    context: 32,
                    linear: false,
                    text_time: None,
                },
                vec![tower(LDM_CLIP_PREFIX, HfClip, 32, 2)],
                ModelLayout::Ldm,
            ),
            Family::Sd2 => (
                UnetSizes {
                    widths: &narrow,
                    depths: &[1, 1, 0],
                    mid: 1,
                    context: 64,
                    linear: true,
                    text_time: None,
                },
                vec![tower(LDM_OPEN_CLIP_PREFIX, OpenClip, 64, 2)],
                ModelLayout::Ldm,
            ),
            Family::Sdxl => (
                UnetSizes {
                    widths: &narrow,
                    depths: &[0, 1, 2],
                    mid: 2,
                    context: 96,
                    linear: true,
                    text_time: Some((64, 6, 32)),
                },
                vec![
                    tower(SGM_CLIP_PREFIX, HfClip, 32, 2),
                    tower(SGM_OPEN_CLIP_1_PREFIX, OpenClip, 64, 2),
                ],
                ModelLayout::Sgm,
            ),
            Family::SdxlRefiner => (
                UnetSizes {
                    widths: &[32, 64, 64, 64],
                    depths: &[0, 1, 1, 0],
                    mid: 1,
                    context: 64,
                    linear: true,
                    text_time: Some((64, 5, 32)),
                },
                vec![tower(SGM_OPEN_CLIP_0_PREFIX, OpenClip, 64, 2)],
                ModelLayout::Sgm,
            ),
        };
        Self {
            family,
            variant: Variant::Base,
            layout,
            unet: unet(unet_sizes),
            text_encoders,
            vae: vae(&[32; 4]),
        }
    }

    /// The same model with another UNet input variant (inpaint: 9 input channels).
    pub fn with_variant(mut self, variant: Variant) -> Self {
        self.variant = variant;
        self.unet.in_channels = match variant {
            Variant::Base => 4,
            Variant::Inpaint => 9,
        };
        self
    }

    /// The same SD1/SD2 model saved in the other key layout (SD2 in SGM = the SD-Turbo file
    /// layout). SDXL files exist only in SGM layout, so this leaves them unchanged.
    pub fn with_layout(mut self, layout: ModelLayout) -> Self {
        if matches!(self.family, Family::Sdxl | Family::SdxlRefiner) {
            return self;
        }
        self.layout = layout;
        for te in &mut self.text_encoders {
            te.prefix = match (te.kind, layout) {
                (HfClip | HfOpenClip, ModelLayout::Ldm) => LDM_CLIP_PREFIX,
                (HfClip | HfOpenClip, ModelLayout::Sgm | ModelLayout::Diffusers) => SGM_CLIP_PREFIX,
                (OpenClip, ModelLayout::Ldm) => LDM_OPEN_CLIP_PREFIX,
                (OpenClip, ModelLayout::Sgm | ModelLayout::Diffusers) => SGM_OPEN_CLIP_0_PREFIX,
            }
            .into();
        }
        self
    }

    /// Every tensor of the file, in a fixed order: UNet, text encoders, VAE, buffers.
    pub fn tensors(&self) -> Vec<SynthTensor> {
        let mut out = Tensors::default();
        keys::unet_tensors(&mut out, &self.unet);
        for te in &self.text_encoders {
            match te.kind {
                HfClip | HfOpenClip => keys::hf_clip_tensors(&mut out, te),
                OpenClip => keys::open_clip_tensors(&mut out, te),
            }
        }
        keys::vae_tensors(&mut out, &self.vae);
        match self.layout {
            ModelLayout::Ldm => {
                for name in LDM_SCHEDULE_BUFFERS {
                    out.push(name.into(), vec![TRAIN_TIMESTEPS], Init::Schedule(name));
                }
            }
            // generative-models' DiscreteDenoiser saves its sigmas into SGM-trained SD2 files
            // such as sd_turbo.safetensors (§1.3).
            ModelLayout::Sgm if self.family == Family::Sd2 => {
                out.push(
                    "denoiser.sigmas".into(),
                    vec![TRAIN_TIMESTEPS],
                    Init::Schedule("sigmas"),
                );
            }
            ModelLayout::Sgm | ModelLayout::Diffusers => {}
        }
        out.0
    }

    /// Total elements over all tensors (what `Detection::parameters` reports for the file).
    pub fn parameters(&self) -> u64 {
        self.tensors().iter().map(SynthTensor::numel).sum()
    }
}

/// An in-memory header for `tensors` laid out back to back (floats as `float_dtype`, position
/// ids as I64), as if read from a file: for detection tests that need no file.
pub fn synthetic_header(
    tensors: &[SynthTensor],
    float_dtype: &str,
    metadata: BTreeMap<String, String>,
) -> Header {
    let float_size = crate::checkpoint::header::dtype_size(float_dtype).unwrap_or(4);
    let mut offset = 0u64;
    let mut entries = BTreeMap::new();
    for t in tensors {
        let (dtype, size) = if t.is_integer() {
            ("I64", 8)
        } else {
            (float_dtype, float_size)
        };
        let end = offset + t.numel() * size;
        entries.insert(
            t.name.clone(),
            TensorInfo {
                dtype: dtype.into(),
                shape: t.shape.clone(),
                data_offsets: (offset, end),
            },
        );
        offset = end;
    }
    Header {
        path: PathBuf::from("synthetic.safetensors"),
        file_size: 8 + offset,
        data_start: 8,
        tensors: entries,
        metadata,
    }
}

#[cfg(test)]
mod tests;
