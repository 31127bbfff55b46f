//! From a single-file checkpoint to callable text encoders, UNet and VAE on candle.
//!
//! The architecture comes entirely from the header-derived `Detection` layouts
//! (CHECKPOINTS.md §4), so a tiny random test model and full SDXL run the same code.
//!
//! - `error`: `ModelError`.
//! - `keys`: requested diffusers name → stored LDM/SGM key map (§3).
//! - `weights`: memory-mapped, name-mapped, shape-checked tensor access.
//! - `layers`: candle-nn layers built from `Weights`.
//! - `conv`: CPU convolution lowered to contiguous copies and matmuls.
//! - `tokenizer`: CLIP BPE into 77-token windows.
//! - `clip`: CLIP-L / OpenCLIP text encoders and which hidden state each family uses (§3.6).
//! - `attention`: query-sliced scaled dot-product attention with a bounded score matrix.
//! - `resnet`, `transformer`, `unet`: the diffusers `UNet2DConditionModel`, with SDXL
//!   `add_embedding` (§4.4).
//! - `vae`: the diffusers `AutoencoderKL` encoder/decoder.
//! - `export`: a single file written out as a diffusers folder (`make-test-model --layout diffusers`).
//! - `memory`: the peak-memory estimate the server admits requests with.

mod attention;
mod clip;
pub mod conv;
mod error;
pub mod export;
mod keys;
mod layers;
mod memory;
mod resnet;
mod tokenizer;
mod transformer;
mod unet;
mod vae;
mod weights;

#[cfg(test)]
mod parity_tests;
#[cfg(test)]
mod tests;

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use sdplane_wire::checkpoint::{self, Detection};

pub use attention::DEFAULT_SLICE_BYTES;
pub use error::ModelError;

use clip::{ClipTextModel, EncoderUse};
use keys::{KeyMap, text_encoder_root};
use tokenizer::ClipTokenizer;
use unet::UNet;
use vae::AutoEncoderKl;
use weights::{Store, Weights};

/// Output of the text encoders for a batch of prompts.
#[derive(Debug, Clone)]
pub struct TextConditioning {
    /// Cross-attention context `[n, 77, context_dim]`.
    pub context: Tensor,
    /// SDXL pooled bigG vector `[n, P]`; `None` for SD1/SD2.
    pub pooled: Option<Tensor>,
    /// Per prompt: whether it was cut to fit the 77-token window.
    pub truncated: Vec<bool>,
}

/// A loaded Stable Diffusion checkpoint: text encoders, UNet and VAE.
pub struct SdModel {
    /// What the file is, as detected from its header.
    pub detection: Detection,
    device: Device,
    dtype: DType,
    tokenizer: ClipTokenizer,
    text_encoders: Vec<ClipTextModel>,
    unet: UNet,
    vae: AutoEncoderKl,
    slice_bytes: usize,
}

impl SdModel {
    /// mmap the file, or every component file of a diffusers folder (headers checked first via
    /// `sdplane_wire::checkpoint`), build every
    /// component; `progress(fraction, phase)` reports text-encoders/unet/vae as they load.
    #[tracing::instrument(skip_all, fields(path = %path.display(), ?dtype))]
    pub fn load(
        path: &Path,
        device: &Device,
        dtype: DType,
        progress: crate::engine::LoadProgress<'_>,
    ) -> Result<Self, ModelError> {
        let started = std::time::Instant::now();
        let (store, detection) = if path.is_dir() {
            // A diffusers folder: detection from its headers and configs, one map per file.
            let folder = checkpoint::folder::inspect_folder(path)?;
            (Store::from_folder(&folder.files)?, folder.detection)
        } else {
            let file = weights::MappedFile::open(path)?;
            let detection = checkpoint::detect(&file.header)?;
            (Store::Mmap(std::sync::Arc::new(file)), detection)
        };
        let weights = Weights::new(store, KeyMap::build(&detection), dtype, device.clone());
        let threads = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        // Reading is most of a CPU load: it gets 90% of the progress, building the rest.
        const READ_SHARE: f64 = 0.9;
        let read_ahead = weights.read_ahead(threads, &|f| progress(f * READ_SHARE, "reading weights"));
        let build_progress = |f: f64, phase: &str| {
            if read_ahead {
                progress(READ_SHARE + f * (1.0 - READ_SHARE), phase);
            } else {
                progress(f, phase);
            }
        };
        let model = Self::build(detection, &weights, &build_progress)?;
        let unused_read_ahead = weights.unused_read_ahead();
        if unused_read_ahead > 0 {
            tracing::debug!(count = unused_read_ahead, "tensors read ahead but not used");
        }
        tracing::info!(
            family = model.detection.family_name(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "model loaded"
        );
        let stored = weights.stored_keys();
        let unused = weights.unconsumed(stored.iter().map(String::as_str));
        if !unused.is_empty() {
            tracing::warn!(count = unused.len(), first = %unused[0], "checkpoint tensors not used by the model");
        }
        Ok(model)
    }

    /// Dry run of the loader against a header alone: build the full architecture with
    /// zero-stride placeholder tensors (nothing allocated), so a missing or mis-shaped tensor is
    /// found without reading weights. Returns the detection and the stored keys under a
    /// component prefix that the model would neither load nor deliberately ignore.
    pub fn check_mapping(header: &checkpoint::Header) -> Result<(Detection, Vec<String>), ModelError> {
        let detection = checkpoint::detect(header)?;
        let weights = Weights::new(
            Store::from_header(header),
            KeyMap::build(&detection),
            DType::F32,
            Device::Cpu,
        );
        let model = Self::build(detection, &weights, &|_, _| {})?;
        let unused = weights.unconsumed(header.tensors.keys().map(String::as_str));
        Ok((model.detection, unused))
    }

    /// `check_mapping` for a diffusers folder: build the full architecture from the component
    /// files' headers alone. Returns the detection and the stored keys (rooted `unet.…` etc.)
    /// that the model would neither load nor deliberately ignore.
    pub fn check_folder_mapping(dir: &Path) -> Result<(Detection, Vec<String>), ModelError> {
        let folder = checkpoint::folder::inspect_folder(dir)?;
        let weights = Weights::new(
            Store::meta_from_folder(&folder.files)?,
            KeyMap::build(&folder.detection),
            DType::F32,
            Device::Cpu,
        );
        let model = Self::build(folder.detection, &weights, &|_, _| {})?;
        let stored = weights.stored_keys();
        let unused = weights.unconsumed(stored.iter().map(String::as_str));
        Ok((model.detection, unused))
    }

    /// Build every component from `weights` (mmap'd or header-only).
    fn build(
        detection: Detection,
        weights: &Weights,
        progress: crate::engine::LoadProgress<'_>,
    ) -> Result<Self, ModelError> {
        let uses = EncoderUse::for_detection(&detection);
        let mut text_encoders = Vec::new();
        for (index, (layout, usage)) in detection.text_encoders.iter().zip(uses).enumerate() {
            progress(
                index as f64 / detection.text_encoders.len().max(1) as f64 * 0.2,
                "text-encoders",
            );
            let root = text_encoder_root(index);
            let root = weights.pp(root.trim_end_matches('.'));
            text_encoders.push(ClipTextModel::new(&root, layout, usage)?);
        }
        progress(0.2, "unet");
        let unet = UNet::new(&weights.pp("unet"), &detection.unet)?;
        progress(0.85, "vae");
        let vae_dtype = vae::vae_dtype(detection.family, weights.dtype());
        let vae = AutoEncoderKl::new(&weights.pp("vae").with_dtype(vae_dtype), &detection.vae)?;
        progress(1.0, "ready");
        Ok(Self {
            device: weights.device().clone(),
            dtype: weights.dtype(),
            detection,
            tokenizer: ClipTokenizer::new(),
            text_encoders,
            unet,
            vae,
            slice_bytes: DEFAULT_SLICE_BYTES,
        })
    }

    /// The device every component lives on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The dtype of the text encoders and UNet (the SDXL VAE stays f32 under f16).
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Upper bound in bytes on one attention score slice (default `DEFAULT_SLICE_BYTES`).
    pub fn attention_slice_bytes(&self) -> usize {
        self.slice_bytes
    }

    /// Change the attention slice bound (smaller saves memory, costs speed); at least 1 MiB.
    pub fn set_attention_slice_bytes(&mut self, bytes: usize) {
        self.slice_bytes = bytes.max(1 << 20);
    }

    /// Tokenize (77-token windows, BOS 49406/EOS 49407, CLIP-L pads with EOS, OpenCLIP towers pad
    /// with 0) and encode a batch of prompts into the UNet's cross-attention context
    /// `[n,77,ctx]` and, for SDXL, the pooled bigG vector `[n,P]` (CHECKPOINTS.md §3.6).
    pub fn encode_prompts(&self, prompts: &[&str]) -> Result<TextConditioning, ModelError> {
        let mut per_encoder = Vec::with_capacity(self.text_encoders.len());
        let mut truncated = vec![false; prompts.len()];
        for encoder in &self.text_encoders {
            let mut ids = Vec::with_capacity(prompts.len());
            for (i, prompt) in prompts.iter().enumerate() {
                let window = self
                    .tokenizer
                    .window(prompt, encoder.max_positions(), encoder.pad_id());
                truncated[i] |= window.truncated;
                ids.push(window.ids);
            }
            per_encoder.push(ids);
        }
        let mut out = self.encode_tokens(&per_encoder)?;
        out.truncated = truncated;
        Ok(out)
    }

    /// Same from token ids already made (for golden tests): one id list per prompt per encoder.
    pub fn encode_tokens(
        &self,
        tokens_per_encoder: &[Vec<Vec<u32>>],
    ) -> Result<TextConditioning, ModelError> {
        if tokens_per_encoder.len() != self.text_encoders.len() {
            return Err(ModelError::invalid(
                "tokens",
                format!(
                    "{} token lists for {} text encoders",
                    tokens_per_encoder.len(),
                    self.text_encoders.len()
                ),
            ));
        }
        let mut contexts = Vec::new();
        let mut pooled = None;
        let mut batch = None;
        for (encoder, tokens) in self.text_encoders.iter().zip(tokens_per_encoder) {
            if *batch.get_or_insert(tokens.len()) != tokens.len() || tokens.is_empty() {
                return Err(ModelError::invalid(
                    "tokens",
                    "every encoder needs the same, non-zero number of prompts",
                ));
            }
            let ids = encoder.ids_tensor(tokens, &self.device)?;
            let out = encoder.forward(&ids, self.slice_bytes)?;
            contexts.push(out.context);
            if out.pooled.is_some() {
                pooled = out.pooled;
            }
        }
        let context = Tensor::cat(&contexts, 2)?.to_dtype(self.dtype)?;
        let n = batch.unwrap_or(0);
        Ok(TextConditioning {
            context,
            pooled,
            truncated: vec![false; n],
        })
    }

    /// Noise (or v) prediction for latents `[n,C,h,w]` at one timestep. For SDXL, `pooled`
    /// `[n,P]` and `time_ids` `[n,6]` (base; `[n,5]` refiner) drive `add_embedding` (§4.4).
    pub fn unet_forward(
        &self,
        latents: &Tensor,
        timestep: f64,
        context: &Tensor,
        pooled: Option<&Tensor>,
        time_ids: Option<&Tensor>,
    ) -> Result<Tensor, ModelError> {
        self.unet
            .forward(latents, timestep, context, pooled, time_ids, self.slice_bytes)
    }

    /// diffusers `vae.decode`: post_quant_conv + decoder; input already divided by the scaling
    /// factor; output in ~[-1,1], f32.
    pub fn vae_decode(&self, latents: &Tensor) -> Result<Tensor, ModelError> {
        self.vae.decode(latents, self.slice_bytes)
    }

    /// diffusers `vae.encode(..).latent_dist`: (mean, std) of the posterior, before the scaling
    /// factor; input `[n,3,H,W]` in [-1,1].
    pub fn vae_encode(&self, images: &Tensor) -> Result<(Tensor, Tensor), ModelError> {
        self.vae.encode(images, self.slice_bytes)
    }

    /// Spatial factor image→latent: 2^(VAE levels−1), 8 for real models.
    pub fn vae_spatial_factor(&self) -> usize {
        self.vae.spatial_factor()
    }

    /// Latent channels (4 for real models).
    pub fn latent_channels(&self) -> usize {
        self.detection.vae.latent_channels
    }

    /// Peak extra bytes one UNet call + VAE decode needs for a batch at this latent size with
    /// this attention slicing (the server refuses requests before allocating). `batch` is the
    /// rows of one UNet call: twice the images when classifier-free guidance is on.
    pub fn estimate_peak_bytes(&self, batch: usize, latent_h: usize, latent_w: usize) -> u64 {
        memory::estimate_peak_bytes(
            &self.detection,
            self.dtype,
            self.slice_bytes,
            batch,
            latent_h,
            latent_w,
            !self.device.is_cpu(),
        )
    }
}
