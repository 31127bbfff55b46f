#!/usr/bin/env python3
"""Golden values from diffusers for sdplane's pipeline tests. Run by hand, not in CI.

Set-up (any Python >= 3.10; everything from PyPI, nothing from a model hub):

    python3 -m venv /tmp/golden-venv
    /tmp/golden-venv/bin/pip install diffusers transformers torch safetensors numpy open_clip_torch
    cargo build -p sdplane            # the tiny checkpoints are written by OUR binary
    /tmp/golden-venv/bin/python replica/tests/golden/make_goldens.py

(The default torch wheel pulls in CUDA libraries, several GB; the goldens run on the CPU.)

What it does, offline:
1. Writes the tiny SD1.5 and SDXL checkpoints with `sdplane make-test-model --seed`, the same
   files the Rust tests regenerate (same seed, same bytes).
2. Builds a local diffusers config folder matching the tiny shapes (model_index.json, unet, vae,
   text encoder and scheduler configs, CLIP tokenizer files made from the BPE vocabulary that
   the open_clip_torch package ships) and loads each checkpoint with `from_single_file(config=)`.
3. Writes small goldens under tests/golden/<family>/: token ids, text embeddings (context and
   pooled), one UNet evaluation, a VAE decode and encode, and full 4-step DDIM (and Euler for
   SDXL) images from fixed starting latents; plus schedulers.json (see schedulers.py).
4. `save_pretrained`s each loaded pipeline and writes tests/golden/<family>/diffusers_manifest.json
   (per component: tensor names/shapes and the config keys that matter), which
   tests/diffusers_manifest.rs checks `make-test-model --layout diffusers` against.
   `--manifests-only` does only this; `--keep-folders DIR` keeps the saved folders so that
   `SDPLANE_DIFFUSERS_SAVED=DIR cargo test -p sdplane-replica --test diffusers_manifest -- --ignored`
   can generate the golden images from folders diffusers itself wrote.
"""

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
sys.path.insert(0, str(HERE))

# Seeds of the tiny checkpoints; the Rust tests use the same ones.
SEEDS = {"sd15": 1, "sdxl": 2, "sd21": 3}
# Extra `make-test-model` flags per family: the SD2 golden covers v-prediction end to end.
EXTRA_FLAGS = {"sd21": ["--prediction", "v"]}
PREDICTION = {"sd21": "v_prediction"}
PROMPT = "a photograph of an astronaut riding a horse"
NEGATIVE = "blurry, low quality"
SIZE = 64  # image side: 8×8 latents with the tiny 4-level VAE
UNET_TIMESTEP = 500.0
GUIDANCE = 7.5
STEPS = 4
# (height, width) of the odd-size golden: multiples of 8, not of the tiny UNet's factor 4.
ODD_SIZE = (72, 40)


# ---------------------------------------------------------------- CLIP tokenizer files


@lru_cache()
def bytes_to_unicode():
    """GPT-2/CLIP's reversible byte → printable character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def write_tokenizer(folder: Path, pad_token: str):
    """vocab.json + merges.txt exactly as openai/clip-vit-large-patch14's, from open_clip's BPE file."""
    import open_clip

    bpe = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    merges = gzip.open(bpe).read().decode("utf-8").split("\n")
    merges = merges[1 : 49152 - 256 - 2 + 1]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    (folder / "special_tokens_map.json").write_text(json.dumps(dict(
        bos_token="<|startoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>", pad_token=pad_token)))
    (folder / "tokenizer_config.json").write_text(json.dumps(dict(
        tokenizer_class="CLIPTokenizer", model_max_length=77, do_lower_case=True, errors="replace",
        bos_token="<|startoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>", pad_token=pad_token)))


# ---------------------------------------------------------------- diffusers config folders


def read_header(path: Path):
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return {k: v["shape"] for k, v in header.items()}


def unet_config(shapes, family):
    """UNet2DConditionModel config from the tiny checkpoint's shapes (CHECKPOINTS.md §4)."""
    u = "model.diffusion_model."
    c0 = shapes[u + "input_blocks.0.0.weight"][0]
    # Level widths from the resnets' output channels, level by level (2 resnets per level).
    widths, depths = [], []
    block = 1
    while u + f"input_blocks.{block}.0.in_layers.0.weight" in shapes:
        widths.append(shapes[u + f"input_blocks.{block}.0.out_layers.3.weight"][0])
        depth = 0
        while u + f"input_blocks.{block}.1.transformer_blocks.{depth}.attn1.to_q.weight" in shapes:
            depth += 1
        depths.append(depth)
        block += 2
        if u + f"input_blocks.{block}.0.op.weight" in shapes:
            block += 1
    mid = 0
    while u + f"middle_block.1.transformer_blocks.{mid}.attn1.to_q.weight" in shapes:
        mid += 1
    attn = [d > 0 for d in depths]
    linear = len(shapes.get(u + "input_blocks.1.1.proj_in.weight", shapes.get(u + "input_blocks.4.1.proj_in.weight", [0, 0]))) == 2
    ctx = None
    for k, s in shapes.items():
        if k.startswith(u) and k.endswith("attn2.to_k.weight"):
            ctx = s[1]
            break
    heads = [8] * len(widths) if not linear else [max(1, w // 64) for w in widths]
    cfg = dict(
        _class_name="UNet2DConditionModel",
        sample_size=SIZE // 8,
        in_channels=4,
        out_channels=4,
        down_block_types=["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn],
        up_block_types=["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)],
        block_out_channels=widths,
        layers_per_block=2,
        cross_attention_dim=ctx,
        attention_head_dim=heads,
        transformer_layers_per_block=[max(d, 1) for d in depths[:-1]] + [max(depths[-1], mid, 1)],
        use_linear_projection=linear,
        norm_num_groups=32,
        norm_eps=1e-5,
        flip_sin_to_cos=True,
        freq_shift=0,
        center_input_sample=False,
        downsample_padding=1,
        mid_block_scale_factor=1,
        act_fn="silu",
    )
    if family == "sdxl":
        adm = shapes[u + "label_emb.0.0.weight"][1]
        pooled = shapes["conditioner.embedders.1.model.text_projection"][1]
        cfg.update(
            addition_embed_type="text_time",
            addition_time_embed_dim=(adm - pooled) // 6,
            projection_class_embeddings_input_dim=adm,
        )
    assert c0 == widths[0]
    return cfg


def vae_config(shapes, scale):
    v = "first_stage_model."
    widths = []
    level = 0
    while v + f"encoder.down.{level}.block.0.conv1.weight" in shapes:
        widths.append(shapes[v + f"encoder.down.{level}.block.1.conv2.weight"][0])
        level += 1
    return dict(
        _class_name="AutoencoderKL",
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * len(widths),
        up_block_types=["UpDecoderBlock2D"] * len(widths),
        block_out_channels=widths,
        layers_per_block=2,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=SIZE,
        scaling_factor=scale,
        force_upcast=False,
    )


def clip_config(width, layers, act, projection=None):
    cfg = dict(
        architectures=["CLIPTextModelWithProjection" if projection else "CLIPTextModel"],
        model_type="clip_text_model",
        vocab_size=49408,
        hidden_size=width,
        intermediate_size=4 * width,
        num_hidden_layers=layers,
        num_attention_heads=max(1, width // 64),
        max_position_embeddings=77,
        hidden_act=act,
        layer_norm_eps=1e-5,
        bos_token_id=49406,
        eos_token_id=2,
        pad_token_id=1,
        torch_dtype="float32",
    )
    if projection:
        cfg["projection_dim"] = projection
    return cfg


def count_layers(shapes, prefix, pattern):
    n = 0
    while any(k.startswith(prefix + pattern.format(n)) for k in shapes):
        n += 1
    return n


def write_config_folder(folder: Path, family: str, shapes):
    scheduler = dict(
        _class_name="EulerDiscreteScheduler" if family == "sdxl" else "DDIMScheduler",
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
        steps_offset=1, timestep_spacing="leading", prediction_type=PREDICTION.get(family, "epsilon"),
        clip_sample=False, set_alpha_to_one=False, interpolation_type="linear",
    )
    components = dict(unet=unet_config(shapes, family), vae=vae_config(shapes, 0.13025 if family == "sdxl" else 0.18215))
    if family == "sd15":
        p = "cond_stage_model.transformer.text_model."
        width = shapes[p + "embeddings.token_embedding.weight"][1]
        components["text_encoder"] = clip_config(width, count_layers(shapes, p, "encoder.layers.{}."), "quick_gelu")
        index = dict(_class_name="StableDiffusionPipeline", requires_safety_checker=False,
                     safety_checker=[None, None], feature_extractor=[None, None], image_encoder=[None, None],
                     text_encoder=["transformers", "CLIPTextModel"], tokenizer=["transformers", "CLIPTokenizer"])
        write_tokenizer(folder / "tokenizer", "<|endoftext|>")
    elif family == "sd21":
        p = "cond_stage_model.model."
        width = shapes[p + "token_embedding.weight"][1]
        layers = count_layers(shapes, p, "transformer.resblocks.{}.")
        # SD2 conditions on the penultimate layer: diffusers' SD2 config has one layer fewer than
        # the file and skips the last block's keys (its SD_2_TEXT_ENCODER_KEYS_TO_IGNORE names
        # block 23 of the real 24; here the tiny tower's last block).
        components["text_encoder"] = clip_config(width, layers - 1, "gelu")
        from diffusers.loaders import single_file_utils
        for suffix in ["attn.in_proj_bias", "attn.in_proj_weight", "attn.out_proj.bias", "attn.out_proj.weight",
                       "ln_1.bias", "ln_1.weight", "ln_2.bias", "ln_2.weight", "mlp.c_fc.bias", "mlp.c_fc.weight",
                       "mlp.c_proj.bias", "mlp.c_proj.weight"]:
            key = f"{p}transformer.resblocks.{layers - 1}.{suffix}"
            if key not in single_file_utils.SD_2_TEXT_ENCODER_KEYS_TO_IGNORE:
                single_file_utils.SD_2_TEXT_ENCODER_KEYS_TO_IGNORE.append(key)
        index = dict(_class_name="StableDiffusionPipeline", requires_safety_checker=False,
                     safety_checker=[None, None], feature_extractor=[None, None], image_encoder=[None, None],
                     text_encoder=["transformers", "CLIPTextModel"], tokenizer=["transformers", "CLIPTokenizer"])
        write_tokenizer(folder / "tokenizer", "!")
    else:
        p1 = "conditioner.embedders.0.transformer.text_model."
        p2 = "conditioner.embedders.1.model."
        w1 = shapes[p1 + "embeddings.token_embedding.weight"][1]
        w2 = shapes[p2 + "token_embedding.weight"][1]
        components["text_encoder"] = clip_config(w1, count_layers(shapes, p1, "encoder.layers.{}."), "quick_gelu")
        components["text_encoder_2"] = clip_config(
            w2, count_layers(shapes, p2, "transformer.resblocks.{}."), "gelu", projection=shapes[p2 + "text_projection"][1])
        index = dict(_class_name="StableDiffusionXLPipeline", force_zeros_for_empty_prompt=True,
                     image_encoder=[None, None], feature_extractor=[None, None],
                     text_encoder=["transformers", "CLIPTextModel"], tokenizer=["transformers", "CLIPTokenizer"],
                     text_encoder_2=["transformers", "CLIPTextModelWithProjection"],
                     tokenizer_2=["transformers", "CLIPTokenizer"])
        write_tokenizer(folder / "tokenizer", "<|endoftext|>")
        write_tokenizer(folder / "tokenizer_2", "!")
    index.update(unet=["diffusers", "UNet2DConditionModel"], vae=["diffusers", "AutoencoderKL"],
                 scheduler=["diffusers", scheduler["_class_name"]])
    for name, cfg in components.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        fname = "config.json"
        (folder / name / fname).write_text(json.dumps(cfg, indent=1))
    (folder / "scheduler").mkdir(parents=True, exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler, indent=1))
    (folder / "model_index.json").write_text(json.dumps(index, indent=1))


# ---------------------------------------------------------------- goldens


def save(out: Path, name: str, t):
    arr = t.detach().to(torch.float32).cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t, np.float32)
    np.save(out / f"{name}.npy", np.ascontiguousarray(arr.astype(np.float32)))


def check_loaded(pipe, ckpt: Path, family: str):
    """Fail loudly if from_single_file left any probed weight at its random initialisation."""
    from safetensors.torch import load_file

    sd = load_file(str(ckpt))
    te = "cond_stage_model.transformer." if family == "sd15" else "conditioner.embedders.0.transformer."
    te_embedding = te + "text_model.embeddings.token_embedding.weight"
    te_final_norm = te + "text_model.final_layer_norm.weight"
    if family == "sd21":
        te_embedding = "cond_stage_model.model.token_embedding.weight"
        te_final_norm = "cond_stage_model.model.ln_final.weight"
    def named(module, suffix):
        # transformers 5 drops the `text_model.` level in CLIPTextModel; accept both.
        params = dict(module.named_parameters())
        return params.get("text_model." + suffix, params.get(suffix))

    probes = [
        (pipe.unet.conv_in.weight, sd["model.diffusion_model.input_blocks.0.0.weight"]),
        (pipe.unet.conv_out.weight, sd["model.diffusion_model.out.2.weight"]),
        (pipe.vae.decoder.conv_in.weight, sd["first_stage_model.decoder.conv_in.weight"]),
        (named(pipe.text_encoder, "embeddings.token_embedding.weight"), sd[te_embedding]),
        (named(pipe.text_encoder, "final_layer_norm.weight"), sd[te_final_norm]),
    ]
    if family == "sdxl":
        p2 = "conditioner.embedders.1.model."
        probes += [
            (named(pipe.text_encoder_2, "embeddings.token_embedding.weight"), sd[p2 + "token_embedding.weight"]),
            (pipe.text_encoder_2.text_projection.weight, sd[p2 + "text_projection"].T),
            (pipe.unet.add_embedding.linear_1.weight, sd["model.diffusion_model.label_emb.0.0.weight"]),
        ]
    for ours, stored in probes:
        assert torch.equal(ours.detach(), stored), "diffusers did not load a weight from the checkpoint"


def goldens(family: str, sdplane: Path, work: Path):
    from diffusers import (DDIMScheduler, EulerDiscreteScheduler, StableDiffusionPipeline,
                           StableDiffusionXLPipeline)

    ckpt = work / f"tiny-{family}.safetensors"
    subprocess.run([str(sdplane), "make-test-model", "--family", family, "--seed", str(SEEDS[family]),
                    "--out", str(ckpt)] + EXTRA_FLAGS.get(family, []), check=True)
    shapes = read_header(ckpt)
    config_dir = work / f"config-{family}"
    write_config_folder(config_dir, family, shapes)
    cls = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
    kwargs = {} if family == "sdxl" else dict(safety_checker=None)
    pipe = cls.from_single_file(str(ckpt), config=str(config_dir), local_files_only=True,
                                torch_dtype=torch.float32, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    check_loaded(pipe, ckpt, family)
    out = HERE / family
    out.mkdir(exist_ok=True)
    rng = np.random.default_rng(SEEDS[family])
    summary = dict(family=family, seed=SEEDS[family], prediction=PREDICTION.get(family, "epsilon"), prompt=PROMPT, negative_prompt=NEGATIVE, size=SIZE,
                   unet_timestep=UNET_TIMESTEP, guidance=GUIDANCE, steps=STEPS)

    with torch.no_grad():
        # Token ids per encoder, for [negative, prompt].
        tokenizers = [pipe.tokenizer] + ([pipe.tokenizer_2] if family == "sdxl" else [])
        summary["tokens"] = [
            [tok(p, padding="max_length", max_length=77, truncation=True).input_ids for p in (NEGATIVE, PROMPT)]
            for tok in tokenizers
        ]
        # Text conditioning [negative, prompt].
        if family != "sdxl":
            context, neg_context = pipe.encode_prompt(PROMPT, "cpu", 1, True, NEGATIVE)
            text_context = torch.cat([neg_context, context])
            pooled = None
        else:
            context, neg_context, pooled_c, pooled_n = pipe.encode_prompt(
                PROMPT, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True, negative_prompt=NEGATIVE)
            text_context = torch.cat([neg_context, context])
            pooled = torch.cat([pooled_n, pooled_c])
            save(out, "text_pooled", pooled)
        save(out, "text_context", text_context)

        # One UNet evaluation on fixed latents [2, 4, 8, 8] with that context.
        latents = torch.tensor(rng.standard_normal((2, 4, SIZE // 8, SIZE // 8)).astype(np.float32))
        save(out, "unet_latents", latents)
        added = None
        if family == "sdxl":
            time_ids = torch.tensor([[SIZE, SIZE, 0, 0, SIZE, SIZE]] * 2, dtype=torch.float32)
            added = dict(text_embeds=pooled, time_ids=time_ids)
        unet_out = pipe.unet(latents, UNET_TIMESTEP, encoder_hidden_states=text_context, added_cond_kwargs=added).sample
        save(out, "unet_out", unet_out)

        # VAE decode of fixed latents (already divided by the scaling factor) and encode of that image.
        z = torch.tensor(rng.standard_normal((1, 4, SIZE // 8, SIZE // 8)).astype(np.float32))
        save(out, "vae_latents", z)
        decoded = pipe.vae.decode(z).sample
        save(out, "vae_decoded", decoded)
        dist = pipe.vae.encode(decoded.clamp(-1, 1)).latent_dist
        save(out, "vae_encoded_mean", dist.mean)
        save(out, "vae_encoded_std", dist.std)

    # Full pipelines from fixed starting latents (diffusers' `latents`: unit variance).
    init = torch.tensor(rng.standard_normal((1, 4, SIZE // 8, SIZE // 8)).astype(np.float32))
    save(out, "init_latents", init)
    scheds = dict(ddim=DDIMScheduler.from_config(pipe.scheduler.config, timestep_spacing="leading", steps_offset=1,
                                                 clip_sample=False, set_alpha_to_one=False))
    if family == "sdxl":
        scheds["euler"] = EulerDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing="leading", steps_offset=1)
    for name, sched in scheds.items():
        pipe.scheduler = sched
        for guided in (True, False):
            g = GUIDANCE if guided else 0.0
            neg = NEGATIVE if guided else None
            image = pipe(PROMPT, negative_prompt=neg, num_inference_steps=STEPS, guidance_scale=g, height=SIZE,
                         width=SIZE, latents=init.clone(), output_type="np").images
            save(out, f"image_{name}_{'cfg' if guided else 'nocfg'}", image)
        # SDXL with guidance and no negative prompt: force_zeros_for_empty_prompt.
        if family == "sdxl":
            image = pipe(PROMPT, num_inference_steps=STEPS, guidance_scale=GUIDANCE, height=SIZE, width=SIZE,
                         latents=init.clone(), output_type="np").images
            save(out, f"image_{name}_cfg_empty_negative", image)
    # A size that is a multiple of 8 but not of the UNet's total downsampling (72×40 px → a 9×5
    # latent): diffusers upsamples to each skip's size. Drawn last so the goldens above keep
    # their values.
    odd_h, odd_w = ODD_SIZE
    odd_init = torch.tensor(rng.standard_normal((1, 4, odd_h // 8, odd_w // 8)).astype(np.float32))
    save(out, "init_latents_odd", odd_init)
    pipe.scheduler = scheds["ddim"]
    image = pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=STEPS, guidance_scale=GUIDANCE,
                 height=odd_h, width=odd_w, latents=odd_init, output_type="np").images
    save(out, "image_ddim_cfg_odd", image)
    summary["odd_size"] = [odd_h, odd_w]
    (out / "golden.json").write_text(json.dumps(summary, indent=1))
    print(f"wrote {out}")


# Config keys the folder manifest keeps per component: what decides the architecture and how
# the pipeline uses it (sdplane's folder writer must agree on each).
MANIFEST_KEYS = {
    "unet": ["in_channels", "out_channels", "block_out_channels", "layers_per_block", "attention_head_dim",
             "num_attention_heads", "cross_attention_dim", "use_linear_projection", "transformer_layers_per_block",
             "addition_embed_type", "addition_time_embed_dim", "projection_class_embeddings_input_dim",
             "down_block_types", "up_block_types", "mid_block_type", "norm_num_groups", "flip_sin_to_cos",
             "freq_shift"],
    "vae": ["in_channels", "out_channels", "block_out_channels", "layers_per_block", "latent_channels",
            "norm_num_groups", "down_block_types", "up_block_types"],
    "text_encoder": ["architectures", "hidden_act", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "intermediate_size", "vocab_size", "max_position_embeddings", "layer_norm_eps"],
    "scheduler": ["prediction_type", "beta_schedule", "beta_start", "beta_end", "num_train_timesteps"],
}


def folder_manifest(family: str, sdplane: Path, work: Path, keep: Path = None):
    """Load our tiny single file with diffusers `from_single_file`, `save_pretrained` it, and
    commit what the folder holds: per component, tensor names and shapes, and the config keys of
    MANIFEST_KEYS. The Rust test `diffusers_manifest` checks our folder writer against it."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    ckpt = work / f"tiny-{family}.safetensors"
    subprocess.run([str(sdplane), "make-test-model", "--family", family, "--seed", str(SEEDS[family]),
                    "--out", str(ckpt)] + EXTRA_FLAGS.get(family, []), check=True)
    config_dir = work / f"config-{family}"
    write_config_folder(config_dir, family, read_header(ckpt))
    cls = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
    kwargs = {} if family == "sdxl" else dict(safety_checker=None, requires_safety_checker=False)
    pipe = cls.from_single_file(str(ckpt), config=str(config_dir), local_files_only=True,
                                torch_dtype=torch.float32, **kwargs)
    saved = (keep / family) if keep else work / f"saved-{family}"
    pipe.save_pretrained(str(saved), safe_serialization=True)
    manifest = {"model_index": {}, "components": {}}
    index = json.loads((saved / "model_index.json").read_text())
    for name, value in index.items():
        if not name.startswith("_") and name in ("unet", "vae", "text_encoder", "text_encoder_2", "scheduler"):
            manifest["model_index"][name] = value
    for sub in sorted(p for p in saved.iterdir() if p.is_dir()):
        name = sub.name
        if name.startswith("tokenizer"):
            continue
        entry = {}
        weights = sorted(sub.glob("*.safetensors"))
        if weights:
            entry["file"] = weights[0].name
            entry["tensors"] = {k: v for w in weights for k, v in read_header(w).items()}
        config_file = sub / ("scheduler_config.json" if name == "scheduler" else "config.json")
        config = json.loads(config_file.read_text())
        keys = MANIFEST_KEYS["text_encoder" if name.startswith("text_encoder") else name]
        entry["config"] = {k: config[k] for k in keys if k in config and config[k] is not None}
        manifest["components"][name] = entry
    out = HERE / family
    out.mkdir(exist_ok=True)
    (out / "diffusers_manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    print(f"wrote {out / 'diffusers_manifest.json'} (folder saved at {saved})")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sdplane", type=Path, default=REPO / "target" / "debug" / "sdplane")
    parser.add_argument("--families", nargs="*", default=["sd15", "sdxl", "sd21"])
    parser.add_argument("--manifests-only", action="store_true",
                        help="only write diffusers_manifest.json per family (save_pretrained folders)")
    parser.add_argument("--keep-folders", type=Path, default=None,
                        help="keep diffusers' saved folders here (<dir>/<family>) to load them with sdplane")
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.manifests_only:
        with tempfile.TemporaryDirectory() as work:
            for family in args.families:
                folder_manifest(family, args.sdplane, Path(work), args.keep_folders)
        return
    import schedulers
    schedulers.write(HERE / "schedulers.json")
    with tempfile.TemporaryDirectory() as work:
        for family in args.families:
            goldens(family, args.sdplane, Path(work))
            folder_manifest(family, args.sdplane, Path(work), args.keep_folders)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
