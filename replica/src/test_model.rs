//! `sdplane make-test-model`: random weights in the real single-file layout of a family, or
//! the same weights as a diffusers `save_pretrained` folder (`--layout diffusers`).
//!
//! The key list and shapes come from `sdplane_wire::checkpoint::synth` (tiny by default, the
//! real sizes with `--full-size`); values come from a seeded ChaCha generator so the same
//! arguments always give the same bytes. The file is streamed tensor by tensor after a
//! header written here, so even a full-size SDXL never needs a second copy in memory.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use sdplane_wire::checkpoint::synth::{Init, SynthSpec, SynthTensor, schedule_buffer};
use sdplane_wire::checkpoint::{Family, ModelLayout, Prediction, Variant};

/// Families `make-test-model` can write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TestFamily {
    /// SD 1.5 layout (LDM, CLIP-L).
    Sd15,
    /// SD 2.1 layout (LDM, OpenCLIP ViT-H); with `--turbo`, the SD-Turbo SGM layout.
    Sd21,
    /// SDXL base layout (SGM, CLIP-L + OpenCLIP bigG).
    Sdxl,
    /// SDXL refiner layout (SGM, OpenCLIP bigG only).
    SdxlRefiner,
}

impl TestFamily {
    pub fn family(self) -> Family {
        match self {
            Self::Sd15 => Family::Sd1,
            Self::Sd21 => Family::Sd2,
            Self::Sdxl => Family::Sdxl,
            Self::SdxlRefiner => Family::SdxlRefiner,
        }
    }
}

/// Float dtype of the written weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum TestDtype {
    #[default]
    F32,
    F16,
    Bf16,
}

impl TestDtype {
    /// The safetensors dtype string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::Bf16 => "BF16",
        }
    }

    fn size(self) -> u64 {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::Bf16 => 2,
        }
    }
}

/// How the model is stored on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum TestLayout {
    /// One `.safetensors` file in the family's LDM/SGM key layout.
    #[default]
    SingleFile,
    /// A diffusers folder (`model_index.json`, one file per component): the single file's
    /// tensors under their diffusers names, converted as diffusers' `from_single_file` does.
    Diffusers,
}

/// `modelspec.prediction_type` to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TestPrediction {
    V,
    Epsilon,
}

/// What to write besides the family.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TestModelOptions {
    /// Real sizes instead of the tiny test sizes.
    pub full_size: bool,
    pub seed: u64,
    pub dtype: TestDtype,
    /// 9 input channels.
    pub inpaint: bool,
    /// Turbo Model Spec metadata (SD 2.1: also the SGM key layout of `sd_turbo.safetensors`).
    pub turbo: bool,
    /// Write `modelspec.prediction_type`.
    pub prediction: Option<TestPrediction>,
    /// Single file or diffusers folder.
    pub layout: TestLayout,
}

/// What was written.
#[derive(Debug, Clone, PartialEq)]
pub struct WrittenModel {
    pub path: PathBuf,
    pub spec: SynthSpec,
    pub metadata: BTreeMap<String, String>,
    /// Elements over all tensors.
    pub parameters: u64,
    /// File size.
    pub bytes: u64,
}

/// Why a test model could not be written.
#[derive(Debug, thiserror::Error)]
pub enum TestModelError {
    #[error("cannot write {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("invalid test-model options: {0}")]
    InvalidOptions(String),
    #[error("cannot write the diffusers folder: {0}")]
    Export(#[from] crate::model::ModelError),
}

impl TestModelError {
    /// Short stable kind for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Io { .. } => "io",
            Self::InvalidOptions(_) => "invalid_options",
            Self::Export(_) => "export",
        }
    }
}

/// The synthetic layout for `family` with `opts` (sizes, variant, key layout).
pub fn spec_for(family: TestFamily, opts: &TestModelOptions) -> Result<SynthSpec, TestModelError> {
    let invalid = |m: &str| Err(TestModelError::InvalidOptions(m.into()));
    if opts.turbo && matches!(family, TestFamily::Sd15 | TestFamily::SdxlRefiner) {
        return invalid("only sd21 (SD-Turbo) and sdxl (SDXL-Turbo) have turbo versions");
    }
    if opts.turbo && opts.inpaint {
        return invalid("there is no turbo inpainting model");
    }
    if opts.turbo && opts.prediction == Some(TestPrediction::V) {
        return invalid("turbo models predict epsilon");
    }
    if opts.inpaint && family == TestFamily::SdxlRefiner {
        return invalid("there is no SDXL refiner inpainting model");
    }
    let base = if opts.full_size {
        SynthSpec::full(family.family())
    } else {
        SynthSpec::tiny(family.family())
    };
    let variant = if opts.inpaint {
        Variant::Inpaint
    } else {
        Variant::Base
    };
    let layout = if family == TestFamily::Sd21 && opts.turbo {
        ModelLayout::Sgm
    } else {
        base.layout
    };
    Ok(base.with_variant(variant).with_layout(layout))
}

/// `__metadata__` for `family` with `opts`: Model Spec keys as Stability writes them for SDXL
/// and turbo files (CHECKPOINTS.md §1.2); none for SD 1.5/2.1 unless asked, like the originals.
pub fn metadata_for(family: TestFamily, opts: &TestModelOptions) -> BTreeMap<String, String> {
    let mut meta = BTreeMap::new();
    let architecture = match (family, opts.turbo, opts.inpaint) {
        (TestFamily::Sdxl, true, _) => Some("stable-diffusion-xl-turbo-v1"),
        (TestFamily::Sdxl, false, false) => Some("stable-diffusion-xl-v1-base"),
        (TestFamily::SdxlRefiner, ..) => Some("stable-diffusion-xl-v1-refiner"),
        // SwarmUI's class for SD-Turbo; the Model Spec list has no ID for it.
        (TestFamily::Sd21, true, _) => Some("stable-diffusion-v2-turbo"),
        _ => None,
    };
    if let Some(arch) = architecture {
        let resolution = if opts.turbo { "512x512" } else { "1024x1024" };
        meta.insert("modelspec.sai_model_spec".into(), "1.0.0".into());
        meta.insert("modelspec.architecture".into(), arch.into());
        meta.insert("modelspec.implementation".into(), "sgm".into());
        meta.insert(
            "modelspec.title".into(),
            format!("sdplane test model ({family:?})"),
        );
        meta.insert("modelspec.resolution".into(), resolution.into());
    }
    if let Some(p) = opts.prediction {
        let value = match p {
            TestPrediction::V => "v",
            TestPrediction::Epsilon => "epsilon",
        };
        meta.insert("modelspec.prediction_type".into(), value.into());
    }
    meta
}

/// Write a random-weight checkpoint of `family` to `out` (parent folders are created): a file,
/// or with `TestLayout::Diffusers` a folder holding the same weights. Either appears under its
/// name only once complete.
pub fn write(
    family: TestFamily,
    opts: &TestModelOptions,
    out: &Path,
) -> Result<WrittenModel, TestModelError> {
    if opts.layout == TestLayout::Diffusers {
        return write_folder(family, opts, out);
    }
    write_single_file(family, opts, out)
}

/// The single file written next to `out`, exported into `out.partial/`, renamed into place.
fn write_folder(
    family: TestFamily,
    opts: &TestModelOptions,
    out: &Path,
) -> Result<WrittenModel, TestModelError> {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| TestModelError::InvalidOptions(format!("`{}` names no folder", out.display())))?;
    if out.exists() {
        return Err(TestModelError::InvalidOptions(format!(
            "`{}` already exists; a diffusers folder is written only to a new path",
            out.display()
        )));
    }
    let single = out.with_file_name(format!("{name}.single.safetensors"));
    let partial = out.with_file_name(format!("{name}.partial"));
    let written = write_single_file(family, opts, &single)?;
    if partial.exists() {
        std::fs::remove_dir_all(&partial).map_err(io(&partial))?;
    }
    let exported = crate::model::export::write_diffusers_folder(&single, &partial, opts.dtype.as_str());
    std::fs::remove_file(&single).map_err(io(&single))?;
    exported?;
    std::fs::rename(&partial, out).map_err(io(out))?;
    let bytes = sdplane_wire::checkpoint::folder::folder_size(out);
    tracing::info!(path = %out.display(), family = ?family, bytes, "wrote diffusers test model");
    Ok(WrittenModel {
        path: out.to_path_buf(),
        bytes,
        ..written
    })
}

/// Write the single `.safetensors` file.
fn write_single_file(
    family: TestFamily,
    opts: &TestModelOptions,
    out: &Path,
) -> Result<WrittenModel, TestModelError> {
    let spec = spec_for(family, opts)?;
    let metadata = metadata_for(family, opts);
    let mut tensors = spec.tensors();
    // 8-byte dtypes first so every tensor stays aligned to its element size.
    tensors.sort_by_key(|t| !t.is_integer());
    let header = header_bytes(&tensors, opts.dtype, &metadata);

    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    let partial = out.with_extension("safetensors.partial");
    let file = File::create(&partial).map_err(io(&partial))?;
    // Large buffer: full-size files are gigabytes written in small tensors' worth of bytes.
    let mut w = BufWriter::with_capacity(8 << 20, file);
    w.write_all(&(header.len() as u64).to_le_bytes())
        .map_err(io(&partial))?;
    w.write_all(&header).map_err(io(&partial))?;
    for (index, t) in tensors.iter().enumerate() {
        write_tensor(&mut w, t, index as u64, opts).map_err(io(&partial))?;
    }
    let file = w.into_inner().map_err(|e| io(&partial)(e.into_error()))?;
    file.sync_all().map_err(io(&partial))?;
    let bytes = file.metadata().map_err(io(&partial))?.len();
    std::fs::rename(&partial, out).map_err(io(out))?;
    tracing::info!(path = %out.display(), family = ?family, bytes, "wrote test model");
    let parameters = tensors.iter().map(SynthTensor::numel).sum();
    Ok(WrittenModel {
        path: out.to_path_buf(),
        spec,
        metadata,
        parameters,
        bytes,
    })
}

/// Map an I/O error on `path` to `TestModelError::Io`.
fn io(path: &Path) -> impl Fn(std::io::Error) -> TestModelError + '_ {
    move |source| TestModelError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The JSON header, padded with spaces to a multiple of 8 bytes (as the `safetensors` crate
/// pads it) so the data region starts aligned.
fn header_bytes(tensors: &[SynthTensor], dtype: TestDtype, metadata: &BTreeMap<String, String>) -> Vec<u8> {
    let mut map = serde_json::Map::new();
    if !metadata.is_empty() {
        map.insert("__metadata__".into(), serde_json::json!(metadata));
    }
    let mut offset = 0u64;
    for t in tensors {
        let (name, size) = if t.is_integer() {
            ("I64", 8)
        } else {
            (dtype.as_str(), dtype.size())
        };
        let end = offset + t.numel() * size;
        map.insert(
            t.name.clone(),
            serde_json::json!({"dtype": name, "shape": t.shape, "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    let mut bytes = serde_json::Value::Object(map).to_string().into_bytes();
    while !bytes.len().is_multiple_of(8) {
        bytes.push(b' ');
    }
    bytes
}

/// Elements generated and written per chunk.
const CHUNK: usize = 1 << 16;

/// Write one tensor's values. Each tensor draws from its own ChaCha stream (`seed`, stream =
/// tensor index), so values do not depend on how other tensors are sized.
fn write_tensor(
    w: &mut impl Write,
    t: &SynthTensor,
    index: u64,
    opts: &TestModelOptions,
) -> std::io::Result<()> {
    let n = t.numel() as usize;
    if t.init == Init::PositionIds {
        for i in 0..n as i64 {
            w.write_all(&i.to_le_bytes())?;
        }
        return Ok(());
    }
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    rng.set_stream(index);
    let fan_in: usize = t.shape.iter().skip(1).product::<usize>().max(1);
    let scale = 1.0 / (fan_in as f32).sqrt();
    let schedule = match t.init {
        Init::Schedule(name) => Some(schedule_buffer(name).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("unknown schedule buffer {name}"),
            )
        })?),
        _ => None,
    };
    let mut values = Vec::with_capacity(CHUNK.min(n));
    let mut bytes = Vec::with_capacity(CHUNK.min(n) * 4);
    let mut done = 0;
    while done < n {
        let len = CHUNK.min(n - done);
        values.clear();
        values.extend((done..done + len).map(|i| match (t.init, &schedule) {
            (_, Some(s)) => s.get(i).copied().unwrap_or_default() as f32,
            (Init::Normal, _) => {
                let x: f32 = StandardNormal.sample(&mut rng);
                x * scale
            }
            (Init::Ones, _) => 1.0,
            // Small biases keep tiny random models' activations finite yet input-dependent.
            (Init::Bias, _) => rng.random_range(-0.02f32..0.02),
            (Init::Constant(c), _) => c,
            (Init::PositionIds | Init::Schedule(_), _) => 0.0,
        }));
        bytes.clear();
        match opts.dtype {
            TestDtype::F32 => values
                .iter()
                .for_each(|v| bytes.extend_from_slice(&v.to_le_bytes())),
            TestDtype::F16 => values
                .iter()
                .for_each(|v| bytes.extend_from_slice(&half::f16::from_f32(*v).to_le_bytes())),
            TestDtype::Bf16 => values
                .iter()
                .for_each(|v| bytes.extend_from_slice(&half::bf16::from_f32(*v).to_le_bytes())),
        }
        w.write_all(&bytes)?;
        done += len;
    }
    Ok(())
}

/// `sdplane make-test-model` configuration.
#[derive(Debug, clap::Args)]
pub struct MakeTestModelArgs {
    /// Family whose single-file layout to write.
    #[arg(long, env = "SDPLANE_TEST_FAMILY", value_enum)]
    pub family: TestFamily,
    /// Output `.safetensors` file, or folder with `--layout diffusers` (parent folders are created).
    #[arg(long, env = "SDPLANE_TEST_OUT")]
    pub out: PathBuf,
    /// Single `.safetensors` file or diffusers `save_pretrained` folder.
    #[arg(long, env = "SDPLANE_TEST_LAYOUT", value_enum, default_value = "single-file")]
    pub layout: TestLayout,
    /// Write the real model's sizes (GBs) instead of a tiny test model.
    #[arg(long, env = "SDPLANE_TEST_FULL_SIZE")]
    pub full_size: bool,
    /// Seed of the random weights; the same seed gives the same file.
    #[arg(long, env = "SDPLANE_TEST_SEED", default_value_t = 0)]
    pub seed: u64,
    /// Float dtype of the weights.
    #[arg(long, env = "SDPLANE_TEST_DTYPE", value_enum, default_value = "f32")]
    pub dtype: TestDtype,
    /// 9-channel inpainting UNet.
    #[arg(long, env = "SDPLANE_TEST_INPAINT")]
    pub inpaint: bool,
    /// Turbo Model Spec metadata (sd21: also the SD-Turbo SGM key layout).
    #[arg(long, env = "SDPLANE_TEST_TURBO")]
    pub turbo: bool,
    /// Write `modelspec.prediction_type`.
    #[arg(long, env = "SDPLANE_TEST_PREDICTION", value_enum)]
    pub prediction: Option<TestPrediction>,
}

/// Write the model and print what was written.
pub fn run(args: MakeTestModelArgs) -> anyhow::Result<()> {
    let opts = TestModelOptions {
        full_size: args.full_size,
        seed: args.seed,
        dtype: args.dtype,
        inpaint: args.inpaint,
        turbo: args.turbo,
        prediction: args.prediction,
        layout: args.layout,
    };
    let written = write(args.family, &opts, &args.out)?;
    let size = if opts.full_size { "full size" } else { "tiny" };
    let line = format!(
        "wrote {}: {:?} {size} ({:?} variant, {:?} layout), {} parameters, {}, {} bytes",
        written.path.display(),
        written.spec.family,
        written.spec.variant,
        match opts.layout {
            TestLayout::SingleFile => written.spec.layout,
            TestLayout::Diffusers => ModelLayout::Diffusers,
        },
        written.parameters,
        opts.dtype.as_str(),
        written.bytes,
    );
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{line}").and_then(|()| out.flush()) {
        // The reader left early: the file is written all the same.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

/// The prediction type detection reports for a file written with this option.
impl From<TestPrediction> for Prediction {
    fn from(p: TestPrediction) -> Self {
        match p {
            TestPrediction::V => Prediction::V,
            TestPrediction::Epsilon => Prediction::Epsilon,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sdplane_wire::checkpoint::{Distillation, Header, Source, detect};

    const ALL: [TestFamily; 4] = [
        TestFamily::Sd15,
        TestFamily::Sd21,
        TestFamily::Sdxl,
        TestFamily::SdxlRefiner,
    ];

    fn written(family: TestFamily, opts: &TestModelOptions) -> (tempfile::TempDir, WrittenModel) {
        let dir = tempfile::tempdir().expect("tempdir");
        let model = write(family, opts, &dir.path().join("m.safetensors")).expect("writes");
        (dir, model)
    }

    #[test]
    fn every_tiny_family_round_trips_through_header_read_and_detect() {
        for family in ALL {
            let (_dir, model) = written(family, &TestModelOptions::default());
            let header = Header::read(&model.path).expect("valid header");
            assert_eq!(header.file_size, model.bytes);
            let d = detect(&header).expect("detects");
            assert_eq!(d.family, family.family());
            assert_eq!((d.variant, d.layout), (Variant::Base, model.spec.layout));
            assert_eq!(d.unet, model.spec.unet, "{family:?}");
            assert_eq!(d.text_encoders, model.spec.text_encoders, "{family:?}");
            assert_eq!(d.vae, model.spec.vae, "{family:?}");
            assert_eq!(d.parameters, model.parameters);
            assert_eq!(d.dtype, "F32");
            assert!(d.warnings.is_empty(), "{family:?}: {:?}", d.warnings);
        }
    }

    #[test]
    fn safetensors_reads_the_file_back_with_the_intended_values() {
        let opts = TestModelOptions {
            dtype: TestDtype::F16,
            ..Default::default()
        };
        let (_dir, model) = written(TestFamily::Sd15, &opts);
        let bytes = std::fs::read(&model.path).expect("read");
        let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors parses it");
        assert_eq!(st.len(), model.spec.tensors().len());
        let ids = st
            .tensor("cond_stage_model.transformer.text_model.embeddings.position_ids")
            .expect("ids");
        assert_eq!(ids.dtype(), safetensors::Dtype::I64);
        let ids: Vec<i64> = ids
            .data()
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap_or_default()))
            .collect();
        assert_eq!(ids, (0..77).collect::<Vec<i64>>());
        let f16s = |name: &str| -> Vec<f32> {
            let t = st.tensor(name).expect("tensor present");
            assert_eq!(t.dtype(), safetensors::Dtype::F16);
            t.data()
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect()
        };
        assert!(
            f16s("model.diffusion_model.out.0.weight")
                .iter()
                .all(|&v| v == 1.0)
        );
        let bias = f16s("model.diffusion_model.out.0.bias");
        // ±0.02 plus f16 rounding.
        assert!(bias.iter().all(|v| v.abs() <= 0.0201) && bias.iter().any(|&v| v != 0.0));
        // [64, 64, 3, 3] conv: fan_in 576, so std ≈ 1/24.
        let w = f16s("model.diffusion_model.middle_block.0.in_layers.2.weight");
        let std = (w.iter().map(|v| v * v).sum::<f32>() / w.len() as f32).sqrt();
        assert!((std - 1.0 / 24.0).abs() < 0.004, "std {std}");
        let betas = f16s("betas");
        assert!((betas[0] - 0.00085).abs() < 1e-5 && (betas[999] - 0.012).abs() < 1e-4);
    }

    #[test]
    fn same_seed_gives_the_same_bytes_and_another_seed_does_not() {
        let read = |seed| {
            let (_dir, model) = written(
                TestFamily::Sd21,
                &TestModelOptions {
                    seed,
                    ..Default::default()
                },
            );
            std::fs::read(model.path).expect("read")
        };
        let (a, b, c) = (read(7), read(7), read(8));
        assert_eq!(a, b);
        assert_eq!(a.len(), c.len());
        assert_ne!(a, c);
    }

    #[test]
    fn options_show_up_in_detection() {
        let opts = TestModelOptions {
            turbo: true,
            ..Default::default()
        };
        let (_dir, m) = written(TestFamily::Sdxl, &opts);
        let d = detect(&Header::read(&m.path).expect("header")).expect("detects");
        assert_eq!(
            (d.distillation.value, d.distillation.source),
            (Distillation::Turbo, Source::Metadata)
        );
        assert_eq!(d.native_resolution.value, (512, 512));

        let (_dir, m) = written(TestFamily::Sd21, &opts);
        let d = detect(&Header::read(&m.path).expect("header")).expect("detects");
        assert_eq!(
            (d.layout, d.distillation.value),
            (ModelLayout::Sgm, Distillation::Turbo)
        );
        assert_eq!(d.prediction.value, Prediction::Epsilon);

        let opts = TestModelOptions {
            prediction: Some(TestPrediction::Epsilon),
            ..Default::default()
        };
        let (_dir, m) = written(TestFamily::Sd21, &opts);
        let d = detect(&Header::read(&m.path).expect("header")).expect("detects");
        assert_eq!(
            (d.prediction.value, d.prediction.source),
            (Prediction::Epsilon, Source::Metadata)
        );
        assert_eq!(d.native_resolution.value, (512, 512));

        let opts = TestModelOptions {
            inpaint: true,
            dtype: TestDtype::Bf16,
            ..Default::default()
        };
        let (_dir, m) = written(TestFamily::Sd15, &opts);
        let d = detect(&Header::read(&m.path).expect("header")).expect("detects");
        assert_eq!(
            (d.variant, d.unet.in_channels, d.dtype.as_str()),
            (Variant::Inpaint, 9, "BF16")
        );
    }

    #[test]
    fn impossible_option_combinations_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("x.safetensors");
        for (family, opts) in [
            (
                TestFamily::Sd15,
                TestModelOptions {
                    turbo: true,
                    ..Default::default()
                },
            ),
            (
                TestFamily::Sdxl,
                TestModelOptions {
                    turbo: true,
                    inpaint: true,
                    ..Default::default()
                },
            ),
            (
                TestFamily::Sd21,
                TestModelOptions {
                    turbo: true,
                    prediction: Some(TestPrediction::V),
                    ..Default::default()
                },
            ),
        ] {
            let err = write(family, &opts, &out).expect_err("refused");
            assert_eq!(err.kind(), "invalid_options");
        }
        assert!(!out.exists());
    }
}
