//! The data-plane contract: what clients send to `/<app>/v1/generate` and read back, the
//! replica's health and model descriptions, and the router's 202 "scaling up" body.
//! Field names are fixed by clients of the existing deployment: change none of them.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `POST /v1/generate` body. Everything but `prompt` is optional; defaults come from the model
/// family. Unknown fields are refused so a typo is an error, not a silently ignored setting.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GenerateRequest {
    pub prompt: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub negative_prompt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_inference_steps: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guidance_scale: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<ImageFormat>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduler: Option<SchedulerKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_images: Option<u32>,
    /// Base64 PNG or JPEG (a `data:` URI prefix is accepted) for img2img.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strength: Option<f64>,
    /// Inpainting mask (inpainting models only), base64 PNG or JPEG like `init_image`: white
    /// (luma ≥ 128) is repainted, black is kept. Needs `init_image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask_image: Option<String>,
}

/// How the image comes back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    /// JSON body with a `data:image/png;base64,` URI.
    #[default]
    Base64,
    /// Raw `image/png` body; metrics in `x-*` headers.
    Png,
}

/// Sampler. Names as clients send them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SchedulerKind {
    Ddim,
    Euler,
    EulerA,
    #[serde(rename = "dpmpp_2m")]
    Dpmpp2m,
    #[serde(rename = "dpmpp_2m_karras")]
    Dpmpp2mKarras,
}

impl SchedulerKind {
    pub const ALL: [SchedulerKind; 5] = [
        Self::Ddim,
        Self::Euler,
        Self::EulerA,
        Self::Dpmpp2m,
        Self::Dpmpp2mKarras,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ddim => "ddim",
            Self::Euler => "euler",
            Self::EulerA => "euler_a",
            Self::Dpmpp2m => "dpmpp_2m",
            Self::Dpmpp2mKarras => "dpmpp_2m_karras",
        }
    }
}

impl std::str::FromStr for SchedulerKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL.into_iter().find(|k| k.as_str() == s).ok_or_else(|| {
            format!("unknown scheduler {s:?}; one of ddim, euler, euler_a, dpmpp_2m, dpmpp_2m_karras")
        })
    }
}

/// Every value a generation actually used, seed included (returned as `parameters`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UsedParameters {
    pub negative_prompt: String,
    pub num_inference_steps: u32,
    pub guidance_scale: f64,
    pub width: u32,
    pub height: u32,
    pub seed: u64,
    pub scheduler: SchedulerKind,
    pub num_images: u32,
    /// img2img strength; `null` for text-to-image.
    pub strength: Option<f64>,
    /// Whether the prompt was cut to the text encoder's 77-token window.
    pub prompt_truncated: bool,
    pub negative_prompt_truncated: bool,
}

/// Resource accounting for one generate call, measured in the replica.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ComputeMetrics {
    pub query_duration_seconds: f64,
    /// This process's CPU use over this query, in percent of one core (may exceed 100).
    pub replica_cpu_percent: f64,
    /// Resident set size of the replica process.
    pub replica_memory_mb: f64,
    pub replica_num_cpus: u32,
    pub replica_gpu_memory_allocated_mb: Option<f64>,
    pub replica_gpu_memory_reserved_mb: Option<f64>,
    pub replica_gpu_memory_total_mb: Option<f64>,
    pub replica_gpu_utilization_percent: Option<f64>,
    /// GPU energy used during this query, from NVML's energy counter where the GPU has one.
    pub replica_gpu_energy_joules: Option<f64>,
    pub queue_seconds: f64,
    pub inference_seconds: f64,
    pub denoising_steps: u32,
    /// Set by the router when this request waited for its app to start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cold_start_seconds: Option<f64>,
}

/// 200 answer of `POST /v1/generate` with `format: base64`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GenerateResponse {
    /// Always `"success"`.
    pub status: String,
    /// Model file stem.
    pub model: String,
    /// First image as a `data:image/png;base64,` URI.
    pub image: String,
    /// All images (same as `[image]` when `num_images` is 1).
    pub images: Vec<String>,
    pub prompt: String,
    pub parameters: UsedParameters,
    pub compute_metrics: ComputeMetrics,
}

/// Lifecycle of a replica (and, aggregated, of an app).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReplicaState {
    Loading,
    Ready,
    Failed,
}

/// `GET /v1/health` of one replica.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ReplicaHealth {
    pub status: ReplicaState,
    /// Load progress 0..=1 while `loading`; 1 when ready.
    pub progress: f64,
    /// What is being done now while loading (e.g. "unet", "warm-up").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Why the load failed, when `failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub model: String,
    pub device: String,
    pub uptime_seconds: f64,
    /// Seconds the load took (weights + warm-up), once ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_seconds: Option<f64>,
    pub queue_depth: u32,
    pub in_flight: u32,
    /// `null` without a GPU.
    pub gpu: Option<GpuStatus>,
}

/// One GPU as NVML sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GpuStatus {
    pub name: String,
    pub memory_used_mb: f64,
    pub memory_total_mb: f64,
    pub utilization_percent: f64,
}

/// `GET /v1/models` of one replica: what it serves and with which defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ModelInfo {
    /// File name as given to the replica.
    pub file: String,
    /// File stem, as `model` in generate answers.
    pub model: String,
    /// Detected family, e.g. `sd1`, `sd2`, `sdxl`.
    pub family: String,
    /// Human form, e.g. "SDXL base (turbo)".
    pub family_label: String,
    /// How each fact was decided: `{"family": "tensor shapes", "prediction": "metadata", ...}`.
    pub detected_by: std::collections::BTreeMap<String, String>,
    pub prediction: String,
    pub dtype: String,
    pub device: String,
    pub native_width: u32,
    pub native_height: u32,
    /// A 9-channel inpainting UNet: accepts `mask_image` (with `init_image`).
    #[serde(default)]
    pub inpainting: bool,
    pub defaults: GenerationDefaults,
    pub limits: GenerationLimits,
}

/// Family defaults a request falls back to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GenerationDefaults {
    pub num_inference_steps: u32,
    pub guidance_scale: f64,
    pub scheduler: SchedulerKind,
    pub width: u32,
    pub height: u32,
}

/// Ranges a request must stay within (validation errors quote them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GenerationLimits {
    pub min_side: u32,
    pub max_side: u32,
    pub max_steps: u32,
    pub max_num_images: u32,
    pub max_prompt_chars: u32,
}

/// Router's 202 body while an app is cold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ScalingUpBody {
    /// `"scaling_up"` (or `"loading"` once a replica is loading weights).
    pub status: String,
    pub app: String,
    pub retry_after_seconds: u64,
    pub estimated_ready_seconds: f64,
    /// Replica load progress 0..=1 when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<f64>,
    pub message: String,
}
