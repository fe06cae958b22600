"""VAE trials: read-exact through the VAE at equal steps, per design.

python benchmarks/trials/vae_trial.py 4x|2x STEPS   (results appended to runs/trials/vae-trials.jsonl)
"""

import json
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL

from instruct_pix2pix.small_world import pretrain
from instruct_pix2pix.small_world.edits import sample_edits
from instruct_pix2pix.small_world.reader import field_errors, read
from instruct_pix2pix.small_world.scenes import render

ARMS = {
    "4x": None,
    "2x": {"block_out_channels": (32, 64), "mid_block_add_attention": False},
}
arm, steps = sys.argv[1], int(sys.argv[2])
out = Path(f"runs/trials/vae-{arm}-{steps}")
out.parent.mkdir(parents=True, exist_ok=True)
t = time.time()
m = pretrain.train_vae(
    out, steps=steps, batch_size=16, learning_rate=1e-3, seed=0, model_config=ARMS[arm], progress=False
)
vae = AutoencoderKL.from_pretrained(out / "model").eval()
edits = list(sample_edits("test", 200))
scenes = [s for e in edits for s in (e.before, e.after)]
ok, c = 0, Counter()
with torch.inference_mode():
    for i in range(0, len(scenes), 50):
        chunk = scenes[i : i + 50]
        x = torch.stack(
            [torch.from_numpy(np.asarray(render(s), dtype="float32") / 255).permute(2, 0, 1) for s in chunk]
        )
        y = pretrain.reconstruct(vae, x)
        for s, img in zip(chunk, y):
            r = read(img.permute(1, 2, 0).numpy()).scene
            ok += r == s
            c.update(k for k, v in field_errors(r, s).items() if v)
res = {
    "arm": arm,
    "steps": steps,
    "psnr": m["psnr"],
    "train_seconds": m["train_seconds"],
    "read_exact": ok / len(scenes),
    "field_errors": dict(c),
    "wall": time.time() - t,
}
print(json.dumps(res))
with open("runs/trials/vae-trials.jsonl", "a") as f:
    f.write(json.dumps(res) + "\n")
