//! diffusers `Transformer2DModel` (LDM `SpatialTransformer`) as used by the SD UNets: GroupNorm
//! (eps 1e-6, as in LDM `Normalize` and diffusers), `proj_in` (1×1 conv for SD1, linear for
//! SD2/SDXL), `depth` × `BasicTransformerBlock` (self-attention, cross-attention, GEGLU
//! feed-forward, each pre-LayerNorm eps 1e-5 with a residual), `proj_out`, residual.

use candle_core::{D, Tensor};
use candle_nn::{GroupNorm, LayerNorm, Linear, Module};

use super::attention::CrossAttention;
use super::error::ModelError;
use super::layers::{Conv, conv2d, group_norm, layer_norm, linear};
use super::weights::Weights;

/// GroupNorm eps of the spatial transformer (diffusers `Transformer2DModel`: `eps=1e-6`).
const NORM_EPS: f64 = 1e-6;
/// LayerNorm eps of the transformer blocks (diffusers `BasicTransformerBlock` `norm_eps=1e-5`).
const LN_EPS: f64 = 1e-5;

/// GEGLU feed-forward: `proj` to 2×(4·c), value × GELU(gate), back to c (diffusers
/// `FeedForward(activation_fn="geglu")`, inner width 4·c).
#[derive(Debug, Clone)]
struct FeedForward {
    proj: Linear,
    out: Linear,
}

impl FeedForward {
    fn new(w: &Weights, c: usize) -> Result<Self, ModelError> {
        Ok(Self {
            proj: linear(&w.pp("net.0.proj"), c, 8 * c, true)?,
            out: linear(&w.pp("net.2"), 4 * c, c, true)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        let h = self.proj.forward(x)?;
        let half = h.dim(D::Minus1)? / 2;
        // diffusers GEGLU: `hidden, gate = proj(x).chunk(2)`; `hidden * gelu(gate)` with exact GELU.
        let value = h.narrow(D::Minus1, 0, half)?;
        let gate = h.narrow(D::Minus1, half, half)?.gelu_erf()?;
        Ok(self.out.forward(&(value * gate)?)?)
    }
}

#[derive(Debug, Clone)]
struct BasicTransformerBlock {
    norm1: LayerNorm,
    attn1: CrossAttention,
    norm2: LayerNorm,
    attn2: CrossAttention,
    norm3: LayerNorm,
    ff: FeedForward,
}

impl BasicTransformerBlock {
    fn new(w: &Weights, c: usize, context_dim: usize, heads: usize) -> Result<Self, ModelError> {
        Ok(Self {
            norm1: layer_norm(&w.pp("norm1"), c, LN_EPS)?,
            attn1: CrossAttention::new(&w.pp("attn1"), c, c, heads)?,
            norm2: layer_norm(&w.pp("norm2"), c, LN_EPS)?,
            attn2: CrossAttention::new(&w.pp("attn2"), c, context_dim, heads)?,
            norm3: layer_norm(&w.pp("norm3"), c, LN_EPS)?,
            ff: FeedForward::new(&w.pp("ff"), c)?,
        })
    }

    fn forward(&self, x: &Tensor, context: &Tensor, slice_bytes: usize) -> Result<Tensor, ModelError> {
        let x = (self.attn1.forward(&self.norm1.forward(x)?, None, slice_bytes)? + x)?;
        let x = (self
            .attn2
            .forward(&self.norm2.forward(&x)?, Some(context), slice_bytes)?
            + &x)?;
        Ok((self.ff.forward(&self.norm3.forward(&x)?)? + &x)?)
    }
}

/// `proj_in`/`proj_out`: a 1×1 conv (SD1) or a linear layer over channels (SD2/SDXL).
#[derive(Debug, Clone)]
enum Projection {
    Conv(Conv),
    Linear(Linear),
}

impl Projection {
    fn new(w: &Weights, c: usize, linear_projection: bool) -> Result<Self, ModelError> {
        Ok(if linear_projection {
            Self::Linear(linear(w, c, c, true)?)
        } else {
            Self::Conv(conv2d(w, c, c, 1, 1, 0)?)
        })
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Transformer2D {
    norm: GroupNorm,
    proj_in: Projection,
    blocks: Vec<BasicTransformerBlock>,
    proj_out: Projection,
}

impl Transformer2D {
    pub(crate) fn new(
        w: &Weights,
        c: usize,
        depth: usize,
        heads: usize,
        context_dim: usize,
        linear_projection: bool,
    ) -> Result<Self, ModelError> {
        let blocks = (0..depth)
            .map(|t| {
                BasicTransformerBlock::new(&w.pp(format!("transformer_blocks.{t}")), c, context_dim, heads)
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            norm: group_norm(&w.pp("norm"), c, NORM_EPS)?,
            proj_in: Projection::new(&w.pp("proj_in"), c, linear_projection)?,
            blocks,
            proj_out: Projection::new(&w.pp("proj_out"), c, linear_projection)?,
        })
    }

    /// `x` `[b, c, h, w]`, `context` `[b, m, ctx]`.
    pub(crate) fn forward(
        &self,
        x: &Tensor,
        context: &Tensor,
        slice_bytes: usize,
    ) -> Result<Tensor, ModelError> {
        let (b, c, h, w) = x.dims4()?;
        let residual = x;
        let x = self.norm.forward(x)?;
        let to_tokens = |t: &Tensor| -> Result<Tensor, ModelError> {
            Ok(t.permute((0, 2, 3, 1))?.reshape((b, h * w, c))?)
        };
        let mut tokens = match &self.proj_in {
            Projection::Conv(conv) => to_tokens(&conv.forward(&x)?)?,
            Projection::Linear(lin) => lin.forward(&to_tokens(&x)?)?,
        };
        for block in &self.blocks {
            tokens = block.forward(&tokens, context, slice_bytes)?;
        }
        let to_image = |t: &Tensor| -> Result<Tensor, ModelError> {
            Ok(t.reshape((b, h, w, c))?.permute((0, 3, 1, 2))?.contiguous()?)
        };
        let out = match &self.proj_out {
            Projection::Conv(conv) => conv.forward(&to_image(&tokens)?)?,
            Projection::Linear(lin) => to_image(&lin.forward(&tokens)?)?,
        };
        Ok((out + residual)?)
    }
}
