//! UNet and VAE layouts of a diffusers folder, from diffusers parameter names (the mirror of
//! `layout`'s LDM walk, CHECKPOINTS.md §3.2/§3.3 read backwards) and checked against the
//! component's `config.json`. Block and layer counts are counted from the keys; attention
//! heads, which shapes cannot tell, come from the config.

use std::path::Path;

use serde_json::Value;

use super::folder::{contradiction, read_json};
use super::header::{CheckpointError, Header};
use super::layout::{UnetLayout, VaeLayout, VaeNames};

/// A component's parsed `config.json`.
#[derive(Debug, Clone)]
pub(super) struct Config(Value);

impl Config {
    /// Read `path`; it must be a JSON object.
    pub(super) fn read(path: &Path) -> Result<Self, CheckpointError> {
        let value = read_json(path)?;
        if !value.is_object() {
            return Err(CheckpointError::Corrupt(format!(
                "{}: not a JSON object",
                path.display()
            )));
        }
        Ok(Self(value))
    }

    pub(super) fn str(&self, key: &str) -> Option<&str> {
        self.0.get(key)?.as_str()
    }

    pub(super) fn usize(&self, key: &str) -> Option<usize> {
        self.0.get(key)?.as_u64().and_then(|v| usize::try_from(v).ok())
    }

    pub(super) fn f64(&self, key: &str) -> Option<f64> {
        self.0.get(key)?.as_f64()
    }

    pub(super) fn bool(&self, key: &str) -> Option<bool> {
        self.0.get(key)?.as_bool()
    }

    /// A per-block value given as one number or a list (`attention_head_dim`,
    /// `transformer_layers_per_block`), expanded to `n` entries.
    fn per_block(&self, key: &str, n: usize) -> Result<Option<Vec<usize>>, CheckpointError> {
        let bad = || contradiction("unet", format!("`{key}` is neither a number nor {n} numbers"));
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(v)) => {
                let v = v.as_u64().and_then(|v| usize::try_from(v).ok()).ok_or_else(bad)?;
                Ok(Some(vec![v; n]))
            }
            Some(Value::Array(items)) if items.len() == n => items
                .iter()
                .map(|v| v.as_u64().and_then(|v| usize::try_from(v).ok()).ok_or_else(bad))
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(_) => Err(bad()),
        }
    }

    fn usize_list(&self, key: &str) -> Option<Vec<usize>> {
        self.0
            .get(key)?
            .as_array()?
            .iter()
            .map(|v| v.as_u64().and_then(|v| usize::try_from(v).ok()))
            .collect()
    }
}

/// A config key, what the config says (if it says it) and what the tensors say.
type Check = (&'static str, Option<Vec<usize>>, Vec<usize>);

fn shape(header: &Header, key: &str, rank: usize) -> Result<Vec<usize>, CheckpointError> {
    match header.shape(key) {
        Some(s) if s.len() == rank => Ok(s.to_vec()),
        Some(s) => Err(CheckpointError::Unsupported {
            what: "unexpected tensor shape".into(),
            found: format!("`{key}` has shape {s:?}, expected {rank} dimensions"),
        }),
        None => Err(CheckpointError::Unsupported {
            what: "incomplete model".into(),
            found: format!("`{key}` is missing"),
        }),
    }
}

/// Transformer depth, context width and projection kind of `attn` (`…attentions.0.`), if any.
fn attention(header: &Header, attn: &str) -> Result<Option<(usize, usize, bool)>, CheckpointError> {
    let Some(proj) = header.shape(&format!("{attn}proj_in.weight")) else {
        return Ok(None);
    };
    let linear = proj.len() == 2;
    let depth = header.indices_after(&format!("{attn}transformer_blocks.")).len();
    let to_k = shape(
        header,
        &format!("{attn}transformer_blocks.0.attn2.to_k.weight"),
        2,
    )?;
    Ok(Some((depth, to_k[1], linear)))
}

/// The UNet under `p` (`unet.`) in diffusers naming, checked against `config`.
pub(super) fn unet(header: &Header, p: &str, config: &Config) -> Result<UnetLayout, CheckpointError> {
    let conv_in = shape(header, &format!("{p}conv_in.weight"), 4)?;
    let out_channels = shape(header, &format!("{p}conv_out.weight"), 4)?[0];
    let time_embed_dim = shape(header, &format!("{p}time_embedding.linear_1.weight"), 2)?[0];
    let levels = header.indices_after(&format!("{p}down_blocks."));
    let n = levels.len();
    if n == 0 || levels != (0..n).collect::<Vec<_>>() {
        return Err(contradiction("unet", format!("down blocks numbered {levels:?}")));
    }
    let mut block_out_channels = Vec::new();
    let mut transformer_depth = Vec::new();
    let mut context = None;
    let mut linear = None;
    let mut layers_per_block = None;
    let mut note = |found: Option<(usize, usize, bool)>, at: &str| -> Result<usize, CheckpointError> {
        let Some((depth, ctx, lin)) = found else {
            return Ok(0);
        };
        if *context.get_or_insert(ctx) != ctx || *linear.get_or_insert(lin) != lin {
            return Err(contradiction(
                "unet",
                format!("attention at `{at}` differs from the first"),
            ));
        }
        Ok(depth)
    };
    for b in 0..n {
        let block = format!("{p}down_blocks.{b}.");
        let resnets = header.indices_after(&format!("{block}resnets.")).len();
        if *layers_per_block.get_or_insert(resnets) != resnets {
            return Err(contradiction(
                "unet",
                format!("down block {b} has {resnets} resnets"),
            ));
        }
        block_out_channels.push(shape(header, &format!("{block}resnets.0.conv2.weight"), 4)?[0]);
        let at = format!("{block}attentions.0.");
        transformer_depth.push(note(attention(header, &at)?, &at)?);
    }
    let mid = format!("{p}mid_block.attentions.0.");
    let mid_transformer_depth = note(attention(header, &mid)?, &mid)?;
    let (Some(context_dim), Some(linear_projection), Some(layers_per_block)) =
        (context, linear, layers_per_block)
    else {
        return Err(contradiction(
            "unet",
            "no cross-attention anywhere in the UNet".into(),
        ));
    };
    for up in 0..n {
        let level = n - 1 - up;
        let block = format!("{p}up_blocks.{up}.");
        let resnets = header.indices_after(&format!("{block}resnets.")).len();
        let at = format!("{block}attentions.0.");
        let depth = attention(header, &at)?.map_or(0, |a| a.0);
        if resnets != layers_per_block + 1 || depth != transformer_depth[level] {
            return Err(contradiction(
                "unet",
                format!(
                    "up block {up} has {resnets} resnets and depth {depth}, down level {level} mirrors neither"
                ),
            ));
        }
    }
    let adm_in_channels = header
        .shape(&format!("{p}add_embedding.linear_1.weight"))
        .and_then(|s| s.get(1).copied());

    // diffusers names heads `attention_head_dim` unless `num_attention_heads` is set
    // (`UNet2DConditionModel.__init__`: `num_attention_heads = num_attention_heads or attention_head_dim`).
    let attention_heads = match config.per_block("num_attention_heads", n)? {
        Some(h) => h,
        None => config
            .per_block("attention_head_dim", n)?
            .ok_or_else(|| contradiction("unet", "no `attention_head_dim`".into()))?,
    };
    for (level, (&h, &w)) in attention_heads.iter().zip(&block_out_channels).enumerate() {
        if h == 0 || !w.is_multiple_of(h) {
            return Err(contradiction(
                "unet",
                format!("level {level}: {h} heads for width {w}"),
            ));
        }
    }
    let checks: [Check; 6] = [
        (
            "block_out_channels",
            config.usize_list("block_out_channels"),
            block_out_channels.clone(),
        ),
        (
            "in_channels",
            config.usize("in_channels").map(|v| vec![v]),
            vec![conv_in[1]],
        ),
        (
            "out_channels",
            config.usize("out_channels").map(|v| vec![v]),
            vec![out_channels],
        ),
        (
            "layers_per_block",
            config.usize("layers_per_block").map(|v| vec![v]),
            vec![layers_per_block],
        ),
        (
            "cross_attention_dim",
            config.usize("cross_attention_dim").map(|v| vec![v]),
            vec![context_dim],
        ),
        (
            "projection_class_embeddings_input_dim",
            config
                .usize("projection_class_embeddings_input_dim")
                .map(|v| vec![v]),
            adm_in_channels.into_iter().collect(),
        ),
    ];
    for (key, said, found) in checks {
        if let Some(said) = said
            && said != found
        {
            return Err(contradiction(
                "unet",
                format!("config {key} {said:?}, tensors say {found:?}"),
            ));
        }
    }
    if let Some(said) = config.per_block("transformer_layers_per_block", n)? {
        for (level, (&s, &d)) in said.iter().zip(&transformer_depth).enumerate() {
            if d > 0 && s != d {
                return Err(contradiction(
                    "unet",
                    format!("config transformer_layers_per_block {s} at level {level}, tensors say {d}"),
                ));
            }
        }
    }
    if let Some(said) = config.bool("use_linear_projection")
        && said != linear_projection
    {
        return Err(contradiction(
            "unet",
            format!("config use_linear_projection {said}, proj_in says {linear_projection}"),
        ));
    }
    if adm_in_channels.is_some() && config.str("addition_embed_type") != Some("text_time") {
        return Err(contradiction(
            "unet",
            format!(
                "add_embedding present but addition_embed_type is {:?}",
                config.str("addition_embed_type")
            ),
        ));
    }
    Ok(UnetLayout {
        prefix: p.to_string(),
        in_channels: conv_in[1],
        out_channels,
        block_out_channels,
        layers_per_block,
        transformer_depth,
        mid_transformer_depth,
        attention_heads,
        context_dim,
        linear_projection,
        time_embed_dim,
        adm_in_channels,
        addition_time_embed_dim: None,
    })
}

/// The VAE under `p` (`vae.`) in diffusers naming, checked against `config`.
pub(super) fn vae(header: &Header, p: &str, config: &Config) -> Result<VaeLayout, CheckpointError> {
    let names = VaeNames {
        levels: "encoder.down_blocks.",
        resnets: "resnets.",
    };
    let layout = VaeLayout::from_shapes(header, p, &names)?
        .ok_or_else(|| contradiction("vae", "no `encoder.down_blocks.0.resnets.0`".into()))?;
    if header.has(&format!("{p}encoder.mid_block.attentions.0.query.weight")) {
        return Err(CheckpointError::Unsupported {
            what: "VAE saved by diffusers before 0.14 (`query`/`key`/`value` attention names)".into(),
            found: "re-save it with a current diffusers".into(),
        });
    }
    let checks = [
        (
            "block_out_channels",
            config.usize_list("block_out_channels"),
            layout.block_out_channels.clone(),
        ),
        (
            "layers_per_block",
            config.usize("layers_per_block").map(|v| vec![v]),
            vec![layout.layers_per_block],
        ),
        (
            "latent_channels",
            config.usize("latent_channels").map(|v| vec![v]),
            vec![layout.latent_channels],
        ),
        (
            "in_channels",
            config.usize("in_channels").map(|v| vec![v]),
            vec![layout.image_channels],
        ),
    ];
    for (key, said, found) in checks {
        if let Some(said) = said
            && said != found
        {
            return Err(contradiction(
                "vae",
                format!("config {key} {said:?}, tensors say {found:?}"),
            ));
        }
    }
    Ok(layout)
}
