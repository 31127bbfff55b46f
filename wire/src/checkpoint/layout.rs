//! Architecture sizes derived from tensor shapes (CHECKPOINTS.md §4). A tiny random test model
//! and SDXL go through the same derivation; nothing here is looked up by family or file size.
//! Hyperparameters that shapes leave open follow the single rule of §4.6.

use serde::{Deserialize, Serialize};

use super::header::{CheckpointError, Header};

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
    /// An OpenCLIP tower (ViT-H, bigG) converted to HF CLIP naming, as diffusers folders store it
    /// (`hidden_act: "gelu"`): HF keys, exact GELU, padding with id 0 like OpenCLIP.
    HfOpenClip,
}

impl TextEncoderKind {
    /// Whether the tower's keys use HF CLIP naming (`text_model.encoder.layers.*`).
    pub fn hf_naming(self) -> bool {
        matches!(self, Self::HfClip | Self::HfOpenClip)
    }
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

/// §4.6: heads for a width whose attention is not SD1-style (64-dim heads, at least one).
pub fn heads_for_width(width: usize) -> usize {
    (width / 64).max(1)
}

/// §4.6: SD1-style UNets (1×1-conv `proj_in`) use 8 heads at every level.
pub const SD1_UNET_HEADS: usize = 8;

/// §4.6 head rule for a UNet level.
pub fn unet_heads(width: usize, linear_projection: bool) -> usize {
    if linear_projection {
        heads_for_width(width)
    } else {
        SD1_UNET_HEADS
    }
}

/// Shape of `key` with the expected rank, or an error naming what is missing or odd.
fn shape(header: &Header, key: &str, rank: usize) -> Result<Vec<usize>, CheckpointError> {
    match header.shape(key) {
        Some(s) if s.len() == rank => Ok(s.to_vec()),
        Some(s) => Err(CheckpointError::Unsupported {
            what: "unexpected tensor shape".into(),
            found: format!("`{key}` has shape {s:?}, expected {rank} dimensions"),
        }),
        None => Err(CheckpointError::Unsupported {
            what: "incomplete model".into(),
            found: format!("`{key}` is missing"),
        }),
    }
}

fn nonstandard(found: String) -> CheckpointError {
    CheckpointError::Unsupported {
        what: "nonstandard UNet structure".into(),
        found,
    }
}

/// Attention found in one LDM block (`…input_blocks.i.1.`, `…middle_block.1.`).
struct BlockAttention {
    depth: usize,
    context_dim: usize,
    linear: bool,
}

/// Transformer depth, context width and projection kind at `block` (`…i.1.`), if it has one.
fn block_attention(header: &Header, block: &str) -> Result<Option<BlockAttention>, CheckpointError> {
    let proj_in = format!("{block}proj_in.weight");
    let Some(proj) = header.shape(&proj_in) else {
        return Ok(None);
    };
    let linear = match proj.len() {
        2 => true,
        4 => false,
        _ => return Err(nonstandard(format!("`{proj_in}` has shape {proj:?}"))),
    };
    let depth = header.indices_after(&format!("{block}transformer_blocks.")).len();
    let to_k = shape(
        header,
        &format!("{block}transformer_blocks.0.attn2.to_k.weight"),
        2,
    )?;
    Ok(Some(BlockAttention {
        depth,
        context_dim: to_k[1],
        linear,
    }))
}

impl UnetLayout {
    /// Walk `prefix input_blocks.*` (§4.1) to recover the UNet's sizes, whatever the number
    /// of levels or resnets per level. `addition_time_embed_dim` is left `None`: it needs the
    /// pooled text width and the family (see `detect`).
    pub fn derive(header: &Header, prefix: &str) -> Result<Self, CheckpointError> {
        let conv_in = shape(header, &format!("{prefix}input_blocks.0.0.weight"), 4)?;
        let in_channels = conv_in[1];
        let out_channels = shape(header, &format!("{prefix}out.2.weight"), 4)?[0];
        let time_embed_dim = shape(header, &format!("{prefix}time_embed.0.weight"), 2)?[0];

        // Per level: (width, resnets, transformer depth).
        let mut levels: Vec<(usize, usize, usize)> = Vec::new();
        let mut current: Option<(usize, usize, usize)> = None;
        let mut context_dim = None;
        let mut linear = None;
        let mut note = |att: &BlockAttention, block: &str| -> Result<(), CheckpointError> {
            if *context_dim.get_or_insert(att.context_dim) != att.context_dim
                || *linear.get_or_insert(att.linear) != att.linear
            {
                return Err(nonstandard(format!(
                    "attention at `{block}` differs from the first attention block"
                )));
            }
            Ok(())
        };
        let mut i = 1;
        while header.has_prefix(&format!("{prefix}input_blocks.{i}.")) {
            if header.has(&format!("{prefix}input_blocks.{i}.0.op.weight")) {
                match current.take() {
                    Some(level) => levels.push(level),
                    None => {
                        return Err(nonstandard(format!(
                            "downsampler `input_blocks.{i}` closes an empty level"
                        )));
                    }
                }
            } else {
                let width = shape(
                    header,
                    &format!("{prefix}input_blocks.{i}.0.out_layers.3.weight"),
                    4,
                )?[0];
                let block = format!("{prefix}input_blocks.{i}.1.");
                let depth = match block_attention(header, &block)? {
                    Some(att) => {
                        note(&att, &block)?;
                        att.depth
                    }
                    None => 0,
                };
                match current.as_mut() {
                    None => current = Some((width, 1, depth)),
                    Some((w, n, d)) if *w == width && *d == depth => *n += 1,
                    Some(_) => {
                        return Err(nonstandard(format!(
                            "`input_blocks.{i}` changes width or transformer depth inside a level"
                        )));
                    }
                }
            }
            i += 1;
        }
        levels.extend(current);
        if levels.is_empty() {
            return Err(nonstandard("no down blocks after `input_blocks.0`".into()));
        }
        let layers_per_block = levels[0].1;
        if levels.iter().any(|l| l.1 != layers_per_block) {
            let counts: Vec<usize> = levels.iter().map(|l| l.1).collect();
            return Err(nonstandard(format!("resnets per level differ: {counts:?}")));
        }

        let mid = format!("{prefix}middle_block.1.");
        let mid_transformer_depth = match block_attention(header, &mid)? {
            Some(att) => {
                note(&att, &mid)?;
                att.depth
            }
            None => 0,
        };
        let (Some(context_dim), Some(linear_projection)) = (context_dim, linear) else {
            return Err(nonstandard("no cross-attention anywhere in the UNet".into()));
        };

        let block_out_channels: Vec<usize> = levels.iter().map(|l| l.0).collect();
        let transformer_depth: Vec<usize> = levels.iter().map(|l| l.2).collect();
        check_output_blocks(header, prefix, &transformer_depth, layers_per_block)?;

        let adm_in_channels = header
            .shape(&format!("{prefix}label_emb.0.0.weight"))
            .and_then(|s| s.get(1).copied());
        let attention_heads = block_out_channels
            .iter()
            .map(|&w| unet_heads(w, linear_projection))
            .collect();
        Ok(Self {
            prefix: prefix.to_string(),
            in_channels,
            out_channels,
            block_out_channels,
            layers_per_block,
            transformer_depth,
            mid_transformer_depth,
            attention_heads,
            context_dim,
            linear_projection,
            time_embed_dim,
            adm_in_channels,
            addition_time_embed_dim: None,
        })
    }

    /// `C0`, the width of the first level.
    pub fn model_channels(&self) -> usize {
        self.block_out_channels.first().copied().unwrap_or(0)
    }

    /// Number of resolution levels.
    pub fn levels(&self) -> usize {
        self.block_out_channels.len()
    }
}

/// §4.1 step 5: up block `u` has `L+1` resnets whose attention depth mirrors level `N−1−u`.
fn check_output_blocks(
    header: &Header,
    prefix: &str,
    depths: &[usize],
    layers_per_block: usize,
) -> Result<(), CheckpointError> {
    let per_up = layers_per_block + 1;
    let expected = depths.len() * per_up;
    let found = header.indices_after(&format!("{prefix}output_blocks."));
    if found != (0..expected).collect::<Vec<_>>() {
        return Err(nonstandard(format!(
            "expected output_blocks 0..{expected}, found {} output blocks",
            found.len()
        )));
    }
    for o in 0..expected {
        let level = depths.len() - 1 - o / per_up;
        let block = format!("{prefix}output_blocks.{o}.1.");
        let depth = if header.has(&format!("{block}proj_in.weight")) {
            header.indices_after(&format!("{block}transformer_blocks.")).len()
        } else {
            0
        };
        if depth != depths[level] {
            return Err(nonstandard(format!(
                "`output_blocks.{o}` has transformer depth {depth} but its level has {} on the way down",
                depths[level]
            )));
        }
    }
    Ok(())
}

impl TextEncoderLayout {
    /// A CLIP tower in HF naming under `prefix` (`…transformer.`), or `None` when absent.
    pub fn derive_hf(header: &Header, prefix: &str) -> Result<Option<Self>, CheckpointError> {
        let with_segment = format!("{prefix}text_model.");
        let (root, has_text_model_segment) =
            if header.has(&format!("{with_segment}embeddings.token_embedding.weight")) {
                (with_segment, true)
            } else if header.has(&format!("{prefix}embeddings.token_embedding.weight")) {
                (prefix.to_string(), false)
            } else {
                return Ok(None);
            };
        let tokens = shape(header, &format!("{root}embeddings.token_embedding.weight"), 2)?;
        let positions = shape(header, &format!("{root}embeddings.position_embedding.weight"), 2)?;
        let layers = header.indices_after(&format!("{root}encoder.layers.")).len();
        let fc1 = shape(header, &format!("{root}encoder.layers.0.mlp.fc1.weight"), 2)?;
        let projection_dim = header
            .shape(&format!("{prefix}text_projection.weight"))
            .and_then(|s| s.first().copied());
        Ok(Some(Self {
            prefix: prefix.to_string(),
            kind: TextEncoderKind::HfClip,
            has_text_model_segment,
            vocab_size: tokens[0],
            max_positions: positions[0],
            width: tokens[1],
            layers,
            heads: heads_for_width(tokens[1]),
            intermediate_size: fc1[0],
            projection_dim,
        }))
    }

    /// An OpenCLIP tower under `prefix` (`…model.`), or `None` when absent.
    pub fn derive_open_clip(header: &Header, prefix: &str) -> Result<Option<Self>, CheckpointError> {
        if !header.has(&format!("{prefix}token_embedding.weight")) {
            return Ok(None);
        }
        let tokens = shape(header, &format!("{prefix}token_embedding.weight"), 2)?;
        let positions = shape(header, &format!("{prefix}positional_embedding"), 2)?;
        let layers = header
            .indices_after(&format!("{prefix}transformer.resblocks."))
            .len();
        // §3.5: the width comes from in_proj_weight, [3W, W].
        let in_proj = shape(
            header,
            &format!("{prefix}transformer.resblocks.0.attn.in_proj_weight"),
            2,
        )?;
        let width = in_proj[1];
        if in_proj[0] != 3 * width || tokens[1] != width {
            return Err(CheckpointError::Unsupported {
                what: "inconsistent OpenCLIP text encoder".into(),
                found: format!("in_proj_weight {in_proj:?} with token_embedding {tokens:?}"),
            });
        }
        let c_fc = shape(
            header,
            &format!("{prefix}transformer.resblocks.0.mlp.c_fc.weight"),
            2,
        )?;
        let projection_dim = header
            .shape(&format!("{prefix}text_projection"))
            .and_then(|s| s.get(1).copied());
        Ok(Some(Self {
            prefix: prefix.to_string(),
            kind: TextEncoderKind::OpenClip,
            has_text_model_segment: false,
            vocab_size: tokens[0],
            max_positions: positions[0],
            width,
            layers,
            heads: heads_for_width(width),
            intermediate_size: c_fc[0],
            projection_dim,
        }))
    }
}

/// Key names of the VAE encoder's levels and their resnets in one naming scheme.
pub(super) struct VaeNames {
    /// `encoder.down.` (LDM) or `encoder.down_blocks.` (diffusers).
    pub levels: &'static str,
    /// `block.` (LDM) or `resnets.` (diffusers).
    pub resnets: &'static str,
}

/// The single-file (LDM/SGM) VAE names (§3.3).
pub(super) const LDM_VAE_NAMES: VaeNames = VaeNames {
    levels: "encoder.down.",
    resnets: "block.",
};

impl VaeLayout {
    /// The VAE under `prefix` (§3.3), or `None` when the file has none.
    pub fn derive(header: &Header, prefix: &str) -> Result<Option<Self>, CheckpointError> {
        if !header.has(&format!("{prefix}encoder.conv_in.weight")) {
            return Ok(None);
        }
        let layout = Self::from_shapes(header, prefix, &LDM_VAE_NAMES)?.ok_or_else(|| {
            CheckpointError::Unsupported {
                what: "incomplete VAE".into(),
                found: format!("no `{prefix}encoder.down.0.block.0` resnet"),
            }
        })?;
        Ok(Some(layout))
    }

    /// Sizes from the encoder's shapes under `prefix` in naming `names`: levels and their
    /// widths, resnets per level, latent and image channels; `None` when level 0 has no resnet.
    pub(super) fn from_shapes(
        header: &Header,
        prefix: &str,
        names: &VaeNames,
    ) -> Result<Option<Self>, CheckpointError> {
        let image_channels = shape(header, &format!("{prefix}encoder.conv_in.weight"), 4)?[1];
        let levels_prefix = format!("{prefix}{}", names.levels);
        let levels = header.indices_after(&levels_prefix).len();
        let block_out_channels = (0..levels)
            .map(|i| {
                let key = format!("{levels_prefix}{i}.{}0.conv2.weight", names.resnets);
                Ok(shape(header, &key, 4)?[0])
            })
            .collect::<Result<Vec<_>, CheckpointError>>()?;
        let layers_per_block = header
            .indices_after(&format!("{levels_prefix}0.{}", names.resnets))
            .len();
        let latent_channels = shape(header, &format!("{prefix}post_quant_conv.weight"), 4)?[1];
        if block_out_channels.is_empty() || layers_per_block == 0 {
            return Ok(None);
        }
        Ok(Some(Self {
            prefix: prefix.to_string(),
            block_out_channels,
            layers_per_block,
            latent_channels,
            image_channels,
        }))
    }

    /// Spatial factor between image and latent: `2^(levels − 1)` (8 for every real VAE).
    pub fn downscale_factor(&self) -> usize {
        1 << self.block_out_channels.len().saturating_sub(1)
    }
}
