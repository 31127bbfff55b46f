#!/usr/bin/env python3
"""Inpainting goldens from diffusers' StableDiffusionInpaintPipeline. Run by hand, not in CI,
with the venv that make_goldens.py describes:

    cargo build -p sdplane
    /tmp/golden-venv/bin/python replica/tests/golden/make_inpaint_goldens.py

It writes a tiny 9-channel SD1.5 inpainting checkpoint with OUR `sdplane make-test-model
--inpaint` (the Rust test regenerates the same bytes from the same seed), loads it with
`from_single_file` offline, and writes under tests/golden/sd15_inpaint/: the source image and
mask as PNGs, the starting latents, the masked image's latents (posterior mean × scaling factor,
which sdplane uses and which is passed to diffusers as `masked_image_latents`), and 4-step DDIM
images with and without guidance, plus one with an all-white mask (what sdplane does for a
request without `mask_image`).
"""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from make_goldens import (GUIDANCE, NEGATIVE, PROMPT, REPO, STEPS, read_header, save,  # noqa: E402
                          write_config_folder)

FAMILY = "sd15"
SEED = 4
WIDTH, HEIGHT = 64, 48  # a 8×6 latent: not a multiple of the tiny UNet's downsampling either


def source_image() -> Image.Image:
    """A smooth colour ramp with some structure, so the masked image's latents are not flat."""
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    rgb = np.stack([x * 255 // (WIDTH - 1), y * 255 // (HEIGHT - 1), ((x // 8 + y // 8) % 2) * 200], axis=-1)
    return Image.fromarray(rgb.astype(np.uint8), "RGB")


def mask_image() -> Image.Image:
    """White (repaint) rectangle whose edges fall inside latent cells, in grey levels on both
    sides of the 0.5 threshold so binarization is exercised."""
    m = np.zeros((HEIGHT, WIDTH), np.uint8)
    m[13:40, 21:60] = 255
    m[5:9, 3:11] = 127   # below the threshold: kept
    m[30:34, 2:6] = 128  # at the threshold: repainted
    return Image.fromarray(np.stack([m] * 3, axis=-1), "RGB")


def main():
    from diffusers import DDIMScheduler, StableDiffusionInpaintPipeline

    sdplane = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "target" / "debug" / "sdplane"
    out = HERE / "sd15_inpaint"
    out.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ckpt = work / "tiny-sd15-inpaint.safetensors"
        subprocess.run([str(sdplane), "make-test-model", "--family", FAMILY, "--inpaint", "--seed", str(SEED),
                        "--out", str(ckpt)], check=True)
        config = work / "config"
        write_config_folder(config, FAMILY, read_header(ckpt))
        unet_cfg = json.loads((config / "unet" / "config.json").read_text())
        unet_cfg["in_channels"] = 9
        (config / "unet" / "config.json").write_text(json.dumps(unet_cfg, indent=1))
        index = json.loads((config / "model_index.json").read_text())
        index["_class_name"] = "StableDiffusionInpaintPipeline"
        (config / "model_index.json").write_text(json.dumps(index, indent=1))
        pipe = StableDiffusionInpaintPipeline.from_single_file(
            str(ckpt), config=str(config), local_files_only=True, torch_dtype=torch.float32,
            safety_checker=None, requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        from make_goldens import check_loaded
        check_loaded(pipe, ckpt, FAMILY)  # every probed weight came from the file
        assert pipe.unet.conv_in.weight.shape[1] == 9
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, timestep_spacing="leading",
                                                   steps_offset=1, clip_sample=False, set_alpha_to_one=False)

        image, mask = source_image(), mask_image()
        image.save(out / "image.png")
        mask.save(out / "mask.png")
        white = Image.new("RGB", (WIDTH, HEIGHT), (255, 255, 255))
        rng = np.random.default_rng(SEED)
        init = torch.tensor(rng.standard_normal((1, 4, HEIGHT // 8, WIDTH // 8)).astype(np.float32))
        save(out, "init_latents", init)

        def masked_latents(m: Image.Image) -> torch.Tensor:
            with torch.no_grad():
                pixels = pipe.image_processor.preprocess(image, height=HEIGHT, width=WIDTH)
                binary = pipe.mask_processor.preprocess(m, height=HEIGHT, width=WIDTH)
                dist = pipe.vae.encode(pixels * (binary < 0.5)).latent_dist
                return dist.mean * pipe.vae.config.scaling_factor

        cases = [("image_ddim_cfg", mask, GUIDANCE, NEGATIVE), ("image_ddim_nocfg", mask, 0.0, None),
                 # Without guidance: with it, this random tiny model is so sensitive that diffusers
                 # itself moves 163 values by 2–3/255 between float32 and float64.
                 ("image_ddim_nocfg_white_mask", white, 0.0, None)]
        for name, m, guidance, negative in cases:
            mil = masked_latents(m)
            if name == "image_ddim_cfg":
                save(out, "masked_image_latents", mil)
            result = pipe(PROMPT, image=image, mask_image=m, masked_image_latents=mil, negative_prompt=negative,
                          num_inference_steps=STEPS, guidance_scale=guidance, height=HEIGHT, width=WIDTH,
                          strength=1.0, latents=init.clone(), output_type="np").images
            save(out, name, result)
    summary = dict(family=FAMILY, seed=SEED, prompt=PROMPT, negative_prompt=NEGATIVE, width=WIDTH, height=HEIGHT,
                   guidance=GUIDANCE, steps=STEPS, scheduler="ddim")
    (out / "golden.json").write_text(json.dumps(summary, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    import os
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
