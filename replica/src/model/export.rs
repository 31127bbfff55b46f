//! A single-file checkpoint written out as a diffusers `save_pretrained` folder: every tensor
//! under its diffusers/transformers name in its component's file, the `config.json` files that
//! describe it, `model_index.json` and `scheduler/scheduler_config.json`. What diffusers'
//! converter (`from_single_file`) changes is changed the same way, through the loader's own key
//! map: VAE attention 1×1 convs become linears, OpenCLIP `in_proj` is split into q/k/v and the
//! towers renamed to HF CLIP, bigG's `text_projection` is stored as a Linear (transposed), and
//! SD2's text encoder keeps 23 of its 24 layers. `make-test-model --layout diffusers` uses it.
//!
//! Tokenizer folders are not written: the replica embeds the CLIP BPE.

use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use sdplane_wire::checkpoint::{self, Detection, Family, Prediction, TextEncoderKind};
use serde_json::json;

use super::clip::EncoderUse;
use super::error::ModelError;
use super::keys::KeyMap;
use super::weights::{MappedFile, Store, Weights};

/// diffusers version the configs claim (the format they follow).
const DIFFUSERS_VERSION: &str = "0.30.0";

/// What was written.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportedFolder {
    pub dir: PathBuf,
    /// The safetensors files, one per component.
    pub files: Vec<PathBuf>,
    pub detection: Detection,
}

/// Write `single` (an LDM/SGM `.safetensors`) as a diffusers folder at `out` with weights in
/// `dtype` (`F32`, `F16` or `BF16`). `out` must not exist yet or be empty.
pub fn write_diffusers_folder(single: &Path, out: &Path, dtype: &str) -> Result<ExportedFolder, ModelError> {
    let candle_dtype = candle_dtype(dtype)?;
    let file = MappedFile::open(single)?;
    let detection = checkpoint::detect(&file.header)?;
    let map = KeyMap::build_with(&detection, &EncoderUse::for_folder(&detection));
    let weights = Weights::new(
        Store::Mmap(std::sync::Arc::new(file)),
        map,
        candle_dtype,
        Device::Cpu,
    );
    write_folder(&weights, detection, out, dtype, false)
}

/// The folder `header` (a single file's header, e.g. a synthetic full-size one) would convert
/// to, with real headers and configs but sparse all-zero tensor data: header-only tests of
/// real-size folders without writing gigabytes.
pub fn write_sparse_diffusers_folder(
    header: &checkpoint::Header,
    out: &Path,
    dtype: &str,
) -> Result<ExportedFolder, ModelError> {
    let candle_dtype = candle_dtype(dtype)?;
    let detection = checkpoint::detect(header)?;
    let map = KeyMap::build_with(&detection, &EncoderUse::for_folder(&detection));
    let weights = Weights::new(Store::from_header(header), map, candle_dtype, Device::Cpu);
    write_folder(&weights, detection, out, dtype, true)
}

fn candle_dtype(dtype: &str) -> Result<DType, ModelError> {
    match dtype {
        "F32" => Ok(DType::F32),
        "F16" => Ok(DType::F16),
        "BF16" => Ok(DType::BF16),
        other => Err(ModelError::invalid(
            "dtype",
            format!("cannot write `{other}` weights"),
        )),
    }
}

/// Every component file and JSON file of the folder.
fn write_folder(
    weights: &Weights,
    detection: Detection,
    out: &Path,
    dtype: &str,
    sparse: bool,
) -> Result<ExportedFolder, ModelError> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |e: std::io::Error| ModelError::Map {
            path: path.clone(),
            message: e.to_string(),
        }
    };
    std::fs::create_dir_all(out).map_err(io(out))?;
    let mut by_root: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for name in weights.requested_names() {
        if let Some((root, _)) = name.split_once('.') {
            by_root.entry(root.to_string()).or_default().push(name);
        }
    }
    let mut files = Vec::new();
    for (root, names) in &by_root {
        // The refiner's only tower is requested as `text_encoder` but saved as `text_encoder_2`.
        let folder_root = if detection.family == Family::SdxlRefiner && root == "text_encoder" {
            "text_encoder_2"
        } else {
            root.as_str()
        };
        let base = if root.starts_with("text_encoder") {
            "model"
        } else {
            "diffusion_pytorch_model"
        };
        let dir = out.join(folder_root);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let path = dir.join(format!("{base}.safetensors"));
        write_component(weights, root, names, dtype, &path, sparse)?;
        files.push(path);
    }
    for (path, value) in configs(&detection, dtype) {
        let path = out.join(path);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
        }
        let text = serde_json::to_string_pretty(&value).unwrap_or_default();
        std::fs::write(&path, text + "\n").map_err(io(&path))?;
    }
    Ok(ExportedFolder {
        dir: out.to_path_buf(),
        files,
        detection,
    })
}

/// One component file: header (keys without the root, padded to 8 bytes), then each tensor.
fn write_component(
    weights: &Weights,
    root: &str,
    names: &[String],
    dtype: &str,
    path: &Path,
    sparse: bool,
) -> Result<(), ModelError> {
    let io = |e: std::io::Error| ModelError::Map {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let size = if dtype == "F32" { 4 } else { 2 };
    let mut header = serde_json::Map::new();
    let mut shapes = Vec::with_capacity(names.len());
    let mut offset = 0u64;
    // transformers 5 saves `CLIPTextModel` without its `text_model.` segment but keeps it in
    // `CLIPTextModelWithProjection` (what diffusers 0.42 + transformers 5.23 `save_pretrained`
    // wrote for the committed manifests); transformers 4 kept it in both. The loader reads both.
    let with_projection = names.iter().any(|n| n.ends_with(".text_projection.weight"));
    let strip = if root.starts_with("text_encoder") && !with_projection {
        "text_model."
    } else {
        ""
    };
    for name in names {
        let shape = weights.resolved_shape(name)?;
        let end = offset + shape.iter().product::<usize>() as u64 * size;
        let key = &name[root.len() + 1..];
        let key = key.strip_prefix(strip).unwrap_or(key);
        header.insert(
            key.to_string(),
            json!({"dtype": dtype, "shape": shape, "data_offsets": [offset, end]}),
        );
        offset = end;
        shapes.push(shape);
    }
    let mut header_bytes = serde_json::Value::Object(header).to_string().into_bytes();
    while !header_bytes.len().is_multiple_of(8) {
        header_bytes.push(b' ');
    }
    let mut w = BufWriter::new(std::fs::File::create(path).map_err(io)?);
    w.write_all(&(header_bytes.len() as u64).to_le_bytes())
        .map_err(io)?;
    w.write_all(&header_bytes).map_err(io)?;
    if sparse {
        // A hole of the data region's length: zeros on read, no disk blocks written.
        let file = w.into_inner().map_err(|e| io(e.into_error()))?;
        return file.set_len(8 + header_bytes.len() as u64 + offset).map_err(io);
    }
    for (name, shape) in names.iter().zip(&shapes) {
        let t = weights.get(shape, name)?.flatten_all()?;
        match t.dtype() {
            DType::F32 => {
                for v in t.to_vec1::<f32>()? {
                    w.write_all(&v.to_le_bytes()).map_err(io)?;
                }
            }
            DType::F16 => {
                for v in t.to_vec1::<half::f16>()? {
                    w.write_all(&v.to_le_bytes()).map_err(io)?;
                }
            }
            _ => {
                for v in t.to_vec1::<half::bf16>()? {
                    w.write_all(&v.to_le_bytes()).map_err(io)?;
                }
            }
        }
    }
    w.into_inner()
        .map_err(|e| io(e.into_error()))?
        .sync_all()
        .map_err(io)?;
    Ok(())
}

/// Every JSON file of the folder: `model_index.json` and one config per component.
fn configs(det: &Detection, dtype: &str) -> Vec<(PathBuf, serde_json::Value)> {
    let sdxl = matches!(det.family, Family::Sdxl | Family::SdxlRefiner);
    let torch_dtype = match dtype {
        "F16" => "float16",
        "BF16" => "bfloat16",
        _ => "float32",
    };
    let u = &det.unet;
    let attn = |d: usize| d > 0;
    let down: Vec<&str> = u
        .transformer_depth
        .iter()
        .map(|&d| {
            if attn(d) {
                "CrossAttnDownBlock2D"
            } else {
                "DownBlock2D"
            }
        })
        .collect();
    let up: Vec<&str> = u
        .transformer_depth
        .iter()
        .rev()
        .map(|&d| {
            if attn(d) {
                "CrossAttnUpBlock2D"
            } else {
                "UpBlock2D"
            }
        })
        .collect();
    let factor = det.vae.downscale_factor().max(1) as u32;
    let side = det.native_resolution.value.0;
    let mut unet = json!({
        "_class_name": "UNet2DConditionModel",
        "_diffusers_version": DIFFUSERS_VERSION,
        "act_fn": "silu",
        "attention_head_dim": u.attention_heads,
        "block_out_channels": u.block_out_channels,
        "center_input_sample": false,
        "cross_attention_dim": u.context_dim,
        "down_block_types": down,
        "downsample_padding": 1,
        "flip_sin_to_cos": true,
        "freq_shift": 0,
        "in_channels": u.in_channels,
        "layers_per_block": u.layers_per_block,
        "mid_block_scale_factor": 1,
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "norm_eps": 1e-5,
        "norm_num_groups": 32,
        "out_channels": u.out_channels,
        "sample_size": side / factor,
        // diffusers needs a count for blocks without attention too; 1 is its default.
        "transformer_layers_per_block": u.transformer_depth.iter().map(|&d| d.max(1)).collect::<Vec<_>>(),
        "up_block_types": up,
        "upcast_attention": false,
        "use_linear_projection": u.linear_projection,
    });
    if let (Some(adm), Some(time_dim)) = (u.adm_in_channels, u.addition_time_embed_dim) {
        unet["addition_embed_type"] = json!("text_time");
        unet["addition_time_embed_dim"] = json!(time_dim);
        unet["projection_class_embeddings_input_dim"] = json!(adm);
    }
    let v = &det.vae;
    let vae = json!({
        "_class_name": "AutoencoderKL",
        "_diffusers_version": DIFFUSERS_VERSION,
        "act_fn": "silu",
        "block_out_channels": v.block_out_channels,
        "down_block_types": vec!["DownEncoderBlock2D"; v.block_out_channels.len()],
        "force_upcast": sdxl,
        "in_channels": v.image_channels,
        "latent_channels": v.latent_channels,
        "layers_per_block": v.layers_per_block,
        "norm_num_groups": 32,
        "out_channels": v.image_channels,
        "sample_size": side,
        // diffusers' AutoencoderKL configs of SD 1.x/2.x and SDXL.
        "scaling_factor": if sdxl { 0.13025 } else { 0.18215 },
        "up_block_types": vec!["UpDecoderBlock2D"; v.block_out_channels.len()],
    });
    let uses = EncoderUse::for_folder(det);
    let mut out = vec![
        (PathBuf::from("unet/config.json"), unet),
        (PathBuf::from("vae/config.json"), vae),
    ];
    let mut index = json!({
        "_class_name": match det.family {
            Family::Sdxl => "StableDiffusionXLPipeline",
            Family::SdxlRefiner => "StableDiffusionXLImg2ImgPipeline",
            Family::Sd1 | Family::Sd2 => "StableDiffusionPipeline",
        },
        "_diffusers_version": DIFFUSERS_VERSION,
        "scheduler": ["diffusers", "EulerDiscreteScheduler"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    });
    let encoders = det.text_encoders.iter().zip(&uses);
    // The SDXL refiner has only the bigG tower, saved as `text_encoder_2`.
    let roots: Vec<&str> = if det.family == Family::SdxlRefiner {
        vec!["text_encoder_2"]
    } else {
        vec!["text_encoder", "text_encoder_2"]
    };
    if det.family == Family::SdxlRefiner {
        index["text_encoder"] = json!([null, null]);
        index["tokenizer"] = json!([null, null]);
    }
    for (root, (te, usage)) in roots.into_iter().zip(encoders) {
        let class = if usage.projection {
            "CLIPTextModelWithProjection"
        } else {
            "CLIPTextModel"
        };
        let quick = te.kind == TextEncoderKind::HfClip;
        let mut config = json!({
            "architectures": [class],
            "attention_dropout": 0.0,
            "bos_token_id": 0,
            "eos_token_id": 2,
            "hidden_act": if quick { "quick_gelu" } else { "gelu" },
            "hidden_size": te.width,
            "initializer_factor": 1.0,
            "initializer_range": 0.02,
            "intermediate_size": te.intermediate_size,
            "layer_norm_eps": 1e-5,
            "max_position_embeddings": te.max_positions,
            "model_type": "clip_text_model",
            "num_attention_heads": te.heads,
            "num_hidden_layers": usage.layers,
            "pad_token_id": 1,
            "torch_dtype": torch_dtype,
            "vocab_size": te.vocab_size,
        });
        config["projection_dim"] = json!(te.projection_dim.unwrap_or(te.width));
        index[root] = json!(["transformers", class]);
        out.push((PathBuf::from(format!("{root}/config.json")), config));
    }
    let prediction = match det.prediction.value {
        Prediction::Epsilon => "epsilon",
        Prediction::V => "v_prediction",
    };
    let scheduler = json!({
        "_class_name": "EulerDiscreteScheduler",
        "_diffusers_version": DIFFUSERS_VERSION,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "interpolation_type": "linear",
        "num_train_timesteps": 1000,
        "prediction_type": prediction,
        "rescale_betas_zero_snr": det.zero_snr,
        "steps_offset": 1,
        "timestep_spacing": "leading",
        "use_karras_sigmas": false,
    });
    out.push((PathBuf::from("scheduler/scheduler_config.json"), scheduler));
    out.push((PathBuf::from(checkpoint::folder::MODEL_INDEX), index));
    out
}
