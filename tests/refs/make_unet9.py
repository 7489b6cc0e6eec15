"""make_unet9.py - assemble the 9-channel (inpainting) variant of the tiny
fixture UNet as a diffusers folder: the fixture's weights with conv_in.weight
replaced by the committed 9-input-channel one (tests/data/edit_refs/
unet9_conv_in.safetensors) and the committed config (in_channels 9).

Only conv_in differs from the fixture, so only it is committed (10 KB
instead of a 6.7 MB copy). Runs with the Debian python3 (numpy) in tests
and with /tmp/venv/bin/python in make_edit_refs.py.

usage: make_unet9.py FIXTURE_UNET_DIR DATA_DIR OUT_DIR
"""
import json
import os
import shutil
import struct
import sys


def read_st(path):
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    hdr = json.loads(b[8:8 + n])
    return hdr, b[8 + n:]


def main():
    fx_unet, data, out = sys.argv[1:4]
    hdr, body = read_st(os.path.join(fx_unet, "diffusion_pytorch_model.safetensors"))
    chdr, cbody = read_st(os.path.join(data, "unet9_conv_in.safetensors"))
    meta = hdr.pop("__metadata__", None)
    chdr.pop("__metadata__", None)
    tensors = {}
    for k, v in hdr.items():
        s, e = v["data_offsets"]
        tensors[k] = (v["dtype"], v["shape"], body[s:e])
    for k, v in chdr.items():
        s, e = v["data_offsets"]
        tensors[k] = (v["dtype"], v["shape"], cbody[s:e])
    newhdr, parts, off = {}, [], 0
    if meta:
        newhdr["__metadata__"] = meta
    for k in sorted(tensors):
        dt, shape, raw = tensors[k]
        newhdr[k] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + len(raw)]}
        parts.append(raw)
        off += len(raw)
    h = json.dumps(newhdr).encode()
    h += b" " * (-len(h) % 8)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "diffusion_pytorch_model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(parts))
    shutil.copyfile(os.path.join(data, "unet9", "config.json"), os.path.join(out, "config.json"))


if __name__ == "__main__":
    main()
