//! CLIP text encoders built from a `TextEncoderLayout`: CLIP ViT-L/14 in HF layout
//! (quick-GELU) and OpenCLIP towers (exact GELU), both pre-LayerNorm (eps 1e-5) transformers
//! with a causal mask. `EncoderUse` decides which hidden state each family feeds the UNet
//! (CHECKPOINTS.md §3.6) and therefore which stored layers are loaded at all.

use candle_core::{D, Device, Tensor};
use candle_nn::{Embedding, LayerNorm, Linear, Module};
use sdplane_wire::checkpoint::{Detection, Family, ModelLayout, TextEncoderKind, TextEncoderLayout};

use super::attention::{merge_heads, sliced_attention, split_heads};
use super::error::ModelError;
use super::layers::{layer_norm, linear};
use super::tokenizer::EOS;
use super::weights::Weights;

/// CLIP LayerNorm eps (HF `CLIPTextConfig.layer_norm_eps = 1e-5`; open_clip uses PyTorch's default).
const LN_EPS: f64 = 1e-5;

/// What one encoder contributes, per family (§3.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EncoderUse {
    /// Transformer layers loaded and run.
    pub layers: usize,
    /// Hidden state (number of layers applied) used as cross-attention context.
    pub context_layer: usize,
    /// Whether the final LayerNorm is applied to the context.
    pub context_norm: bool,
    /// Whether the final LayerNorm is loaded (context or pooled use it).
    pub final_norm: bool,
    /// Whether this encoder gives SDXL's pooled vector (and so loads `text_projection`).
    pub projection: bool,
}

impl EncoderUse {
    /// One entry per text encoder, in conditioning order.
    pub(crate) fn for_detection(det: &Detection) -> Vec<Self> {
        let count = det.text_encoders.len();
        det.text_encoders
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let last = l.layers;
                let penultimate = l.layers.saturating_sub(1);
                match det.family {
                    // SDXL base/refiner: penultimate of every tower without final LN; the last tower
                    // (bigG) also gives the pooled vector from its last layer.
                    Family::Sdxl | Family::SdxlRefiner => {
                        let pooled = i + 1 == count;
                        Self {
                            layers: if pooled { last } else { penultimate },
                            context_layer: penultimate,
                            context_norm: false,
                            final_norm: pooled,
                            projection: pooled,
                        }
                    }
                    // SD2 diffusers folder: the converter dropped the last OpenCLIP layer, and the
                    // pipeline uses the last stored hidden state + final LN: the same tensor.
                    Family::Sd2 if det.layout == ModelLayout::Diffusers => Self {
                        layers: last,
                        context_layer: last,
                        context_norm: true,
                        final_norm: true,
                        projection: false,
                    },
                    // SD2: OpenCLIP-H penultimate + final LN.
                    Family::Sd2 => Self {
                        layers: penultimate,
                        context_layer: penultimate,
                        context_norm: true,
                        final_norm: true,
                        projection: false,
                    },
                    // SD1: CLIP-L last layer + final LN.
                    Family::Sd1 => Self {
                        layers: last,
                        context_layer: last,
                        context_norm: true,
                        final_norm: true,
                        projection: false,
                    },
                }
            })
            .collect()
    }

    /// What a diffusers folder keeps of each encoder of a single file: every layer (SD2: all but
    /// the last, as diffusers' converter drops it), the final LayerNorm, and `text_projection`
    /// for SDXL's pooled tower (`CLIPTextModelWithProjection`).
    pub(crate) fn for_folder(det: &Detection) -> Vec<Self> {
        let count = det.text_encoders.len();
        det.text_encoders
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let layers = if det.family == Family::Sd2 && det.layout != ModelLayout::Diffusers {
                    l.layers.saturating_sub(1)
                } else {
                    l.layers
                };
                let sdxl = matches!(det.family, Family::Sdxl | Family::SdxlRefiner);
                Self {
                    layers,
                    context_layer: layers,
                    context_norm: true,
                    final_norm: true,
                    projection: sdxl && i + 1 == count,
                }
            })
            .collect()
    }
}

#[derive(Debug, Clone)]
struct EncoderLayer {
    layer_norm1: LayerNorm,
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    layer_norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

/// Output of one encoder.
pub(crate) struct EncoderOutput {
    pub context: Tensor,
    pub pooled: Option<Tensor>,
}

#[derive(Debug, Clone)]
pub(crate) struct ClipTextModel {
    kind: TextEncoderKind,
    vocab_size: usize,
    max_positions: usize,
    heads: usize,
    token_embedding: Embedding,
    position_embedding: Tensor,
    layers: Vec<EncoderLayer>,
    final_layer_norm: Option<LayerNorm>,
    text_projection: Option<Linear>,
    usage: EncoderUse,
}

impl ClipTextModel {
    /// `w` is rooted at the encoder (`text_encoder`, `text_encoder_2`).
    pub(crate) fn new(w: &Weights, l: &TextEncoderLayout, usage: EncoderUse) -> Result<Self, ModelError> {
        let c = l.width;
        if l.heads == 0 || !c.is_multiple_of(l.heads) {
            return Err(ModelError::invalid(
                "layout",
                format!("text width {c} does not split into {} heads", l.heads),
            ));
        }
        let tw = w.pp("text_model");
        let emb = tw.pp("embeddings");
        let token_embedding = Embedding::new(emb.pp("token_embedding").get(&[l.vocab_size, c], "weight")?, c);
        let position_embedding = emb
            .pp("position_embedding")
            .get(&[l.max_positions, c], "weight")?;
        let mut layers = Vec::with_capacity(usage.layers);
        for n in 0..usage.layers {
            let lw = tw.pp(format!("encoder.layers.{n}"));
            let attn = lw.pp("self_attn");
            layers.push(EncoderLayer {
                layer_norm1: layer_norm(&lw.pp("layer_norm1"), c, LN_EPS)?,
                q_proj: linear(&attn.pp("q_proj"), c, c, true)?,
                k_proj: linear(&attn.pp("k_proj"), c, c, true)?,
                v_proj: linear(&attn.pp("v_proj"), c, c, true)?,
                out_proj: linear(&attn.pp("out_proj"), c, c, true)?,
                layer_norm2: layer_norm(&lw.pp("layer_norm2"), c, LN_EPS)?,
                fc1: linear(&lw.pp("mlp.fc1"), c, l.intermediate_size, true)?,
                fc2: linear(&lw.pp("mlp.fc2"), l.intermediate_size, c, true)?,
            });
        }
        let final_layer_norm = if usage.final_norm {
            Some(layer_norm(&tw.pp("final_layer_norm"), c, LN_EPS)?)
        } else {
            None
        };
        let text_projection = if usage.projection {
            let p = l.projection_dim.ok_or_else(|| ModelError::MissingTensor {
                name: "text_projection.weight".into(),
                stored: format!("{}text_projection", l.prefix),
            })?;
            Some(linear(&w.pp("text_projection"), c, p, false)?)
        } else {
            None
        };
        Ok(Self {
            kind: l.kind,
            vocab_size: l.vocab_size,
            max_positions: l.max_positions,
            heads: l.heads,
            token_embedding,
            position_embedding,
            layers,
            final_layer_norm,
            text_projection,
            usage,
        })
    }

    pub(crate) fn max_positions(&self) -> usize {
        self.max_positions
    }

    /// Padding id after EOS: EOS for HF CLIP-L, 0 for OpenCLIP (§3.6).
    pub(crate) fn pad_id(&self) -> u32 {
        match self.kind {
            TextEncoderKind::HfClip => EOS,
            // diffusers folders' OpenCLIP-derived tokenizers pad with `!` (id 0) too.
            TextEncoderKind::OpenClip | TextEncoderKind::HfOpenClip => 0,
        }
    }

    /// Check caller ids and make the `[n, T]` u32 tensor.
    pub(crate) fn ids_tensor(&self, tokens: &[Vec<u32>], device: &Device) -> Result<Tensor, ModelError> {
        let len = tokens.first().map_or(0, Vec::len);
        if len == 0 || len > self.max_positions || tokens.iter().any(|t| t.len() != len) {
            return Err(ModelError::invalid(
                "tokens",
                format!(
                    "every prompt needs the same number of ids, 1 to {}",
                    self.max_positions
                ),
            ));
        }
        if let Some(bad) = tokens
            .iter()
            .flatten()
            .find(|&&id| id as usize >= self.vocab_size)
        {
            return Err(ModelError::invalid(
                "tokens",
                format!("id {bad} is outside the vocabulary of {}", self.vocab_size),
            ));
        }
        let flat: Vec<u32> = tokens.iter().flatten().copied().collect();
        Ok(Tensor::from_vec(flat, (tokens.len(), len), device)?)
    }

    fn activation(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        Ok(match self.kind {
            // quick-GELU x·σ(1.702x) (OpenAI CLIP, HF `quick_gelu`).
            TextEncoderKind::HfClip => (x * candle_nn::ops::sigmoid(&(x * 1.702)?)?)?,
            // transformers `hidden_act: "gelu"` is the exact erf GELU, as in open_clip.
            TextEncoderKind::OpenClip | TextEncoderKind::HfOpenClip => x.gelu_erf()?,
        })
    }

    fn layer(
        &self,
        layer: &EncoderLayer,
        x: &Tensor,
        mask: &Tensor,
        slice_bytes: usize,
    ) -> Result<Tensor, ModelError> {
        let h = layer.layer_norm1.forward(x)?;
        let d = x.dim(D::Minus1)? / self.heads;
        let q = split_heads(&layer.q_proj.forward(&h)?, self.heads)?;
        let k = split_heads(&layer.k_proj.forward(&h)?, self.heads)?;
        let v = split_heads(&layer.v_proj.forward(&h)?, self.heads)?;
        let a = sliced_attention(&q, &k, &v, 1.0 / (d as f64).sqrt(), Some(mask), slice_bytes)?;
        let x = (layer.out_proj.forward(&merge_heads(&a, self.heads)?)? + x)?;
        let h = layer
            .fc2
            .forward(&self.activation(&layer.fc1.forward(&layer.layer_norm2.forward(&x)?)?)?)?;
        Ok((h + x)?)
    }

    /// Context `[n, T, width]` and, for the pooled tower, the projected EOS vector `[n, P]`.
    pub(crate) fn forward(&self, ids: &Tensor, slice_bytes: usize) -> Result<EncoderOutput, ModelError> {
        let (_, t) = ids.dims2()?;
        let device = ids.device();
        let positions = self.position_embedding.narrow(0, 0, t)?;
        let mut x = self.token_embedding.forward(ids)?.broadcast_add(&positions)?;
        // Causal mask: token i sees tokens ≤ i (CLIP's `build_attention_mask`).
        let mask: Vec<f32> = (0..t)
            .flat_map(|i| (0..t).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
            .collect();
        let mask = Tensor::from_vec(mask, (t, t), device)?;
        let mut context = None;
        for (index, layer) in self.layers.iter().enumerate() {
            if index == self.usage.context_layer {
                context = Some(x.clone());
            }
            x = self.layer(layer, &x, &mask, slice_bytes)?;
        }
        let context = context.unwrap_or_else(|| x.clone());
        let context = match (&self.final_layer_norm, self.usage.context_norm) {
            (Some(norm), true) => norm.forward(&context)?,
            _ => context,
        };
        let pooled = match (&self.text_projection, &self.final_layer_norm) {
            (Some(projection), Some(norm)) => {
                let last = norm.forward(&x)?;
                // The EOS token has the highest id in the window (open_clip `text.argmax(dim=-1)`).
                let eos: Vec<u32> = ids.argmax(1)?.to_vec1()?;
                let rows = eos
                    .iter()
                    .enumerate()
                    .map(|(i, &p)| last.get(i)?.get(p as usize))
                    .collect::<candle_core::Result<Vec<_>>>()?;
                Some(projection.forward(&Tensor::stack(&rows, 0)?)?)
            }
            _ => None,
        };
        Ok(EncoderOutput { context, pooled })
    }
}
