//! The tiny SDXL checkpoint against diffusers' `StableDiffusionXLPipeline.from_single_file` on
//! the same file (goldens from `tests/golden/make_goldens.py`): both text encoders with the
//! pooled vector, the UNet with `add_embedding` time ids, the VAE, and whole 4-step DDIM and
//! Euler generations with guidance, without it, and with the empty negative prompt that
//! diffusers turns into zeros (`force_zeros_for_empty_prompt`).

mod golden_common;

use candle_core::{Device, Tensor};
use golden_common::{
    ImageCase, assert_close, assert_image_matches, assert_odd_size_ddim_matches, golden, summary, tiny_model,
};
use sdplane_replica::device::DTypeChoice;
use sdplane_replica::pipeline::CandleGenerator;
use sdplane_replica::test_model::TestFamily;
use sdplane_wire::api::SchedulerKind;

const FAMILY: &str = "sdxl";

#[test]
fn both_text_encoders_and_the_pooled_vector_match_diffusers_within_1e_4() {
    let s = summary(FAMILY);
    let (_dir, _path, model) = tiny_model(TestFamily::Sdxl, s.seed);
    let from_ids = model.encode_tokens(&s.tokens).expect("encode tokens");
    assert_close(
        "context from diffusers' token ids",
        &from_ids.context,
        &golden(FAMILY, "text_context"),
        1e-4,
    );
    let pooled = from_ids.pooled.expect("SDXL has a pooled vector");
    assert_close(
        "pooled from diffusers' token ids",
        &pooled,
        &golden(FAMILY, "text_pooled"),
        1e-4,
    );
    let from_text = model
        .encode_prompts(&[&s.negative_prompt, &s.prompt])
        .expect("encode prompts");
    assert_close(
        "context from our tokenizer",
        &from_text.context,
        &golden(FAMILY, "text_context"),
        1e-4,
    );
    assert_close(
        "pooled from our tokenizer",
        &from_text.pooled.expect("pooled"),
        &golden(FAMILY, "text_pooled"),
        1e-4,
    );
}

#[test]
fn one_unet_evaluation_with_time_ids_matches_diffusers_within_1e_4() {
    let s = summary(FAMILY);
    let (_dir, _path, model) = tiny_model(TestFamily::Sdxl, s.seed);
    let side = s.size as f32;
    let ids = Tensor::new(
        &[
            [side, side, 0.0, 0.0, side, side],
            [side, side, 0.0, 0.0, side, side],
        ],
        &Device::Cpu,
    )
    .expect("ids");
    let pooled = golden(FAMILY, "text_pooled");
    let out = model
        .unet_forward(
            &golden(FAMILY, "unet_latents"),
            s.unet_timestep,
            &golden(FAMILY, "text_context"),
            Some(&pooled),
            Some(&ids),
        )
        .expect("unet");
    assert_close("unet output", &out, &golden(FAMILY, "unet_out"), 1e-4);
}

#[test]
fn vae_decode_and_encode_match_diffusers_within_1e_4() {
    let s = summary(FAMILY);
    let (_dir, _path, model) = tiny_model(TestFamily::Sdxl, s.seed);
    let decoded = model.vae_decode(&golden(FAMILY, "vae_latents")).expect("decode");
    assert_close("vae decode", &decoded, &golden(FAMILY, "vae_decoded"), 1e-4);
    let (mean, std) = model
        .vae_encode(&golden(FAMILY, "vae_decoded").clamp(-1f32, 1f32).expect("clamp"))
        .expect("encode");
    assert_close(
        "vae encode mean",
        &mean,
        &golden(FAMILY, "vae_encoded_mean"),
        1e-4,
    );
    assert_close("vae encode std", &std, &golden(FAMILY, "vae_encoded_std"), 1e-4);
}

#[test]
fn four_step_ddim_and_euler_images_match_diffusers_within_2_of_255() {
    let s = summary(FAMILY);
    let (_dir, path, model) = tiny_model(TestFamily::Sdxl, s.seed);
    let generator = CandleGenerator::from_model(model, &path, "cpu", DTypeChoice::F32, u64::MAX);
    for (scheduler, tag) in [(SchedulerKind::Ddim, "ddim"), (SchedulerKind::Euler, "euler")] {
        let cases = [
            (s.guidance, s.negative_prompt.as_str(), "cfg"),
            (0.0, "", "nocfg"),
            // No negative prompt with guidance: diffusers conditions the uncond rows on zeros.
            (s.guidance, "", "cfg_empty_negative"),
        ];
        for (guidance, negative, which) in cases {
            let image = format!("image_{tag}_{which}");
            let case = ImageCase {
                scheduler,
                guidance,
                negative_prompt: negative,
                height: s.size,
                width: s.size,
                init_latents: "init_latents",
                image: &image,
            };
            assert_image_matches(FAMILY, &generator, &s, &case);
        }
    }
}

#[test]
fn sides_that_are_not_a_multiple_of_the_unet_downsampling_match_diffusers() {
    assert_odd_size_ddim_matches(FAMILY, TestFamily::Sdxl);
}
