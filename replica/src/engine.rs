//! The seam between the HTTP server and the work (STYLE.md: a trait between the HTTP layer and
//! the work). The server validates a request into `GenerationParams`, asks for an estimate of
//! what it needs, then runs it on a blocking thread with a step callback that can cancel.

use sdplane_wire::api::{ModelInfo, SchedulerKind};

/// A validated generation request with every default already applied.
#[derive(Debug, Clone)]
pub struct GenerationParams {
    pub prompt: String,
    pub negative_prompt: String,
    pub steps: u32,
    pub guidance_scale: f64,
    pub width: u32,
    pub height: u32,
    pub seed: u64,
    pub scheduler: SchedulerKind,
    pub num_images: u32,
    /// img2img source, already decoded and resized to `width`×`height`.
    pub init_image: Option<image::RgbImage>,
    /// img2img strength in (0, 1]; used only with `init_image`.
    pub strength: f64,
    /// Inpainting models only: the mask, already resized to `width`×`height` and reduced to
    /// luma; pixels ≥ 128 are repainted, the rest kept. `None` repaints everything.
    pub mask_image: Option<image::GrayImage>,
    /// Starting noise `[1, 4, height/8, width/8]` in row-major order (diffusers' `latents`),
    /// instead of drawing it from the seed.
    pub init_latents: Option<Vec<f32>>,
}

/// `strength` when a request with an init image gives none: diffusers' img2img pipeline
/// default (0.8), or its inpainting pipeline's (1: start from pure noise).
pub fn default_strength(inpainting: bool) -> f64 {
    if inpainting { 1.0 } else { 0.8 }
}

/// What a generation produced.
#[derive(Debug, Clone)]
pub struct GenerationOutput {
    pub images: Vec<image::RgbImage>,
    pub prompt_truncated: bool,
    pub negative_prompt_truncated: bool,
    /// Denoising steps actually run (fewer than `steps` for img2img).
    pub denoising_steps: u32,
}

/// Whether the sampling loop should go on after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepControl {
    Continue,
    Cancel,
}

/// Why a generation did not produce images.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The caller's step callback asked to stop (deadline passed, client gone).
    #[error("generation cancelled")]
    Cancelled,
    /// A parameter the server could not check alone (e.g. the init latents' shape).
    #[error("invalid parameter `{field}`: {message}")]
    InvalidParameter { field: &'static str, message: String },
    /// The request would need more memory than this replica may use.
    #[error("request needs about {needed_mb} MB, more than the {budget_mb} MB this replica may use")]
    TooLarge { needed_mb: u64, budget_mb: u64 },
    /// candle failed: a bug or a broken model file.
    #[error("model error: {0}")]
    Model(String),
}

/// Progress reports while loading: (fraction 0..=1, phase name).
pub type LoadProgress<'a> = &'a (dyn Fn(f64, &str) + Sync);

/// A loaded model that turns parameters into images. Implemented by the candle pipeline.
pub trait Generator: Send + Sync + 'static {
    /// What is served, with its family defaults and limits.
    fn model_info(&self) -> &ModelInfo;

    /// Peak bytes this request would allocate beyond the loaded weights; the server refuses a
    /// request whose estimate does not fit before any allocation happens.
    fn estimate_bytes(&self, params: &GenerationParams) -> u64;

    /// Run one generation. `on_step(done, total)` is called after each denoising step and may
    /// cancel the rest.
    fn generate(
        &self,
        params: &GenerationParams,
        on_step: &mut dyn FnMut(u32, u32) -> StepControl,
    ) -> Result<GenerationOutput, EngineError>;
}
