//! Architecture sizes derived from tensor shapes (CHECKPOINTS.md §4). A tiny random test model
//! and SDXL go through the same derivation; nothing here is looked up by family or file size.
//! Hyperparameters that shapes leave open follow the single rule of §4.6.

use serde::{Deserialize, Serialize};

/// UNet architecture, in diffusers terms, derived from the `input_blocks.*`/`middle_block.*`
/// shapes under `prefix`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnetLayout {
    /// Key prefix of the UNet in the file, e.g. `model.diffusion_model.`.
    pub prefix: String,
    pub in_channels: usize,
    pub out_channels: usize,
    /// Width per level (`block_out_channels`), e.g. `[320, 640, 1280, 1280]`.
    pub block_out_channels: Vec<usize>,
    /// Resnets per down level (2 for every real model).
    pub layers_per_block: usize,
    /// Transformer depth per down level; 0 = no attention at that level.
    pub transformer_depth: Vec<usize>,
    pub mid_transformer_depth: usize,
    /// Attention heads per level (§4.6 rule).
    pub attention_heads: Vec<usize>,
    /// Cross-attention context width (768 SD1, 1024 SD2, 2048 SDXL).
    pub context_dim: usize,
    /// `proj_in`/`proj_out` are linear (SD2, SDXL) rather than 1×1 convs (SD1).
    pub linear_projection: bool,
    /// Time-embedding width (`4 · C0`).
    pub time_embed_dim: usize,
    /// SDXL `label_emb` input width (2816 base, 2560 refiner); `None` for SD1/SD2.
    pub adm_in_channels: Option<usize>,
    /// SDXL `addition_time_embed_dim` (§4.6: (adm − pooled width) / number of time ids).
    pub addition_time_embed_dim: Option<usize>,
}

/// Which tower and naming a text encoder uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TextEncoderKind {
    /// HF CLIP naming (`transformer.text_model.*`), quick-GELU (CLIP ViT-L/14).
    HfClip,
    /// OpenCLIP naming (`model.transformer.resblocks.*`), exact GELU, fused `in_proj` (ViT-H, bigG).
    OpenClip,
}

/// One text encoder found in the file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextEncoderLayout {
    /// Key prefix up to the tower, e.g. `cond_stage_model.transformer.` or
    /// `conditioner.embedders.1.model.`.
    pub prefix: String,
    pub kind: TextEncoderKind,
    /// HF layout only: whether keys carry the `text_model.` segment (old SD1 files do not).
    pub has_text_model_segment: bool,
    pub vocab_size: usize,
    pub max_positions: usize,
    pub width: usize,
    /// Transformer layers stored in the file.
    pub layers: usize,
    pub heads: usize,
    pub intermediate_size: usize,
    /// Output width of `text_projection` when the file has one (bigG: 1280).
    pub projection_dim: Option<usize>,
}

/// VAE architecture derived from shapes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VaeLayout {
    /// Key prefix, e.g. `first_stage_model.`.
    pub prefix: String,
    /// `[128, 256, 512, 512]` for every real model.
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    pub latent_channels: usize,
    pub image_channels: usize,
}
