//! From a client's `GenerateRequest` to `GenerationParams`: every field checked against the
//! model's limits (errors name the field and its allowed range), every default applied.

use sdplane_wire::api::{GenerateRequest, ImageFormat, ModelInfo};

use super::error::ServerError;
use super::init_image;
use crate::engine::GenerationParams;
use crate::pipeline::inpaint;

/// Largest classifier-free guidance accepted. diffusers sets no bound; 30 is the top of the
/// AUTOMATIC1111 web UI's CFG slider, past which images only saturate.
pub const MAX_GUIDANCE_SCALE: f64 = 30.0;

/// Side lengths must be multiples of this: the VAE downsamples by 8 (candle's
/// stable_diffusion example asserts `height % 8 == 0`).
pub const SIDE_MULTIPLE: u32 = 8;

/// A request ready to run, with how its answer is shaped.
#[derive(Debug, Clone)]
pub struct Validated {
    pub params: GenerationParams,
    pub format: ImageFormat,
}

/// Check `request` against `info`; `draw_seed` is called only when the client sent no seed.
pub fn validate(
    request: &GenerateRequest,
    info: &ModelInfo,
    draw_seed: impl FnOnce() -> u64,
) -> Result<Validated, ServerError> {
    let limits = &info.limits;
    let defaults = &info.defaults;
    check_text("prompt", &request.prompt, limits.max_prompt_chars)?;
    let negative_prompt = request.negative_prompt.clone().unwrap_or_default();
    check_text("negative_prompt", &negative_prompt, limits.max_prompt_chars)?;

    let steps = request
        .num_inference_steps
        .unwrap_or(defaults.num_inference_steps);
    if !(1..=limits.max_steps).contains(&steps) {
        return Err(invalid(
            "num_inference_steps",
            format!("{steps} is outside 1..={}", limits.max_steps),
        ));
    }
    let guidance_scale = request.guidance_scale.unwrap_or(defaults.guidance_scale);
    if !guidance_scale.is_finite() || !(0.0..=MAX_GUIDANCE_SCALE).contains(&guidance_scale) {
        return Err(invalid(
            "guidance_scale",
            format!("{guidance_scale} is outside 0..={MAX_GUIDANCE_SCALE}"),
        ));
    }
    let width = check_side("width", request.width.unwrap_or(defaults.width), info)?;
    let height = check_side("height", request.height.unwrap_or(defaults.height), info)?;
    let num_images = request.num_images.unwrap_or(1);
    if !(1..=limits.max_num_images).contains(&num_images) {
        return Err(invalid(
            "num_images",
            format!("{num_images} is outside 1..={}", limits.max_num_images),
        ));
    }
    let format = request.format.unwrap_or_default();
    if format == ImageFormat::Png && num_images > 1 {
        return Err(invalid(
            "num_images",
            "format `png` returns one image; use `base64` for more".into(),
        ));
    }

    let init_image = match &request.init_image {
        Some(text) => Some(
            init_image::decode(text, width, height, limits.max_side)
                .map_err(|message| invalid("init_image", message))?,
        ),
        None => None,
    };
    let mask_image = match &request.mask_image {
        Some(_) if !info.inpainting => {
            return Err(invalid(
                "mask_image",
                "this model is not an inpainting model; deploy an inpainting checkpoint (9-channel UNet)"
                    .into(),
            ));
        }
        Some(_) if init_image.is_none() => {
            return Err(invalid(
                "mask_image",
                "needs `init_image`, the picture to paint into".into(),
            ));
        }
        Some(text) => Some(
            init_image::decode(text, width, height, limits.max_side)
                .map(|rgb| inpaint::mask_luma(&rgb))
                .map_err(|message| invalid("mask_image", message))?,
        ),
        None => None,
    };
    let strength = match (request.strength, init_image.is_some()) {
        (Some(_), false) => {
            return Err(invalid(
                "strength",
                "only applies with `init_image` (img2img)".into(),
            ));
        }
        (Some(s), true) if !(s.is_finite() && s > 0.0 && s <= 1.0) => {
            return Err(invalid("strength", format!("{s} is outside (0, 1]")));
        }
        (Some(s), true) => s,
        (None, true) => crate::engine::default_strength(info.inpainting),
        (None, false) => 1.0,
    };

    Ok(Validated {
        params: GenerationParams {
            prompt: request.prompt.clone(),
            negative_prompt,
            steps,
            guidance_scale,
            width,
            height,
            seed: request.seed.unwrap_or_else(draw_seed),
            scheduler: request.scheduler.unwrap_or(defaults.scheduler),
            num_images,
            init_image,
            strength,
            init_latents: None,
            mask_image,
        },
        format,
    })
}

/// A fresh seed below 2^32, so every client (JavaScript numbers included) can send it back exactly.
pub fn random_seed() -> u64 {
    u64::from(rand::random::<u32>())
}

fn check_text(field: &'static str, text: &str, max_chars: u32) -> Result<(), ServerError> {
    let chars = text.chars().count();
    if chars > max_chars as usize {
        return Err(invalid(
            field,
            format!("{chars} characters; at most {max_chars} are accepted"),
        ));
    }
    Ok(())
}

fn check_side(field: &'static str, side: u32, info: &ModelInfo) -> Result<u32, ServerError> {
    let (min, max) = (info.limits.min_side, info.limits.max_side);
    if !side.is_multiple_of(SIDE_MULTIPLE) || !(min..=max).contains(&side) {
        return Err(invalid(
            field,
            format!("{side} must be a multiple of {SIDE_MULTIPLE} within {min}..={max}"),
        ));
    }
    Ok(side)
}

fn invalid(field: &'static str, message: String) -> ServerError {
    ServerError::InvalidParameter { field, message }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sdplane_wire::api::{GenerationDefaults, GenerationLimits, SchedulerKind};

    fn info() -> ModelInfo {
        ModelInfo {
            file: "tiny.safetensors".into(),
            model: "tiny".into(),
            family: "sd1".into(),
            family_label: "SD 1.x".into(),
            detected_by: Default::default(),
            prediction: "epsilon".into(),
            dtype: "f32".into(),
            device: "cpu".into(),
            native_width: 64,
            native_height: 64,
            inpainting: false,
            defaults: GenerationDefaults {
                num_inference_steps: 20,
                guidance_scale: 7.5,
                scheduler: SchedulerKind::EulerA,
                width: 64,
                height: 64,
            },
            limits: GenerationLimits {
                min_side: 32,
                max_side: 128,
                max_steps: 50,
                max_num_images: 4,
                max_prompt_chars: 100,
            },
        }
    }

    fn request(json: serde_json::Value) -> GenerateRequest {
        serde_json::from_value(json).expect("test request parses")
    }

    #[test]
    fn defaults_fill_every_missing_field_and_the_seed_is_drawn() {
        let v = validate(&request(serde_json::json!({"prompt": "a cat"})), &info(), || 77).expect("valid");
        let p = v.params;
        assert_eq!((p.steps, p.guidance_scale, p.width, p.height), (20, 7.5, 64, 64));
        assert_eq!(
            (p.seed, p.scheduler, p.num_images),
            (77, SchedulerKind::EulerA, 1)
        );
        assert_eq!(p.negative_prompt, "");
        assert!(p.init_image.is_none());
        assert_eq!(v.format, ImageFormat::Base64);
    }

    #[test]
    fn a_sent_seed_is_kept_and_no_seed_is_drawn() {
        let req =
            request(serde_json::json!({"prompt": "x", "seed": 5, "format": "png", "scheduler": "ddim"}));
        let v = validate(&req, &info(), || panic!("seed must not be drawn")).expect("valid");
        assert_eq!(
            (v.params.seed, v.params.scheduler, v.format),
            (5, SchedulerKind::Ddim, ImageFormat::Png)
        );
    }

    #[test]
    fn each_bad_field_is_named_with_its_range() {
        let long = "x".repeat(101);
        let cases = [
            (serde_json::json!({"prompt": long}), "prompt", "at most 100"),
            (
                serde_json::json!({"prompt": "", "negative_prompt": long}),
                "negative_prompt",
                "at most 100",
            ),
            (
                serde_json::json!({"prompt": "", "num_inference_steps": 0}),
                "num_inference_steps",
                "1..=50",
            ),
            (
                serde_json::json!({"prompt": "", "num_inference_steps": 51}),
                "num_inference_steps",
                "1..=50",
            ),
            (
                serde_json::json!({"prompt": "", "guidance_scale": -1.0}),
                "guidance_scale",
                "0..=30",
            ),
            (
                serde_json::json!({"prompt": "", "guidance_scale": 31.0}),
                "guidance_scale",
                "0..=30",
            ),
            (
                serde_json::json!({"prompt": "", "width": 60}),
                "width",
                "multiple of 8 within 32..=128",
            ),
            (
                serde_json::json!({"prompt": "", "height": 136}),
                "height",
                "32..=128",
            ),
            (
                serde_json::json!({"prompt": "", "height": 24}),
                "height",
                "32..=128",
            ),
            (
                serde_json::json!({"prompt": "", "num_images": 0}),
                "num_images",
                "1..=4",
            ),
            (
                serde_json::json!({"prompt": "", "num_images": 5}),
                "num_images",
                "1..=4",
            ),
            (
                serde_json::json!({"prompt": "", "num_images": 2, "format": "png"}),
                "num_images",
                "base64",
            ),
            (
                serde_json::json!({"prompt": "", "strength": 0.5}),
                "strength",
                "init_image",
            ),
            (
                serde_json::json!({"prompt": "", "init_image": "%%%"}),
                "init_image",
                "base64",
            ),
        ];
        for (json, field, range) in cases {
            let err = validate(&request(json.clone()), &info(), || 0).expect_err(&json.to_string());
            let ServerError::InvalidParameter { field: got, .. } = &err else {
                panic!("{json}: expected invalid_parameter, got {err:?}");
            };
            assert_eq!(*got, field, "{json}");
            assert!(
                err.to_string().contains(range),
                "{json}: {err} should mention {range}"
            );
            assert_eq!(err.status(), axum::http::StatusCode::BAD_REQUEST);
        }
    }

    #[test]
    fn strength_is_checked_only_in_its_range_with_an_init_image() {
        use base64::Engine as _;
        let mut png = std::io::Cursor::new(Vec::new());
        image::DynamicImage::ImageRgb8(image::RgbImage::new(16, 16))
            .write_to(&mut png, image::ImageFormat::Png)
            .expect("encode");
        let b64 = base64::engine::general_purpose::STANDARD.encode(png.into_inner());
        for bad in [0.0, 1.5, -0.1] {
            let req = request(serde_json::json!({"prompt": "", "init_image": b64, "strength": bad}));
            let err = validate(&req, &info(), || 0).expect_err("bad strength");
            assert!(err.to_string().contains("(0, 1]"), "{err}");
        }
        let req = request(serde_json::json!({"prompt": "", "init_image": b64, "strength": 1.0}));
        let v = validate(&req, &info(), || 0).expect("strength 1 is allowed");
        assert_eq!(
            v.params.init_image.as_ref().map(|i| i.dimensions()),
            Some((64, 64))
        );
        let req = request(serde_json::json!({"prompt": "", "init_image": b64}));
        assert_eq!(
            validate(&req, &info(), || 0)
                .expect("default strength")
                .params
                .strength,
            0.8
        );
    }

    fn assert_mask_error(err: &ServerError) {
        assert!(
            matches!(
                err,
                ServerError::InvalidParameter {
                    field: "mask_image",
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn a_mask_needs_an_inpainting_model_and_an_init_image_and_defaults_strength_to_one() {
        use base64::Engine as _;
        let png_of = |img: image::RgbImage| {
            let mut png = std::io::Cursor::new(Vec::new());
            image::DynamicImage::ImageRgb8(img)
                .write_to(&mut png, image::ImageFormat::Png)
                .expect("encode");
            base64::engine::general_purpose::STANDARD.encode(png.into_inner())
        };
        let source = png_of(image::RgbImage::new(16, 16));
        let mask = png_of(image::RgbImage::from_pixel(16, 16, image::Rgb([255, 255, 255])));
        let with_mask = request(serde_json::json!({"prompt": "", "init_image": source, "mask_image": mask}));

        let err = validate(&with_mask, &info(), || 0).expect_err("not an inpainting model");
        assert_mask_error(&err);
        assert!(err.to_string().contains("inpainting"), "{err}");

        let inpainting = ModelInfo {
            inpainting: true,
            ..info()
        };
        let mask_only = request(serde_json::json!({"prompt": "", "mask_image": mask}));
        let err = validate(&mask_only, &inpainting, || 0).expect_err("no source image");
        assert!(err.to_string().contains("init_image"), "{err}");
        let bad = request(serde_json::json!({"prompt": "", "init_image": source, "mask_image": "%%"}));
        let err = validate(&bad, &inpainting, || 0).expect_err("bad mask");
        assert_mask_error(&err);

        let v = validate(&with_mask, &inpainting, || 0).expect("inpainting request");
        let resized = v.params.mask_image.expect("mask");
        assert_eq!(resized.dimensions(), (64, 64), "resized to the output size");
        assert!(resized.pixels().all(|p| p.0[0] == 255));
        assert_eq!(v.params.strength, 1.0, "diffusers' inpainting default");
    }
}
