//! Shared by the `golden_*` tests: regenerate the tiny checkpoints `make_goldens.py` used
//! (same family and seed → same bytes), read its `.npy`/JSON goldens, and measure errors.

#![allow(dead_code)] // each test file uses a different part

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use sdplane_replica::model::SdModel;
use sdplane_replica::pipeline::npy::NpyF32;
use sdplane_replica::test_model::{self, TestFamily, TestModelOptions};
use serde::Deserialize;

/// `golden.json` of one family.
#[derive(Debug, Deserialize)]
pub struct Summary {
    pub seed: u64,
    pub prompt: String,
    pub negative_prompt: String,
    pub size: u32,
    pub unet_timestep: f64,
    pub guidance: f64,
    pub steps: u32,
    /// Per encoder: `[negative, prompt]` token ids.
    pub tokens: Vec<Vec<Vec<u32>>>,
    /// `[height, width]` of the odd-size golden (sides not a multiple of the UNet's factor).
    #[serde(default)]
    pub odd_size: Option<[u32; 2]>,
}

/// The golden folder of `family` (`sd15`, `sdxl`).
pub fn golden_dir(family: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(family)
}

pub fn summary(family: &str) -> Summary {
    let text = std::fs::read_to_string(golden_dir(family).join("golden.json")).expect("golden.json");
    serde_json::from_str(&text).expect("golden.json parses")
}

/// A golden array as a tensor of its shape.
pub fn golden(family: &str, name: &str) -> Tensor {
    let arr = NpyF32::read(&golden_dir(family).join(format!("{name}.npy"))).expect("golden npy");
    Tensor::from_vec(arr.data, arr.shape, &Device::Cpu).expect("tensor")
}

/// The tiny checkpoint of `family`, written by our own writer with the golden's seed, loaded
/// on the CPU in f32. The temporary folder must outlive the model's memory map.
pub fn tiny_model(family: TestFamily, seed: u64) -> (tempfile::TempDir, PathBuf, SdModel) {
    tiny_model_with(
        family,
        TestModelOptions {
            seed,
            ..TestModelOptions::default()
        },
    )
}

/// `tiny_model` with other writer options (e.g. `--prediction v`).
pub fn tiny_model_with(family: TestFamily, opts: TestModelOptions) -> (tempfile::TempDir, PathBuf, SdModel) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir
        .path()
        .join(format!("tiny-{family:?}.safetensors").to_lowercase());
    test_model::write(family, &opts, &path).expect("write tiny model");
    let model = SdModel::load(&path, &Device::Cpu, DType::F32, &|_, _| {}).expect("load tiny model");
    (dir, path, model)
}

/// Largest absolute difference, and the largest magnitude in `expected` (for scale).
pub fn max_abs_error(actual: &Tensor, expected: &Tensor) -> (f32, f32) {
    assert_eq!(actual.dims(), expected.dims(), "shapes differ");
    let a = actual
        .to_dtype(DType::F32)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f32>())
        .expect("actual");
    let e = expected
        .flatten_all()
        .and_then(|t| t.to_vec1::<f32>())
        .expect("expected");
    let err = a.iter().zip(&e).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
    let scale = e.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    (err, scale)
}

/// Assert `actual` is within `tolerance` of `expected`, relative to `max(1, max|expected|)`,
/// printing the achieved error so it can be quoted.
pub fn assert_close(what: &str, actual: &Tensor, expected: &Tensor, tolerance: f32) {
    let (err, scale) = max_abs_error(actual, expected);
    let relative = err / scale.max(1.0);
    println!(
        "{what}: max abs error {err:.3e} (values up to {scale:.3}), relative {relative:.3e}, tolerance {tolerance:.0e}"
    );
    assert!(
        relative <= tolerance,
        "{what}: max abs error {err} over values up to {scale}"
    );
}

/// Largest per-channel difference between our RGB bytes and diffusers' `output_type="np"`
/// image `[1, H, W, 3]` in [0, 1], rounded to bytes as `numpy_to_pil` does.
pub fn max_pixel_error(ours: &image::RgbImage, theirs: &Tensor) -> u8 {
    let expected: Vec<u8> = theirs
        .flatten_all()
        .and_then(|t| t.to_vec1::<f32>())
        .expect("image")
        .iter()
        .map(|v| (v * 255.0).round().clamp(0.0, 255.0) as u8)
        .collect();
    assert_eq!(ours.as_raw().len(), expected.len(), "image sizes differ");
    ours.as_raw()
        .iter()
        .zip(&expected)
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap_or(0)
}

/// How diffusers made one golden image: sampler, guidance, negative prompt, size, and the
/// names of its starting latents and of the image in the golden folder.
pub struct ImageCase<'a> {
    pub scheduler: sdplane_wire::api::SchedulerKind,
    pub guidance: f64,
    pub negative_prompt: &'a str,
    pub height: u32,
    pub width: u32,
    pub init_latents: &'a str,
    pub image: &'a str,
}

/// Generate `case` from the golden starting latents and assert every step ran and the image is
/// within 2/255 of diffusers' (printing the achieved error so it can be quoted).
pub fn assert_image_matches(
    family: &str,
    generator: &sdplane_replica::pipeline::CandleGenerator,
    s: &Summary,
    case: &ImageCase<'_>,
) {
    use sdplane_replica::engine::{GenerationParams, StepControl};

    let init = golden(family, case.init_latents)
        .flatten_all()
        .and_then(|t| t.to_vec1::<f32>())
        .expect("init latents");
    let params = GenerationParams {
        prompt: s.prompt.clone(),
        negative_prompt: case.negative_prompt.to_string(),
        steps: s.steps,
        guidance_scale: case.guidance,
        width: case.width,
        height: case.height,
        seed: 0,
        scheduler: case.scheduler,
        num_images: 1,
        init_image: None,
        strength: 1.0,
        init_latents: Some(init),
        mask_image: None,
    };
    let mut steps_seen = 0;
    let (out, _) = generator
        .generate_timed(&params, &mut |done, total| {
            steps_seen = done;
            assert_eq!(total, s.steps);
            StepControl::Continue
        })
        .expect("generate");
    assert_eq!(steps_seen, s.steps, "{}: every step reports progress", case.image);
    let image = &out.images[0];
    assert_eq!((image.width(), image.height()), (case.width, case.height));
    let err = max_pixel_error(image, &golden(family, case.image));
    println!("{family} {}: max pixel error {err}/255", case.image);
    assert!(err <= 2, "{family} {}: max pixel error {err}/255", case.image);
}

/// A guided 4-step DDIM generation at the golden's odd size (e.g. 72×40 px, a 9×5 latent that
/// the tiny UNet's strided convs cannot halve evenly) against diffusers' image for it.
pub fn assert_odd_size_ddim_matches(family: &str, test_family: TestFamily) {
    use sdplane_replica::device::DTypeChoice;
    use sdplane_replica::pipeline::CandleGenerator;

    let s = summary(family);
    let [height, width] = s
        .odd_size
        .expect("golden.json has odd_size: rerun make_goldens.py");
    let (_dir, path, model) = tiny_model(test_family, s.seed);
    let generator = CandleGenerator::from_model(model, &path, "cpu", DTypeChoice::F32, u64::MAX);
    let case = ImageCase {
        scheduler: sdplane_wire::api::SchedulerKind::Ddim,
        guidance: s.guidance,
        negative_prompt: &s.negative_prompt,
        height,
        width,
        init_latents: "init_latents_odd",
        image: "image_ddim_cfg_odd",
    };
    assert_image_matches(family, &generator, &s, &case);
}
