//! diffusers `AutoencoderKL` from a header-derived `VaeLayout`: encoder (down levels with
//! LDM's asymmetric (0,1,0,1) padding before each stride-2 conv, mid block with one
//! single-head attention, conv to mean ⧺ log-variance, `quant_conv`) and decoder
//! (`post_quant_conv`, mid block, levels with one more resnet each and nearest ×2 upsampling).
//! GroupNorm 32 groups, eps 1e-6 throughout (diffusers `AutoencoderKL` `norm_eps`, LDM `Normalize`).

use candle_core::{D, DType, Tensor};
use candle_nn::{GroupNorm, Linear, Module};
use sdplane_wire::checkpoint::{Family, VaeLayout};

use super::attention::sliced_attention;
use super::error::ModelError;
use super::layers::{Conv, conv2d, group_norm, linear};
use super::resnet::ResnetBlock2D;
use super::weights::Weights;

const NORM_EPS: f64 = 1e-6;

/// dtype the VAE runs in: the SDXL VAE overflows in f16 (CHECKPOINTS.md §5, candle issue
/// #1060), so SDXL-family VAEs stay in f32 when the model runs in f16.
pub(crate) fn vae_dtype(family: Family, model_dtype: DType) -> DType {
    let sdxl = matches!(family, Family::Sdxl | Family::SdxlRefiner);
    if sdxl && model_dtype == DType::F16 {
        DType::F32
    } else {
        model_dtype
    }
}

/// Mid-block self-attention over all pixels, one head of the full width.
#[derive(Debug, Clone)]
struct VaeAttention {
    group_norm: GroupNorm,
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
}

impl VaeAttention {
    fn new(w: &Weights, c: usize) -> Result<Self, ModelError> {
        Ok(Self {
            group_norm: group_norm(&w.pp("group_norm"), c, NORM_EPS)?,
            to_q: linear(&w.pp("to_q"), c, c, true)?,
            to_k: linear(&w.pp("to_k"), c, c, true)?,
            to_v: linear(&w.pp("to_v"), c, c, true)?,
            to_out: linear(&w.pp("to_out.0"), c, c, true)?,
        })
    }

    fn forward(&self, x: &Tensor, slice_bytes: usize) -> Result<Tensor, ModelError> {
        let (b, c, h, w) = x.dims4()?;
        let tokens = self
            .group_norm
            .forward(x)?
            .reshape((b, c, h * w))?
            .transpose(1, 2)?
            .contiguous()?;
        let q = self.to_q.forward(&tokens)?;
        let k = self.to_k.forward(&tokens)?;
        let v = self.to_v.forward(&tokens)?;
        let out = sliced_attention(&q, &k, &v, 1.0 / (c as f64).sqrt(), None, slice_bytes)?;
        let out = self
            .to_out
            .forward(&out)?
            .transpose(1, 2)?
            .reshape((b, c, h, w))?;
        Ok((out + x)?)
    }
}

#[derive(Debug, Clone)]
struct MidBlock {
    resnet_0: ResnetBlock2D,
    attention: VaeAttention,
    resnet_1: ResnetBlock2D,
}

impl MidBlock {
    fn new(w: &Weights, c: usize) -> Result<Self, ModelError> {
        Ok(Self {
            resnet_0: ResnetBlock2D::new(&w.pp("resnets.0"), c, c, None, NORM_EPS)?,
            attention: VaeAttention::new(&w.pp("attentions.0"), c)?,
            resnet_1: ResnetBlock2D::new(&w.pp("resnets.1"), c, c, None, NORM_EPS)?,
        })
    }

    fn forward(&self, x: &Tensor, slice_bytes: usize) -> Result<Tensor, ModelError> {
        let x = self.resnet_0.forward(x, None)?;
        let x = self.attention.forward(&x, slice_bytes)?;
        self.resnet_1.forward(&x, None)
    }
}

#[derive(Debug, Clone)]
struct Level {
    resnets: Vec<ResnetBlock2D>,
    /// Encoder: stride-2 conv after (0,1,0,1) padding. Decoder: conv after nearest ×2.
    resample: Option<Conv>,
}

#[derive(Debug, Clone)]
struct Encoder {
    conv_in: Conv,
    down: Vec<Level>,
    mid: MidBlock,
    norm_out: GroupNorm,
    conv_out: Conv,
}

#[derive(Debug, Clone)]
struct Decoder {
    conv_in: Conv,
    mid: MidBlock,
    up: Vec<Level>,
    norm_out: GroupNorm,
    conv_out: Conv,
}

#[derive(Debug, Clone)]
pub(crate) struct AutoEncoderKl {
    layout: VaeLayout,
    encoder: Encoder,
    quant_conv: Conv,
    post_quant_conv: Conv,
    decoder: Decoder,
    dtype: DType,
}

impl AutoEncoderKl {
    pub(crate) fn new(w: &Weights, l: &VaeLayout) -> Result<Self, ModelError> {
        let boc = &l.block_out_channels;
        let n = boc.len();
        if n == 0 || l.layers_per_block == 0 {
            return Err(ModelError::invalid("layout", "VAE layout has no levels"));
        }
        let top = boc[n - 1];
        let lat = l.latent_channels;

        let ew = w.pp("encoder");
        let mut down = Vec::with_capacity(n);
        for i in 0..n {
            let lw = ew.pp(format!("down_blocks.{i}"));
            let mut resnets = Vec::with_capacity(l.layers_per_block);
            for j in 0..l.layers_per_block {
                let c_in = if j == 0 { boc[i.saturating_sub(1)] } else { boc[i] };
                resnets.push(ResnetBlock2D::new(
                    &lw.pp(format!("resnets.{j}")),
                    c_in,
                    boc[i],
                    None,
                    NORM_EPS,
                )?);
            }
            let resample = if i + 1 < n {
                Some(conv2d(&lw.pp("downsamplers.0.conv"), boc[i], boc[i], 3, 2, 0)?)
            } else {
                None
            };
            down.push(Level { resnets, resample });
        }
        let encoder = Encoder {
            conv_in: conv2d(&ew.pp("conv_in"), l.image_channels, boc[0], 3, 1, 1)?,
            down,
            mid: MidBlock::new(&ew.pp("mid_block"), top)?,
            norm_out: group_norm(&ew.pp("conv_norm_out"), top, NORM_EPS)?,
            // Mean and log-variance together (`double_z`).
            conv_out: conv2d(&ew.pp("conv_out"), top, 2 * lat, 3, 1, 1)?,
        };

        let dw = w.pp("decoder");
        let mut up = Vec::with_capacity(n);
        for k in 0..n {
            let level = n - 1 - k;
            let c_out = boc[level];
            let c_prev = boc[(level + 1).min(n - 1)];
            let lw = dw.pp(format!("up_blocks.{k}"));
            let mut resnets = Vec::with_capacity(l.layers_per_block + 1);
            for j in 0..=l.layers_per_block {
                let c_in = if j == 0 { c_prev } else { c_out };
                resnets.push(ResnetBlock2D::new(
                    &lw.pp(format!("resnets.{j}")),
                    c_in,
                    c_out,
                    None,
                    NORM_EPS,
                )?);
            }
            let resample = if k + 1 < n {
                Some(conv2d(&lw.pp("upsamplers.0.conv"), c_out, c_out, 3, 1, 1)?)
            } else {
                None
            };
            up.push(Level { resnets, resample });
        }
        let decoder = Decoder {
            conv_in: conv2d(&dw.pp("conv_in"), lat, top, 3, 1, 1)?,
            mid: MidBlock::new(&dw.pp("mid_block"), top)?,
            up,
            norm_out: group_norm(&dw.pp("conv_norm_out"), boc[0], NORM_EPS)?,
            conv_out: conv2d(&dw.pp("conv_out"), boc[0], l.image_channels, 3, 1, 1)?,
        };

        Ok(Self {
            layout: l.clone(),
            encoder,
            quant_conv: conv2d(&w.pp("quant_conv"), 2 * lat, 2 * lat, 1, 1, 0)?,
            post_quant_conv: conv2d(&w.pp("post_quant_conv"), lat, lat, 1, 1, 0)?,
            decoder,
            dtype: w.dtype(),
        })
    }

    /// Image pixels per latent pixel along each axis: 2^(levels − 1).
    pub(crate) fn spatial_factor(&self) -> usize {
        1 << (self.layout.block_out_channels.len() - 1)
    }

    /// Latents `[n, lat, h, w]` → images `[n, 3, h·f, w·f]` in ~[-1, 1], f32. Decodes one image
    /// at a time: the full-resolution convolutions dominate memory and scale with the batch.
    pub(crate) fn decode(&self, latents: &Tensor, slice_bytes: usize) -> Result<Tensor, ModelError> {
        match latents.dims() {
            [n, c, h, w] if *n > 0 && *c == self.layout.latent_channels && *h > 0 && *w > 0 => {}
            other => {
                return Err(ModelError::invalid(
                    "latents",
                    format!("shape {other:?}: need [n, {}, h, w]", self.layout.latent_channels),
                ));
            }
        }
        let mut images = Vec::new();
        for i in 0..latents.dim(0)? {
            let z = latents.narrow(0, i, 1)?.to_dtype(self.dtype)?;
            images.push(self.decode_one(&z, slice_bytes)?.to_dtype(DType::F32)?);
        }
        Ok(Tensor::cat(&images, 0)?)
    }

    fn decode_one(&self, z: &Tensor, slice_bytes: usize) -> Result<Tensor, ModelError> {
        let d = &self.decoder;
        let z = self.post_quant_conv.forward(z)?;
        let mut x = d.mid.forward(&d.conv_in.forward(&z)?, slice_bytes)?;
        for level in &d.up {
            for resnet in &level.resnets {
                x = resnet.forward(&x, None)?;
            }
            if let Some(conv) = &level.resample {
                let (_, _, h, w) = x.dims4()?;
                x = conv.forward(&x.upsample_nearest2d(2 * h, 2 * w)?)?;
            }
        }
        Ok(d.conv_out.forward(&d.norm_out.forward(&x)?.silu()?)?)
    }

    /// Images `[n, 3, H, W]` in [-1, 1] → posterior `(mean, std)` `[n, lat, H/f, W/f]`, f32.
    pub(crate) fn encode(&self, images: &Tensor, slice_bytes: usize) -> Result<(Tensor, Tensor), ModelError> {
        let f = self.spatial_factor();
        match images.dims() {
            [n, c, h, w]
                if *n > 0 && *c == self.layout.image_channels && *h > 0 && h % f == 0 && w % f == 0 => {}
            other => {
                return Err(ModelError::invalid(
                    "images",
                    format!(
                        "shape {other:?}: need [n, {}, H, W] with H, W multiples of {f}",
                        self.layout.image_channels
                    ),
                ));
            }
        }
        let e = &self.encoder;
        let mut x = e.conv_in.forward(&images.to_dtype(self.dtype)?)?;
        for level in &e.down {
            for resnet in &level.resnets {
                x = resnet.forward(&x, None)?;
            }
            if let Some(conv) = &level.resample {
                // LDM `Downsample`: pad right and bottom by one, then stride 2 without padding.
                x = conv.forward(
                    &x.pad_with_zeros(D::Minus1, 0, 1)?
                        .pad_with_zeros(D::Minus2, 0, 1)?,
                )?;
            }
        }
        let x = e.mid.forward(&x, slice_bytes)?;
        let moments = self
            .quant_conv
            .forward(&e.conv_out.forward(&e.norm_out.forward(&x)?.silu()?)?)?;
        let moments = moments.to_dtype(DType::F32)?;
        let lat = self.layout.latent_channels;
        let mean = moments.narrow(1, 0, lat)?;
        // diffusers `DiagonalGaussianDistribution`: log-variance clamped to [-30, 20].
        let logvar = moments.narrow(1, lat, lat)?.clamp(-30f32, 20f32)?;
        let std = (logvar * 0.5)?.exp()?;
        Ok((mean.contiguous()?, std))
    }
}

/// Run one VAE attention block built from `w` (tests compare it with the plain formula).
#[cfg(test)]
pub(crate) fn mid_attention_for_tests(
    w: &Weights,
    c: usize,
    x: &Tensor,
    slice_bytes: usize,
) -> Result<Tensor, ModelError> {
    VaeAttention::new(w, c)?.forward(x, slice_bytes)
}
