//! diffusers `ResnetBlock2D`, shared by the UNet (with a time-embedding projection, GroupNorm
//! eps 1e-5) and the VAE (no time embedding, eps 1e-6): norm → SiLU → conv, plus the time
//! projection, norm → SiLU → conv, added to the (1×1-projected when widths differ) input.

use candle_core::Tensor;
use candle_nn::{GroupNorm, Linear, Module};

use super::error::ModelError;
use super::layers::{Conv, conv2d, group_norm, linear};
use super::weights::Weights;

#[derive(Debug, Clone)]
pub(crate) struct ResnetBlock2D {
    norm1: GroupNorm,
    conv1: Conv,
    time_emb_proj: Option<Linear>,
    norm2: GroupNorm,
    conv2: Conv,
    conv_shortcut: Option<Conv>,
}

impl ResnetBlock2D {
    /// `temb_channels`: time-embedding width (UNet) or `None` (VAE).
    pub(crate) fn new(
        w: &Weights,
        c_in: usize,
        c_out: usize,
        temb_channels: Option<usize>,
        eps: f64,
    ) -> Result<Self, ModelError> {
        let time_emb_proj = match temb_channels {
            Some(t) => Some(linear(&w.pp("time_emb_proj"), t, c_out, true)?),
            None => None,
        };
        // A 1×1 shortcut exists exactly when the width changes (§3.2 ResBlock table).
        let conv_shortcut = if c_in != c_out {
            Some(conv2d(&w.pp("conv_shortcut"), c_in, c_out, 1, 1, 0)?)
        } else {
            None
        };
        Ok(Self {
            norm1: group_norm(&w.pp("norm1"), c_in, eps)?,
            conv1: conv2d(&w.pp("conv1"), c_in, c_out, 3, 1, 1)?,
            time_emb_proj,
            norm2: group_norm(&w.pp("norm2"), c_out, eps)?,
            conv2: conv2d(&w.pp("conv2"), c_out, c_out, 3, 1, 1)?,
            conv_shortcut,
        })
    }

    /// `x` `[b, c_in, h, w]`, `temb` `[b, temb_channels]` for the UNet.
    pub(crate) fn forward(&self, x: &Tensor, temb: Option<&Tensor>) -> Result<Tensor, ModelError> {
        let mut h = self.conv1.forward(&self.norm1.forward(x)?.silu()?)?;
        if let (Some(proj), Some(temb)) = (&self.time_emb_proj, temb) {
            let t = proj.forward(&temb.silu()?)?.unsqueeze(2)?.unsqueeze(3)?;
            h = h.broadcast_add(&t)?;
        }
        let h = self.conv2.forward(&self.norm2.forward(&h)?.silu()?)?;
        let skip = match &self.conv_shortcut {
            Some(conv) => conv.forward(x)?,
            None => x.clone(),
        };
        Ok((skip + h)?)
    }
}
