//! Detector table tests (CHECKPOINTS.md §7.2) on synthetic headers built by `synth`.

use std::collections::BTreeMap;

use super::super::synth::{Init, SynthSpec, SynthTensor, synthetic_header};
use super::*;

const ALL: [Family; 4] = [Family::Sd1, Family::Sd2, Family::Sdxl, Family::SdxlRefiner];

fn header(tensors: &[SynthTensor], meta: &[(&str, &str)]) -> Header {
    let metadata: BTreeMap<String, String> =
        meta.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    synthetic_header(tensors, "F16", metadata)
}

fn detect_spec(spec: &SynthSpec, meta: &[(&str, &str)]) -> Detection {
    detect(&header(&spec.tensors(), meta)).expect("detects")
}

fn with_markers(spec: &SynthSpec, markers: &[&str]) -> Vec<SynthTensor> {
    let mut tensors = spec.tensors();
    for m in markers {
        tensors.push(SynthTensor {
            name: m.to_string(),
            shape: vec![0],
            init: Init::Bias,
        });
    }
    tensors
}

fn unsupported(result: Result<Detection, CheckpointError>) -> (String, String) {
    match result {
        Err(CheckpointError::Unsupported { what, found }) => (what, found),
        other => panic!("expected Unsupported, got {other:?}"),
    }
}

fn fact<T>(value: T, source: Source, certain: bool) -> Decided<T> {
    Decided {
        value,
        source,
        certain,
    }
}

#[test]
fn every_family_full_and_tiny_recovers_the_spec_layouts() {
    for family in ALL {
        for spec in [SynthSpec::full(family), SynthSpec::tiny(family)] {
            let d = detect_spec(&spec, &[]);
            assert_eq!(d.family, family);
            assert_eq!(d.variant, Variant::Base);
            assert_eq!(d.layout, spec.layout, "{family:?}");
            assert_eq!(d.unet, spec.unet, "{family:?}");
            assert_eq!(d.text_encoders, spec.text_encoders, "{family:?}");
            assert_eq!(d.vae, spec.vae, "{family:?}");
            assert_eq!(d.parameters, spec.parameters());
            assert_eq!(d.dtype, "F16");
            assert!(d.warnings.is_empty(), "{family:?}: {:?}", d.warnings);
        }
    }
}

#[test]
fn full_size_heads_match_the_real_models() {
    let heads = |f| detect_spec(&SynthSpec::full(f), &[]).unet.attention_heads;
    assert_eq!(heads(Family::Sd1), vec![8, 8, 8, 8]);
    assert_eq!(heads(Family::Sd2), vec![5, 10, 20, 20]);
    assert_eq!(heads(Family::Sdxl), vec![5, 10, 20]);
    assert_eq!(heads(Family::SdxlRefiner), vec![6, 12, 24, 24]);
    let xl = detect_spec(&SynthSpec::full(Family::Sdxl), &[]);
    assert_eq!(xl.unet.addition_time_embed_dim, Some(256));
    assert_eq!(xl.unet.adm_in_channels, Some(2816));
    assert_eq!(
        xl.text_encoders.iter().map(|t| t.heads).collect::<Vec<_>>(),
        vec![12, 20]
    );
    let refiner = detect_spec(&SynthSpec::full(Family::SdxlRefiner), &[]);
    assert_eq!(refiner.unet.addition_time_embed_dim, Some(256));
    assert_eq!(refiner.unet.time_embed_dim, 1536);
}

#[test]
fn sd1_is_epsilon_at_512_by_family_default() {
    let d = detect_spec(&SynthSpec::full(Family::Sd1), &[]);
    assert_eq!(
        d.prediction,
        fact(Prediction::Epsilon, Source::FamilyDefault, true)
    );
    assert_eq!(d.native_resolution, fact((512, 512), Source::FamilyDefault, true));
    assert_eq!(d.distillation.value, Distillation::None);
    assert_eq!(d.family_label(), "SD 1.x");
}

#[test]
fn sd1_inpaint_is_the_inpaint_variant() {
    let d = detect_spec(&SynthSpec::tiny(Family::Sd1).with_variant(Variant::Inpaint), &[]);
    assert_eq!(
        (d.family, d.variant, d.unet.in_channels),
        (Family::Sd1, Variant::Inpaint, 9)
    );
    assert_eq!(d.family_label(), "SD 1.x inpaint");
}

#[test]
fn sd2_ldm_without_metadata_is_uncertain_v_at_768_like_diffusers() {
    let d = detect_spec(&SynthSpec::full(Family::Sd2), &[]);
    assert_eq!(d.layout, ModelLayout::Ldm);
    assert_eq!(d.prediction, fact(Prediction::V, Source::FamilyDefault, false));
    assert_eq!(
        d.native_resolution,
        fact((768, 768), Source::FamilyDefault, false)
    );
    assert!(!d.distillation.certain);
    assert_eq!(d.family_label(), "SD 2.x (v-pred?)");
}

#[test]
fn sd2_in_sgm_layout_with_denoiser_sigmas_is_likely_sd_turbo() {
    let spec = SynthSpec::tiny(Family::Sd2).with_layout(ModelLayout::Sgm);
    let tensors = spec.tensors();
    assert!(tensors.iter().any(|t| t.name == "denoiser.sigmas"));
    let d = detect(&header(&tensors, &[])).expect("detects");
    assert_eq!((d.family, d.layout), (Family::Sd2, ModelLayout::Sgm));
    assert_eq!(d.text_encoders[0].prefix, "conditioner.embedders.0.model.");
    assert_eq!(d.prediction, fact(Prediction::Epsilon, Source::LayoutHint, false));
    assert_eq!(
        d.distillation,
        fact(Distillation::Turbo, Source::LayoutHint, false)
    );
    assert_eq!(d.native_resolution, fact((512, 512), Source::LayoutHint, false));
    assert_eq!(d.family_label(), "SD-Turbo?");
}

#[test]
fn sd2_inpaint_is_epsilon_at_512_for_certain() {
    let d = detect_spec(&SynthSpec::tiny(Family::Sd2).with_variant(Variant::Inpaint), &[]);
    assert_eq!(d.variant, Variant::Inpaint);
    assert_eq!(
        d.prediction,
        fact(Prediction::Epsilon, Source::FamilyDefault, true)
    );
    assert_eq!(d.native_resolution, fact((512, 512), Source::FamilyDefault, true));
}

#[test]
fn sd2_modelspec_settles_prediction_and_resolution() {
    let spec = SynthSpec::tiny(Family::Sd2);
    let d = detect_spec(&spec, &[("modelspec.architecture", "stable-diffusion-v2-512")]);
    assert_eq!(d.prediction, fact(Prediction::Epsilon, Source::Metadata, true));
    assert_eq!(d.native_resolution, fact((512, 512), Source::Metadata, true));
    assert_eq!(d.family_label(), "SD 2.x (eps)");
    let d = detect_spec(&spec, &[("modelspec.prediction_type", "v")]);
    assert_eq!(d.prediction, fact(Prediction::V, Source::Metadata, true));
    assert_eq!(d.native_resolution, fact((768, 768), Source::Metadata, true));
    assert_eq!(d.family_label(), "SD 2.x (v-pred)");
}

#[test]
fn sdxl_base_is_epsilon_at_1024_and_turbo_is_undecided() {
    let d = detect_spec(&SynthSpec::full(Family::Sdxl), &[]);
    assert_eq!(
        d.prediction,
        fact(Prediction::Epsilon, Source::FamilyDefault, true)
    );
    assert_eq!(
        d.native_resolution,
        fact((1024, 1024), Source::FamilyDefault, true)
    );
    assert_eq!(
        d.distillation,
        fact(Distillation::None, Source::FamilyDefault, false)
    );
    assert_eq!(d.family_label(), "SDXL base");
}

#[test]
fn sdxl_v_pred_and_ztsnr_markers_set_v_prediction_and_zero_snr() {
    let spec = SynthSpec::tiny(Family::Sdxl);
    let d = detect(&header(&with_markers(&spec, &["v_pred"]), &[])).expect("detects");
    assert_eq!(d.prediction, fact(Prediction::V, Source::Marker, true));
    assert!(!d.zero_snr);
    assert_eq!(d.family_label(), "SDXL base (v-pred)");
    let meta = [("modelspec.prediction_type", "epsilon")];
    let d = detect(&header(&with_markers(&spec, &["v_pred", "ztsnr"]), &meta)).expect("detects");
    assert_eq!(d.prediction, fact(Prediction::V, Source::Marker, true));
    assert!(d.zero_snr);
    assert!(
        d.warnings.iter().any(|w| w.contains("v-prediction marker")),
        "{:?}",
        d.warnings
    );
}

#[test]
fn sdxl_turbo_modelspec_gives_turbo_at_512() {
    let meta = [
        ("modelspec.architecture", "stable-diffusion-xl-turbo-v1"),
        ("modelspec.resolution", "512x512"),
    ];
    let d = detect_spec(&SynthSpec::tiny(Family::Sdxl), &meta);
    assert_eq!(d.family, Family::Sdxl);
    assert_eq!(d.distillation, fact(Distillation::Turbo, Source::Metadata, true));
    assert_eq!(d.prediction, fact(Prediction::Epsilon, Source::Metadata, true));
    assert_eq!(d.native_resolution, fact((512, 512), Source::Metadata, true));
    assert_eq!(d.family_label(), "SDXL turbo");
    assert_eq!(
        d.metadata.get("modelspec.architecture").map(String::as_str),
        Some("stable-diffusion-xl-turbo-v1")
    );
}

#[test]
fn metadata_that_contradicts_the_weights_is_ignored_with_a_warning() {
    let meta = [
        ("modelspec.architecture", "stable-diffusion-xl-turbo-v1"),
        ("modelspec.resolution", "512x512"),
    ];
    let d = detect_spec(&SynthSpec::tiny(Family::Sd2), &meta);
    assert_eq!(d.family, Family::Sd2);
    assert_eq!(d.distillation.source, Source::FamilyDefault);
    assert_eq!(d.native_resolution.value, (768, 768));
    assert!(
        d.warnings.iter().any(|w| w.contains("contradicts the weights")),
        "{:?}",
        d.warnings
    );
}

#[test]
fn unusable_metadata_values_are_warned_about_and_ignored() {
    let meta = [
        ("modelspec.architecture", "stable-diffusion-v1/lora"),
        ("modelspec.resolution", "huge"),
        ("modelspec.prediction_type", "x0"),
    ];
    let d = detect_spec(&SynthSpec::tiny(Family::Sd1), &meta);
    assert_eq!(d.native_resolution.value, (512, 512));
    assert_eq!(
        d.warnings.len(),
        1,
        "an adapter ID discards the rest: {:?}",
        d.warnings
    );
    let d = detect_spec(&SynthSpec::tiny(Family::Sd1), &meta[1..]);
    assert_eq!(d.warnings.len(), 2, "{:?}", d.warnings);
}

#[test]
fn refiner_is_detected_from_its_single_big_g_tower() {
    let d = detect_spec(&SynthSpec::tiny(Family::SdxlRefiner), &[]);
    assert_eq!(d.family, Family::SdxlRefiner);
    assert_eq!(d.text_encoders.len(), 1);
    assert_eq!(d.text_encoders[0].prefix, "conditioner.embedders.0.model.");
    assert_eq!(d.unet.transformer_depth, vec![0, 1, 1, 0]);
    assert_eq!(d.family_label(), "SDXL refiner");
}

#[test]
fn unclip_depth_svd_edm_and_other_architectures_are_refused_by_name() {
    let base = SynthSpec::tiny(Family::Sd2).tensors();
    for (marker, expected) in [
        ("embedder.model.visual.proj", "unCLIP"),
        (
            "depth_model.model.pretrained.act_postprocess1.0.project.0.weight",
            "depth",
        ),
        (
            "model.diffusion_model.input_blocks.1.0.time_stack.0.in_layers.0.weight",
            "Video",
        ),
        ("edm_vpred.sigma_max", "CosXL"),
        (
            "model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight",
            "SD3",
        ),
        (
            "model.diffusion_model.double_blocks.0.img_attn.qkv.weight",
            "Flux",
        ),
        ("control_model.input_blocks.0.0.weight", "ControlNet"),
    ] {
        let mut tensors = base.clone();
        tensors.push(SynthTensor {
            name: marker.into(),
            shape: vec![4],
            init: Init::Normal,
        });
        let (what, found) = unsupported(detect(&header(&tensors, &[])));
        assert!(what.contains(expected), "{marker}: {what}");
        assert!(found.contains(marker), "{found}");
    }
    let mut tensors = base;
    for m in ["edm_mean", "edm_std"] {
        tensors.push(SynthTensor {
            name: m.into(),
            shape: vec![4],
            init: Init::Normal,
        });
    }
    assert!(
        unsupported(detect(&header(&tensors, &[])))
            .0
            .contains("Playground")
    );
}

#[test]
fn pruned_sdxl_without_mid_attention_is_refused() {
    let tensors: Vec<SynthTensor> = SynthSpec::tiny(Family::Sdxl)
        .tensors()
        .into_iter()
        .filter(|t| !t.name.starts_with("model.diffusion_model.middle_block.1."))
        .collect();
    let (what, _) = unsupported(detect(&header(&tensors, &[])));
    assert!(what.contains("pruned SDXL"), "{what}");
}

#[test]
fn sdxl_with_output_depths_that_do_not_mirror_the_input_is_refused() {
    // SSD-1B-style: some up-block transformer layers removed.
    let tensors: Vec<SynthTensor> = SynthSpec::tiny(Family::Sdxl)
        .tensors()
        .into_iter()
        .filter(|t| {
            !t.name
                .starts_with("model.diffusion_model.output_blocks.0.1.transformer_blocks.1.")
        })
        .collect();
    let (what, found) = unsupported(detect(&header(&tensors, &[])));
    assert!(what.contains("nonstandard"), "{what}");
    assert!(found.contains("output_blocks.0"), "{found}");
}

#[test]
fn pix2pix_and_other_input_widths_are_refused() {
    for (in_ch, expected) in [
        (8, "InstructPix2Pix"),
        (5, "depth"),
        (7, "upscaler"),
        (6, "unusual"),
    ] {
        let mut spec = SynthSpec::tiny(Family::Sd1);
        spec.unet.in_channels = in_ch;
        let (what, found) = unsupported(detect(&header(&spec.tensors(), &[])));
        assert!(what.contains(expected), "{in_ch}: {what}");
        assert_eq!(found, format!("in_channels = {in_ch}"));
    }
}

#[test]
fn prefixless_unet_export_is_refused_as_unet_only() {
    let tensors: Vec<SynthTensor> = SynthSpec::tiny(Family::Sd1)
        .tensors()
        .into_iter()
        .filter_map(|mut t| {
            t.name = t.name.strip_prefix("model.diffusion_model.")?.to_string();
            Some(t)
        })
        .collect();
    let (what, _) = unsupported(detect(&header(&tensors, &[])));
    assert!(what.contains("UNet-only"), "{what}");
}

#[test]
fn lora_and_fp8_files_are_refused() {
    let lora = vec![
        SynthTensor {
            name: "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight".into(),
            shape: vec![4, 320],
            init: Init::Normal,
        },
        SynthTensor {
            name: "lora_unet_down_blocks_0_attentions_0_proj_in.alpha".into(),
            shape: vec![],
            init: Init::Ones,
        },
    ];
    assert!(unsupported(detect(&header(&lora, &[]))).0.contains("LoRA"));
    let spec = SynthSpec::tiny(Family::Sd1);
    let fp8 = synthetic_header(&spec.tensors(), "F8_E4M3", BTreeMap::new());
    let (what, found) = unsupported(detect(&fp8));
    assert!(what.contains("fp8"), "{what}");
    assert!(found.contains("F8_E4M3"), "{found}");
}

#[test]
fn files_without_a_unet_are_unknown() {
    let vae_only: Vec<SynthTensor> = SynthSpec::tiny(Family::Sd1)
        .tensors()
        .into_iter()
        .filter_map(|mut t| {
            t.name = t.name.strip_prefix("first_stage_model.")?.to_string();
            Some(t)
        })
        .collect();
    for (tensors, expected) in [(vae_only, "standalone VAE"), (vec![], "no tensors")] {
        match detect(&header(&tensors, &[])) {
            Err(CheckpointError::Unknown { found }) => assert!(found.contains(expected), "{found}"),
            other => panic!("expected Unknown, got {other:?}"),
        }
    }
}

#[test]
fn missing_vae_or_text_encoder_is_refused_with_what_is_missing() {
    let spec = SynthSpec::tiny(Family::Sd1);
    let no_vae: Vec<SynthTensor> = spec
        .tensors()
        .into_iter()
        .filter(|t| !t.name.starts_with("first_stage_model."))
        .collect();
    assert!(
        unsupported(detect(&header(&no_vae, &[])))
            .0
            .contains("without a VAE")
    );
    let no_te: Vec<SynthTensor> = spec
        .tensors()
        .into_iter()
        .filter(|t| !t.name.starts_with("cond_stage_model."))
        .collect();
    assert!(
        unsupported(detect(&header(&no_te, &[])))
            .0
            .contains("without its text encoder")
    );
}

#[test]
fn text_encoder_narrower_than_the_context_is_a_warning() {
    let mut spec = SynthSpec::tiny(Family::Sd1);
    spec.text_encoders[0].width = 64;
    spec.text_encoders[0].intermediate_size = 256;
    let d = detect_spec(&spec, &[]);
    assert!(
        d.warnings.iter().any(|w| w.contains("does not match")),
        "{:?}",
        d.warnings
    );
}

#[test]
fn files_with_many_ema_tensors_get_a_warning() {
    let mut tensors = SynthSpec::tiny(Family::Sd1).tensors();
    for i in 0..101 {
        tensors.push(SynthTensor {
            name: format!("model_ema.diffusion_model{i}"),
            shape: vec![1],
            init: Init::Normal,
        });
    }
    let d = detect(&header(&tensors, &[])).expect("detects");
    assert!(d.warnings.iter().any(|w| w.contains("EMA")), "{:?}", d.warnings);
}

#[test]
fn old_clip_naming_without_text_model_segment_is_accepted() {
    let tensors: Vec<SynthTensor> = SynthSpec::tiny(Family::Sd1)
        .tensors()
        .into_iter()
        .map(|mut t| {
            t.name = t.name.replace(
                "cond_stage_model.transformer.text_model.",
                "cond_stage_model.transformer.",
            );
            t
        })
        .collect();
    let d = detect(&header(&tensors, &[])).expect("detects");
    assert!(!d.text_encoders[0].has_text_model_segment);
    assert_eq!(d.text_encoders[0].layers, 2);
}
