//! candle's CPU `conv2d` against `model::conv::forward` on the convolution shapes of an SD1.5
//! generation at 512²: the UNet's (64×64 latents, batch 2 under classifier-free guidance) and
//! the VAE decoder's (batch 1, 64² up to 512²). Prints one markdown table.
//!
//! `cargo bench -p sdplane-replica --bench conv` (release), or the dev profile, whose
//! dependencies are built at opt-level 3 too: `cargo test -p sdplane-replica --bench conv`.
//! Arguments filter the shapes by substring (`... -- unet`).

use std::time::{Duration, Instant};

use candle_core::{Device, Result, Tensor};
use candle_nn::{Conv2d, Conv2dConfig};
use sdplane_replica::model::conv;

/// One convolution of the SD1.5 UNet or VAE decoder (diffusers `UNet2DConditionModel` with
/// `block_out_channels = [320, 640, 1280, 1280]`, `AutoencoderKL` with `[128, 256, 512, 512]`).
struct Shape {
    name: &'static str,
    batch: usize,
    c_in: usize,
    c_out: usize,
    kernel: usize,
    stride: usize,
    side: usize,
}

const fn shape(
    name: &'static str,
    batch: usize,
    c_in: usize,
    c_out: usize,
    kernel: usize,
    stride: usize,
    side: usize,
) -> Shape {
    Shape {
        name,
        batch,
        c_in,
        c_out,
        kernel,
        stride,
        side,
    }
}

const SHAPES: &[Shape] = &[
    shape("unet conv_in", 2, 4, 320, 3, 1, 64),
    shape("unet resnet 320", 2, 320, 320, 3, 1, 64),
    shape("unet up resnet 640→320", 2, 640, 320, 3, 1, 64),
    shape("unet shortcut 640→320", 2, 640, 320, 1, 1, 64),
    shape("unet proj 320", 2, 320, 320, 1, 1, 64),
    shape("unet downsample 320", 2, 320, 320, 3, 2, 64),
    shape("unet resnet 640", 2, 640, 640, 3, 1, 32),
    shape("unet proj 640", 2, 640, 640, 1, 1, 32),
    shape("unet resnet 1280 @16", 2, 1280, 1280, 3, 1, 16),
    shape("unet resnet 1280 @8", 2, 1280, 1280, 3, 1, 8),
    shape("unet up resnet 2560→1280 @8", 2, 2560, 1280, 3, 1, 8),
    shape("vae resnet 512 @64", 1, 512, 512, 3, 1, 64),
    shape("vae resnet 512 @128", 1, 512, 512, 3, 1, 128),
    shape("vae upsample 512 @256", 1, 512, 512, 3, 1, 256),
    shape("vae resnet 256 @256", 1, 256, 256, 3, 1, 256),
    shape("vae upsample 256 @512", 1, 256, 256, 3, 1, 512),
    shape("vae resnet 256→128 @512", 1, 256, 128, 3, 1, 512),
    shape("vae resnet 128 @512", 1, 128, 128, 3, 1, 512),
    shape("vae conv_out 128→3 @512", 1, 128, 3, 3, 1, 512),
];

/// Mean of `reps` timed calls after one untimed warm-up call.
fn time(reps: u32, mut f: impl FnMut() -> Result<Tensor>) -> Result<Duration> {
    f()?;
    let started = Instant::now();
    for _ in 0..reps {
        f()?;
    }
    Ok(started.elapsed() / reps)
}

fn main() -> Result<()> {
    // As the `sdplane` binary runs the replica (freed tensors reused, not unmapped).
    sdplane_replica::allocator::keep_freed_memory();
    let filters: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    // `CONV_BAND_MB=N` to compare band bounds; the replica's own by default.
    let band_bytes = std::env::var("CONV_BAND_MB")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .map_or(conv::COLUMN_BAND_BYTES, |mb| mb << 20);
    let dev = Device::Cpu;
    println!("| shape | b×c_in×h×w → c_out, k, stride | GFLOP | candle ms | sdplane ms | speed-up |");
    println!("|---|---|---:|---:|---:|---:|");
    for s in SHAPES {
        if !filters.is_empty() && !filters.iter().any(|f| s.name.contains(f.as_str())) {
            continue;
        }
        let padding = s.kernel / 2;
        let weight = Tensor::randn(0f32, 0.05, (s.c_out, s.c_in, s.kernel, s.kernel), &dev)?;
        let bias = Tensor::randn(0f32, 0.05, s.c_out, &dev)?;
        let cfg = Conv2dConfig {
            padding,
            stride: s.stride,
            ..Default::default()
        };
        let layer = Conv2d::new(weight, Some(bias), cfg);
        let x = Tensor::randn(0f32, 1.0, (s.batch, s.c_in, s.side, s.side), &dev)?;
        let out_side = (s.side + 2 * padding - s.kernel) / s.stride + 1;
        let flop = 2.0 * (s.batch * s.c_out * out_side * out_side * s.c_in * s.kernel * s.kernel) as f64;
        // Enough repetitions for ~1 s of candle time on the small shapes, one on the large.
        let reps = (1e10 / flop).clamp(1.0, 20.0) as u32;
        let candle = time(reps, || conv::reference(&layer, &x))?;
        let ours = if conv::supported(&layer) {
            Some(time(reps, || conv::forward(&layer, &x, band_bytes))?)
        } else {
            None
        };
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let (ours_ms, ratio) = match ours {
            Some(d) => (format!("{:.1}", ms(d)), format!("{:.2}×", ms(candle) / ms(d))),
            None => ("(candle's)".to_string(), "—".to_string()),
        };
        println!(
            "| {} | {}×{}×{}² → {}, {}, {} | {:.1} | {:.1} | {} | {} |",
            s.name,
            s.batch,
            s.c_in,
            s.side,
            s.c_out,
            s.kernel,
            s.stride,
            flop / 1e9,
            ms(candle),
            ours_ms,
            ratio
        );
    }
    Ok(())
}
