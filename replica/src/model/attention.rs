//! Scaled dot-product attention computed in slices, so the f32 score matrix of one slice never
//! exceeds a byte bound. Raw unsliced attention needs ~17 GB for SD1.5 at 512² (8 heads ×
//! 4096² scores × 2 for guidance × 4 bytes, with softmax temporaries); slicing keeps the same
//! result within rounding, which the tests check against the unsliced computation.
//!
//! Also the diffusers `Attention` module of the UNet transformer blocks (`to_q/to_k/to_v`
//! without bias, `to_out.0` with bias).

use candle_core::{DType, Tensor};
use candle_nn::{Linear, Module};

use super::error::ModelError;
use super::layers::linear;
use super::weights::Weights;

/// Default bound on one slice of attention scores: 256 MiB.
pub const DEFAULT_SLICE_BYTES: usize = 256 << 20;

/// Rows of queries and batch-heads per slice so that `bh_chunk × q_chunk × m × 4` bytes of f32
/// scores stay within `slice_bytes` (at least one row).
pub(crate) fn slice_plan(bh: usize, n: usize, m: usize, slice_bytes: usize) -> (usize, usize) {
    let per_row = (m * 4).max(1);
    // Keep every batch-head in one matmul when one query row of each fits; otherwise split
    // the batch-heads too, one query row at a time.
    let bh_chunk = (slice_bytes / per_row).clamp(1, bh.max(1));
    let q_chunk = (slice_bytes / (bh_chunk * per_row)).clamp(1, n.max(1));
    (bh_chunk, q_chunk)
}

/// `softmax(q kᵀ · scale + mask) v` for `q` `[bh, n, d]`, `k`/`v` `[bh, m, d]`, optional additive
/// `mask` `[n, m]`. Scores and softmax run in f32 when the inputs are f16 or bf16 (diffusers'
/// `upcast_attention`, needed by SD2.1-768 in f16, CHECKPOINTS.md §5); the slice bound already
/// counts 4-byte scores.
pub(crate) fn sliced_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    mask: Option<&Tensor>,
    slice_bytes: usize,
) -> Result<Tensor, ModelError> {
    let (bh, n, _) = q.dims3()?;
    let m = k.dim(1)?;
    let dtype = q.dtype();
    let work = if matches!(dtype, DType::F16 | DType::BF16) {
        DType::F32
    } else {
        dtype
    };
    let (bh_chunk, q_chunk) = slice_plan(bh, n, m, slice_bytes);
    let mut heads = Vec::with_capacity(bh.div_ceil(bh_chunk));
    for b0 in (0..bh).step_by(bh_chunk) {
        let bl = bh_chunk.min(bh - b0);
        let k_s = k.narrow(0, b0, bl)?.to_dtype(work)?;
        let v_s = v.narrow(0, b0, bl)?;
        let k_t = k_s.t()?;
        let mut rows = Vec::with_capacity(n.div_ceil(q_chunk));
        for q0 in (0..n).step_by(q_chunk) {
            let ql = q_chunk.min(n - q0);
            let q_s = q.narrow(0, b0, bl)?.narrow(1, q0, ql)?.to_dtype(work)?;
            let mut scores = (q_s.matmul(&k_t)? * scale)?;
            if let Some(mask) = mask {
                scores = scores.broadcast_add(&mask.narrow(0, q0, ql)?.to_dtype(work)?)?;
            }
            let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(dtype)?;
            rows.push(probs.matmul(&v_s)?);
        }
        heads.push(if rows.len() == 1 {
            rows.remove(0)
        } else {
            Tensor::cat(&rows, 1)?
        });
    }
    Ok(if heads.len() == 1 {
        heads.remove(0)
    } else {
        Tensor::cat(&heads, 0)?
    })
}

/// `[b, n, h·d]` → `[b·h, n, d]`.
pub(crate) fn split_heads(x: &Tensor, heads: usize) -> Result<Tensor, ModelError> {
    let (b, n, c) = x.dims3()?;
    Ok(x.reshape((b, n, heads, c / heads))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((b * heads, n, c / heads))?)
}

/// `[b·h, n, d]` → `[b, n, h·d]`.
pub(crate) fn merge_heads(x: &Tensor, heads: usize) -> Result<Tensor, ModelError> {
    let (bh, n, d) = x.dims3()?;
    Ok(x.reshape((bh / heads, heads, n, d))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((bh / heads, n, heads * d))?)
}

/// diffusers `Attention` as used by `BasicTransformerBlock`: self-attention when no context is
/// given, cross-attention otherwise.
#[derive(Debug, Clone)]
pub(crate) struct CrossAttention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
    scale: f64,
}

impl CrossAttention {
    /// `channels` query width, `context_dim` key/value input width, `heads` heads.
    pub(crate) fn new(
        w: &Weights,
        channels: usize,
        context_dim: usize,
        heads: usize,
    ) -> Result<Self, ModelError> {
        if heads == 0 || !channels.is_multiple_of(heads) {
            return Err(ModelError::invalid(
                "layout",
                format!("{channels} channels do not split into {heads} heads"),
            ));
        }
        Ok(Self {
            to_q: linear(&w.pp("to_q"), channels, channels, false)?,
            to_k: linear(&w.pp("to_k"), context_dim, channels, false)?,
            to_v: linear(&w.pp("to_v"), context_dim, channels, false)?,
            to_out: linear(&w.pp("to_out.0"), channels, channels, true)?,
            heads,
            // Standard 1/√d_head scaling (diffusers `Attention.scale = dim_head**-0.5`).
            scale: 1.0 / ((channels / heads) as f64).sqrt(),
        })
    }

    /// `x` `[b, n, c]`, `context` `[b, m, ctx]` (self-attention when `None`).
    pub(crate) fn forward(
        &self,
        x: &Tensor,
        context: Option<&Tensor>,
        slice_bytes: usize,
    ) -> Result<Tensor, ModelError> {
        let context = context.unwrap_or(x);
        let q = split_heads(&self.to_q.forward(x)?, self.heads)?;
        let k = split_heads(&self.to_k.forward(context)?, self.heads)?;
        let v = split_heads(&self.to_v.forward(context)?, self.heads)?;
        let out = sliced_attention(&q, &k, &v, self.scale, None, slice_bytes)?;
        Ok(self.to_out.forward(&merge_heads(&out, self.heads)?)?)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    #[test]
    fn sliced_attention_equals_unsliced_attention_with_a_forced_small_slice() -> Result<(), ModelError> {
        let dev = Device::Cpu;
        let (bh, n, m, d) = (6, 37, 29, 8);
        let q = Tensor::randn(0f32, 1.0, (bh, n, d), &dev)?;
        let k = Tensor::randn(0f32, 1.0, (bh, m, d), &dev)?;
        let v = Tensor::randn(0f32, 1.0, (bh, m, d), &dev)?;
        let scale = 1.0 / (d as f64).sqrt();
        // Reference: the plain formula in one piece.
        let reference = candle_nn::ops::softmax_last_dim(&(q.matmul(&k.t()?)? * scale)?)?.matmul(&v)?;
        // Two batch-heads of one row each (batch-heads split), all six with three rows each
        // (queries split), one row of one batch-head, and everything at once.
        let (two_heads, three_rows) = (2 * m * 4, 6 * 3 * m * 4);
        assert_eq!(slice_plan(bh, n, m, two_heads), (2, 1));
        assert_eq!(slice_plan(bh, n, m, three_rows), (6, 3));
        assert_eq!(slice_plan(bh, n, m, usize::MAX), (bh, n));
        for bytes in [two_heads, three_rows, m * 4, usize::MAX] {
            let sliced = sliced_attention(&q, &k, &v, scale, None, bytes)?;
            let diff = (sliced - &reference)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(diff < 1e-5, "slice {bytes} bytes differs by {diff}");
        }
        Ok(())
    }

    #[test]
    fn slice_plan_never_exceeds_the_bound_when_one_row_fits() {
        for (bh, n, m, bound) in [
            (16, 4096, 4096, 256 << 20),
            (40, 16384, 16384, 64 << 20),
            (2, 77, 77, 1 << 20),
        ] {
            let (b, q) = slice_plan(bh, n, m, bound);
            assert!(b * q * m * 4 <= bound, "{bh} {n} {m}: {b}x{q}");
            assert!(b >= 1 && q >= 1 && b <= bh && q <= n);
        }
    }
}
