#!/usr/bin/env python3
"""Recompute step 1 of a fixture training reference (refs/train_lora_*) in
float64 with diffusers + peft, to tell float32 rounding from real error.

Writes step1/grad/<key> in float64 (F64 tensors, metadata loss_f64) and
prints, per tensor, how far the float32 reference is from them, as
max|diff| / max|f64 grad|. tests/unit/test_train_f64.c checks diffyface's
gradients against the committed outputs,
tests/data/<REF_NAME>_step1_grads_f64.safetensors (SNR_GAMMA 5 for
train_lora_nonzeroB_minsnr5).

Needs diffusers 0.27.2, transformers 4.40.1, peft 0.10.0 and torch (see
README, "Performance": a scratch virtualenv, never tests or CI).
usage: train_grads_f64.py FIXTURES REF_NAME OUT.safetensors [SNR_GAMMA [STEP]]
(STEP > 1 starts from the reference's parameters after step STEP-1 and
writes stepSTEP/grad/<key>)
"""
import json
import sys

import torch
from diffusers import DDPMScheduler, UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor
from peft import LoraConfig
from safetensors.torch import load_file, save_file
from transformers import CLIPTextModel

fx, name, out = sys.argv[1:4]
gamma = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
step = int(sys.argv[5]) if len(sys.argv) > 5 else 1   # N > 1: from stepN-1/param
ref = load_file(f"{fx}/refs/{name}.safetensors")
init = ref if any(k.startswith("init/") for k in ref) else load_file(
    f"{fx}/refs/train_lora_nonzeroB.safetensors")
rank = next(v.shape[0] for k, v in init.items() if k.startswith("init/") and ".down." in k)
torch.set_default_dtype(torch.float64)
# transformers fills the causal mask with finfo(float64).min, which sums to
# -inf and then NaN in float64: a large finite value masks the same way
import transformers.models.clip.modeling_clip as mc


def causal_mask(shape, dtype, device):
    b, n = shape
    m = torch.triu(torch.full((n, n), -1e30, dtype=dtype, device=device), 1)
    return m[None, None].expand(b, 1, n, n)


mc._create_4d_causal_attention_mask = causal_mask
# as in the fixtures' environment (README, reference environment notes):
# bmm(q, k^T) * scale instead of baddbmm over uninitialised memory
from diffusers.models.attention_processor import Attention


def attention_scores(self, query, key, attention_mask=None):
    s = torch.bmm(query, key.transpose(-1, -2)) * self.scale
    if attention_mask is not None:
        s = s + attention_mask
    return s.softmax(dim=-1).to(query.dtype)


Attention.get_attention_scores = attention_scores
unet = UNet2DConditionModel.from_pretrained(f"{fx}/pipeline", subfolder="unet").double()
unet.set_attn_processor(AttnProcessor())
te = CLIPTextModel.from_pretrained(f"{fx}/pipeline", subfolder="text_encoder").double()
sched = DDPMScheduler.from_pretrained(f"{fx}/pipeline", subfolder="scheduler")
for m in (unet, te):
    m.requires_grad_(False)
unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                            target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
te.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                          target_modules=["q_proj", "k_proj", "v_proj", "out_proj"]))


def param_of(key):
    """The peft parameter a diffusers-format key names."""
    comp, rest = key.split(".", 1)
    model = unet if comp == "unet" else te
    for a, b in ((".lora.down.weight", ".lora_A.default.weight"),
                 (".lora.up.weight", ".lora_B.default.weight"),
                 (".lora_linear_layer.down.weight", ".lora_A.default.weight"),
                 (".lora_linear_layer.up.weight", ".lora_B.default.weight")):
        if rest.endswith(a):
            return model.get_parameter(rest[: -len(a)] + b)
    raise KeyError(key)


keys = [k[5:] for k in init if k.startswith("init/")]
with torch.no_grad():
    for k in keys:
        start = init["init/" + k] if step == 1 else ref[f"step{step - 1}/param/" + k]
        param_of(k).copy_(start.double())
lat, noise = ref[f"step{step}/latents"].double(), ref[f"step{step}/noise"].double()
t = ref[f"step{step}/timesteps"]
sched.alphas_cumprod = sched.alphas_cumprod.double()
noisy = sched.add_noise(lat, noise, t)
ehs = te(ref[f"step{step}/input_ids"])[0]
target = sched.get_velocity(lat, noise, t)
pred = unet(noisy, t, ehs).sample
if gamma > 0:   # min-SNR as train_text_to_image_lora.py, v-prediction
    acp = sched.alphas_cumprod[t]
    snr = acp / (1 - acp)
    w = torch.minimum(snr, torch.full_like(snr, gamma)) / (snr + 1)
    per = torch.nn.functional.mse_loss(pred, target, reduction="none").mean(dim=[1, 2, 3])
    loss = (per * w).mean()
else:
    loss = torch.nn.functional.mse_loss(pred, target)
loss.backward()
print(json.dumps({"loss_f64": loss.item(), "loss_ref": ref[f"step{step}/loss"].item()}))
worst, grads = 0, {}
for k in keys:
    g = param_of(k).grad
    if f"step{step}/grad/" + k in ref:
        r = ref[f"step{step}/grad/" + k].double()
        rel = ((r - g).abs().max() / max(g.abs().max().item(), 1e-30)).item()
        worst = max(worst, rel)
        print(f"{rel:.3g} {g.abs().max().item():.3g} {k}")
    grads[f"step{step}/grad/" + k] = g.contiguous()
print(f"worst float32 reference vs float64: {worst:.3g}")
save_file(grads, out, metadata={"loss_f64": repr(loss.item()), "source": name,
                             "snr_gamma": repr(gamma), "step": str(step)})
