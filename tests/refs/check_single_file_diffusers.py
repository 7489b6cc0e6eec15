#!/usr/bin/env python3
"""check_single_file_diffusers.py - diffusers' own reading of a single-file
checkpoint written by build/tools/mk-single-file must give back the fixture
pipeline's tensors exactly. An independent check of diffyface's key mapping
(lib/models/single_file.c) against diffusers 0.27.2's converter
(pipelines/stable_diffusion/convert_from_ckpt.py, called, not copied). Not
run by make test: it needs torch + diffusers + transformers in a scratch
virtualenv.

    build/tools/mk-single-file ../shared/fixtures/pipeline /tmp/sd.safetensors
    /tmp/venv/bin/python tests/refs/check_single_file_diffusers.py /tmp/sd.safetensors ../shared/fixtures/pipeline

Result on 2026-12-07: unet 684, vae 244, text 36 tensors; no name, value or
shape mismatch. The OpenCLIP tower's last layer is left out before the call
(diffusers drops resblocks.23 only for its hub model name), and the text
model is built with a projection so that text_projection has a place.
"""
import json
import struct
import sys

import numpy as np
import torch
from diffusers.pipelines.stable_diffusion import convert_from_ckpt as C


def load(path):
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n])
    dt = {"F32": np.float32, "F16": np.float16}
    out = {}
    for k, v in h.items():
        if k == "__metadata__":
            continue
        s, e = v["data_offsets"]
        a = np.frombuffer(b[8 + n + s:8 + n + e], dtype=dt[v["dtype"]]).reshape(v["shape"])
        out[k] = torch.from_numpy(a.copy())
    return out


def main(ckpt_path, fx):
    ck = load(ckpt_path)
    ucfg = json.load(open(fx + "/unet/config.json"))
    vcfg = json.load(open(fx + "/vae/config.json"))
    tcfg = json.load(open(fx + "/text_encoder/config.json"))
    u = C.convert_ldm_unet_checkpoint(dict(ck), dict(ucfg, class_embed_type=None,
                                                     addition_embed_type=None))
    v = C.convert_ldm_vae_checkpoint(dict(ck), dict(vcfg))
    last = "cond_stage_model.model.transformer.resblocks.%d." % tcfg["num_hidden_layers"]
    ck_t = {k: x for k, x in ck.items() if not k.startswith(last) and not k.endswith("logit_scale")}
    d = ck["cond_stage_model.model.text_projection"].shape[0]
    t = C.convert_open_clip_checkpoint(ck_t, fx + "/text_encoder", local_files_only=True,
                                       has_projection=True, projection_dim=d).state_dict()
    t.pop("text_projection.weight")
    bad = 0
    for name, conv, f in [("unet", u, "/unet/diffusion_pytorch_model.safetensors"),
                          ("vae", v, "/vae/diffusion_pytorch_model.safetensors"),
                          ("text", t, "/text_encoder/model.safetensors")]:
        ref = load(fx + f)
        conv = {k: x for k, x in conv.items() if k != "text_model.embeddings.position_ids"}
        names = sorted(set(ref) ^ set(conv))
        vals = [k for k in ref if k in conv and not torch.equal(ref[k].reshape(conv[k].shape).float(),
                                                                conv[k].float())]
        shapes = [k for k in ref if k in conv and tuple(ref[k].shape) != tuple(conv[k].shape)]
        print(name, len(ref), "tensors; name mismatches", names[:5], "value mismatches", vals[:5],
              "shape differences", shapes[:5])
        bad += len(names) + len(vals) + len(shapes)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
