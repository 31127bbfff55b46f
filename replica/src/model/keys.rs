//! The name map from diffusers names (what this module's layers request) to the keys stored
//! in an LDM/SGM single-file checkpoint (CHECKPOINTS.md §3). The map is computed from the
//! derived layouts with the §3.2 index formulas, never from a hard-coded key list, so SD1, SD2,
//! SDXL, the refiner, inpainting variants and tiny test models share one code path.
//!
//! Requested names are rooted per component: `unet.`, `vae.`, `text_encoder.`/`text_encoder_2.`
//! (diffusers' folder names), followed by the diffusers parameter name.
//!
//! A diffusers folder stores every tensor under exactly the requested name (its store roots
//! each component file's keys the same way), so its map is the identity over the same walk:
//! the walk still decides which names exist and which stored keys are deliberately unused.

use std::collections::HashMap;

use sdplane_wire::checkpoint::{Detection, ModelLayout, TextEncoderLayout, UnetLayout, VaeLayout};

use super::clip::EncoderUse;

/// How a stored tensor becomes the requested one. Only three transforms ever change the
/// layout (§3.1); everything else is a rename.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transform {
    None,
    /// Drop trailing singleton dims: VAE attention `[C,C,1,1]` → linear `[C,C]`.
    Squeeze,
    /// Rows `[start, start+len)` along dim 0: OpenCLIP fused `in_proj` → q/k/v.
    Rows {
        start: usize,
        len: usize,
    },
    /// OpenCLIP `text_projection` `[W,P]` is applied as `x @ P`; a Linear stores `Pᵀ`.
    Transpose,
}

/// Where one requested tensor lives in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stored {
    pub key: String,
    pub transform: Transform,
}

/// The precomputed requested-name → stored-key map, plus which stored keys are deliberately
/// unused (§1.3, §3.5, §3.6).
#[derive(Debug, Default)]
pub(crate) struct KeyMap {
    entries: HashMap<String, Stored>,
    /// Stored-key prefixes owned by a component; keys under them must be mapped or ignored.
    component_prefixes: Vec<String>,
    /// Stored-key prefixes (or exact keys) that are known and deliberately not loaded.
    ignored_prefixes: Vec<String>,
    /// diffusers folder: every name is stored as itself, untransformed.
    stored_as_requested: bool,
}

/// diffusers folder name of text encoder `index` (SDXL: CLIP-L is `text_encoder`, bigG
/// `text_encoder_2`).
pub(crate) fn text_encoder_root(index: usize) -> String {
    if index == 0 {
        "text_encoder.".to_string()
    } else {
        format!("text_encoder_{}.", index + 1)
    }
}

impl KeyMap {
    /// Build the map for every component of a detected checkpoint.
    pub(crate) fn build(det: &Detection) -> Self {
        Self::build_with(det, &EncoderUse::for_detection(det))
    }

    /// Build the map with explicit per-encoder uses (the folder writer loads every layer a
    /// diffusers folder keeps, not only those generation runs).
    pub(crate) fn build_with(det: &Detection, uses: &[EncoderUse]) -> Self {
        // UNet and VAE names in a folder are the requested names; text encoders go through the
        // HF walk below, which roots stored keys at the tower's own prefix (the SDXL refiner's
        // only tower is requested as `text_encoder.` but stored under `text_encoder_2.`).
        let mut map = Self {
            stored_as_requested: det.layout == ModelLayout::Diffusers,
            ..Self::default()
        };
        map.unet(&det.unet);
        map.vae(&det.vae);
        map.stored_as_requested = false;
        for (index, (layout, usage)) in det.text_encoders.iter().zip(uses.iter().copied()).enumerate() {
            map.text_encoder(&text_encoder_root(index), layout, usage);
        }
        map
    }

    /// Look up a requested name.
    pub(crate) fn get(&self, name: &str) -> Option<&Stored> {
        self.entries.get(name)
    }

    /// Every requested name the map knows (the folder writer and tests walk it).
    pub(crate) fn names(&self) -> impl Iterator<Item = (&String, &Stored)> {
        self.entries.iter()
    }

    /// Whether a stored key belongs to a component the model loads.
    pub(crate) fn is_component_key(&self, key: &str) -> bool {
        self.component_prefixes
            .iter()
            .any(|p| key.starts_with(p.as_str()))
    }

    /// Whether a stored key is known and deliberately not loaded.
    pub(crate) fn is_ignored(&self, key: &str) -> bool {
        // CLIP `position_ids` (positions are generated) and OpenCLIP `logit_scale` (§1.3).
        key.ends_with(".position_ids")
            || key.ends_with(".logit_scale")
            || self.ignored_prefixes.iter().any(|p| key.starts_with(p.as_str()))
    }

    fn add(&mut self, name: String, key: String, transform: Transform) {
        let stored = if self.stored_as_requested {
            // diffusers saved the converted tensor: same name, already linear/split/transposed.
            Stored {
                key: name.clone(),
                transform: Transform::None,
            }
        } else {
            Stored { key, transform }
        };
        self.entries.insert(name, stored);
    }

    /// `.weight` and `.bias` renamed together.
    fn wb(&mut self, name: &str, key: &str) {
        for suffix in ["weight", "bias"] {
            self.add(
                format!("{name}.{suffix}"),
                format!("{key}.{suffix}"),
                Transform::None,
            );
        }
    }

    // ---------------------------------------------------------------- UNet (§3.2)

    fn unet(&mut self, l: &UnetLayout) {
        let u = l.prefix.as_str();
        self.component_prefixes.push(u.to_string());
        let n = l.block_out_channels.len();
        let per = l.layers_per_block + 1;
        self.wb("unet.time_embedding.linear_1", &format!("{u}time_embed.0"));
        self.wb("unet.time_embedding.linear_2", &format!("{u}time_embed.2"));
        if l.adm_in_channels.is_some() {
            self.wb("unet.add_embedding.linear_1", &format!("{u}label_emb.0.0"));
            self.wb("unet.add_embedding.linear_2", &format!("{u}label_emb.0.2"));
        }
        self.wb("unet.conv_in", &format!("{u}input_blocks.0.0"));
        self.wb("unet.conv_norm_out", &format!("{u}out.0"));
        self.wb("unet.conv_out", &format!("{u}out.2"));

        let channels = UnetChannels::new(l);
        for b in 0..n {
            for j in 0..l.layers_per_block {
                let i = 1 + b * per + j;
                let (c_in, c_out) = channels.down_resnet(b, j);
                self.unet_resnet(
                    &format!("unet.down_blocks.{b}.resnets.{j}"),
                    &format!("{u}input_blocks.{i}.0"),
                    c_in != c_out,
                );
                if l.transformer_depth[b] > 0 {
                    self.unet_transformer(
                        &format!("unet.down_blocks.{b}.attentions.{j}"),
                        &format!("{u}input_blocks.{i}.1"),
                        l.transformer_depth[b],
                    );
                }
            }
            if b + 1 < n {
                self.wb(
                    &format!("unet.down_blocks.{b}.downsamplers.0.conv"),
                    &format!("{u}input_blocks.{}.0.op", (b + 1) * per),
                );
            }
        }

        self.unet_resnet("unet.mid_block.resnets.0", &format!("{u}middle_block.0"), false);
        let mut next = 1;
        if l.mid_transformer_depth > 0 {
            self.unet_transformer(
                "unet.mid_block.attentions.0",
                &format!("{u}middle_block.1"),
                l.mid_transformer_depth,
            );
            next = 2;
        }
        self.unet_resnet(
            "unet.mid_block.resnets.1",
            &format!("{u}middle_block.{next}"),
            false,
        );

        for up in 0..n {
            let level = n - 1 - up;
            for k in 0..per {
                let o = up * per + k;
                let (c_in, c_out) = channels.up_resnet(up, k);
                self.unet_resnet(
                    &format!("unet.up_blocks.{up}.resnets.{k}"),
                    &format!("{u}output_blocks.{o}.0"),
                    c_in != c_out,
                );
                let has_attention = l.transformer_depth[level] > 0;
                if has_attention {
                    self.unet_transformer(
                        &format!("unet.up_blocks.{up}.attentions.{k}"),
                        &format!("{u}output_blocks.{o}.1"),
                        l.transformer_depth[level],
                    );
                }
                if k == l.layers_per_block && up + 1 < n {
                    let slot = if has_attention { 2 } else { 1 };
                    self.wb(
                        &format!("unet.up_blocks.{up}.upsamplers.0.conv"),
                        &format!("{u}output_blocks.{o}.{slot}.conv"),
                    );
                }
            }
        }
    }

    fn unet_resnet(&mut self, name: &str, key: &str, shortcut: bool) {
        // LDM ResBlock → diffusers ResnetBlock2D (§3.2 "ResBlock inner renames").
        let pairs = [
            ("norm1", "in_layers.0"),
            ("conv1", "in_layers.2"),
            ("time_emb_proj", "emb_layers.1"),
            ("norm2", "out_layers.0"),
            ("conv2", "out_layers.3"),
        ];
        for (to, from) in pairs {
            self.wb(&format!("{name}.{to}"), &format!("{key}.{from}"));
        }
        if shortcut {
            self.wb(
                &format!("{name}.conv_shortcut"),
                &format!("{key}.skip_connection"),
            );
        }
    }

    fn unet_transformer(&mut self, name: &str, key: &str, depth: usize) {
        // SpatialTransformer inner names equal diffusers' Transformer2DModel names (§3.2).
        for part in ["norm", "proj_in", "proj_out"] {
            self.wb(&format!("{name}.{part}"), &format!("{key}.{part}"));
        }
        for t in 0..depth {
            let (n, k) = (
                format!("{name}.transformer_blocks.{t}"),
                format!("{key}.transformer_blocks.{t}"),
            );
            for part in [
                "norm1",
                "norm2",
                "norm3",
                "attn1.to_out.0",
                "attn2.to_out.0",
                "ff.net.0.proj",
                "ff.net.2",
            ] {
                self.wb(&format!("{n}.{part}"), &format!("{k}.{part}"));
            }
            for attn in ["attn1", "attn2"] {
                for proj in ["to_q", "to_k", "to_v"] {
                    let part = format!("{attn}.{proj}.weight");
                    self.add(format!("{n}.{part}"), format!("{k}.{part}"), Transform::None);
                }
            }
        }
    }

    // ---------------------------------------------------------------- VAE (§3.3)

    fn vae(&mut self, l: &VaeLayout) {
        let p = l.prefix.as_str();
        self.component_prefixes.push(p.to_string());
        let boc = &l.block_out_channels;
        let n = boc.len();
        self.wb("vae.encoder.conv_in", &format!("{p}encoder.conv_in"));
        for i in 0..n {
            for j in 0..l.layers_per_block {
                let c_in = if j == 0 { boc[i.saturating_sub(1)] } else { boc[i] };
                self.vae_resnet(
                    &format!("vae.encoder.down_blocks.{i}.resnets.{j}"),
                    &format!("{p}encoder.down.{i}.block.{j}"),
                    c_in != boc[i],
                );
            }
            if i + 1 < n {
                self.wb(
                    &format!("vae.encoder.down_blocks.{i}.downsamplers.0.conv"),
                    &format!("{p}encoder.down.{i}.downsample.conv"),
                );
            }
        }
        self.vae_mid("vae.encoder.mid_block", &format!("{p}encoder.mid"));
        self.wb("vae.encoder.conv_norm_out", &format!("{p}encoder.norm_out"));
        self.wb("vae.encoder.conv_out", &format!("{p}encoder.conv_out"));
        self.wb("vae.quant_conv", &format!("{p}quant_conv"));
        self.wb("vae.post_quant_conv", &format!("{p}post_quant_conv"));

        self.wb("vae.decoder.conv_in", &format!("{p}decoder.conv_in"));
        self.vae_mid("vae.decoder.mid_block", &format!("{p}decoder.mid"));
        for k in 0..n {
            // diffusers numbers decoder blocks from the bottom (widest) up: reversed (§3.3).
            let level = n - 1 - k;
            let c_out = boc[level];
            let c_prev = boc[(level + 1).min(n - 1)];
            for j in 0..=l.layers_per_block {
                let c_in = if j == 0 { c_prev } else { c_out };
                self.vae_resnet(
                    &format!("vae.decoder.up_blocks.{k}.resnets.{j}"),
                    &format!("{p}decoder.up.{level}.block.{j}"),
                    c_in != c_out,
                );
            }
            if k + 1 < n {
                self.wb(
                    &format!("vae.decoder.up_blocks.{k}.upsamplers.0.conv"),
                    &format!("{p}decoder.up.{level}.upsample.conv"),
                );
            }
        }
        self.wb("vae.decoder.conv_norm_out", &format!("{p}decoder.norm_out"));
        self.wb("vae.decoder.conv_out", &format!("{p}decoder.conv_out"));
    }

    fn vae_resnet(&mut self, name: &str, key: &str, shortcut: bool) {
        for part in ["norm1", "conv1", "norm2", "conv2"] {
            self.wb(&format!("{name}.{part}"), &format!("{key}.{part}"));
        }
        if shortcut {
            self.wb(&format!("{name}.conv_shortcut"), &format!("{key}.nin_shortcut"));
        }
    }

    fn vae_mid(&mut self, name: &str, key: &str) {
        self.vae_resnet(&format!("{name}.resnets.0"), &format!("{key}.block_1"), false);
        self.vae_resnet(&format!("{name}.resnets.1"), &format!("{key}.block_2"), false);
        let attn = format!("{name}.attentions.0");
        self.wb(&format!("{attn}.group_norm"), &format!("{key}.attn_1.norm"));
        for (to, from) in [
            ("to_q", "q"),
            ("to_k", "k"),
            ("to_v", "v"),
            ("to_out.0", "proj_out"),
        ] {
            self.add(
                format!("{attn}.{to}.weight"),
                format!("{key}.attn_1.{from}.weight"),
                Transform::Squeeze,
            );
            self.add(
                format!("{attn}.{to}.bias"),
                format!("{key}.attn_1.{from}.bias"),
                Transform::None,
            );
        }
    }

    // ---------------------------------------------------------------- text encoders (§3.4, §3.5)

    fn text_encoder(&mut self, root: &str, l: &TextEncoderLayout, usage: EncoderUse) {
        self.component_prefixes.push(l.prefix.clone());
        let dst = format!("{root}text_model.");
        if l.kind.hf_naming() {
            self.hf_clip(&dst, l, usage);
            if usage.projection {
                // transformers `CLIPTextModelWithProjection`: a Linear, stored as used.
                self.add(
                    format!("{root}text_projection.weight"),
                    format!("{}text_projection.weight", l.prefix),
                    Transform::None,
                );
            }
        } else {
            self.open_clip(root, &dst, l, usage);
        }
        // Layers past the one whose output is used are never requested (§3.5: SD2 drops block 23).
        let src_layer = |n: usize| {
            if l.kind.hf_naming() {
                format!("{}encoder.layers.{n}.", hf_root(l))
            } else {
                format!("{}transformer.resblocks.{n}.", l.prefix)
            }
        };
        for n in usage.layers..l.layers {
            self.ignored_prefixes.push(src_layer(n));
        }
        if !usage.final_norm {
            self.ignored_prefixes.push(if l.kind.hf_naming() {
                format!("{}final_layer_norm.", hf_root(l))
            } else {
                format!("{}ln_final.", l.prefix)
            });
        }
        if !usage.projection {
            self.ignored_prefixes.push(format!("{}text_projection", l.prefix));
        }
    }

    fn hf_clip(&mut self, dst: &str, l: &TextEncoderLayout, usage: EncoderUse) {
        let src = hf_root(l);
        for part in [
            "embeddings.token_embedding.weight",
            "embeddings.position_embedding.weight",
        ] {
            self.add(format!("{dst}{part}"), format!("{src}{part}"), Transform::None);
        }
        for n in 0..usage.layers {
            for part in [
                "layer_norm1",
                "layer_norm2",
                "self_attn.q_proj",
                "self_attn.k_proj",
                "self_attn.v_proj",
                "self_attn.out_proj",
                "mlp.fc1",
                "mlp.fc2",
            ] {
                self.wb(
                    &format!("{dst}encoder.layers.{n}.{part}"),
                    &format!("{src}encoder.layers.{n}.{part}"),
                );
            }
        }
        if usage.final_norm {
            self.wb(
                &format!("{dst}final_layer_norm"),
                &format!("{src}final_layer_norm"),
            );
        }
    }

    fn open_clip(&mut self, root: &str, dst: &str, l: &TextEncoderLayout, usage: EncoderUse) {
        let src = l.prefix.as_str();
        let w = l.width;
        self.add(
            format!("{dst}embeddings.token_embedding.weight"),
            format!("{src}token_embedding.weight"),
            Transform::None,
        );
        self.add(
            format!("{dst}embeddings.position_embedding.weight"),
            format!("{src}positional_embedding"),
            Transform::None,
        );
        for n in 0..usage.layers {
            let (d, s) = (
                format!("{dst}encoder.layers.{n}"),
                format!("{src}transformer.resblocks.{n}"),
            );
            for (to, from) in [
                ("layer_norm1", "ln_1"),
                ("layer_norm2", "ln_2"),
                ("self_attn.out_proj", "attn.out_proj"),
                ("mlp.fc1", "mlp.c_fc"),
                ("mlp.fc2", "mlp.c_proj"),
            ] {
                self.wb(&format!("{d}.{to}"), &format!("{s}.{from}"));
            }
            for (index, proj) in ["q_proj", "k_proj", "v_proj"].into_iter().enumerate() {
                let rows = Transform::Rows {
                    start: index * w,
                    len: w,
                };
                self.add(
                    format!("{d}.self_attn.{proj}.weight"),
                    format!("{s}.attn.in_proj_weight"),
                    rows,
                );
                self.add(
                    format!("{d}.self_attn.{proj}.bias"),
                    format!("{s}.attn.in_proj_bias"),
                    rows,
                );
            }
        }
        if usage.final_norm {
            self.wb(&format!("{dst}final_layer_norm"), &format!("{src}ln_final"));
        }
        if usage.projection {
            self.add(
                format!("{root}text_projection.weight"),
                format!("{src}text_projection"),
                Transform::Transpose,
            );
        }
    }
}

/// Stored root of an HF-layout CLIP tower's `text_model` (old SD1 files lack the segment).
fn hf_root(l: &TextEncoderLayout) -> String {
    if l.has_text_model_segment {
        format!("{}text_model.", l.prefix)
    } else {
        l.prefix.clone()
    }
}

/// Input/output channels of each UNet resnet, from the skip-connection stack that the forward
/// pass builds (diffusers `UNet2DConditionModel`): the same arithmetic drives the key map, the
/// module constructors and the memory estimate.
#[derive(Debug, Clone)]
pub(crate) struct UnetChannels {
    boc: Vec<usize>,
    /// Channels of each skip tensor pushed on the way down, in push order.
    skips: Vec<usize>,
    layers_per_block: usize,
}

impl UnetChannels {
    pub(crate) fn new(l: &UnetLayout) -> Self {
        let boc = l.block_out_channels.clone();
        let n = boc.len();
        let mut skips = vec![boc[0]];
        for (b, &c) in boc.iter().enumerate() {
            skips.extend(std::iter::repeat_n(c, l.layers_per_block));
            if b + 1 < n {
                skips.push(c);
            }
        }
        Self {
            boc,
            skips,
            layers_per_block: l.layers_per_block,
        }
    }

    /// `(c_in, c_out)` of down resnet `j` of level `b`.
    pub(crate) fn down_resnet(&self, b: usize, j: usize) -> (usize, usize) {
        let c_in = if j == 0 {
            self.boc[b.saturating_sub(1)]
        } else {
            self.boc[b]
        };
        (c_in, self.boc[b])
    }

    /// `(c_in, c_out)` of up resnet `k` of up block `up`: previous output plus the popped skip.
    pub(crate) fn up_resnet(&self, up: usize, k: usize) -> (usize, usize) {
        let n = self.boc.len();
        let per = self.layers_per_block + 1;
        let level = n - 1 - up;
        let popped = up * per + k;
        let skip = self.skips[self.skips.len() - 1 - popped];
        let prev = if k == 0 {
            self.boc[(level + 1).min(n - 1)]
        } else {
            self.boc[level]
        };
        (prev + skip, self.boc[level])
    }

    /// Channels of every skip tensor held during the up pass.
    pub(crate) fn skips(&self) -> &[usize] {
        &self.skips
    }
}
