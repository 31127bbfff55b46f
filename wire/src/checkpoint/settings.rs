//! What the weights cannot tell: prediction type, turbo distillation and native resolution
//! (CHECKPOINTS.md §1.2, §2.4, §2.5, §5). Precedence: marker tensors > `modelspec.*` metadata
//! that agrees with the weights > key-layout hint > family default. The file name is never used.

use std::collections::BTreeMap;

use super::detect::{Decided, Distillation, Family, ModelLayout, Prediction, Source, Variant};
use super::header::Header;

/// The decided settings and the warnings met on the way.
pub(super) struct Settings {
    pub prediction: Decided<Prediction>,
    pub zero_snr: bool,
    pub distillation: Decided<Distillation>,
    pub native_resolution: Decided<(u32, u32)>,
    pub warnings: Vec<String>,
}

/// What a `modelspec.architecture` ID claims (Stability-AI/ModelSpec architecture list, plus
/// SwarmUI's `stable-diffusion-v2-turbo`).
struct ArchClaim {
    family: Family,
    /// `Some` only for IDs that name the variant (`…-inpainting`).
    variant: Option<Variant>,
    prediction: Option<Prediction>,
    turbo: bool,
    resolution: Option<u32>,
}

fn arch_claim(arch: &str) -> Option<ArchClaim> {
    let claim = |family, variant, prediction, turbo, resolution| {
        Some(ArchClaim {
            family,
            variant,
            prediction,
            turbo,
            resolution,
        })
    };
    use Family::*;
    match arch {
        "stable-diffusion-v1" => claim(Sd1, None, None, false, None),
        "stable-diffusion-v1-inpainting" => claim(Sd1, Some(Variant::Inpaint), None, false, None),
        "stable-diffusion-v2-512" => claim(Sd2, None, Some(Prediction::Epsilon), false, Some(512)),
        "stable-diffusion-v2-768-v" => claim(Sd2, None, Some(Prediction::V), false, Some(768)),
        "stable-diffusion-v2-inpainting" => claim(
            Sd2,
            Some(Variant::Inpaint),
            Some(Prediction::Epsilon),
            false,
            Some(512),
        ),
        "stable-diffusion-v2-turbo" => claim(Sd2, None, Some(Prediction::Epsilon), true, Some(512)),
        "stable-diffusion-xl-v1-base" => claim(Sdxl, None, None, false, None),
        "stable-diffusion-xl-v1-refiner" => claim(SdxlRefiner, None, None, false, None),
        // SDXL-Turbo runs eps at 512 (generative-models `scripts/demo/turbo.py`).
        "stable-diffusion-xl-turbo-v1" => claim(Sdxl, None, Some(Prediction::Epsilon), true, Some(512)),
        _ => None,
    }
}

fn parse_prediction(value: &str) -> Option<Prediction> {
    match value.trim().to_ascii_lowercase().as_str() {
        "epsilon" | "eps" => Some(Prediction::Epsilon),
        "v" | "v_prediction" | "v-prediction" => Some(Prediction::V),
        _ => None,
    }
}

/// `WIDTHxHEIGHT`, each a multiple of 8 between 64 and 4096 (a latent grid the UNet can take).
fn parse_resolution(value: &str) -> Option<(u32, u32)> {
    let (w, h) = value.trim().split_once(['x', 'X'])?;
    let (w, h): (u32, u32) = (w.trim().parse().ok()?, h.trim().parse().ok()?);
    let ok = |d: u32| (64..=4096).contains(&d) && d.is_multiple_of(8);
    (ok(w) && ok(h)).then_some((w, h))
}

fn decided<T>(value: T, source: Source, certain: bool) -> Decided<T> {
    Decided {
        value,
        source,
        certain,
    }
}

/// `modelspec.*` values usable for this file: all of them when the architecture agrees with
/// the weights (or is absent), none when it contradicts them.
struct Spec {
    claim: Option<ArchClaim>,
    prediction: Option<Prediction>,
    resolution: Option<(u32, u32)>,
}

fn read_spec(
    metadata: &BTreeMap<String, String>,
    family: Family,
    variant: Variant,
    warnings: &mut Vec<String>,
) -> Spec {
    let empty = Spec {
        claim: None,
        prediction: None,
        resolution: None,
    };
    let mut claim = None;
    if let Some(arch) = metadata.get("modelspec.architecture") {
        if arch.contains('/') {
            warnings.push(format!(
                "modelspec.architecture `{arch}` describes an adapter or component; going with the weights"
            ));
            return empty;
        }
        match arch_claim(arch) {
            Some(c) if c.family != family || c.variant.is_some_and(|v| v != variant) => {
                warnings.push(format!(
                    "modelspec.architecture `{arch}` contradicts the weights ({family:?} {variant:?}); \
                     ignoring modelspec metadata"
                ));
                return empty;
            }
            Some(c) => claim = Some(c),
            None => warnings.push(format!("unrecognised modelspec.architecture `{arch}`; ignored")),
        }
    }
    let prediction = metadata.get("modelspec.prediction_type").and_then(|p| {
        let parsed = parse_prediction(p);
        if parsed.is_none() {
            warnings.push(format!("unrecognised modelspec.prediction_type `{p}`; ignored"));
        }
        parsed
    });
    let resolution = metadata.get("modelspec.resolution").and_then(|r| {
        let parsed = parse_resolution(r);
        if parsed.is_none() {
            warnings.push(format!("unusable modelspec.resolution `{r}`; ignored"));
        }
        parsed
    });
    Spec {
        claim,
        prediction,
        resolution,
    }
}

/// Decide prediction, zero-SNR, turbo and native resolution for a detected file.
pub(super) fn decide(header: &Header, family: Family, variant: Variant, layout: ModelLayout) -> Settings {
    let mut warnings = Vec::new();
    let spec = read_spec(&header.metadata, family, variant, &mut warnings);
    let v_pred = header.has("v_pred");
    let zero_snr = header.has("ztsnr");
    // SD2 saved in SGM layout is the SD-Turbo layout (§2.5): a hint, not proof.
    let sd2_in_sgm = family == Family::Sd2 && layout == ModelLayout::Sgm && variant == Variant::Base;

    let metadata_prediction = spec.prediction.or(spec.claim.as_ref().and_then(|c| c.prediction));
    let prediction = if v_pred || zero_snr {
        // A zero-terminal-SNR schedule only works with v-prediction (§5), as ComfyUI assumes.
        if metadata_prediction == Some(Prediction::Epsilon) {
            warnings.push("modelspec says epsilon but the file has a v-prediction marker; using v".into());
        }
        if zero_snr && !v_pred {
            warnings.push("`ztsnr` marker without `v_pred`; assuming v-prediction".into());
        }
        decided(Prediction::V, Source::Marker, true)
    } else if let Some(p) = metadata_prediction {
        decided(p, Source::Metadata, true)
    } else if family == Family::Sd2 && variant == Variant::Base {
        if sd2_in_sgm {
            decided(Prediction::Epsilon, Source::LayoutHint, false)
        } else {
            // diffusers `from_single_file` loads SD2 as stable-diffusion-2-1: v-prediction.
            decided(Prediction::V, Source::FamilyDefault, false)
        }
    } else {
        decided(Prediction::Epsilon, Source::FamilyDefault, true)
    };

    let distillation = match &spec.claim {
        Some(c) => decided(
            if c.turbo {
                Distillation::Turbo
            } else {
                Distillation::None
            },
            Source::Metadata,
            true,
        ),
        None if sd2_in_sgm && prediction.value == Prediction::Epsilon => {
            decided(Distillation::Turbo, Source::LayoutHint, false)
        }
        // SDXL-Turbo and SD 2.1 fine-tunes have the same tensors as their parents (§2.5).
        None => decided(
            Distillation::None,
            Source::FamilyDefault,
            matches!(family, Family::Sd1 | Family::SdxlRefiner),
        ),
    };

    let square = |d: u32| (d, d);
    let native_resolution = if let Some(r) = spec.resolution {
        decided(r, Source::Metadata, true)
    } else if let Some(r) = spec.claim.as_ref().and_then(|c| c.resolution) {
        decided(square(r), Source::Metadata, true)
    } else if distillation.value == Distillation::Turbo {
        // Both turbo models are trained at 512 (generative-models `scripts/demo/turbo.py`).
        decided(square(512), distillation.source, distillation.certain)
    } else {
        // §5 defaults per family.
        match (family, variant) {
            (Family::Sd1, _) | (Family::Sd2, Variant::Inpaint) => {
                decided(square(512), Source::FamilyDefault, true)
            }
            (Family::Sd2, Variant::Base) => {
                let side = if prediction.value == Prediction::V {
                    768
                } else {
                    512
                };
                decided(square(side), prediction.source, prediction.certain)
            }
            (Family::Sdxl | Family::SdxlRefiner, _) => decided(square(1024), Source::FamilyDefault, true),
        }
    };

    Settings {
        prediction,
        zero_snr,
        distillation,
        native_resolution,
        warnings,
    }
}
