#!/usr/bin/env python3
"""The PyTorch peer of tools/bench-train.c: LoRA training steps of
diffusers 0.27.2 + peft 0.10.0 in float32 on the CPU, on the same
mkmodel-made full-size SD 2.1 folder, the same work per step (text encoder
and UNet forwards with rank-R LoRA on both, v-prediction MSE, backward; no
optimizer step) and the same thread count. Prints one line per run like
bench-train. Needs a scratch virtualenv (README, "Performance"); never run
by tests or CI.
usage: train_step_torch.py MODEL_DIR LATENT_SIDE THREADS [REPS [RANK [CKPT]]]
"""
import resource
import sys
import time

import torch
from diffusers import DDPMScheduler, UNet2DConditionModel
from peft import LoraConfig
from transformers import CLIPTextModel

model, side, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
reps = int(sys.argv[4]) if len(sys.argv) > 4 else 2
rank = int(sys.argv[5]) if len(sys.argv) > 5 else 8
ckpt = len(sys.argv) > 6 and sys.argv[6] == "1"
torch.set_num_threads(threads)
torch.manual_seed(1)
unet = UNet2DConditionModel.from_pretrained(model, subfolder="unet")
te = CLIPTextModel.from_pretrained(model, subfolder="text_encoder")
sched = DDPMScheduler.from_pretrained(model, subfolder="scheduler")
for m in (unet, te):
    m.requires_grad_(False)
unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                            target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
te.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                          target_modules=["q_proj", "k_proj", "v_proj", "out_proj"]))
if ckpt:
    unet.enable_gradient_checkpointing()
    te.gradient_checkpointing_enable()
unet.train()
te.train()
lat = torch.randn(1, 4, side, side)
noise = torch.randn(1, 4, side, side)
t = torch.tensor([100])
ids = torch.zeros(1, 77, dtype=torch.long)
ids[0, :12] = torch.randint(320, 40320, (12,))
ids[0, 12] = 49407
first, best = None, 1e30
for r in range(reps):
    t0 = time.time()
    noisy = sched.add_noise(lat, noise, t)
    ehs = te(ids)[0]
    target = sched.get_velocity(lat, noise, t)
    pred = unet(noisy, t, ehs).sample
    loss = torch.nn.functional.mse_loss(pred.float(), target.float())
    loss.backward()
    for p in list(unet.parameters()) + list(te.parameters()):
        p.grad = None
    dt = time.time() - t0
    first = dt if first is None else first
    if r > 0 or reps == 1:
        best = min(best, dt)
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1048576
print(f"torch {side}x{side} ({side * 8} px) batch 1 threads {threads} ckpt {int(ckpt)}: "
      f"{best:7.2f} s/step (first {first:.2f}), {1 / best:.3f} images/s, peak RSS {rss:.2f} GB")
