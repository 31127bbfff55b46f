//! Files that look like Stable Diffusion checkpoints but are something else (CHECKPOINTS.md
//! §2.3 step 1, §2.7): adapters, video and EDM models, other architectures, fp8 re-packs. Each
//! is refused by name with the key that gave it away, before any size is derived.

use super::header::{CheckpointError, Header};

/// Refuse a recognised look-alike, naming what was found.
pub(super) fn refuse_look_alikes(header: &Header) -> Result<(), CheckpointError> {
    let refuse = |what: &str, found: String| {
        Err(CheckpointError::Unsupported {
            what: what.into(),
            found,
        })
    };
    // Marker pairs first: they are exact top-level names.
    if header.has("edm_mean") && header.has("edm_std") {
        return refuse(
            "Playground v2.5-style EDM model",
            "marker tensors `edm_mean`/`edm_std`".into(),
        );
    }
    if header.has("edm_vpred.sigma_max") {
        return refuse(
            "CosXL-style EDM v-prediction model",
            "marker tensor `edm_vpred.sigma_max`".into(),
        );
    }
    for (key, info) in &header.tensors {
        let unet_rest = key.strip_prefix("model.diffusion_model.").unwrap_or(key);
        let found = || format!("key `{key}`");
        if key.starts_with("lora_unet_")
            || key.starts_with("lora_te")
            || [".lora_up.", ".lora_down.", ".lora_A.", ".lora_B."]
                .iter()
                .any(|p| key.contains(p))
        {
            return refuse("LoRA adapter, not a full checkpoint", found());
        }
        if key.starts_with("control_model.") || key.starts_with("controlnet_") {
            return refuse("ControlNet, not a full checkpoint", found());
        }
        if unet_rest.starts_with("joint_blocks.") {
            return refuse("SD3-style MMDiT model", found());
        }
        if unet_rest.starts_with("double_blocks.") || unet_rest.starts_with("single_blocks.") {
            return refuse("Flux-style DiT model", found());
        }
        if key.contains(".time_stack.") || key.contains(".time_mixer.") {
            return refuse("Stable Video Diffusion (temporal layers)", found());
        }
        if key.starts_with("embedder.model.visual.") {
            return refuse("SD 2.x unCLIP (image-conditioned)", found());
        }
        if key.starts_with("depth_model.") {
            return refuse("SD 2.x depth-to-image", found());
        }
        if info.dtype.starts_with("F8_") {
            let count = header
                .tensors
                .values()
                .filter(|t| t.dtype.starts_with("F8_"))
                .count();
            return refuse(
                "fp8 weights (no up-casting path)",
                format!("{count} tensors in fp8, e.g. `{key}` as {}", info.dtype),
            );
        }
    }
    Ok(())
}

/// What a file with no UNet under `model.diffusion_model.` is, for the error message.
pub(super) fn missing_unet(header: &Header) -> CheckpointError {
    if header.has("input_blocks.0.0.weight") {
        return CheckpointError::Unsupported {
            what: "UNet-only export without text encoder or VAE".into(),
            found: "keys start at `input_blocks.` with no `model.diffusion_model.` prefix".into(),
        };
    }
    let found = if header.has("encoder.conv_in.weight") || header.has("vae.encoder.conv_in.weight") {
        "a standalone VAE (encoder/decoder keys only)".to_string()
    } else if header.has("conv_in.weight") || header.has("unet.conv_in.weight") {
        "a diffusers-layout component (`conv_in.weight`), not a single-file checkpoint".to_string()
    } else if header.tensors.is_empty() {
        "the file holds no tensors".to_string()
    } else {
        let first = header
            .tensors
            .keys()
            .next()
            .map(String::as_str)
            .unwrap_or_default();
        format!(
            "no `model.diffusion_model.input_blocks.0.0.weight` among {} tensors (first: `{first}`)",
            header.tensors.len()
        )
    };
    CheckpointError::Unknown { found }
}

/// What an unsupported UNet input width means (§2.2 P1, §2.6).
pub(super) fn refuse_in_channels(in_channels: usize) -> CheckpointError {
    let what = match in_channels {
        5 => "SD 2.x depth-to-image (5 input channels)",
        7 => "SD x4 upscaler (7 input channels)",
        8 => "InstructPix2Pix-style edit model (8 input channels)",
        _ => "UNet with an unusual number of input channels",
    };
    CheckpointError::Unsupported {
        what: what.into(),
        found: format!("in_channels = {in_channels}"),
    }
}
