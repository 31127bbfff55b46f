//! The tiny SD 2.1 checkpoint written with `--prediction v` against diffusers'
//! `StableDiffusionPipeline.from_single_file` with a v-prediction DDIM scheduler (goldens from
//! `tests/golden/make_goldens.py`): the OpenCLIP tower's penultimate layer, the UNet with
//! linear projections, and whole 4-step v-prediction generations.

mod golden_common;

use golden_common::{ImageCase, assert_close, assert_image_matches, golden, summary, tiny_model_with};
use sdplane_replica::device::DTypeChoice;
use sdplane_replica::engine::Generator;
use sdplane_replica::pipeline::CandleGenerator;
use sdplane_replica::test_model::{TestFamily, TestModelOptions, TestPrediction};
use sdplane_wire::api::SchedulerKind;

const FAMILY: &str = "sd21";

fn model(
    seed: u64,
) -> (
    tempfile::TempDir,
    std::path::PathBuf,
    sdplane_replica::model::SdModel,
) {
    let opts = TestModelOptions {
        seed,
        prediction: Some(TestPrediction::V),
        ..TestModelOptions::default()
    };
    tiny_model_with(TestFamily::Sd21, opts)
}

#[test]
fn penultimate_openclip_embeddings_match_diffusers_within_1e_4() {
    let s = summary(FAMILY);
    let (_dir, _path, model) = model(s.seed);
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
    let (_dir, _path, model) = model(s.seed);
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
fn four_step_v_prediction_ddim_images_match_diffusers_within_2_of_255() {
    let s = summary(FAMILY);
    let (_dir, path, model) = model(s.seed);
    let generator = CandleGenerator::from_model(model, &path, "cpu", DTypeChoice::F32, u64::MAX);
    assert_eq!(generator.model_info().prediction, "v_prediction");
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
