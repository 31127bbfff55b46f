//! The peak-memory estimate the server admits requests with: walks the same layout the
//! modules are built from and adds up what is alive at the worst moment of one UNet call and,
//! separately, of one VAE decode (they run one after the other, so the peak is the larger).
//!
//! What is counted, per stage: the skip tensors the UNet holds for its up path; a resnet's
//! input, GroupNorm temporaries (f32), the im2col buffer of its 3×3 convolution (on an
//! accelerator candle materialises it whole, so `layers::Conv` bands it to at most
//! `IM2COL_BAND_BYTES` plus a padded copy; on the CPU `conv::forward` builds it in bands of at
//! most `COLUMN_BAND_BYTES` from a padded copy of the input, and concatenates the bands' outputs
//! into one more output-sized tensor); a
//! transformer's token copies, its GEGLU intermediates and up to three f32 score slices
//! (scores, softmax, output) bounded by the attention slice size. A 10 % margin covers
//! allocator slack. Weights are not included (they are already resident).

use candle_core::DType;
use sdplane_wire::checkpoint::Detection;

use super::conv::COLUMN_BAND_BYTES;
use super::keys::UnetChannels;
use super::layers::IM2COL_BAND_BYTES;
use super::vae::vae_dtype;

/// Tokens of the cross-attention context (CLIP's 77-token window).
const CONTEXT_TOKENS: u64 = 77;

/// Peak of one resnet at `h`×`w` pixels.
fn resnet_bytes(batch: u64, h: u64, w: u64, c_in: u64, c_out: u64, e: u64, accelerator: bool) -> u64 {
    let bp = batch * h * w;
    // Input, two f32 GroupNorm temporaries, conv1/conv2/shortcut/sum outputs.
    let activations = bp * (c_in * (e + 8) + c_out * 4 * e);
    let im2col = if accelerator {
        // Whole when small; otherwise one band plus the padded input and the band outputs.
        (bp * 9 * c_in * e).min(IM2COL_BAND_BYTES as u64 + bp * (c_in + c_out) * e)
    } else {
        // conv.rs: the input padded by one pixel (and one spare row), twice while padding; the
        // column matrix of one band (at least one output row of the padded width); the bands'
        // outputs and their concatenation.
        let padded = batch * (h + 3) * (w + 2) * c_in * e;
        let row = batch * 9 * c_in * (w + 2) * e;
        let columns = (h * row).min((COLUMN_BAND_BYTES as u64).max(row));
        2 * padded + columns + 2 * bp * c_out * e
    };
    activations + im2col
}

fn attention_scores(batch_heads: u64, queries: u64, keys: u64, slice_bytes: u64) -> u64 {
    3 * (batch_heads * queries * keys * 4).min(slice_bytes.max(keys * 4))
}

fn transformer_bytes(batch: u64, pixels: u64, c: u64, heads: u64, e: u64, slice_bytes: u64) -> u64 {
    // Tokens, norm, q/k/v and their head-split copies, attention output: ~10 copies of [b, p, c].
    let copies = 10 * batch * pixels * c * e;
    // GEGLU: projection to 8c, gelu(gate) 4c, product 4c.
    let ff = batch * pixels * 16 * c * e;
    let self_attn = attention_scores(batch * heads, pixels, pixels, slice_bytes);
    let cross_attn = attention_scores(batch * heads, pixels, CONTEXT_TOKENS, slice_bytes);
    copies + ff + self_attn.max(cross_attn)
}

/// Peak extra bytes of one UNet call with `batch` rows (2× the images under classifier-free
/// guidance) plus the VAE decode of its latents, on an accelerator or the CPU.
pub(crate) fn estimate_peak_bytes(
    det: &Detection,
    dtype: DType,
    slice_bytes: usize,
    batch: usize,
    latent_h: usize,
    latent_w: usize,
    accelerator: bool,
) -> u64 {
    let (b, s) = (batch as u64, slice_bytes as u64);
    let e = dtype.size_in_bytes() as u64;
    let l = &det.unet;
    let n = l.block_out_channels.len();
    let side_at = |level: usize| {
        (
            ((latent_h >> level).max(1)) as u64,
            ((latent_w >> level).max(1)) as u64,
        )
    };
    let pixels_at = |level: usize| side_at(level).0 * side_at(level).1;
    let channels = UnetChannels::new(l);

    // Skip tensors alive during the up path (pushed in order: conv_in, resnets, downsamplers).
    let mut skip_levels = vec![0usize];
    for level in 0..n {
        skip_levels.extend(std::iter::repeat_n(level, l.layers_per_block));
        if level + 1 < n {
            skip_levels.push(level + 1);
        }
    }
    let skips: u64 = channels
        .skips()
        .iter()
        .zip(&skip_levels)
        .map(|(&c, &level)| b * pixels_at(level) * c as u64 * e)
        .sum();

    let mut stage = 0u64;
    for level in 0..n {
        let p = pixels_at(level);
        let (sh, sw) = side_at(level);
        let c = l.block_out_channels[level] as u64;
        let heads = l.attention_heads[level] as u64;
        for j in 0..l.layers_per_block {
            let (ci, co) = channels.down_resnet(level, j);
            stage = stage.max(resnet_bytes(b, sh, sw, ci as u64, co as u64, e, accelerator));
        }
        for k in 0..=l.layers_per_block {
            let (ci, co) = channels.up_resnet(n - 1 - level, k);
            stage = stage.max(resnet_bytes(b, sh, sw, ci as u64, co as u64, e, accelerator));
        }
        let depth = if level + 1 == n {
            l.transformer_depth[level].max(l.mid_transformer_depth)
        } else {
            l.transformer_depth[level]
        };
        if depth > 0 {
            stage = stage.max(transformer_bytes(b, p, c, heads, e, s));
        }
    }
    let latents = b * pixels_at(0) * (l.in_channels + 2 * l.out_channels) as u64 * 4;
    let unet = skips + stage + latents;

    // VAE decode runs one image at a time (vae.rs), in its own dtype.
    let v = &det.vae;
    let ve = vae_dtype(det.family, dtype).size_in_bytes() as u64;
    let f = 1usize << v.block_out_channels.len().saturating_sub(1);
    let vn = v.block_out_channels.len();
    let mut vae = 0u64;
    for k in 0..vn {
        let level = vn - 1 - k;
        let c_out = v.block_out_channels[level] as u64;
        let c_prev = v.block_out_channels[(level + 1).min(vn - 1)] as u64;
        // Up block k runs at latent × 2^k; its upsampler conv runs at twice that.
        let (vh, vw) = ((latent_h << k) as u64, (latent_w << k) as u64);
        vae = vae.max(resnet_bytes(1, vh, vw, c_prev.max(c_out), c_out, ve, accelerator));
        if k + 1 < vn {
            vae = vae.max(resnet_bytes(1, 2 * vh, 2 * vw, c_out, c_out, ve, accelerator));
        }
    }
    let top = *v.block_out_channels.last().unwrap_or(&0) as u64;
    let lat_pixels = (latent_h * latent_w) as u64;
    vae = vae.max(10 * lat_pixels * top * ve + attention_scores(1, lat_pixels, lat_pixels, s));
    // Decoded images accumulate in f32.
    let images = b * v.image_channels as u64 * lat_pixels * (f * f) as u64 * 4;
    let total = unet.max(vae + images);
    total + total / 10
}
