//! `ModelError`: why a checkpoint could not be loaded into candle modules or a forward pass
//! failed. Every variant names what went wrong plainly; `kind()` is the short label used in JSON
//! bodies, metrics and logs.

use sdplane_wire::checkpoint::CheckpointError;

/// Failure to load or run the model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The header check or detection refused the file.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The file could not be memory-mapped.
    #[error("cannot map {path}: {message}")]
    Map { path: String, message: String },
    /// A tensor the architecture needs is not in the file.
    #[error("tensor `{name}` is missing (looked for `{stored}` in the file)")]
    MissingTensor { name: String, stored: String },
    /// A tensor is in the file with a shape the architecture cannot use.
    #[error("tensor `{name}` (stored as `{stored}`) has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        name: String,
        stored: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    /// A tensor has a dtype candle cannot compute with (e.g. fp8 re-packs).
    #[error("tensor `{stored}` has unsupported dtype {dtype}")]
    UnsupportedDtype { stored: String, dtype: String },
    /// A caller passed inputs of the wrong shape or range (latents, token ids, time ids).
    #[error("invalid input `{what}`: {message}")]
    InvalidInput { what: &'static str, message: String },
    /// candle failed during a forward pass.
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
}

impl ModelError {
    /// Short stable kind for JSON bodies and metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Checkpoint(e) => e.kind(),
            Self::Map { .. } => "io",
            Self::MissingTensor { .. } => "missing_tensor",
            Self::ShapeMismatch { .. } => "shape_mismatch",
            Self::UnsupportedDtype { .. } => "unsupported_dtype",
            Self::InvalidInput { .. } => "invalid_input",
            Self::Candle(_) => "candle",
        }
    }

    pub(crate) fn invalid(what: &'static str, message: impl Into<String>) -> Self {
        Self::InvalidInput {
            what,
            message: message.into(),
        }
    }
}
