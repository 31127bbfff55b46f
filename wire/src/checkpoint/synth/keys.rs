//! The tensor names and shapes of each component in the real single-file layout (LDM/SGM
//! naming, CHECKPOINTS.md §3), emitted from layout sizes.

use super::{Init, SynthTensor};
use crate::checkpoint::layout::{TextEncoderLayout, UnetLayout, VaeLayout};

/// The list being built, with helpers for the common weight/bias/norm patterns.
#[derive(Default)]
pub(super) struct Tensors(pub(super) Vec<SynthTensor>);

impl Tensors {
    pub(super) fn push(&mut self, name: String, shape: Vec<usize>, init: Init) {
        self.0.push(SynthTensor { name, shape, init });
    }
    /// `p.weight` with `shape` and `p.bias` of `shape[0]`.
    fn linear(&mut self, p: &str, shape: &[usize]) {
        self.push(format!("{p}.weight"), shape.to_vec(), Init::Normal);
        self.push(format!("{p}.bias"), vec![shape[0]], Init::Bias);
    }
    fn weight_only(&mut self, p: &str, shape: &[usize]) {
        self.push(format!("{p}.weight"), shape.to_vec(), Init::Normal);
    }
    fn norm(&mut self, p: &str, c: usize) {
        self.push(format!("{p}.weight"), vec![c], Init::Ones);
        self.push(format!("{p}.bias"), vec![c], Init::Bias);
    }
    fn conv3(&mut self, p: &str, out: usize, inp: usize) {
        self.linear(p, &[out, inp, 3, 3]);
    }
}

/// LDM `ResBlock` (§3.2 inner renames).
fn unet_resblock(t: &mut Tensors, p: &str, inp: usize, out: usize, temb: usize) {
    t.norm(&format!("{p}in_layers.0"), inp);
    t.conv3(&format!("{p}in_layers.2"), out, inp);
    t.linear(&format!("{p}emb_layers.1"), &[out, temb]);
    t.norm(&format!("{p}out_layers.0"), out);
    t.conv3(&format!("{p}out_layers.3"), out, out);
    if inp != out {
        t.linear(&format!("{p}skip_connection"), &[out, inp, 1, 1]);
    }
}

/// LDM `SpatialTransformer` (names identical to diffusers' `Transformer2DModel`).
fn unet_transformer(t: &mut Tensors, p: &str, c: usize, depth: usize, u: &UnetLayout) {
    let proj: Vec<usize> = if u.linear_projection {
        vec![c, c]
    } else {
        vec![c, c, 1, 1]
    };
    t.norm(&format!("{p}norm"), c);
    t.linear(&format!("{p}proj_in"), &proj);
    for b in 0..depth {
        let q = format!("{p}transformer_blocks.{b}.");
        for (attn, ctx) in [("attn1", c), ("attn2", u.context_dim)] {
            t.weight_only(&format!("{q}{attn}.to_q"), &[c, c]);
            t.weight_only(&format!("{q}{attn}.to_k"), &[c, ctx]);
            t.weight_only(&format!("{q}{attn}.to_v"), &[c, ctx]);
            t.linear(&format!("{q}{attn}.to_out.0"), &[c, c]);
        }
        // GEGLU: the first projection yields value and gate, 2 × 4c.
        t.linear(&format!("{q}ff.net.0.proj"), &[8 * c, c]);
        t.linear(&format!("{q}ff.net.2"), &[c, 4 * c]);
        for n in ["norm1", "norm2", "norm3"] {
            t.norm(&format!("{q}{n}"), c);
        }
    }
    t.linear(&format!("{p}proj_out"), &proj);
}

pub(super) fn unet_tensors(t: &mut Tensors, u: &UnetLayout) {
    let p = &u.prefix;
    let c0 = u.model_channels();
    let temb = u.time_embed_dim;
    let levels = u.levels();
    let per = u.layers_per_block;
    t.linear(&format!("{p}time_embed.0"), &[temb, c0]);
    t.linear(&format!("{p}time_embed.2"), &[temb, temb]);
    if let Some(adm) = u.adm_in_channels {
        t.linear(&format!("{p}label_emb.0.0"), &[temb, adm]);
        t.linear(&format!("{p}label_emb.0.2"), &[temb, temb]);
    }
    t.conv3(&format!("{p}input_blocks.0.0"), c0, u.in_channels);
    // Widths of the skip connections, pushed on the way down and popped on the way up.
    let mut skips = vec![c0];
    let mut ch = c0;
    let mut i = 1;
    for (level, (&width, &depth)) in u.block_out_channels.iter().zip(&u.transformer_depth).enumerate() {
        for _ in 0..per {
            unet_resblock(t, &format!("{p}input_blocks.{i}.0."), ch, width, temb);
            ch = width;
            if depth > 0 {
                unet_transformer(t, &format!("{p}input_blocks.{i}.1."), ch, depth, u);
            }
            skips.push(ch);
            i += 1;
        }
        if level + 1 < levels {
            t.conv3(&format!("{p}input_blocks.{i}.0.op"), ch, ch);
            skips.push(ch);
            i += 1;
        }
    }
    unet_resblock(t, &format!("{p}middle_block.0."), ch, ch, temb);
    unet_transformer(t, &format!("{p}middle_block.1."), ch, u.mid_transformer_depth, u);
    unet_resblock(t, &format!("{p}middle_block.2."), ch, ch, temb);
    let mut o = 0;
    for level in (0..levels).rev() {
        let width = u.block_out_channels[level];
        let depth = u.transformer_depth[level];
        for k in 0..=per {
            let skip = skips.pop().unwrap_or(c0);
            unet_resblock(t, &format!("{p}output_blocks.{o}.0."), ch + skip, width, temb);
            ch = width;
            if depth > 0 {
                unet_transformer(t, &format!("{p}output_blocks.{o}.1."), ch, depth, u);
            }
            if k == per && level > 0 {
                let slot = if depth > 0 { 2 } else { 1 };
                t.conv3(&format!("{p}output_blocks.{o}.{slot}.conv"), ch, ch);
            }
            o += 1;
        }
    }
    t.norm(&format!("{p}out.0"), c0);
    t.conv3(&format!("{p}out.2"), u.out_channels, c0);
}

pub(super) fn hf_clip_tensors(t: &mut Tensors, te: &TextEncoderLayout) {
    let p = format!("{}text_model.", te.prefix);
    let (w, inter) = (te.width, te.intermediate_size);
    t.weight_only(&format!("{p}embeddings.token_embedding"), &[te.vocab_size, w]);
    t.weight_only(
        &format!("{p}embeddings.position_embedding"),
        &[te.max_positions, w],
    );
    t.push(
        format!("{p}embeddings.position_ids"),
        vec![1, te.max_positions],
        Init::PositionIds,
    );
    for n in 0..te.layers {
        let l = format!("{p}encoder.layers.{n}.");
        for proj in ["q_proj", "k_proj", "v_proj", "out_proj"] {
            t.linear(&format!("{l}self_attn.{proj}"), &[w, w]);
        }
        t.norm(&format!("{l}layer_norm1"), w);
        t.linear(&format!("{l}mlp.fc1"), &[inter, w]);
        t.linear(&format!("{l}mlp.fc2"), &[w, inter]);
        t.norm(&format!("{l}layer_norm2"), w);
    }
    t.norm(&format!("{p}final_layer_norm"), w);
}

pub(super) fn open_clip_tensors(t: &mut Tensors, te: &TextEncoderLayout) {
    let p = &te.prefix;
    let (w, inter) = (te.width, te.intermediate_size);
    t.weight_only(&format!("{p}token_embedding"), &[te.vocab_size, w]);
    t.push(
        format!("{p}positional_embedding"),
        vec![te.max_positions, w],
        Init::Normal,
    );
    for n in 0..te.layers {
        let l = format!("{p}transformer.resblocks.{n}.");
        t.norm(&format!("{l}ln_1"), w);
        t.push(format!("{l}attn.in_proj_weight"), vec![3 * w, w], Init::Normal);
        t.push(format!("{l}attn.in_proj_bias"), vec![3 * w], Init::Bias);
        t.linear(&format!("{l}attn.out_proj"), &[w, w]);
        t.norm(&format!("{l}ln_2"), w);
        t.linear(&format!("{l}mlp.c_fc"), &[inter, w]);
        t.linear(&format!("{l}mlp.c_proj"), &[w, inter]);
    }
    t.norm(&format!("{p}ln_final"), w);
    if let Some(proj) = te.projection_dim {
        t.push(format!("{p}text_projection"), vec![w, proj], Init::Normal);
    }
    // CLIP's initial temperature 1/0.07 (Radford et al. 2021), stored as its log.
    t.push(
        format!("{p}logit_scale"),
        vec![],
        Init::Constant((1.0f32 / 0.07).ln()),
    );
}

/// LDM VAE `ResnetBlock`.
fn vae_resblock(t: &mut Tensors, p: &str, inp: usize, out: usize) {
    t.norm(&format!("{p}norm1"), inp);
    t.conv3(&format!("{p}conv1"), out, inp);
    t.norm(&format!("{p}norm2"), out);
    t.conv3(&format!("{p}conv2"), out, out);
    if inp != out {
        t.linear(&format!("{p}nin_shortcut"), &[out, inp, 1, 1]);
    }
}

/// VAE mid block: resnet, single-head attention with 1×1-conv q/k/v/proj_out, resnet.
fn vae_mid(t: &mut Tensors, p: &str, c: usize) {
    vae_resblock(t, &format!("{p}mid.block_1."), c, c);
    t.norm(&format!("{p}mid.attn_1.norm"), c);
    for n in ["q", "k", "v", "proj_out"] {
        t.linear(&format!("{p}mid.attn_1.{n}"), &[c, c, 1, 1]);
    }
    vae_resblock(t, &format!("{p}mid.block_2."), c, c);
}

pub(super) fn vae_tensors(t: &mut Tensors, v: &VaeLayout) {
    let p = &v.prefix;
    let widths = &v.block_out_channels;
    let (first, last) = (widths[0], widths[widths.len() - 1]);
    let z = v.latent_channels;
    let e = format!("{p}encoder.");
    t.conv3(&format!("{e}conv_in"), first, v.image_channels);
    let mut ch = first;
    for (i, &width) in widths.iter().enumerate() {
        for j in 0..v.layers_per_block {
            vae_resblock(t, &format!("{e}down.{i}.block.{j}."), ch, width);
            ch = width;
        }
        if i + 1 < widths.len() {
            t.conv3(&format!("{e}down.{i}.downsample.conv"), ch, ch);
        }
    }
    vae_mid(t, &e, ch);
    t.norm(&format!("{e}norm_out"), ch);
    // Mean and log-variance.
    t.conv3(&format!("{e}conv_out"), 2 * z, ch);
    t.linear(&format!("{p}quant_conv"), &[2 * z, 2 * z, 1, 1]);
    t.linear(&format!("{p}post_quant_conv"), &[z, z, 1, 1]);
    let d = format!("{p}decoder.");
    t.conv3(&format!("{d}conv_in"), last, z);
    vae_mid(t, &d, last);
    let mut ch = last;
    for (i, &width) in widths.iter().enumerate().rev() {
        for j in 0..=v.layers_per_block {
            vae_resblock(t, &format!("{d}up.{i}.block.{j}."), ch, width);
            ch = width;
        }
        if i > 0 {
            t.conv3(&format!("{d}up.{i}.upsample.conv"), ch, ch);
        }
    }
    t.norm(&format!("{d}norm_out"), ch);
    t.conv3(&format!("{d}conv_out"), v.image_channels, ch);
}
