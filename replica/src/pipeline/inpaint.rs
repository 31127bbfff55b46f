//! Inpainting with 9-channel UNets: the latent-size mask and the masked image's latents that
//! diffusers' `StableDiffusionInpaintPipeline` concatenates to the latents before every UNet
//! call (`cat([latents, mask, masked_image_latents], dim=1)`, CHECKPOINTS.md §2.6).

use candle_core::{DType, Device, Tensor};
use image::{GrayImage, RgbImage};

use crate::engine::GenerationParams;
use crate::model::SdModel;

/// Luma as PIL's `convert("L")` computes it (ITU-R 601-2 weights in 16-bit fixed point), which
/// is what diffusers' mask processor sees.
pub fn mask_luma(image: &RgbImage) -> GrayImage {
    GrayImage::from_fn(image.width(), image.height(), |x, y| {
        let [r, g, b] = image.get_pixel(x, y).0.map(u32::from);
        let luma = (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16;
        image::Luma([luma.min(255) as u8])
    })
}

/// diffusers binarizes the mask at 0.5 of full scale: luma 128 and above is repainted.
fn repaints(luma: u8) -> bool {
    luma >= 128
}

/// `[1, 1, h, w]` repaint mask at image size (1 = repaint), all ones without a mask.
fn full_mask(params: &GenerationParams, device: &Device) -> candle_core::Result<Tensor> {
    let (w, h) = (params.width as usize, params.height as usize);
    let values: Vec<f32> = match &params.mask_image {
        Some(mask) => mask
            .pixels()
            .map(|p| f32::from(u8::from(repaints(p.0[0]))))
            .collect(),
        None => vec![1.0; w * h],
    };
    Tensor::from_vec(values, (1, 1, h, w), device)
}

/// `torch.nn.functional.interpolate(mask, size=(lh, lw))` in its default `nearest` mode: latent
/// cell (y, x) takes pixel (⌊y·h/lh⌋, ⌊x·w/lw⌋).
fn latent_mask(
    params: &GenerationParams,
    lh: usize,
    lw: usize,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let (w, h) = (params.width as usize, params.height as usize);
    let mut values = Vec::with_capacity(lh * lw);
    for y in 0..lh {
        for x in 0..lw {
            let (sy, sx) = (y * h / lh, x * w / lw);
            let repaint = match &params.mask_image {
                Some(mask) => repaints(mask.get_pixel(sx as u32, sy as u32).0[0]),
                None => true,
            };
            values.push(f32::from(u8::from(repaint)));
        }
    }
    Tensor::from_vec(values, (1, 1, lh, lw), device)
}

/// The extra UNet input channels for one generation: `[rows, 1 + C, lh, lw]` (mask, then the
/// masked image's latents), rows = images, twice over with guidance, in the model dtype.
///
/// The masked image is the source with the repainted area set to 0 (mid grey in [-1, 1]); with
/// no source image the whole image is masked, so a 9-channel model also does text-to-image.
/// Its latents are the VAE posterior's mean times the scaling factor: diffusers samples the
/// posterior here, but its spread is ~1e-3 of the mean for SD's VAE and the mean keeps the
/// kept area identical for every seed.
pub(crate) fn unet_extra_channels(
    model: &SdModel,
    vae_scale: f64,
    params: &GenerationParams,
    image: Option<&Tensor>,
    rows: usize,
    (lh, lw): (usize, usize),
) -> candle_core::Result<Tensor> {
    let device = model.device();
    let mask = full_mask(params, device)?;
    let source = match image {
        Some(pixels) => pixels.clone(),
        None => Tensor::zeros(
            (1, 3, params.height as usize, params.width as usize),
            DType::F32,
            device,
        )?,
    };
    // keep = 1 − mask; `init_image * (mask < 0.5)` in diffusers.
    let keep = mask.affine(-1.0, 1.0)?;
    let masked = source.broadcast_mul(&keep)?;
    let (mean, _std) = model
        .vae_encode(&masked)
        .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    let masked_latents = mean.to_dtype(DType::F32)?.affine(vae_scale, 0.0)?;
    let one = Tensor::cat(&[&latent_mask(params, lh, lw, device)?, &masked_latents], 1)?;
    Tensor::cat(&vec![one; rows], 0)?.to_dtype(model.dtype())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luma_follows_pil_convert_l() {
        // PIL: Image.new("RGB", (1, 1), c).convert("L").getpixel((0, 0)) for each colour.
        for (rgb, expected) in [
            ([255, 255, 255], 255),
            ([0, 0, 0], 0),
            ([255, 0, 0], 76),
            ([0, 255, 0], 150),
            ([0, 0, 255], 29),
            ([128, 128, 128], 128),
            ([127, 127, 127], 127),
        ] {
            let img = RgbImage::from_pixel(1, 1, image::Rgb(rgb));
            assert_eq!(mask_luma(&img).get_pixel(0, 0).0[0], expected, "{rgb:?}");
        }
    }

    #[test]
    fn the_latent_mask_samples_the_top_left_pixel_of_each_cell() {
        // A 16×8 mask whose right half is white: latent 2×1 cells → [keep, repaint].
        let mut rgb = RgbImage::from_pixel(16, 8, image::Rgb([0, 0, 0]));
        for y in 0..8 {
            for x in 8..16 {
                rgb.put_pixel(x, y, image::Rgb([255, 255, 255]));
            }
        }
        // A white pixel inside the left cell, but not at its sampled corner, changes nothing.
        rgb.put_pixel(3, 3, image::Rgb([255, 255, 255]));
        let params = GenerationParams {
            prompt: String::new(),
            negative_prompt: String::new(),
            steps: 1,
            guidance_scale: 0.0,
            width: 16,
            height: 8,
            seed: 0,
            scheduler: sdplane_wire::api::SchedulerKind::Ddim,
            num_images: 1,
            init_image: None,
            strength: 1.0,
            init_latents: None,
            mask_image: Some(mask_luma(&rgb)),
        };
        let m = latent_mask(&params, 1, 2, &Device::Cpu)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .expect("mask");
        assert_eq!(m, vec![0.0, 1.0]);
        let full = full_mask(&params, &Device::Cpu)
            .and_then(|t| t.sum_all())
            .and_then(|t| t.to_scalar::<f32>())
            .expect("full mask");
        assert_eq!(full, 65.0, "64 white pixels on the right plus the one at (3, 3)");
    }
}
