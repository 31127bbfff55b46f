//! diffusers folders hold the same weights as the single file they were converted from, so
//! loading either must give the same text embeddings, UNet output and VAE decode (bit-for-bit
//! up to 1e-6). The folder is written by `make-test-model --layout diffusers`, which converts
//! as diffusers' `from_single_file` + `save_pretrained` do (SD2 drops the last text layer).

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use sdplane_replica::model::SdModel;
use sdplane_replica::test_model::{self, TestFamily, TestLayout, TestModelOptions, TestPrediction};
use sdplane_wire::checkpoint::{self, Family, ModelLayout, Prediction, Source};

fn load(path: &Path) -> SdModel {
    SdModel::load(path, &Device::Cpu, DType::F32, &|_, _| {}).expect("load")
}

fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let d = (a - b)
        .and_then(|d| d.abs())
        .and_then(|d| d.flatten_all())
        .expect("diff");
    d.max(0).and_then(|m| m.to_scalar::<f32>()).expect("max")
}

/// Deterministic, input-dependent values of `shape` in about [-1, 1].
fn ramp(shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n).map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0).collect();
    Tensor::from_vec(values, shape, &Device::Cpu).expect("ramp")
}

/// Write `family` both ways with one seed; return the single file, the folder and their tempdir.
fn both(
    family: TestFamily,
    opts: TestModelOptions,
) -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("model.safetensors");
    let folder = dir.path().join("model-folder");
    test_model::write(family, &opts, &file).expect("single file");
    let folder_opts = TestModelOptions {
        layout: TestLayout::Diffusers,
        ..opts
    };
    let written = test_model::write(family, &folder_opts, &folder).expect("folder");
    assert_eq!(written.path, folder);
    assert!(folder.join("model_index.json").is_file());
    (dir, file, folder)
}

fn assert_same_outputs(family: TestFamily, opts: TestModelOptions) {
    let (_dir, file, folder) = both(family, opts);
    let single = load(&file);
    let diffusers = load(&folder);
    let (a, b) = (&single.detection, &diffusers.detection);
    assert_eq!(b.layout, ModelLayout::Diffusers);
    assert_eq!((a.family, a.variant), (b.family, b.variant));
    assert_eq!(a.prediction.value, b.prediction.value);
    assert_eq!(b.prediction.source, Source::Config);
    assert_eq!(a.native_resolution.value, b.native_resolution.value);
    assert_eq!(a.unet.block_out_channels, b.unet.block_out_channels);
    assert_eq!(a.unet.attention_heads, b.unet.attention_heads);
    assert_eq!(a.unet.addition_time_embed_dim, b.unet.addition_time_embed_dim);
    assert_eq!(a.vae.block_out_channels, b.vae.block_out_channels);
    assert!(b.warnings.is_empty(), "{:?}", b.warnings);

    let prompts = ["a photograph of an astronaut riding a horse", ""];
    let ta = single.encode_prompts(&prompts).expect("encode single");
    let tb = diffusers.encode_prompts(&prompts).expect("encode folder");
    let context_err = max_abs(&ta.context, &tb.context);
    assert!(context_err <= 1e-6, "{family:?} context differs by {context_err}");
    match (&ta.pooled, &tb.pooled) {
        (Some(pa), Some(pb)) => {
            let err = max_abs(pa, pb);
            assert!(err <= 1e-6, "{family:?} pooled differs by {err}");
        }
        (None, None) => {}
        other => panic!("{family:?}: pooled present in one only: {other:?}"),
    }

    let c = single.latent_channels();
    let latents = ramp(&[2, c, 8, 8]);
    let time_ids = match a.family {
        Family::Sdxl => Some(Tensor::new(&[[64f32, 64., 0., 0., 64., 64.]; 2], &Device::Cpu).expect("ids")),
        Family::SdxlRefiner => Some(Tensor::new(&[[64f32, 64., 0., 0., 6.]; 2], &Device::Cpu).expect("ids")),
        _ => None,
    };
    let ua = single
        .unet_forward(
            &latents,
            500.0,
            &ta.context,
            ta.pooled.as_ref(),
            time_ids.as_ref(),
        )
        .expect("unet single");
    let ub = diffusers
        .unet_forward(
            &latents,
            500.0,
            &tb.context,
            tb.pooled.as_ref(),
            time_ids.as_ref(),
        )
        .expect("unet folder");
    let unet_err = max_abs(&ua, &ub);
    assert!(unet_err <= 1e-6, "{family:?} UNet output differs by {unet_err}");

    let da = single.vae_decode(&latents).expect("decode single");
    let db = diffusers.vae_decode(&latents).expect("decode folder");
    let vae_err = max_abs(&da, &db);
    assert!(vae_err <= 1e-6, "{family:?} VAE decode differs by {vae_err}");
    println!("{family:?}: context {context_err:e}, unet {unet_err:e}, vae {vae_err:e}");
}

#[test]
fn sd15_folder_gives_the_single_files_embeddings_unet_output_and_decode() {
    assert_same_outputs(
        TestFamily::Sd15,
        TestModelOptions {
            seed: 1,
            ..TestModelOptions::default()
        },
    );
}

#[test]
fn sd21_v_folder_with_one_text_layer_dropped_matches_the_single_files_penultimate_layer() {
    let opts = TestModelOptions {
        seed: 3,
        prediction: Some(TestPrediction::V),
        ..TestModelOptions::default()
    };
    assert_same_outputs(TestFamily::Sd21, opts.clone());
    let (_dir, file, folder) = both(TestFamily::Sd21, opts);
    let single = checkpoint::inspect(&file).expect("single");
    let det = checkpoint::inspect(&folder).expect("folder");
    assert_eq!(det.text_encoders[0].layers + 1, single.text_encoders[0].layers);
    assert_eq!(det.prediction.value, Prediction::V);
}

#[test]
fn sdxl_folder_gives_the_single_files_embeddings_pooled_vector_unet_output_and_decode() {
    assert_same_outputs(
        TestFamily::Sdxl,
        TestModelOptions {
            seed: 2,
            ..TestModelOptions::default()
        },
    );
}

#[test]
fn sdxl_refiner_folder_stores_its_only_tower_as_text_encoder_2_and_matches() {
    assert_same_outputs(
        TestFamily::SdxlRefiner,
        TestModelOptions {
            seed: 4,
            ..TestModelOptions::default()
        },
    );
}

#[test]
fn an_f16_folder_loads_and_reports_its_dtype() {
    let (_dir, _file, folder) = both(
        TestFamily::Sd15,
        TestModelOptions {
            dtype: test_model::TestDtype::F16,
            ..TestModelOptions::default()
        },
    );
    let det = checkpoint::inspect(&folder).expect("inspect");
    assert_eq!(det.dtype, "F16");
    load(&folder);
}

#[test]
fn a_config_that_contradicts_the_tensors_is_refused_naming_both() {
    let (_dir, _file, folder) = both(TestFamily::Sd15, TestModelOptions::default());
    let path = folder.join("unet/config.json");
    let text = std::fs::read_to_string(&path).expect("config");
    let mut config: serde_json::Value = serde_json::from_str(&text).expect("json");
    config["cross_attention_dim"] = serde_json::json!(4096);
    std::fs::write(&path, config.to_string()).expect("write");
    let err = checkpoint::inspect(&folder).expect_err("contradiction");
    let message = err.to_string();
    assert!(
        message.contains("contradicts") && message.contains("cross_attention_dim"),
        "{message}"
    );
    let load_err = SdModel::load(&folder, &Device::Cpu, DType::F32, &|_, _| {})
        .err()
        .expect("refused");
    assert_eq!(load_err.kind(), "unsupported_model");
}

#[test]
fn a_sharded_unet_loads_like_the_single_component_file() {
    let (_dir, _file, folder) = both(TestFamily::Sd15, TestModelOptions::default());
    let unet = folder.join("unet");
    let whole = unet.join("diffusion_pytorch_model.safetensors");
    let header = checkpoint::Header::read(&whole).expect("header");
    let bytes = std::fs::read(&whole).expect("read");
    // Two shards: keys split alternately, each a valid safetensors file.
    let mut weight_map = serde_json::Map::new();
    for shard in 0..2 {
        let name = format!("diffusion_pytorch_model-0000{}-of-00002.safetensors", shard + 1);
        let mut json = serde_json::Map::new();
        let mut data = Vec::new();
        for (key, info) in header.tensors.iter().skip(shard).step_by(2) {
            let start = (header.data_start + info.data_offsets.0) as usize;
            let end = (header.data_start + info.data_offsets.1) as usize;
            let offset = data.len();
            data.extend_from_slice(&bytes[start..end]);
            json.insert(
                key.clone(),
                serde_json::json!({"dtype": info.dtype, "shape": info.shape, "data_offsets": [offset, data.len()]}),
            );
            weight_map.insert(key.clone(), serde_json::json!(name));
        }
        let mut head = serde_json::Value::Object(json).to_string().into_bytes();
        while !head.len().is_multiple_of(8) {
            head.push(b' ');
        }
        let mut out = (head.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(&head);
        out.extend_from_slice(&data);
        std::fs::write(unet.join(&name), out).expect("shard");
    }
    std::fs::remove_file(&whole).expect("remove");
    std::fs::write(
        unet.join("diffusion_pytorch_model.safetensors.index.json"),
        serde_json::json!({"metadata": {}, "weight_map": weight_map}).to_string(),
    )
    .expect("index");
    let model = load(&folder);
    assert_eq!(model.detection.family, Family::Sd1);
    let ctx = model.encode_prompts(&["x"]).expect("encode").context;
    let latents = ramp(&[1, 4, 8, 8]);
    model
        .unet_forward(&latents, 10.0, &ctx, None, None)
        .expect("unet runs from shards");
}

/// Rewrite `file` with every key renamed by `rename` (same bytes, new header).
fn rename_keys(file: &Path, rename: impl Fn(&str) -> String) {
    let header = checkpoint::Header::read(file).expect("header");
    let bytes = std::fs::read(file).expect("read");
    let mut json = serde_json::Map::new();
    for (key, info) in &header.tensors {
        json.insert(
            rename(key),
            serde_json::json!({"dtype": info.dtype, "shape": info.shape, "data_offsets": [info.data_offsets.0, info.data_offsets.1]}),
        );
    }
    let mut head = serde_json::Value::Object(json).to_string().into_bytes();
    while !head.len().is_multiple_of(8) {
        head.push(b' ');
    }
    let mut out = (head.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&head);
    out.extend_from_slice(&bytes[header.data_start as usize..]);
    std::fs::write(file, out).expect("write");
}

#[test]
fn transformers_4_text_encoder_naming_with_the_text_model_segment_loads_the_same() {
    let (_dir, file, folder) = both(TestFamily::Sd15, TestModelOptions::default());
    let te = folder.join("text_encoder/model.safetensors");
    let before = checkpoint::Header::read(&te).expect("header");
    assert!(
        before.has("embeddings.token_embedding.weight"),
        "writer follows transformers 5 naming"
    );
    rename_keys(&te, |k| format!("text_model.{k}"));
    let single = load(&file);
    let diffusers = load(&folder);
    let a = single.encode_prompts(&["a red cube"]).expect("single");
    let b = diffusers.encode_prompts(&["a red cube"]).expect("folder");
    assert!(max_abs(&a.context, &b.context) <= 1e-6);
}

#[test]
fn real_size_folders_detect_like_their_single_files_and_every_requested_tensor_resolves() {
    use sdplane_wire::checkpoint::synth::{SynthSpec, synthetic_header};
    for family in [Family::Sd1, Family::Sd2, Family::Sdxl, Family::SdxlRefiner] {
        let header = synthetic_header(&SynthSpec::full(family).tensors(), "F16", Default::default());
        let single = checkpoint::detect(&header).expect("single-file detection");
        let dir = tempfile::tempdir().expect("tempdir");
        let folder = dir.path().join("full");
        sdplane_replica::model::export::write_sparse_diffusers_folder(&header, &folder, "F16")
            .expect("sparse folder");
        let (det, unused) = SdModel::check_folder_mapping(&folder).expect("folder mapping");
        assert!(unused.is_empty(), "{family:?}: unused {unused:?}");
        assert_eq!(det.family, single.family);
        assert_eq!(det.unet.block_out_channels, single.unet.block_out_channels);
        assert_eq!(det.unet.transformer_depth, single.unet.transformer_depth);
        assert_eq!(
            det.unet.attention_heads, single.unet.attention_heads,
            "{family:?} heads"
        );
        assert_eq!(det.unet.adm_in_channels, single.unet.adm_in_channels);
        assert_eq!(
            det.unet.addition_time_embed_dim,
            single.unet.addition_time_embed_dim
        );
        assert_eq!(
            det.vae,
            checkpoint::VaeLayout {
                prefix: "vae.".into(),
                ..single.vae.clone()
            }
        );
        assert_eq!(det.native_resolution.value, single.native_resolution.value);
        let widths: Vec<usize> = det.text_encoders.iter().map(|t| t.width).collect();
        let single_widths: Vec<usize> = single.text_encoders.iter().map(|t| t.width).collect();
        assert_eq!(widths, single_widths);
        assert!(det.warnings.is_empty(), "{family:?}: {:?}", det.warnings);
        // What the real folders carry (diffusers configs of SD 1.5, SD 2.1, SDXL base/refiner).
        let unet: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(folder.join("unet/config.json")).expect("read"))
                .expect("json");
        let expected_heads = match family {
            Family::Sd1 => serde_json::json!([8, 8, 8, 8]),
            Family::Sd2 => serde_json::json!([5, 10, 20, 20]),
            Family::Sdxl => serde_json::json!([5, 10, 20]),
            Family::SdxlRefiner => serde_json::json!([6, 12, 24, 24]),
        };
        assert_eq!(unet["attention_head_dim"], expected_heads, "{family:?}");
        let text_layers: Vec<usize> = det.text_encoders.iter().map(|t| t.layers).collect();
        let expected_layers = match family {
            Family::Sd1 => vec![12],
            Family::Sd2 => vec![23],
            Family::Sdxl => vec![12, 32],
            Family::SdxlRefiner => vec![32],
        };
        assert_eq!(text_layers, expected_layers, "{family:?}");
    }
}

#[test]
fn a_diffusers_folder_is_written_whole_or_not_at_all_and_never_over_an_existing_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("folder");
    let opts = TestModelOptions {
        layout: TestLayout::Diffusers,
        ..TestModelOptions::default()
    };
    let written = test_model::write(TestFamily::Sdxl, &opts, &out).expect("write folder");
    assert_eq!(written.bytes, sdplane_wire::checkpoint::folder::folder_size(&out));
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        vec!["folder".to_string()],
        "no partial or single file is left behind"
    );
    let d = sdplane_wire::checkpoint::inspect(&out).expect("detect folder");
    assert_eq!((d.family, d.layout), (Family::Sdxl, ModelLayout::Diffusers));
    let err = test_model::write(TestFamily::Sdxl, &opts, &out).expect_err("exists");
    assert_eq!(err.kind(), "invalid_options");
}
