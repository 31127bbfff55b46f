//! The synthetic key lists reproduce the real files' parameter counts and are well formed.

use std::collections::BTreeSet;

use super::*;
use crate::checkpoint::detect::{LDM_CLIP_PREFIX, UNET_PREFIX, VAE_PREFIX};

fn count_under(spec: &SynthSpec, prefix: &str) -> u64 {
    spec.tensors()
        .iter()
        .filter(|t| t.name.starts_with(prefix))
        .map(SynthTensor::numel)
        .sum()
}

#[test]
fn full_size_unets_have_the_published_parameter_counts() {
    // diffusers' UNet2DConditionModel parameter counts for SD 1.5, SD 2.1 and SDXL base 1.0.
    assert_eq!(
        count_under(&SynthSpec::full(Family::Sd1), UNET_PREFIX),
        859_520_964
    );
    assert_eq!(
        count_under(&SynthSpec::full(Family::Sd2), UNET_PREFIX),
        865_910_724
    );
    assert_eq!(
        count_under(&SynthSpec::full(Family::Sdxl), UNET_PREFIX),
        2_567_463_684
    );
}

#[test]
fn full_size_vae_and_clip_l_have_the_published_parameter_counts() {
    // AutoencoderKL of SD: 83,653,863; CLIPTextModel ViT-L/14: 123,060,480 (+77 position ids).
    let sd1 = SynthSpec::full(Family::Sd1);
    assert_eq!(count_under(&sd1, VAE_PREFIX), 83_653_863);
    assert_eq!(count_under(&sd1, LDM_CLIP_PREFIX), 123_060_480 + 77);
}

#[test]
fn names_are_unique_and_shapes_have_no_zero_dimension() {
    for family in [Family::Sd1, Family::Sd2, Family::Sdxl, Family::SdxlRefiner] {
        for spec in [SynthSpec::full(family), SynthSpec::tiny(family)] {
            let tensors = spec.tensors();
            let names: BTreeSet<&str> = tensors.iter().map(|t| t.name.as_str()).collect();
            assert_eq!(names.len(), tensors.len(), "{family:?} has duplicate names");
            assert!(
                tensors.iter().all(|t| t.shape.iter().all(|&d| d > 0)),
                "{family:?}"
            );
        }
    }
}

#[test]
fn real_single_file_names_that_converters_read_are_present() {
    let names =
        |spec: SynthSpec| -> BTreeSet<String> { spec.tensors().into_iter().map(|t| t.name).collect() };
    let sd1 = names(SynthSpec::full(Family::Sd1));
    for key in [
        "model.diffusion_model.input_blocks.1.1.proj_in.weight",
        "model.diffusion_model.input_blocks.3.0.op.weight",
        "model.diffusion_model.output_blocks.2.1.conv.weight",
        "model.diffusion_model.output_blocks.5.2.conv.weight",
        "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.norm1.bias",
        "cond_stage_model.transformer.text_model.embeddings.position_ids",
        "first_stage_model.decoder.up.3.upsample.conv.weight",
        "first_stage_model.encoder.down.1.block.0.nin_shortcut.weight",
        "first_stage_model.encoder.mid.attn_1.q.weight",
        "alphas_cumprod",
    ] {
        assert!(sd1.contains(key), "SD1 lacks {key}");
    }
    let sd2 = names(SynthSpec::full(Family::Sd2));
    for key in [
        "cond_stage_model.model.transformer.resblocks.23.attn.in_proj_weight",
        "cond_stage_model.model.text_projection",
        "cond_stage_model.model.positional_embedding",
        "cond_stage_model.model.ln_final.weight",
    ] {
        assert!(sd2.contains(key), "SD2 lacks {key}");
    }
    let xl = names(SynthSpec::full(Family::Sdxl));
    for key in [
        "model.diffusion_model.label_emb.0.0.weight",
        "model.diffusion_model.label_emb.0.2.bias",
        "model.diffusion_model.middle_block.1.transformer_blocks.9.attn2.to_k.weight",
        "model.diffusion_model.output_blocks.2.2.conv.weight",
        // diffusers' "xl_base" probe key.
        "conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias",
        "conditioner.embedders.0.transformer.text_model.encoder.layers.11.mlp.fc2.weight",
    ] {
        assert!(xl.contains(key), "SDXL lacks {key}");
    }
    assert!(!xl.contains("model.diffusion_model.input_blocks.1.1.proj_in.weight"));
    assert!(!xl.contains("alphas_cumprod"));
}

#[test]
fn skip_connections_exist_exactly_where_widths_change() {
    let xl = SynthSpec::full(Family::Sdxl).tensors();
    let shape = |k: &str| xl.iter().find(|t| t.name == k).map(|t| t.shape.clone());
    // 320 → 640 at level 1; 1280+640 → 1280 in up block 0's last resnet.
    assert_eq!(
        shape("model.diffusion_model.input_blocks.4.0.skip_connection.weight"),
        Some(vec![640, 320, 1, 1])
    );
    assert_eq!(
        shape("model.diffusion_model.input_blocks.5.0.skip_connection.weight"),
        None
    );
    assert_eq!(
        shape("model.diffusion_model.output_blocks.2.0.skip_connection.weight"),
        Some(vec![1280, 1920, 1, 1])
    );
    assert_eq!(
        shape("model.diffusion_model.label_emb.0.0.weight"),
        Some(vec![1280, 2816])
    );
}

#[test]
fn inpaint_variant_widens_only_the_input_convolution() {
    let spec = SynthSpec::tiny(Family::Sd1).with_variant(Variant::Inpaint);
    let conv_in = spec
        .tensors()
        .into_iter()
        .find(|t| t.name == "model.diffusion_model.input_blocks.0.0.weight");
    assert_eq!(conv_in.map(|t| t.shape), Some(vec![32, 9, 3, 3]));
}

#[test]
fn schedule_buffers_follow_the_scaled_linear_schedule() {
    let betas = schedule_buffer("betas").expect("betas");
    assert_eq!(betas.len(), TRAIN_TIMESTEPS);
    assert!((betas[0] - 0.00085).abs() < 1e-12 && (betas[999] - 0.012).abs() < 1e-12);
    let ac = schedule_buffer("alphas_cumprod").expect("alphas_cumprod");
    // SD's alphas_cumprod[999] is about 0.0047 (diffusers scaled_linear schedule).
    assert!((ac[999] - 0.00466).abs() < 1e-4, "{}", ac[999]);
    for name in LDM_SCHEDULE_BUFFERS.iter().chain(&["sigmas"]) {
        let values = schedule_buffer(name).expect("known buffer");
        assert!(values.iter().all(|v| v.is_finite()), "{name}");
    }
    assert_eq!(schedule_buffer("nope"), None);
}
