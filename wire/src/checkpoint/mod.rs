//! Header-only checkpoint inspection (`../shared/CHECKPOINTS.md` §1–§4): read the safetensors
//! header without touching tensor data, decide the family from tensor shapes (never the file
//! name), and derive every architecture size the loader needs.
//!
//! - `header`: the safetensors header parser and its integrity checks.
//! - `detect`: family/variant/layout/prediction decisions with their sources.
//! - `layout`: UNet, text-encoder and VAE sizes derived from shapes (§4).
//! - `lookalike`: files that resemble checkpoints but are something else, refused by name.
//! - `settings`: prediction type, turbo and resolution with the source of each decision.
//! - `folder`, `folder_layout`: diffusers `save_pretrained` folders, detected into the same
//!   `Detection` from each component's headers and `config.json`.
//! - `scan`: listing a models directory (what `sdplane models` and `--list` show).
//! - `synth`: the key/shape list of a checkpoint in the real file layout (test models).

pub mod detect;
pub mod folder;
mod folder_layout;
pub mod header;
pub mod layout;
mod lookalike;
pub mod scan;
mod settings;
pub mod synth;

pub use detect::{
    Decided, Detection, Distillation, Family, ModelLayout, Prediction, Source, Variant, detect,
};
pub use header::{CheckpointError, Header, TensorInfo};
pub use layout::{TextEncoderKind, TextEncoderLayout, UnetLayout, VaeLayout};

/// Read a file's header (or a diffusers folder's headers and configs) and detect what it is:
/// the one call most users need.
pub fn inspect(path: &std::path::Path) -> Result<Detection, CheckpointError> {
    if path.is_dir() {
        return Ok(folder::inspect_folder(path)?.detection);
    }
    let header = Header::read(path)?;
    detect(&header)
}
