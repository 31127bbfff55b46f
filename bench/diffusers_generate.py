"""diffusers side of bench/generation.sh: loads the same single-file SD1.5 checkpoint that
`sdplane generate` runs, offline (`from_single_file` with a local config folder this script
writes), generates once with DDIM and classifier-free guidance, and prints one JSON line with
the load time and per-phase seconds (text encode, mean UNet step, VAE decode, total).

The config folder holds the published SD1.5 component configs (the values of
runwayml/stable-diffusion-v1-5's unet/vae/text_encoder/scheduler config.json, typed in here)
and a CLIP tokenizer built from OpenAI's BPE merges file as the instant-clip-tokenizer crate
ships it, the same table sdplane tokenizes with.

Usage: diffusers_generate.py CHECKPOINT BPE_TXT CONFIG_DIR --steps N --guidance G --width W
       --height H --latents FILE.npy --prompt P --out FILE.png
"""

import argparse
import json
import os
import time

import numpy as np
import torch

UNET = {
    "_class_name": "UNet2DConditionModel", "act_fn": "silu", "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280], "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4,
    "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32,
    "out_channels": 4, "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}
VAE = {
    "_class_name": "AutoencoderKL", "act_fn": "silu", "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4, "in_channels": 3, "latent_channels": 4,
    "layers_per_block": 2, "norm_num_groups": 32, "out_channels": 3, "sample_size": 512,
    "up_block_types": ["UpDecoderBlock2D"] * 4, "scaling_factor": 0.18215,
}
TEXT_ENCODER = {
    "architectures": ["CLIPTextModel"], "attention_dropout": 0.0, "bos_token_id": 0, "dropout": 0.0,
    "eos_token_id": 2, "hidden_act": "quick_gelu", "hidden_size": 768, "initializer_factor": 1.0,
    "initializer_range": 0.02, "intermediate_size": 3072, "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77, "model_type": "clip_text_model", "num_attention_heads": 12,
    "num_hidden_layers": 12, "pad_token_id": 1, "projection_dim": 768, "vocab_size": 49408,
}
# SD1.5's scheduler values with DDIMScheduler as the class (diffusers' DDIM defaults for SD1.x).
SCHEDULER = {
    "_class_name": "DDIMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "beta_start": 0.00085, "clip_sample": False, "num_train_timesteps": 1000,
    "set_alpha_to_one": False, "steps_offset": 1, "prediction_type": "epsilon",
    "timestep_spacing": "leading",
}
MODEL_INDEX = {
    "_class_name": "StableDiffusionPipeline", "feature_extractor": [None, None],
    "safety_checker": [None, None], "requires_safety_checker": False,
    "scheduler": ["diffusers", "DDIMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}


def bytes_to_unicode():
    """GPT-2/CLIP's reversible byte → printable-character table (openai/CLIP simple_tokenizer.py)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def write_tokenizer(bpe_txt, out_dir):
    """vocab.json/merges.txt in the order openai/CLIP builds its vocabulary: 256 byte symbols,
    the same with `</w>`, the 48894 merges (49152 - 256 - 2), then the two special tokens."""
    with open(bpe_txt, encoding="utf-8") as f:
        merges = f.read().split("\n")[1 : 49152 - 256 - 2 + 1]
    symbols = bytes_to_unicode()
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump({tok: i for i, tok in enumerate(vocab)}, f, ensure_ascii=False)
    with open(os.path.join(out_dir, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    _dump(os.path.join(out_dir, "tokenizer_config.json"), {
        "model_max_length": 77, "do_lower_case": True, "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
        "tokenizer_class": "CLIPTokenizer",
    })


def _dump(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f)


def write_config(config_dir, bpe_txt):
    _dump(os.path.join(config_dir, "model_index.json"), MODEL_INDEX)
    _dump(os.path.join(config_dir, "unet", "config.json"), UNET)
    _dump(os.path.join(config_dir, "vae", "config.json"), VAE)
    _dump(os.path.join(config_dir, "text_encoder", "config.json"), TEXT_ENCODER)
    _dump(os.path.join(config_dir, "scheduler", "scheduler_config.json"), SCHEDULER)
    write_tokenizer(bpe_txt, os.path.join(config_dir, "tokenizer"))


class Timed:
    """Wraps a module method and adds up the wall time of its calls."""

    def __init__(self, obj, name):
        self.seconds, self.calls = 0.0, 0
        inner = getattr(obj, name)

        def wrapper(*a, **kw):
            t = time.perf_counter()
            out = inner(*a, **kw)
            self.seconds += time.perf_counter() - t
            self.calls += 1
            return out

        setattr(obj, name, wrapper)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("checkpoint")
    p.add_argument("bpe_txt")
    p.add_argument("config_dir")
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--guidance", type=float, required=True)
    p.add_argument("--width", type=int, required=True)
    p.add_argument("--height", type=int, required=True)
    p.add_argument("--latents", required=True)
    p.add_argument("--prompt", required=True)
    p.add_argument("--out", required=True)
    a = p.parse_args()

    os.environ["HF_HUB_OFFLINE"] = "1"
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    write_config(a.config_dir, a.bpe_txt)
    t0 = time.perf_counter()
    pipe = StableDiffusionPipeline.from_single_file(
        a.checkpoint, config=a.config_dir, local_files_only=True, torch_dtype=torch.float32,
        safety_checker=None, requires_safety_checker=False,
    )
    pipe.scheduler = DDIMScheduler.from_pretrained(a.config_dir, subfolder="scheduler")
    pipe.set_progress_bar_config(disable=True)
    load_s = time.perf_counter() - t0

    text = Timed(pipe.text_encoder, "forward")
    unet = Timed(pipe.unet, "forward")
    vae = Timed(pipe.vae, "decode")
    latents = torch.from_numpy(np.load(a.latents)).to(torch.float32)
    t1 = time.perf_counter()
    with torch.inference_mode():
        image = pipe(
            a.prompt, negative_prompt="", num_inference_steps=a.steps, guidance_scale=a.guidance,
            width=a.width, height=a.height, latents=latents,
        ).images[0]
    generate_s = time.perf_counter() - t1
    image.save(a.out)
    print("RESULT " + json.dumps({
        "impl": "diffusers", "load_s": load_s, "text_encode_s": text.seconds,
        "unet_step_s": unet.seconds / max(unet.calls, 1), "unet_calls": unet.calls,
        "vae_decode_s": vae.seconds, "generate_s": generate_s,
        "torch": torch.__version__, "threads": torch.get_num_threads(),
    }), flush=True)


if __name__ == "__main__":
    main()
