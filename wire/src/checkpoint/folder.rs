//! diffusers `save_pretrained` folders (`model_index.json` + one sub-folder per component):
//! header-only detection into the same `Detection` a single file gives, so settings, the memory
//! estimate and the `--list` columns are shared. Each component's safetensors header(s) are read
//! (sharded `*.safetensors.index.json` sets and the `.fp16` variant included) and merged into one
//! virtual header whose keys are rooted like the loader's requests (`unet.…`, `vae.…`,
//! `text_encoder.…`, `text_encoder_2.…`). Shapes decide the architecture; each `config.json`
//! fills in what shapes leave open (attention heads, activation, prediction type) and is
//! cross-checked against them. Pickle (`.bin`) weights are refused: they are never unpickled.
//!
//! Layout derivation from diffusers names lives in `folder_layout`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::detect::{
    Decided, Detection, Distillation, Family, ModelLayout, Prediction, Source, Variant, dtype_and_parameters,
};
use super::folder_layout::{self, Config};
use super::header::{CheckpointError, Header};
use super::layout::{TextEncoderKind, TextEncoderLayout};

/// The file that marks a diffusers pipeline folder.
pub const MODEL_INDEX: &str = "model_index.json";

/// One safetensors file of a folder and the root its keys are requested under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentFile {
    /// `unet.`, `vae.`, `text_encoder.` or `text_encoder_2.`.
    pub root: String,
    pub path: PathBuf,
}

/// A detected diffusers folder: what it is and which files hold its weights.
#[derive(Debug, Clone)]
pub struct FolderModel {
    pub detection: Detection,
    pub files: Vec<ComponentFile>,
    /// Total size of every file under the folder, in bytes.
    pub size_bytes: u64,
}

/// Whether `dir` is a diffusers pipeline folder (has `model_index.json`).
pub fn is_diffusers_folder(dir: &Path) -> bool {
    dir.join(MODEL_INDEX).is_file()
}

/// App name of a folder model: from the folder's whole name (`my.model/` → `sd-my-model`), as
/// a folder has no extension to strip.
pub fn app_name_for_folder(rel: &Path) -> String {
    let name = rel.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
    crate::app_name::app_name_for_stem(&name)
}

/// Pipelines whose components this loader can run (diffusers class names).
const PIPELINES: [&str; 6] = [
    "StableDiffusionPipeline",
    "StableDiffusionImg2ImgPipeline",
    "StableDiffusionInpaintPipeline",
    "StableDiffusionXLPipeline",
    "StableDiffusionXLImg2ImgPipeline",
    "StableDiffusionXLInpaintPipeline",
];

/// SDXL micro-conditioning time ids: base 6, refiner 5 (CHECKPOINTS.md §4.4).
const SDXL_BASE_TIME_IDS: usize = 6;
const SDXL_REFINER_TIME_IDS: usize = 5;

/// VAE `scaling_factor` per family (diffusers `AutoencoderKL` configs of the reference models).
const SD_SCALING_FACTOR: f64 = 0.18215;
const SDXL_SCALING_FACTOR: f64 = 0.13025;

/// Detect a diffusers folder without reading tensor data.
pub fn inspect_folder(dir: &Path) -> Result<FolderModel, CheckpointError> {
    let index = read_json(&dir.join(MODEL_INDEX))?;
    let class = index
        .get("_class_name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if !PIPELINES.contains(&class) {
        return Err(CheckpointError::Unsupported {
            what: "diffusers pipeline this server cannot run".into(),
            found: format!("{MODEL_INDEX} `_class_name` is `{class}`"),
        });
    }
    let listed = |name: &str| {
        index
            .get(name)
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().all(|v| !v.is_null()) && !a.is_empty())
    };
    let mut components = vec!["unet", "vae"];
    components.extend(
        ["text_encoder", "text_encoder_2"]
            .into_iter()
            .filter(|c| listed(c)),
    );

    let mut virtual_header = Header {
        path: dir.to_path_buf(),
        file_size: 0,
        data_start: 0,
        tensors: BTreeMap::new(),
        metadata: BTreeMap::new(),
    };
    let mut files = Vec::new();
    let mut configs = BTreeMap::new();
    for name in &components {
        let sub = dir.join(name);
        if !sub.is_dir() {
            return Err(incomplete(format!(
                "{MODEL_INDEX} lists `{name}` but `{name}/` is missing"
            )));
        }
        configs.insert(*name, Config::read(&sub.join("config.json"))?);
        let base = if name.starts_with("text_encoder") {
            "model"
        } else {
            "diffusion_pytorch_model"
        };
        let root = format!("{name}.");
        for path in weight_files(&sub, base)? {
            let header = Header::read(&path)?;
            virtual_header.file_size += header.file_size;
            for (key, info) in header.tensors {
                let full = format!("{root}{key}");
                if virtual_header.tensors.insert(full, info).is_some() {
                    return Err(CheckpointError::Corrupt(format!(
                        "{}: tensor `{key}` is stored in two shards",
                        sub.display()
                    )));
                }
            }
            files.push(ComponentFile {
                root: root.clone(),
                path,
            });
        }
    }
    let scheduler = match dir.join("scheduler").join("scheduler_config.json") {
        p if p.is_file() => Some(Config::read(&p)?),
        _ => None,
    };
    let detection = detect_folder(&virtual_header, &configs, scheduler.as_ref())?;
    Ok(FolderModel {
        detection,
        files,
        size_bytes: folder_size(dir),
    })
}

/// Sum of the sizes of every regular file under `dir` (what the folder costs on disk).
pub fn folder_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => folder_size(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map(|m| m.len()).unwrap_or(0),
            _ => 0,
        })
        .sum()
}

fn incomplete(found: String) -> CheckpointError {
    CheckpointError::Unsupported {
        what: "incomplete diffusers folder".into(),
        found,
    }
}

/// Parse a JSON file, naming the file in any error.
pub(super) fn read_json(path: &Path) -> Result<Value, CheckpointError> {
    let text = std::fs::read_to_string(path).map_err(|source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text)
        .map_err(|e| CheckpointError::Corrupt(format!("{}: not valid JSON: {e}", path.display())))
}

/// The safetensors files of one component: `{base}.safetensors`, a sharded index, or the same
/// with the `.fp16` variant infix, first found wins (diffusers' `variant=None` preference).
fn weight_files(sub: &Path, base: &str) -> Result<Vec<PathBuf>, CheckpointError> {
    for stem in [base.to_string(), format!("{base}.fp16")] {
        let single = sub.join(format!("{stem}.safetensors"));
        if single.is_file() {
            return Ok(vec![single]);
        }
        let index = sub.join(format!("{stem}.safetensors.index.json"));
        if index.is_file() {
            return shard_files(sub, &index);
        }
    }
    let pickles = ["bin", "fp16.bin", "ckpt"]
        .iter()
        .map(|ext| format!("{base}.{ext}"))
        .chain(["pytorch_model.bin".to_string()])
        .find(|f| sub.join(f).is_file());
    if let Some(pickle) = pickles {
        return Err(CheckpointError::Unsupported {
            what: "pickle weights (.bin) are never unpickled; save the model with safetensors \
                   (`save_pretrained(..., safe_serialization=True)`)"
                .into(),
            found: format!("`{}` without a safetensors file", sub.join(pickle).display()),
        });
    }
    Err(incomplete(format!(
        "no `{base}.safetensors` (or sharded index) in `{}`",
        sub.display()
    )))
}

/// Every shard named by a `*.safetensors.index.json` `weight_map`, each once, in order.
fn shard_files(sub: &Path, index: &Path) -> Result<Vec<PathBuf>, CheckpointError> {
    let json = read_json(index)?;
    let map = json
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| CheckpointError::Corrupt(format!("{}: no `weight_map` object", index.display())))?;
    let mut shards: Vec<String> = Vec::new();
    for file in map.values() {
        let file = file.as_str().ok_or_else(|| {
            CheckpointError::Corrupt(format!(
                "{}: `weight_map` value is not a file name",
                index.display()
            ))
        })?;
        // Shards live next to the index; a path elsewhere is not a shard of this folder.
        if file.contains(['/', '\\']) || file.starts_with('.') {
            return Err(CheckpointError::Corrupt(format!(
                "{}: shard `{file}` is not a file name in the component folder",
                index.display()
            )));
        }
        if !shards.iter().any(|s| s == file) {
            shards.push(file.to_string());
        }
    }
    shards.sort();
    let files: Vec<PathBuf> = shards.iter().map(|s| sub.join(s)).collect();
    // Every tensor the index names must be in the shard it names.
    for (tensor, file) in map {
        let path = sub.join(file.as_str().unwrap_or_default());
        let header = Header::read(&path)?;
        if !header.has(tensor) {
            return Err(CheckpointError::Corrupt(format!(
                "{}: index puts `{tensor}` in `{}`, which does not hold it",
                index.display(),
                path.display()
            )));
        }
    }
    Ok(files)
}

/// Build the `Detection` from the merged header and the configs.
fn detect_folder(
    header: &Header,
    configs: &BTreeMap<&str, Config>,
    scheduler: Option<&Config>,
) -> Result<Detection, CheckpointError> {
    let unet_config = &configs["unet"];
    let mut unet = folder_layout::unet(header, "unet.", unet_config)?;
    let variant = match unet.in_channels {
        4 => Variant::Base,
        9 => Variant::Inpaint,
        other => {
            return Err(CheckpointError::Unsupported {
                what: "UNet input channels other than 4 (base) or 9 (inpainting)".into(),
                found: format!("in_channels = {other}"),
            });
        }
    };
    let vae = folder_layout::vae(header, "vae.", &configs["vae"])?;
    let mut text_encoders = Vec::new();
    for name in ["text_encoder", "text_encoder_2"] {
        if let Some(config) = configs.get(name) {
            text_encoders.push(text_encoder(header, name, config)?);
        }
    }
    let mut warnings = Vec::new();
    let family = match (unet.adm_in_channels, text_encoders.len()) {
        (None, 1) if unet.linear_projection => Family::Sd2,
        (None, 1) => Family::Sd1,
        (Some(_), 2) => Family::Sdxl,
        (Some(_), 1) => Family::SdxlRefiner,
        (adm, n) => {
            return Err(CheckpointError::Unsupported {
                what: "diffusers folder whose UNet and text encoders fit no family".into(),
                found: format!("{n} text encoders, add_embedding input {adm:?}"),
            });
        }
    };
    if let Some(adm) = unet.adm_in_channels {
        let ids = if family == Family::Sdxl {
            SDXL_BASE_TIME_IDS
        } else {
            SDXL_REFINER_TIME_IDS
        };
        let pooled = text_encoders
            .last()
            .and_then(|t| t.projection_dim)
            .ok_or_else(|| incomplete("SDXL text encoder without `text_projection.weight`".into()))?;
        let time_dim = unet_config.usize("addition_time_embed_dim");
        let fits = time_dim.is_some_and(|d| pooled + ids * d == adm);
        if !fits {
            return Err(CheckpointError::Unsupported {
                what: "SDXL conditioning sizes that do not fit the text_time scheme".into(),
                found: format!(
                    "add_embedding input {adm}, pooled width {pooled}, {ids} time ids × addition_time_embed_dim {time_dim:?}"
                ),
            });
        }
        unet.addition_time_embed_dim = time_dim;
    }
    let widths: usize = text_encoders.iter().map(|t| t.width).sum();
    if widths != unet.context_dim {
        warnings.push(format!(
            "text encoder width {widths} does not match the UNet's cross-attention width {}",
            unet.context_dim
        ));
    }
    let expected_scale = match family {
        Family::Sdxl | Family::SdxlRefiner => SDXL_SCALING_FACTOR,
        Family::Sd1 | Family::Sd2 => SD_SCALING_FACTOR,
    };
    if let Some(scale) = configs["vae"].f64("scaling_factor")
        && (scale - expected_scale).abs() > 1e-6
    {
        warnings.push(format!(
            "vae scaling_factor {scale} differs from the family's {expected_scale}; the family's is used"
        ));
    }
    if let Some(s) = scheduler {
        scheduler_warnings(s, &mut warnings);
    }

    let prediction = match scheduler.and_then(|s| s.str("prediction_type")) {
        Some("epsilon") => decided(Prediction::Epsilon, Source::Config, true),
        Some("v_prediction") => decided(Prediction::V, Source::Config, true),
        Some(other) => {
            return Err(CheckpointError::Unsupported {
                what: "scheduler prediction type".into(),
                found: format!("prediction_type `{other}`"),
            });
        }
        None if family == Family::Sd2 => decided(Prediction::V, Source::FamilyDefault, false),
        None => decided(Prediction::Epsilon, Source::FamilyDefault, true),
    };
    // diffusers' default image size: `unet.config.sample_size × vae_scale_factor`.
    let factor = vae.downscale_factor();
    let native_resolution = match unet_config.usize("sample_size") {
        Some(s) if s > 0 => {
            let side = u32::try_from(s * factor).unwrap_or(u32::MAX);
            decided((side, side), Source::Config, true)
        }
        _ => {
            let side = match family {
                Family::Sdxl | Family::SdxlRefiner => 1024,
                Family::Sd2 if prediction.value == Prediction::V => 768,
                _ => 512,
            };
            decided((side, side), Source::FamilyDefault, false)
        }
    };
    let zero_snr = scheduler
        .and_then(|s| s.bool("rescale_betas_zero_snr"))
        .unwrap_or(false);
    let distillation = decided(
        Distillation::None,
        Source::FamilyDefault,
        matches!(family, Family::Sd1 | Family::SdxlRefiner),
    );
    let (dtype, parameters) = dtype_and_parameters(header);
    Ok(Detection {
        family,
        variant,
        layout: ModelLayout::Diffusers,
        prediction,
        zero_snr,
        distillation,
        native_resolution,
        dtype,
        parameters,
        unet,
        text_encoders,
        vae,
        metadata: BTreeMap::new(),
        warnings,
    })
}

fn decided<T>(value: T, source: Source, certain: bool) -> Decided<T> {
    Decided {
        value,
        source,
        certain,
    }
}

/// A transformers `CLIPTextModel`/`CLIPTextModelWithProjection` under `name/`: HF naming for
/// every tower; the activation (`hidden_act`) tells CLIP-L from OpenCLIP-derived towers.
fn text_encoder(header: &Header, name: &str, config: &Config) -> Result<TextEncoderLayout, CheckpointError> {
    let prefix = format!("{name}.");
    let mut layout = TextEncoderLayout::derive_hf(header, &prefix)?.ok_or_else(|| {
        incomplete(format!(
            "`{name}` has no `text_model.embeddings.token_embedding.weight`"
        ))
    })?;
    layout.kind = match config.str("hidden_act") {
        Some("quick_gelu") => TextEncoderKind::HfClip,
        Some("gelu") => TextEncoderKind::HfOpenClip,
        other => {
            return Err(CheckpointError::Unsupported {
                what: "text encoder activation".into(),
                found: format!("{name}/config.json hidden_act {other:?}"),
            });
        }
    };
    let heads = config.usize("num_attention_heads").unwrap_or(layout.heads);
    if heads == 0 || !layout.width.is_multiple_of(heads) {
        return Err(contradiction(
            name,
            format!("{heads} heads for width {}", layout.width),
        ));
    }
    layout.heads = heads;
    for (key, found) in [
        ("hidden_size", layout.width),
        ("num_hidden_layers", layout.layers),
        ("intermediate_size", layout.intermediate_size),
        ("vocab_size", layout.vocab_size),
        ("max_position_embeddings", layout.max_positions),
    ] {
        if let Some(said) = config.usize(key)
            && said != found
        {
            return Err(contradiction(
                name,
                format!("config {key} {said}, tensors say {found}"),
            ));
        }
    }
    Ok(layout)
}

/// Config and tensors disagree: the folder cannot be trusted either way.
pub(super) fn contradiction(component: &str, found: String) -> CheckpointError {
    CheckpointError::Unsupported {
        what: format!("{component}/config.json contradicts its tensors"),
        found,
    }
}

/// Scheduler settings the server does not take from the folder (it runs the family's
/// reference schedule) are reported when they differ from it.
fn scheduler_warnings(s: &Config, warnings: &mut Vec<String>) {
    // Reference values: the scheduler_config.json of SD 1.5, SD 2.1 and SDXL base.
    let expect_str = [("beta_schedule", "scaled_linear")];
    for (key, want) in expect_str {
        if let Some(v) = s.str(key)
            && v != want
        {
            warnings.push(format!("scheduler {key} `{v}` is not `{want}`; `{want}` is used"));
        }
    }
    for (key, want) in [("beta_start", 0.00085), ("beta_end", 0.012)] {
        if let Some(v) = s.f64(key)
            && (v - want).abs() > 1e-9
        {
            warnings.push(format!("scheduler {key} {v} is not {want}; {want} is used"));
        }
    }
    if let Some(v) = s.usize("num_train_timesteps")
        && v != 1000
    {
        warnings.push(format!(
            "scheduler num_train_timesteps {v} is not 1000; 1000 is used"
        ));
    }
}

#[cfg(test)]
#[path = "folder_tests.rs"]
mod tests;
