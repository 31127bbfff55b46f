//! The tiny SD1.5 checkpoint against diffusers' `StableDiffusionPipeline.from_single_file` on
//! the same file (goldens from `tests/golden/make_goldens.py`): text encoder, UNet, VAE, and
//! whole 4-step DDIM generations with and without classifier-free guidance.

mod golden_common;

use golden_common::{
    ImageCase, assert_close, assert_image_matches, assert_odd_size_ddim_matches, golden, summary, tiny_model,
};
use sdplane_replica::device::DTypeChoice;
use sdplane_replica::pipeline::CandleGenerator;
use sdplane_replica::test_model::TestFamily;
use sdplane_wire::api::SchedulerKind;

const FAMILY: &str = "sd15";

#[test]
fn text_embeddings_match_diffusers_within_1e_4() {
    let s = summary(FAMILY);
    let (_dir, _path, model) = tiny_model(TestFamily::Sd15, s.seed);
    let expected = golden(FAMILY, "text_context");
    let from_ids = model.encode_tokens(&s.tokens).expect("encode tokens");
    assert_close(
        "context from diffusers' token ids",
        &from_ids.context,
        &expected,
        1e-4,
    );
    let from_text = model
        .encode_prompts(&[&s.negative_prompt, &s.prompt])
        .expect("encode prompts");
    assert_close("context from our tokenizer", &from_text.context, &expected, 1e-4);
}

#[test]
fn one_unet_evaluation_matches_diffusers_within_1e_4() {
    let s = summary(FAMILY);
    let (_dir, _path, model) = tiny_model(TestFamily::Sd15, s.seed);
    let out = model
        .unet_forward(
            &golden(FAMILY, "unet_latents"),
            s.unet_timestep,
            &golden(FAMILY, "text_context"),
            None,
            None,
        )
        .expect("unet");
    assert_close("unet output", &out, &golden(FAMILY, "unet_out"), 1e-4);
}

#[test]
fn vae_decode_and_encode_match_diffusers_within_1e_4() {
    let s = summary(FAMILY);
    let (_dir, _path, model) = tiny_model(TestFamily::Sd15, s.seed);
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
fn four_step_ddim_images_match_diffusers_within_2_of_255() {
    let s = summary(FAMILY);
    let (_dir, path, model) = tiny_model(TestFamily::Sd15, s.seed);
    let generator = CandleGenerator::from_model(model, &path, "cpu", DTypeChoice::F32, u64::MAX);
    for (guidance, negative, image) in [
        (s.guidance, s.negative_prompt.as_str(), "image_ddim_cfg"),
        (0.0, "", "image_ddim_nocfg"),
    ] {
        let case = ImageCase {
            scheduler: SchedulerKind::Ddim,
            guidance,
            negative_prompt: negative,
            height: s.size,
            width: s.size,
            init_latents: "init_latents",
            image,
        };
        assert_image_matches(FAMILY, &generator, &s, &case);
    }
}

#[test]
fn sides_that_are_not_a_multiple_of_the_unet_downsampling_match_diffusers() {
    assert_odd_size_ddim_matches(FAMILY, TestFamily::Sd15);
}
