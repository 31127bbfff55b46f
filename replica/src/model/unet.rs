//! diffusers `UNet2DConditionModel`, built from a header-derived `UnetLayout`: time embedding,
//! SDXL `add_embedding` over pooled text + embedded time ids (CHECKPOINTS.md §4.4), down
//! levels (resnets, optional transformers, strided-conv downsampler), mid block (resnet,
//! transformer of its own depth — the refiner's 4, which candle-transformers gets wrong — resnet),
//! up levels with skip concatenation and nearest upsampling, then norm/SiLU/conv out.

use candle_core::{D, DType, Device, Tensor};
use candle_nn::{GroupNorm, Linear, Module};
use sdplane_wire::checkpoint::UnetLayout;

use super::error::ModelError;
use super::keys::UnetChannels;
use super::layers::{Conv, conv2d, group_norm, linear};
use super::resnet::ResnetBlock2D;
use super::transformer::Transformer2D;
use super::weights::Weights;

/// UNet GroupNorm eps (diffusers `norm_eps = 1e-5`; LDM `GroupNorm32` default).
const NORM_EPS: f64 = 1e-5;
/// Sinusoid period of the timestep embedding (diffusers `get_timestep_embedding`
/// `max_period=10000`, from "Attention Is All You Need").
const MAX_PERIOD: f64 = 10000.0;

/// Sinusoidal embedding of each value in `values` into `dim` features with
/// `flip_sin_to_cos = true` and `freq_shift = 0` (diffusers defaults for every SD UNet): `[cos, sin]`.
pub(crate) fn timestep_embedding(values: &[f64], dim: usize, device: &Device) -> Result<Tensor, ModelError> {
    let half = dim / 2;
    let mut out = Vec::with_capacity(values.len() * dim);
    for &t in values {
        let freqs = (0..half).map(|i| (-(MAX_PERIOD.ln()) * i as f64 / half as f64).exp() * t);
        let args: Vec<f64> = freqs.collect();
        out.extend(args.iter().map(|a| a.cos() as f32));
        out.extend(args.iter().map(|a| a.sin() as f32));
        // Odd widths are zero-padded by diffusers.
        out.extend(std::iter::repeat_n(0f32, dim - 2 * half));
    }
    Ok(Tensor::from_vec(out, (values.len(), dim), device)?)
}

/// `Linear → SiLU → Linear` (diffusers `TimestepEmbedding`, also used for `add_embedding`).
#[derive(Debug, Clone)]
struct TimestepMlp {
    linear_1: Linear,
    linear_2: Linear,
}

impl TimestepMlp {
    fn new(w: &Weights, c_in: usize, c_out: usize) -> Result<Self, ModelError> {
        Ok(Self {
            linear_1: linear(&w.pp("linear_1"), c_in, c_out, true)?,
            linear_2: linear(&w.pp("linear_2"), c_out, c_out, true)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        Ok(self.linear_2.forward(&self.linear_1.forward(x)?.silu()?)?)
    }
}

#[derive(Debug, Clone)]
struct DownLevel {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2D>,
    downsampler: Option<Conv>,
}

#[derive(Debug, Clone)]
struct UpLevel {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2D>,
    upsampler: Option<Conv>,
}

#[derive(Debug, Clone)]
struct AddEmbedding {
    mlp: TimestepMlp,
    adm: usize,
    time_dim: usize,
}

#[derive(Debug, Clone)]
pub(crate) struct UNet {
    layout: UnetLayout,
    time_embedding: TimestepMlp,
    add_embedding: Option<AddEmbedding>,
    conv_in: Conv,
    down: Vec<DownLevel>,
    mid_resnets: [ResnetBlock2D; 2],
    mid_attention: Option<Transformer2D>,
    up: Vec<UpLevel>,
    norm_out: GroupNorm,
    conv_out: Conv,
}

impl UNet {
    pub(crate) fn new(w: &Weights, l: &UnetLayout) -> Result<Self, ModelError> {
        let n = l.block_out_channels.len();
        if n == 0 || l.transformer_depth.len() != n || l.attention_heads.len() != n {
            return Err(ModelError::invalid(
                "layout",
                "UNet layout lists differ in length",
            ));
        }
        let c0 = l.block_out_channels[0];
        let temb = l.time_embed_dim;
        let channels = UnetChannels::new(l);
        let transformer = |w: &Weights, level: usize, depth: usize| {
            Transformer2D::new(
                w,
                l.block_out_channels[level],
                depth,
                l.attention_heads[level],
                l.context_dim,
                l.linear_projection,
            )
        };
        let add_embedding = match l.adm_in_channels {
            Some(adm) => Some(AddEmbedding {
                mlp: TimestepMlp::new(&w.pp("add_embedding"), adm, temb)?,
                adm,
                time_dim: l.addition_time_embed_dim.ok_or_else(|| {
                    ModelError::invalid("layout", "SDXL UNet without addition_time_embed_dim")
                })?,
            }),
            None => None,
        };

        let mut down = Vec::with_capacity(n);
        for b in 0..n {
            let lw = w.pp(format!("down_blocks.{b}"));
            let mut level = DownLevel {
                resnets: vec![],
                attentions: vec![],
                downsampler: None,
            };
            for j in 0..l.layers_per_block {
                let (c_in, c_out) = channels.down_resnet(b, j);
                level.resnets.push(ResnetBlock2D::new(
                    &lw.pp(format!("resnets.{j}")),
                    c_in,
                    c_out,
                    Some(temb),
                    NORM_EPS,
                )?);
                if l.transformer_depth[b] > 0 {
                    level.attentions.push(transformer(
                        &lw.pp(format!("attentions.{j}")),
                        b,
                        l.transformer_depth[b],
                    )?);
                }
            }
            if b + 1 < n {
                let c = l.block_out_channels[b];
                // diffusers `Downsample2D`: 3×3 stride 2, `downsample_padding = 1`.
                level.downsampler = Some(conv2d(&lw.pp("downsamplers.0.conv"), c, c, 3, 2, 1)?);
            }
            down.push(level);
        }

        let c_mid = l.block_out_channels[n - 1];
        let mw = w.pp("mid_block");
        let mid_resnets = [
            ResnetBlock2D::new(&mw.pp("resnets.0"), c_mid, c_mid, Some(temb), NORM_EPS)?,
            ResnetBlock2D::new(&mw.pp("resnets.1"), c_mid, c_mid, Some(temb), NORM_EPS)?,
        ];
        let mid_attention = if l.mid_transformer_depth > 0 {
            Some(transformer(
                &mw.pp("attentions.0"),
                n - 1,
                l.mid_transformer_depth,
            )?)
        } else {
            None
        };

        let mut up = Vec::with_capacity(n);
        for u in 0..n {
            let level_index = n - 1 - u;
            let lw = w.pp(format!("up_blocks.{u}"));
            let mut level = UpLevel {
                resnets: vec![],
                attentions: vec![],
                upsampler: None,
            };
            for k in 0..=l.layers_per_block {
                let (c_in, c_out) = channels.up_resnet(u, k);
                level.resnets.push(ResnetBlock2D::new(
                    &lw.pp(format!("resnets.{k}")),
                    c_in,
                    c_out,
                    Some(temb),
                    NORM_EPS,
                )?);
                let depth = l.transformer_depth[level_index];
                if depth > 0 {
                    level.attentions.push(transformer(
                        &lw.pp(format!("attentions.{k}")),
                        level_index,
                        depth,
                    )?);
                }
            }
            if u + 1 < n {
                let c = l.block_out_channels[level_index];
                level.upsampler = Some(conv2d(&lw.pp("upsamplers.0.conv"), c, c, 3, 1, 1)?);
            }
            up.push(level);
        }

        Ok(Self {
            layout: l.clone(),
            time_embedding: TimestepMlp::new(&w.pp("time_embedding"), c0, temb)?,
            add_embedding,
            conv_in: conv2d(&w.pp("conv_in"), l.in_channels, c0, 3, 1, 1)?,
            down,
            mid_resnets,
            mid_attention,
            up,
            norm_out: group_norm(&w.pp("conv_norm_out"), c0, NORM_EPS)?,
            conv_out: conv2d(&w.pp("conv_out"), c0, l.out_channels, 3, 1, 1)?,
        })
    }

    /// Check caller inputs before any compute; bad shapes are `InvalidInput`, never a panic.
    fn check_inputs(&self, latents: &Tensor, context: &Tensor) -> Result<usize, ModelError> {
        let l = &self.layout;
        let dims = latents.dims();
        let [b, c, h, w] = dims else {
            return Err(ModelError::invalid(
                "latents",
                format!("expected [n, c, h, w], got {dims:?}"),
            ));
        };
        // Any latent size works: the up path resizes to each skip (see `forward`).
        if *c != l.in_channels || *b == 0 || *h == 0 || *w == 0 {
            return Err(ModelError::invalid(
                "latents",
                format!(
                    "shape {dims:?}: need {} channels and non-empty h, w",
                    l.in_channels
                ),
            ));
        }
        match context.dims() {
            [cb, m, cd] if cb == b && *m > 0 && *cd == l.context_dim => Ok(*b),
            other => Err(ModelError::invalid(
                "context",
                format!("shape {other:?}: need [{b}, tokens, {}]", l.context_dim),
            )),
        }
    }

    /// Time embedding `[b, temb]`, plus SDXL's `add_embedding(pooled ⧺ embed(time_ids))`.
    fn embedding(
        &self,
        batch: usize,
        timestep: f64,
        pooled: Option<&Tensor>,
        time_ids: Option<&Tensor>,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor, ModelError> {
        let c0 = self.layout.block_out_channels[0];
        let t = timestep_embedding(&vec![timestep; batch], c0, device)?.to_dtype(dtype)?;
        let emb = self.time_embedding.forward(&t)?;
        let Some(add) = &self.add_embedding else {
            return Ok(emb);
        };
        let (Some(pooled), Some(time_ids)) = (pooled, time_ids) else {
            return Err(ModelError::invalid(
                "pooled",
                "an SDXL UNet needs the pooled text vector and time ids",
            ));
        };
        let (ids_b, ids_n) = time_ids
            .dims2()
            .map_err(|_| ModelError::invalid("time_ids", "expected [n, k]"))?;
        let (pb, pw) = pooled
            .dims2()
            .map_err(|_| ModelError::invalid("pooled", "expected [n, width]"))?;
        if ids_b != batch || pb != batch || pw + ids_n * add.time_dim != add.adm {
            return Err(ModelError::invalid(
                "time_ids",
                format!(
                    "pooled [{pb}, {pw}] and time ids [{ids_b}, {ids_n}] (× {}) do not make [{batch}, {}]",
                    add.time_dim, add.adm
                ),
            ));
        }
        let values: Vec<f64> = time_ids.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
        let ids =
            timestep_embedding(&values, add.time_dim, device)?.reshape((batch, ids_n * add.time_dim))?;
        let input = Tensor::cat(&[pooled.to_dtype(DType::F32)?, ids], D::Minus1)?.to_dtype(dtype)?;
        Ok((emb + add.mlp.forward(&input)?)?)
    }

    pub(crate) fn forward(
        &self,
        latents: &Tensor,
        timestep: f64,
        context: &Tensor,
        pooled: Option<&Tensor>,
        time_ids: Option<&Tensor>,
        slice_bytes: usize,
    ) -> Result<Tensor, ModelError> {
        let batch = self.check_inputs(latents, context)?;
        if !timestep.is_finite() {
            return Err(ModelError::invalid(
                "timestep",
                format!("{timestep} is not finite"),
            ));
        }
        let dtype = self.conv_in.weight().dtype();
        let device = latents.device().clone();
        let emb = self.embedding(batch, timestep, pooled, time_ids, dtype, &device)?;
        let context = context.to_dtype(dtype)?;
        let mut x = self.conv_in.forward(&latents.to_dtype(dtype)?)?;
        let mut skips = vec![x.clone()];
        for level in &self.down {
            for (j, resnet) in level.resnets.iter().enumerate() {
                x = resnet.forward(&x, Some(&emb))?;
                if let Some(attn) = level.attentions.get(j) {
                    x = attn.forward(&x, &context, slice_bytes)?;
                }
                skips.push(x.clone());
            }
            if let Some(down) = &level.downsampler {
                x = down.forward(&x)?;
                skips.push(x.clone());
            }
        }
        x = self.mid_resnets[0].forward(&x, Some(&emb))?;
        if let Some(attn) = &self.mid_attention {
            x = attn.forward(&x, &context, slice_bytes)?;
        }
        x = self.mid_resnets[1].forward(&x, Some(&emb))?;
        for level in &self.up {
            for (k, resnet) in level.resnets.iter().enumerate() {
                let skip = skips
                    .pop()
                    .ok_or_else(|| ModelError::invalid("layout", "UNet skip stack ran out"))?;
                x = resnet.forward(&Tensor::cat(&[&x, &skip], 1)?, Some(&emb))?;
                if let Some(attn) = level.attentions.get(k) {
                    x = attn.forward(&x, &context, slice_bytes)?;
                }
            }
            if let Some(conv) = &level.upsampler {
                // Upsample to the next skip's size, not blindly 2×: with a latent side that is
                // not a multiple of the total downsampling (e.g. 520 px → 65), the strided convs
                // rounded up on the way down. diffusers does the same (`upsample_size` in
                // `UNet2DConditionModel.forward`); for even sides it equals 2×.
                let (_, _, h, w) = x.dims4()?;
                let (th, tw) = match skips.last() {
                    Some(skip) => {
                        let (_, _, sh, sw) = skip.dims4()?;
                        (sh, sw)
                    }
                    None => (2 * h, 2 * w),
                };
                x = conv.forward(&x.upsample_nearest2d(th, tw)?)?;
            }
        }
        let x = self.conv_out.forward(&self.norm_out.forward(&x)?.silu()?)?;
        Ok(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestep_embedding_puts_cosines_first_with_geometric_frequencies() -> Result<(), ModelError> {
        let e = timestep_embedding(&[0.0, 10.0], 8, &Device::Cpu)?.to_vec2::<f32>()?;
        // t = 0: cos = 1, sin = 0 (flip_sin_to_cos).
        assert_eq!(e[0], vec![1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
        // Frequency i is 10000^(-i/4); t = 10, i = 1 → 10 · 0.1 = 1 rad.
        assert!((e[1][1] - 1f32.cos()).abs() < 1e-6);
        assert!((e[1][5] - 1f32.sin()).abs() < 1e-6);
        assert!((e[1][0] - 10f32.cos()).abs() < 1e-6);
        Ok(())
    }
}
