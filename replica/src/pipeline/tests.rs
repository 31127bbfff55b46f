//! Behaviour of `CandleGenerator` on tiny random checkpoints written by `test_model`: defaults
//! per family, seeds, image pairing, img2img, cancellation and refusals.

use std::path::PathBuf;

use sdplane_wire::api::SchedulerKind;

use super::CandleGenerator;
use crate::device::DTypeChoice;
use crate::engine::{EngineError, GenerationParams, Generator, StepControl};
use crate::model::SdModel;
use crate::test_model::{self, TestFamily, TestModelOptions};

fn tiny(family: TestFamily, turbo: bool) -> (tempfile::TempDir, CandleGenerator) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path: PathBuf = dir.path().join("tiny.safetensors");
    let opts = TestModelOptions {
        seed: 3,
        turbo,
        ..TestModelOptions::default()
    };
    test_model::write(family, &opts, &path).expect("write");
    let model = SdModel::load(
        &path,
        &candle_core::Device::Cpu,
        candle_core::DType::F32,
        &|_, _| {},
    )
    .expect("load");
    (
        dir,
        CandleGenerator::from_model(model, &path, "cpu", DTypeChoice::F32, u64::MAX),
    )
}

fn params(steps: u32) -> GenerationParams {
    GenerationParams {
        prompt: "a red fox in the snow".into(),
        negative_prompt: String::new(),
        steps,
        guidance_scale: 7.5,
        width: 64,
        height: 64,
        seed: 42,
        scheduler: SchedulerKind::EulerA,
        num_images: 1,
        init_image: None,
        strength: 1.0,
        init_latents: None,
        mask_image: None,
    }
}

fn run(generator: &CandleGenerator, p: &GenerationParams) -> Result<Vec<image::RgbImage>, EngineError> {
    generator
        .generate(p, &mut |_, _| StepControl::Continue)
        .map(|o| o.images)
}

#[test]
fn family_defaults_follow_diffusers_for_sd15_sdxl_and_turbo() {
    let (_d1, sd15) = tiny(TestFamily::Sd15, false);
    let info = sd15.model_info();
    assert_eq!(
        (
            info.family.as_str(),
            info.defaults.scheduler,
            info.defaults.guidance_scale
        ),
        ("sd1", SchedulerKind::Ddim, 7.5)
    );
    assert_eq!(info.defaults.num_inference_steps, 30);
    assert_eq!(sd15.settings().vae_scale, 0.18215);
    assert_eq!((info.limits.min_side, info.limits.max_side), (64, 2048));

    let (_d2, sdxl) = tiny(TestFamily::Sdxl, false);
    let info = sdxl.model_info();
    assert_eq!(
        (info.defaults.scheduler, info.defaults.guidance_scale),
        (SchedulerKind::Euler, 5.0)
    );
    assert_eq!((info.defaults.width, info.defaults.height), (1024, 1024));
    assert_eq!(sdxl.settings().vae_scale, 0.13025);
    assert!(sdxl.settings().zero_empty_negative);

    let (_d3, turbo) = tiny(TestFamily::Sdxl, true);
    let info = turbo.model_info();
    assert_eq!(
        (
            info.defaults.num_inference_steps,
            info.defaults.guidance_scale,
            info.defaults.scheduler
        ),
        (1, 0.0, SchedulerKind::EulerA)
    );
    assert_eq!((info.defaults.width, info.defaults.height), (512, 512));
    assert_eq!(turbo.settings().spacing, super::scheduler::Spacing::Trailing);
}

#[test]
fn the_same_seed_gives_the_same_image_and_another_seed_does_not() {
    let (_d, g) = tiny(TestFamily::Sd15, false);
    let p = params(2);
    let a = run(&g, &p).expect("a");
    let b = run(&g, &p).expect("b");
    let c = run(&g, &GenerationParams { seed: 43, ..p }).expect("c");
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[test]
fn each_of_several_images_is_the_single_image_of_its_own_noise() {
    // Deterministic DDIM: image i of a batch must equal a one-image run from noise chunk i.
    let (_d, g) = tiny(TestFamily::Sdxl, false);
    let chunk = 4 * 8 * 8;
    let noise = super::noise::NoiseStream::new(9).take(2 * chunk);
    let batch = GenerationParams {
        num_images: 2,
        scheduler: SchedulerKind::Ddim,
        init_latents: Some(noise.clone()),
        ..params(2)
    };
    let both = run(&g, &batch).expect("batch");
    assert_eq!(both.len(), 2);
    for i in 0..2 {
        let one = GenerationParams {
            num_images: 1,
            init_latents: Some(noise[i * chunk..(i + 1) * chunk].to_vec()),
            ..batch.clone()
        };
        let single = run(&g, &one).expect("single");
        let diff = both[i]
            .as_raw()
            .iter()
            .zip(single[0].as_raw())
            .map(|(a, b)| a.abs_diff(*b))
            .max();
        assert!(
            diff <= Some(1),
            "image {i} differs from its single run by {diff:?}"
        );
    }
    assert_ne!(both[0], both[1]);
}

#[test]
fn seeded_noise_equals_the_same_values_given_as_init_latents() {
    let (_d, g) = tiny(TestFamily::Sd15, false);
    let p = GenerationParams {
        scheduler: SchedulerKind::Dpmpp2mKarras,
        ..params(3)
    };
    let seeded = run(&g, &p).expect("seeded");
    let given = GenerationParams {
        init_latents: Some(super::noise::NoiseStream::new(p.seed).take(4 * 8 * 8)),
        ..p
    };
    assert_eq!(seeded, run(&g, &given).expect("given"));
}

#[test]
fn img2img_runs_only_the_last_strength_share_of_the_steps() {
    let (_d, g) = tiny(TestFamily::Sd15, false);
    let source = image::RgbImage::from_fn(64, 64, |x, y| image::Rgb([(x * 4) as u8, (y * 4) as u8, 128]));
    let p = GenerationParams {
        init_image: Some(source),
        strength: 0.5,
        steps: 10,
        ..params(10)
    };
    let mut calls = Vec::new();
    let out = g.generate(&p, &mut |done, total| {
        calls.push((done, total));
        StepControl::Continue
    });
    let out = out.expect("img2img");
    assert_eq!(out.denoising_steps, 5);
    assert_eq!(calls, [(1, 5), (2, 5), (3, 5), (4, 5), (5, 5)]);
    let too_weak = GenerationParams { strength: 0.05, ..p };
    assert!(matches!(
        run(&g, &too_weak),
        Err(EngineError::InvalidParameter {
            field: "strength",
            ..
        })
    ));
}

#[test]
fn a_step_callback_can_cancel_the_generation() {
    let (_d, g) = tiny(TestFamily::Sd15, false);
    let mut seen = 0;
    let result = g.generate(&params(5), &mut |done, _| {
        seen = done;
        if done == 2 {
            StepControl::Cancel
        } else {
            StepControl::Continue
        }
    });
    assert!(matches!(result, Err(EngineError::Cancelled)));
    assert_eq!(seen, 2);
}

#[test]
fn a_request_over_the_memory_budget_is_refused_before_any_step() {
    let (_d, mut g) = tiny(TestFamily::Sd15, false);
    let p = params(2);
    let needed = g.estimate_bytes(&p);
    assert!(needed > 0);
    let bigger = GenerationParams {
        num_images: 4,
        ..p.clone()
    };
    assert!(g.estimate_bytes(&bigger) > needed, "more images must cost more");
    g.set_memory_budget(needed - 1);
    let mut steps = 0;
    let result = g.generate(&p, &mut |_, _| {
        steps += 1;
        StepControl::Continue
    });
    assert!(matches!(result, Err(EngineError::TooLarge { .. })), "{result:?}");
    assert_eq!(steps, 0);
    g.set_memory_budget(needed);
    assert!(run(&g, &p).is_ok());
}

#[test]
fn bad_sizes_and_init_latents_are_named_parameter_errors() {
    let (_d, g) = tiny(TestFamily::Sd15, false);
    // Sides must be whole latents (multiples of 8); 72 (a 9-wide latent) is fine, 68 is not.
    let odd = GenerationParams {
        width: 68,
        ..params(1)
    };
    assert!(matches!(
        run(&g, &odd),
        Err(EngineError::InvalidParameter { field: "width", .. })
    ));
    let short = GenerationParams {
        init_latents: Some(vec![0.0; 10]),
        ..params(1)
    };
    assert!(matches!(
        run(&g, &short),
        Err(EngineError::InvalidParameter {
            field: "init_latents",
            ..
        })
    ));
}

#[test]
fn every_scheduler_with_and_without_guidance_makes_an_image_on_sd15_and_sdxl() {
    for family in [TestFamily::Sd15, TestFamily::Sdxl] {
        let (_d, g) = tiny(family, false);
        for scheduler in SchedulerKind::ALL {
            for guidance in [0.0, 4.0] {
                let p = GenerationParams {
                    scheduler,
                    guidance_scale: guidance,
                    ..params(3)
                };
                let images =
                    run(&g, &p).unwrap_or_else(|e| panic!("{family:?} {scheduler:?} {guidance}: {e}"));
                assert_eq!(images[0].dimensions(), (64, 64));
            }
        }
    }
}
