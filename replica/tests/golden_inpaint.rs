//! The 9-channel SD1.5 inpainting pipeline against diffusers' `StableDiffusionInpaintPipeline`
//! on the same tiny checkpoint (goldens from `tests/golden/make_inpaint_goldens.py`).

mod golden_common;

use golden_common::{assert_close, golden, golden_dir, max_pixel_error, tiny_model_with};
use sdplane_replica::device::DTypeChoice;
use sdplane_replica::engine::{EngineError, GenerationParams, Generator, StepControl};
use sdplane_replica::pipeline::CandleGenerator;
use sdplane_replica::pipeline::inpaint::mask_luma;
use sdplane_replica::test_model::{TestFamily, TestModelOptions};
use sdplane_wire::api::SchedulerKind;
use serde::Deserialize;

const GOLDEN: &str = "sd15_inpaint";

#[derive(Debug, Deserialize)]
struct Summary {
    seed: u64,
    prompt: String,
    negative_prompt: String,
    width: u32,
    height: u32,
    guidance: f64,
    steps: u32,
}

fn summary() -> Summary {
    let text = std::fs::read_to_string(golden_dir(GOLDEN).join("golden.json")).expect("golden.json");
    serde_json::from_str(&text).expect("golden.json parses")
}

fn png(name: &str) -> image::RgbImage {
    image::open(golden_dir(GOLDEN).join(name))
        .expect("golden png")
        .to_rgb8()
}

fn inpainting_generator(s: &Summary) -> (tempfile::TempDir, CandleGenerator) {
    let opts = TestModelOptions {
        seed: s.seed,
        inpaint: true,
        ..TestModelOptions::default()
    };
    let (dir, path, model) = tiny_model_with(TestFamily::Sd15, opts);
    let generator = CandleGenerator::from_model(model, &path, "cpu", DTypeChoice::F32, u64::MAX);
    (dir, generator)
}

fn params(s: &Summary, guidance: f64, negative: &str) -> GenerationParams {
    let init = golden(GOLDEN, "init_latents")
        .flatten_all()
        .and_then(|t| t.to_vec1::<f32>())
        .expect("init latents");
    GenerationParams {
        prompt: s.prompt.clone(),
        negative_prompt: negative.to_string(),
        steps: s.steps,
        guidance_scale: guidance,
        width: s.width,
        height: s.height,
        seed: 0,
        scheduler: SchedulerKind::Ddim,
        num_images: 1,
        init_image: Some(png("image.png")),
        strength: 1.0,
        init_latents: Some(init),
        mask_image: Some(mask_luma(&png("mask.png"))),
    }
}

fn generate(generator: &CandleGenerator, params: &GenerationParams) -> Result<image::RgbImage, EngineError> {
    let mut out = generator.generate(params, &mut |_, _| StepControl::Continue)?;
    Ok(out.images.remove(0))
}

fn assert_within_2_of_255(what: &str, ours: &image::RgbImage, golden_name: &str) {
    let err = max_pixel_error(ours, &golden(GOLDEN, golden_name));
    println!("{what}: max pixel error {err}/255 (tolerance 2/255)");
    assert!(err <= 2, "{what}: {err}/255 from diffusers");
}

#[test]
fn the_masked_image_latents_match_diffusers_within_1e_4() {
    use candle_core::{DType, Device, Tensor};
    let s = summary();
    let (_dir, generator) = inpainting_generator(&s);
    // diffusers: `image * (mask < 0.5)` with the [-1, 1] image, then the posterior mean × 0.18215.
    let image = png("image.png");
    let mask = mask_luma(&png("mask.png"));
    let (w, h) = image.dimensions();
    let pixels: Vec<f32> = image
        .pixels()
        .zip(mask.pixels())
        .flat_map(|(p, m)| {
            p.0.map(|v| {
                if m.0[0] >= 128 {
                    0.0
                } else {
                    f32::from(v) / 127.5 - 1.0
                }
            })
        })
        .collect();
    let masked = Tensor::from_vec(pixels, (h as usize, w as usize, 3), &Device::Cpu)
        .and_then(|t| t.permute((2, 0, 1)))
        .and_then(|t| t.unsqueeze(0))
        .and_then(|t| t.contiguous())
        .expect("masked image");
    let (mean, _) = generator.model().vae_encode(&masked).expect("encode");
    let latents = mean
        .to_dtype(DType::F32)
        .and_then(|t| t.affine(generator.settings().vae_scale, 0.0))
        .expect("scale");
    assert_close(
        "masked image latents",
        &latents,
        &golden(GOLDEN, "masked_image_latents"),
        1e-4,
    );
}

#[test]
fn four_step_ddim_inpainting_matches_diffusers_within_2_of_255() {
    let s = summary();
    let (_dir, generator) = inpainting_generator(&s);
    let guided = generate(&generator, &params(&s, s.guidance, &s.negative_prompt)).expect("guided");
    assert_within_2_of_255("inpaint, guidance", &guided, "image_ddim_cfg");
    let unguided = generate(&generator, &params(&s, 0.0, "")).expect("unguided");
    assert_within_2_of_255("inpaint, no guidance", &unguided, "image_ddim_nocfg");
}

#[test]
fn without_a_mask_or_source_an_inpainting_model_paints_everything_like_an_all_white_mask() {
    let s = summary();
    let (_dir, generator) = inpainting_generator(&s);
    let text_only = GenerationParams {
        init_image: None,
        mask_image: None,
        ..params(&s, 0.0, "")
    };
    let ours = generate(&generator, &text_only).expect("text to image");
    assert_within_2_of_255("inpaint model, no mask", &ours, "image_ddim_nocfg_white_mask");
}

#[test]
fn a_mask_for_a_model_that_does_not_inpaint_is_a_named_parameter_error() {
    let s = summary();
    let (_dir, _path, model) = golden_common::tiny_model(TestFamily::Sd15, s.seed);
    let generator = CandleGenerator::from_model(
        model,
        std::path::Path::new("x"),
        "cpu",
        DTypeChoice::F32,
        u64::MAX,
    );
    assert!(!generator.model_info().inpainting);
    match generate(&generator, &params(&s, 0.0, "")) {
        Err(EngineError::InvalidParameter { field, .. }) => assert_eq!(field, "mask_image"),
        other => panic!("expected a mask_image error, got {other:?}"),
    }
}
