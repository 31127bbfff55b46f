//! `CandleGenerator`: the production `Generator`, a loaded `SdModel` plus its family settings
//! and the memory budget a request must fit in.

use std::path::Path;

use crate::device::{DTypeChoice, DeviceChoice};
use crate::engine::{EngineError, GenerationOutput, GenerationParams, Generator, LoadProgress, StepControl};
use crate::model::SdModel;
use sdplane_wire::api::ModelInfo;

use super::family::{self, FamilySettings};
use super::sampling::{self, Timings};

/// A Stable Diffusion checkpoint loaded with candle, ready to generate.
pub struct CandleGenerator {
    model: SdModel,
    settings: FamilySettings,
    info: ModelInfo,
    /// Image sides must be multiples of this: VAE factor × the UNet's downsampling.
    size_multiple: u32,
    /// Bytes a request may allocate beyond the weights (free device memory after loading).
    memory_budget: u64,
}

impl CandleGenerator {
    /// Load `model` on `device` in `dtype` (the device's default when `None`).
    pub fn load(
        model: &Path,
        device: DeviceChoice,
        dtype: Option<DTypeChoice>,
        progress: LoadProgress<'_>,
    ) -> Result<Self, EngineError> {
        let dtype = dtype.unwrap_or_else(|| device.default_dtype());
        let candle_device = device.open().map_err(EngineError::Model)?;
        let sd = SdModel::load(model, &candle_device, dtype.to_candle(), progress)
            .map_err(|e| EngineError::Model(e.to_string()))?;
        let budget = free_memory_bytes(device).unwrap_or(u64::MAX);
        Ok(Self::from_model(sd, model, &device.to_string(), dtype, budget))
    }

    /// Wrap an already loaded model (tests use this with a chosen budget).
    pub fn from_model(
        model: SdModel,
        path: &Path,
        device: &str,
        dtype: DTypeChoice,
        memory_budget: u64,
    ) -> Self {
        let settings = FamilySettings::for_detection(&model.detection);
        // Sides need only be whole latents: the UNet resizes to its skips like diffusers does.
        let size_multiple = u32::try_from(model.vae_spatial_factor()).unwrap_or(u32::MAX);
        let info = family::model_info(
            path,
            &model.detection,
            &settings,
            dtype.as_str(),
            device,
            size_multiple,
        );
        Self {
            model,
            settings,
            info,
            size_multiple,
            memory_budget,
        }
    }

    /// The loaded model.
    pub fn model(&self) -> &SdModel {
        &self.model
    }

    /// Family settings (VAE scale, spacing, defaults).
    pub fn settings(&self) -> &FamilySettings {
        &self.settings
    }

    /// What image sides must be multiples of.
    pub fn size_multiple(&self) -> u32 {
        self.size_multiple
    }

    /// Bytes a request may use beyond the weights.
    pub fn memory_budget(&self) -> u64 {
        self.memory_budget
    }

    /// Change the per-request memory budget.
    pub fn set_memory_budget(&mut self, bytes: u64) {
        self.memory_budget = bytes;
    }

    /// `generate`, also returning where the time went.
    pub fn generate_timed(
        &self,
        params: &GenerationParams,
        on_step: &mut dyn FnMut(u32, u32) -> StepControl,
    ) -> Result<(GenerationOutput, Timings), EngineError> {
        let needed = self.estimate_bytes(params);
        if needed > self.memory_budget {
            return Err(EngineError::TooLarge {
                needed_mb: needed.div_ceil(1 << 20),
                budget_mb: self.memory_budget >> 20,
            });
        }
        let span = tracing::info_span!(
            "generate",
            seed = params.seed,
            steps = params.steps,
            scheduler = params.scheduler.as_str()
        );
        let _enter = span.enter();
        let result = sampling::generate(&self.model, &self.settings, self.size_multiple, params, on_step);
        if let Ok((_, t)) = &result {
            let per_step = t.steps.iter().map(|d| d.as_secs_f64()).sum::<f64>() / t.steps.len().max(1) as f64;
            tracing::info!(
                text_encode_s = t.text_encode.as_secs_f64(),
                step_s = per_step,
                vae_decode_s = t.vae_decode.as_secs_f64(),
                total_s = t.total.as_secs_f64(),
                "generated"
            );
        }
        result
    }
}

/// Free memory where the model runs: NVML's free bytes on a GPU, available RAM on CPU.
fn free_memory_bytes(device: DeviceChoice) -> Option<u64> {
    match device {
        DeviceChoice::Cuda(_) => crate::server::gpu::GpuProbe::open(device)?.free_bytes(),
        DeviceChoice::Cpu => {
            let mut system = sysinfo::System::new().ok()?;
            system.refresh_memory();
            Some(system.available_memory()).filter(|&b| b > 0)
        }
    }
}

impl Generator for CandleGenerator {
    fn model_info(&self) -> &ModelInfo {
        &self.info
    }

    fn estimate_bytes(&self, params: &GenerationParams) -> u64 {
        let factor = self.model.vae_spatial_factor().max(1);
        let (lh, lw) = (params.height as usize / factor, params.width as usize / factor);
        let batch = params.num_images as usize * if params.guidance_scale > 1.0 { 2 } else { 1 };
        // The UNet call (and decode) peak, plus the f32 latents, noise and guidance copies
        // the loop keeps alive (~6 latent-sized tensors per row).
        let latents = (batch * self.model.latent_channels() * lh * lw * 4 * 6) as u64;
        self.model
            .estimate_peak_bytes(batch, lh, lw)
            .saturating_add(latents)
    }

    fn generate(
        &self,
        params: &GenerationParams,
        on_step: &mut dyn FnMut(u32, u32) -> StepControl,
    ) -> Result<GenerationOutput, EngineError> {
        self.generate_timed(params, on_step).map(|(output, _)| output)
    }
}
