"""make_edit_refs.py - reference runs of diffusers 0.27.2's
StableDiffusionImg2ImgPipeline and StableDiffusionInpaintPipeline on the tiny
fixture model, for tests/tools/test-df-sample-edit.sh.

Run with the fixture versions (torch 1.13 CPU fp32, diffusers 0.27.2):
    /tmp/venv/bin/python tests/refs/make_edit_refs.py [FIXTURES_DIR]
Writes tests/data/edit_refs/: init.png (64x64 RGB), init_72x68.png, mask.png
(64x64 gray, 255 = repaint), unet9_conv_in.safetensors + unet9/config.json
(the 9-channel inpainting UNet: the fixture UNet with a 9-input conv_in drawn
from torch seed 9; tests/refs/make_unet9.py assembles the folder), and per
case <name>.safetensors (final_latents before the VAE) and <name>.png,
listed with their parameters in manifest.json. (No LMS case: its diffusers
class needs scipy, which the venv lacks.)
"""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from diffusers import (DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,
                       EulerDiscreteScheduler, PNDMScheduler,
                       StableDiffusionImg2ImgPipeline, StableDiffusionInpaintPipeline,
                       UNet2DConditionModel, UniPCMultistepScheduler)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
OUT = os.path.join(ROOT, "tests", "data", "edit_refs")
FX = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "..", "shared", "fixtures")
MODEL = os.path.join(FX, "pipeline")
PROMPT = "portrait of a smiling woman with short dark hair"
NEGATIVE = "blurry, low quality"
STEPS = 10

torch.set_num_threads(1)


def make_inputs():
    y, x = np.mgrid[0:64, 0:64]
    img = np.stack([x * 4, y * 4, ((x // 8 + y // 8) % 2) * 180 + 40], -1)
    img[20:44, 24:40] = [220, 180, 150]             # a face-coloured block
    Image.fromarray(img.astype(np.uint8), "RGB").save(os.path.join(OUT, "init.png"))
    y, x = np.mgrid[0:68, 0:72]
    img2 = np.stack([(x * 3) % 256, (y * 5) % 256, (x + y) * 2 % 256], -1)
    Image.fromarray(img2.astype(np.uint8), "RGB").save(os.path.join(OUT, "init_72x68.png"))
    m = np.zeros((64, 64), np.uint8)
    m[18:50, 13:45] = 255                           # edges off the 8-pixel grid
    m[0:5, 60:64] = 200                             # >= 128: repaint
    m[60:64, 0:6] = 100                             # < 128: keep
    Image.fromarray(m, "L").save(os.path.join(OUT, "mask.png"))


def make_unet9():
    torch.manual_seed(9)
    w = torch.randn(32, 9, 3, 3) / (9 * 9) ** 0.5   # N(0, 1/fan_in) as the fixture's convs
    save_file({"conv_in.weight": w.contiguous()}, os.path.join(OUT, "unet9_conv_in.safetensors"),
              metadata={"format": "pt"})
    cfg = json.load(open(os.path.join(MODEL, "unet", "config.json")))
    cfg["in_channels"] = 9
    os.makedirs(os.path.join(OUT, "unet9"), exist_ok=True)
    with open(os.path.join(OUT, "unet9", "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")


def scheduler(name, config):
    if name == "ddim":
        return DDIMScheduler.from_config(config)
    if name == "dpmpp_2m":
        return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++",
                                                       solver_order=2, use_karras_sigmas=False)
    if name == "euler_ancestral":
        return EulerAncestralDiscreteScheduler.from_config(config)
    if name == "euler":
        return EulerDiscreteScheduler.from_config(config)
    if name == "pndm":
        return PNDMScheduler.from_config(config, skip_prk_steps=True)
    if name == "unipc":
        return UniPCMultistepScheduler.from_config(config)
    raise ValueError(name)


# name, kind, unet channels, scheduler, strength, seed, batch, guidance, init file
CASES = [
    ("img2img_ddim_s0.5", "img2img", 4, "ddim", 0.5, 1234, 1, 7.5, "init.png"),
    ("img2img_ddim_s0.8", "img2img", 4, "ddim", 0.8, 42, 1, 7.5, "init.png"),
    ("img2img_ddim_s0.7_b2", "img2img", 4, "ddim", 0.7, 7, 2, 7.5, "init.png"),
    ("img2img_dpmpp_2m_s0.6", "img2img", 4, "dpmpp_2m", 0.6, 5, 1, 7.5, "init.png"),
    ("img2img_euler_ancestral_s0.6", "img2img", 4, "euler_ancestral", 0.6, 6, 1, 7.5, "init.png"),
    ("img2img_pndm_s0.7", "img2img", 4, "pndm", 0.7, 9, 1, 7.5, "init.png"),
    ("img2img_unipc_s0.7", "img2img", 4, "unipc", 0.7, 10, 1, 7.5, "init.png"),
    ("img2img_ddim_72x68", "img2img", 4, "ddim", 0.75, 11, 1, 7.5, "init_72x68.png"),
    ("inpaint4_ddim_s1", "inpaint", 4, "ddim", 1.0, 21, 1, 7.5, "init.png"),
    ("inpaint4_ddim_s0.6_b2", "inpaint", 4, "ddim", 0.6, 22, 2, 7.5, "init.png"),
    ("inpaint4_euler_s0.75", "inpaint", 4, "euler", 0.75, 23, 1, 7.5, "init.png"),
    ("inpaint4_dpmpp_2m_s1", "inpaint", 4, "dpmpp_2m", 1.0, 24, 1, 7.5, "init.png"),
    ("inpaint9_ddim_s1", "inpaint", 9, "ddim", 1.0, 31, 1, 7.5, "init.png"),
    ("inpaint9_ddim_s0.7", "inpaint", 9, "ddim", 0.7, 32, 1, 7.5, "init.png"),
    ("inpaint9_euler_s1_g1", "inpaint", 9, "euler", 1.0, 33, 2, 1.0, "init.png"),
]


def run_case(pipes, case):
    name, kind, ch, sched, strength, seed, batch, guidance, init = case
    pipe = pipes[(kind, ch)]
    pipe.scheduler = scheduler(sched, pipes["config"])
    image = Image.open(os.path.join(OUT, init))
    args = dict(prompt=PROMPT, negative_prompt=NEGATIVE, image=image, strength=strength,
                num_inference_steps=STEPS, guidance_scale=guidance, num_images_per_prompt=batch)
    if kind == "inpaint":
        args["mask_image"] = Image.open(os.path.join(OUT, "mask.png"))
    lat = pipe(**args, generator=torch.Generator().manual_seed(seed), output_type="latent").images
    pil = pipe(**args, generator=torch.Generator().manual_seed(seed), output_type="pil").images
    u8 = np.stack([np.asarray(p) for p in pil])
    save_file({"final_latents": lat.contiguous()},
              os.path.join(OUT, name + ".safetensors"))
    for b, p in enumerate(pil):
        p.save(os.path.join(OUT, name + ("" if b == 0 else f"-{b}") + ".png"))
    return {"name": name, "kind": kind, "unet_in_channels": ch, "scheduler": sched,
            "strength": strength, "seed": seed, "batch": batch, "guidance": guidance,
            "steps": STEPS, "prompt": PROMPT, "negative_prompt": NEGATIVE, "init_image": init,
            "mask": "mask.png" if kind == "inpaint" else None,
            "width": u8.shape[2], "height": u8.shape[1]}


def main():
    os.makedirs(OUT, exist_ok=True)
    make_inputs()
    make_unet9()
    tmp = tempfile.mkdtemp()
    subprocess.check_call([sys.executable, os.path.join(HERE, "make_unet9.py"),
                           os.path.join(MODEL, "unet"), OUT, os.path.join(tmp, "unet9")])
    pipes = {}
    kw = dict(safety_checker=None, requires_safety_checker=False)
    pipes[("img2img", 4)] = StableDiffusionImg2ImgPipeline.from_pretrained(MODEL, **kw)
    pipes[("inpaint", 4)] = StableDiffusionInpaintPipeline.from_pretrained(MODEL, **kw)
    unet9 = UNet2DConditionModel.from_pretrained(os.path.join(tmp, "unet9"))
    pipes[("inpaint", 9)] = StableDiffusionInpaintPipeline.from_pretrained(MODEL, unet=unet9, **kw)
    pipes["config"] = pipes[("img2img", 4)].scheduler.config
    for p in pipes.values():
        if not isinstance(p, dict) and hasattr(p, "set_progress_bar_config"):
            p.set_progress_bar_config(disable=True)
    cases = [run_case(pipes, c) for c in CASES]
    import diffusers
    manifest = {"generator": "tests/refs/make_edit_refs.py",
                "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__},
                "notes": "final_latents: output_type='latent' (before the VAE); "
                         "<name>.png (<name>-<k>.png for batch item k): output_type='pil'. "
                         "Each run uses torch.Generator().manual_seed(seed).",
                "cases": cases}
    with open(os.path.join(OUT, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
