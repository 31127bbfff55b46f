//! candle-nn layers built from `Weights` with the shapes the layout implies, so a missing or
//! mis-shaped tensor is a `ModelError` naming it before any forward pass runs.

use candle_core::Tensor;
use candle_nn::{Conv2d, Conv2dConfig, GroupNorm, LayerNorm, Linear, Module};

use super::conv;
use super::error::ModelError;
use super::weights::Weights;

/// GroupNorm group count of every SD UNet and VAE (diffusers `norm_num_groups = 32`).
pub(crate) const GROUPS: usize = 32;

/// `Linear` named `w` (weight `[out, in]`).
pub(crate) fn linear(w: &Weights, c_in: usize, c_out: usize, bias: bool) -> Result<Linear, ModelError> {
    let (weight, bias) = w.weight_bias(&[c_out, c_in], bias)?;
    Ok(Linear::new(weight, bias))
}

/// Bound on the im2col buffer of one 3×3 convolution on an accelerator: candle's CUDA conv2d
/// materialises `pixels × 9·c_in` values, 2.4 GB for the SD VAE's 256-channel conv at 512² in
/// f32 and 9.7 GB at 1024². Bigger inputs are convolved in horizontal bands.
pub(crate) const IM2COL_BAND_BYTES: usize = 256 << 20;

/// A convolution with bias. On the CPU, stride-1 convolutions are lowered to matmuls by
/// `conv::forward` (candle's CPU conv2d spends as long on scalar copies as on the gemm); on an
/// accelerator, 3×3 stride-1 convolutions run in row bands so candle's im2col buffer stays
/// within `IM2COL_BAND_BYTES`.
#[derive(Debug, Clone)]
pub(crate) struct Conv {
    inner: Conv2d,
    /// 3×3, stride 1, padding 1: the shape accelerator banding handles.
    bandable: bool,
    /// Stride 1, no dilation or groups: the shape `conv::forward` handles.
    lowered: bool,
}

impl Conv {
    pub(crate) fn weight(&self) -> &Tensor {
        self.inner.weight()
    }

    /// Convolve in bands of output rows whose im2col fits `band_bytes` (when `band` is set
    /// and the whole input would not fit).
    pub(crate) fn forward_banded(
        &self,
        x: &Tensor,
        band_bytes: usize,
        band: bool,
    ) -> candle_core::Result<Tensor> {
        let (b, c_in, h, w) = x.dims4()?;
        let row_bytes = b * w * c_in * 9 * x.dtype().size_in_bytes();
        if !band || !self.bandable || row_bytes * h <= band_bytes {
            return self.inner.forward(x);
        }
        let rows = (band_bytes / row_bytes.max(1)).clamp(1, h);
        // Zero-pad once, then each band of `rl` output rows reads `rl + 2` padded input rows.
        let padded = x.pad_with_zeros(2, 1, 1)?.pad_with_zeros(3, 1, 1)?;
        let mut bands = Vec::with_capacity(h.div_ceil(rows));
        for r0 in (0..h).step_by(rows) {
            let rl = rows.min(h - r0);
            bands.push(
                padded
                    .narrow(2, r0, rl + 2)?
                    .conv2d(self.inner.weight(), 0, 1, 1, 1)?,
            );
        }
        let out = Tensor::cat(&bands, 2)?;
        match self.inner.bias() {
            Some(bias) => out.broadcast_add(&bias.reshape((1, (), 1, 1))?),
            None => Ok(out),
        }
    }
}

impl Module for Conv {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if x.device().is_cpu() {
            if self.lowered {
                return conv::forward(&self.inner, x, conv::COLUMN_BAND_BYTES);
            }
            return self.inner.forward(x);
        }
        self.forward_banded(x, IM2COL_BAND_BYTES, true)
    }
}

/// A convolution with a square kernel, always with bias (every SD conv has one).
pub(crate) fn conv2d(
    w: &Weights,
    c_in: usize,
    c_out: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Result<Conv, ModelError> {
    let (weight, bias) = w.weight_bias(&[c_out, c_in, kernel, kernel], true)?;
    let cfg = Conv2dConfig {
        padding,
        stride,
        ..Default::default()
    };
    let inner = Conv2d::new(weight, bias, cfg);
    Ok(Conv {
        lowered: conv::supported(&inner),
        inner,
        bandable: kernel == 3 && stride == 1 && padding == 1,
    })
}

/// GroupNorm(32) over `c` channels.
pub(crate) fn group_norm(w: &Weights, c: usize, eps: f64) -> Result<GroupNorm, ModelError> {
    if !c.is_multiple_of(GROUPS) {
        return Err(ModelError::invalid(
            "layout",
            format!("{c} channels are not a multiple of {GROUPS} groups"),
        ));
    }
    let (weight, bias) = w.weight_bias(&[c], true)?;
    let bias = bias.ok_or_else(|| ModelError::invalid("layout", "group norm without bias"))?;
    Ok(GroupNorm::new(weight, bias, c, GROUPS, eps)?)
}

/// LayerNorm over `c` features.
pub(crate) fn layer_norm(w: &Weights, c: usize, eps: f64) -> Result<LayerNorm, ModelError> {
    let (weight, bias) = w.weight_bias(&[c], true)?;
    let bias = bias.ok_or_else(|| ModelError::invalid("layout", "layer norm without bias"))?;
    Ok(LayerNorm::new(weight, bias, eps))
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device};

    use super::*;

    #[test]
    fn banded_convolution_equals_the_plain_one() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let weight = Tensor::randn(0f32, 1.0, (5, 3, 3, 3), &dev)?;
        let bias = Tensor::randn(0f32, 1.0, 5, &dev)?;
        let cfg = Conv2dConfig {
            padding: 1,
            stride: 1,
            ..Default::default()
        };
        let conv = Conv {
            inner: Conv2d::new(weight, Some(bias), cfg),
            bandable: true,
            lowered: false,
        };
        let x = Tensor::randn(0f32, 1.0, (2, 3, 11, 7), &dev)?;
        let plain = conv.inner.forward(&x)?;
        let row = 2 * 7 * 3 * 9 * DType::F32.size_in_bytes();
        // 1, 3 and 4 rows per band (the last band shorter), and no banding at all.
        for bytes in [row, 3 * row, 4 * row, usize::MAX] {
            let banded = conv.forward_banded(&x, bytes, true)?;
            let diff = (banded - &plain)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(diff < 1e-4, "{bytes}: {diff}");
        }
        Ok(())
    }
}
