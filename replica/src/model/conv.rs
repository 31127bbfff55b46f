//! Convolution on the CPU as one matmul per band of output rows, built only from contiguous
//! copies.
//!
//! candle-core 0.11's CPU `conv2d` always takes its tiled im2col path for k×k kernels
//! (`cpu_backend/conv2d.rs`: `DEFAULT_CONV2D_IMPL` is a `const`; its full-im2col path is only
//! chosen for strided 1×1 kernels, so no argument reaches it): it copies the whole input to NHWC
//! one element at a time, fills each 512-pixel column tile element by element and scatters every
//! gemm result back one float at a time with stride `h·w`. In a profile of an SD1.5 generation
//! (BENCHMARKS.md) that loop took as many samples as the gemm itself.
//!
//! Here a stride-1 k×k convolution is lowered so that every copy is a run of whole rows:
//! the input is zero-padded once (plus one spare row) and each channel flattened to
//! `(hp + 1)·wp` values. Output pixel `(y, x)` of a grid `wp` wide reads the flat input at
//! `(y + kh)·wp + x + kw`, so for kernel tap `(kh, kw)` the column rows of a band of output rows
//! are one contiguous run per channel. Stacking the k² runs on a new axis after the channel
//! axis gives the column matrix `[c·k², rows·wp]` in the order of the weight's own
//! `[o, c, kh, kw]` layout, which is therefore used as `[o, c·k²]` without a copy. The `k - 1`
//! extra columns per output row (the grid is `wp`, not `w_out`, wide) are dropped when the bias
//! is added. 1×1 convolutions are a plain `[o, c] × [c, h·w]` matmul.
//!
//! The column matrix is `k²` times the input, so it is built for bands of output rows at most
//! `COLUMN_BAND_BYTES` large (the SD VAE decoder's 256-channel conv at 512² would otherwise need
//! 2.4 GB in f32), which also keeps each band in cache between its copy and its gemm.

use candle_core::{Module, Result, Tensor};
use candle_nn::Conv2d;

/// Bound on one band's column matrix. Measured on SD shapes (release `cargo bench -p
/// sdplane-replica --bench conv`, 2-core EPYC, f32, with the replica's malloc tuning from
/// `crate::allocator`): 32 MiB bands were 1.15–1.5× faster than 8 MiB ones on the UNet's
/// shapes (at 8 MiB the 640→320 conv at 64² gets bands of 2 rows, too narrow for gemm) and as
/// fast as 64 MiB ones. In whole generations at 256² (three interleaved runs each) a UNet step
/// took 6–8 % less than with 8 MiB and the VAE decode 2–5 % more.
pub const COLUMN_BAND_BYTES: usize = 32 << 20;

/// Whether `conv` can go through `forward`: a square kernel at stride 1 and dilation 1 with no
/// groups (every SD conv except the stride-2 downsamplers).
pub fn supported(conv: &Conv2d) -> bool {
    let cfg = conv.config();
    let (_, _, kh, kw) = conv.weight().dims4().unwrap_or((0, 0, 0, 0));
    cfg.stride == 1 && cfg.dilation == 1 && cfg.groups == 1 && kh == kw && kh > 0
}

/// Output rows per band so that one band's column matrix stays within `band_bytes`
/// (at least one row, at most `h_out`).
pub(crate) fn band_rows(
    batch: usize,
    c_in: usize,
    kernel: usize,
    padded_w: usize,
    elem: usize,
    h_out: usize,
    band_bytes: usize,
) -> usize {
    let row = batch * c_in * kernel * kernel * padded_w * elem;
    (band_bytes / row.max(1)).clamp(1, h_out.max(1))
}

/// `conv` applied to `x` `[b, c, h, w]` (see the module docs), with the column matrix built in
/// bands of at most `band_bytes`. `conv` must be `supported`.
pub fn forward(conv: &Conv2d, x: &Tensor, band_bytes: usize) -> Result<Tensor> {
    let weight = conv.weight();
    let (c_out, c_in, k, _) = weight.dims4()?;
    let (b, c, h, w) = x.dims4()?;
    if c != c_in {
        candle_core::bail!("conv: input has {c} channels, the kernel expects {c_in}");
    }
    let pad = conv.config().padding;
    let (hp, wp) = (h + 2 * pad, w + 2 * pad);
    if hp < k || wp < k {
        candle_core::bail!("conv: {h}×{w} input with padding {pad} is smaller than the {k}×{k} kernel");
    }
    let (h_out, w_out) = (hp - k + 1, wp - k + 1);
    // The weight's own layout [o, c, kh, kw] is the column order below: no copy.
    let weight = weight.reshape((c_out, c_in * k * k))?;

    if k == 1 && pad == 0 {
        let out = weight
            .broadcast_left(b)?
            .matmul(&x.reshape((b, c, h * w))?)?
            .reshape((b, c_out, h, w))?;
        return add_bias(conv, out);
    }

    // One spare zero row below: the last tap of the last output row reads up to k - 1 values
    // past the padded image (they only feed the dropped columns).
    let flat = x
        .pad_with_zeros(2, pad, pad + 1)?
        .pad_with_zeros(3, pad, pad)?
        .reshape((b, c, (hp + 1) * wp))?;
    let rows = band_rows(b, c, k, wp, x.dtype().size_in_bytes(), h_out, band_bytes);
    let weight = weight.broadcast_left(b)?;
    let mut bands = Vec::with_capacity(h_out.div_ceil(rows));
    for r0 in (0..h_out).step_by(rows) {
        let rl = rows.min(h_out - r0);
        let n = rl * wp;
        let mut taps = Vec::with_capacity(k * k);
        for kh in 0..k {
            for kw in 0..k {
                taps.push(flat.narrow(2, (r0 + kh) * wp + kw, n)?.unsqueeze(2)?);
            }
        }
        // [b, c, k², n]: whole-row copies; then [b, c·k², n] is a free reshape.
        let cols = Tensor::cat(&taps, 2)?.reshape((b, c * k * k, n))?;
        let band = weight
            .matmul(&cols)?
            .reshape((b, c_out, rl, wp))?
            .narrow(3, 0, w_out)?;
        bands.push(add_bias(conv, band)?);
    }
    Tensor::cat(&bands, 2)
}

/// `out + bias` (which also makes a narrowed band contiguous), or `out` made contiguous.
fn add_bias(conv: &Conv2d, out: Tensor) -> Result<Tensor> {
    match conv.bias() {
        Some(bias) => out.broadcast_add(&bias.reshape((1, (), 1, 1))?),
        None => out.contiguous(),
    }
}

/// candle's own `conv2d` with the same parameters, for comparison in tests and benches.
pub fn reference(conv: &Conv2d, x: &Tensor) -> Result<Tensor> {
    conv.forward(x)
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};
    use candle_nn::{Conv2d, Conv2dConfig};

    use super::*;

    fn random_conv(c_in: usize, c_out: usize, k: usize, padding: usize, bias: bool) -> Result<Conv2d> {
        let dev = Device::Cpu;
        let weight = Tensor::randn(0f32, 1.0, (c_out, c_in, k, k), &dev)?;
        let bias = bias.then(|| Tensor::randn(0f32, 1.0, c_out, &dev)).transpose()?;
        let cfg = Conv2dConfig {
            padding,
            ..Default::default()
        };
        Ok(Conv2d::new(weight, bias, cfg))
    }

    /// Largest |a - b| relative to the largest |b|.
    fn relative_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
        let diff = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
        let scale = b.abs()?.max_all()?.to_scalar::<f32>()?;
        Ok(diff / scale.max(f32::MIN_POSITIVE))
    }

    #[test]
    fn lowered_convolution_equals_candles_for_1x1_3x3_and_odd_sizes() -> Result<()> {
        // (c_in, c_out, kernel, padding, bias, batch, h, w)
        let cases = [
            (8, 5, 1, 0, true, 2, 9, 7),
            (3, 4, 1, 0, false, 1, 1, 1),
            (6, 5, 3, 1, true, 2, 11, 7),
            (4, 3, 3, 1, true, 1, 1, 1),
            (5, 7, 3, 0, true, 2, 6, 9),
            (2, 3, 3, 1, false, 2, 5, 5),
            (3, 2, 5, 2, true, 2, 8, 6),
            (4, 4, 1, 1, true, 2, 3, 4),
        ];
        for (c_in, c_out, k, padding, bias, b, h, w) in cases {
            let conv = random_conv(c_in, c_out, k, padding, bias)?;
            let x = Tensor::randn(0f32, 1.0, (b, c_in, h, w), &Device::Cpu)?;
            let expected = reference(&conv, &x)?;
            let got = forward(&conv, &x, COLUMN_BAND_BYTES)?;
            assert_eq!(
                got.dims(),
                expected.dims(),
                "{c_in}→{c_out} k{k} p{padding} {h}×{w}"
            );
            let rel = relative_diff(&got, &expected)?;
            assert!(rel < 1e-5, "{c_in}→{c_out} k{k} p{padding} {h}×{w}: {rel}");
        }
        Ok(())
    }

    #[test]
    fn banding_the_column_matrix_does_not_change_the_result() -> Result<()> {
        let conv = random_conv(3, 4, 3, 1, true)?;
        let x = Tensor::randn(0f32, 1.0, (2, 3, 9, 520), &Device::Cpu)?;
        let expected = reference(&conv, &x)?;
        let row = 2 * 3 * 9 * 522 * 4;
        // 1, 2 and 4 rows per band (the last one shorter), a bound below one row, and one band.
        for bytes in [row, 2 * row, 4 * row, 1, usize::MAX] {
            let got = forward(&conv, &x, bytes)?;
            let rel = relative_diff(&got, &expected)?;
            assert!(rel < 1e-5, "{bytes}: {rel}");
        }
        Ok(())
    }

    #[test]
    fn band_rows_keep_one_band_within_the_bound() {
        // SD VAE decoder, 128 channels at 512² (padded width 514), f32.
        let rows = band_rows(1, 128, 3, 514, 4, 512, COLUMN_BAND_BYTES);
        assert!(rows * 128 * 9 * 514 * 4 <= COLUMN_BAND_BYTES, "{rows}");
        assert!((rows + 1) * 128 * 9 * 514 * 4 > COLUMN_BAND_BYTES, "{rows}");
        // SD UNet, 320 channels at 64² (padded width 66), batch 2: rows of 1.5 MB.
        assert_eq!(band_rows(2, 320, 3, 66, 4, 64, 8 << 20), 5);
        assert_eq!(band_rows(2, 320, 3, 66, 4, 64, 32 << 20), 22);
        // A small input is one band; a bound below one row still makes progress.
        assert_eq!(band_rows(2, 4, 3, 10, 4, 8, COLUMN_BAND_BYTES), 8);
        assert_eq!(band_rows(1, 4, 3, 600, 4, 8, 1), 1);
    }

    #[test]
    fn a_channel_mismatch_is_an_error_not_a_panic() -> Result<()> {
        let conv = random_conv(4, 3, 3, 1, true)?;
        let x = Tensor::randn(0f32, 1.0, (1, 5, 6, 6), &Device::Cpu)?;
        assert!(forward(&conv, &x, COLUMN_BAND_BYTES).is_err());
        let tiny = Tensor::randn(0f32, 1.0, (1, 4, 1, 1), &Device::Cpu)?;
        let no_pad = random_conv(4, 3, 3, 0, true)?;
        assert!(forward(&no_pad, &tiny, COLUMN_BAND_BYTES).is_err());
        Ok(())
    }
}
