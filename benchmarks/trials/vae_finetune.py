"""Trial: the shipped VAE fine-tuned briefly on the new palette, with the current or larger small objects.
Read-exact through the VAE on held-out scenes says how much object size limits the latent ceiling.

    python benchmarks/trials/vae_finetune.py SMALL_RADIUS STEPS   (appends to runs/trials/vae-finetune.jsonl)
"""

import json
import sys
import time
from collections import Counter
from pathlib import Path

import torch
from common import use_small_radius
from diffusers import AutoencoderKL

from instruct_pix2pix.small_world import pretrain, scenes
from instruct_pix2pix.small_world.edits import sample_edits
from instruct_pix2pix.small_world.pretrain import to_unit_tensor as to_tensor  # [0, 1]
from instruct_pix2pix.small_world.reader import field_errors, read

small, steps = float(sys.argv[1]), int(sys.argv[2])
use_small_radius(small)
torch.manual_seed(0)
torch.set_num_threads(2)
vae = AutoencoderKL.from_pretrained("src/instruct_pix2pix/small_world/default_model/vae")


def read_exact(n=200):
    vae.eval()
    edits = list(sample_edits("test", n))
    sc = [s for e in edits for s in (e.before, e.after)]
    ok, c = 0, Counter()
    for i in range(0, len(sc), 50):
        ch = sc[i : i + 50]
        y = pretrain.reconstruct(vae, to_tensor([scenes.render(s) for s in ch]))
        for s, img in zip(ch, y):
            r = read(img.permute(1, 2, 0).numpy()).scene
            ok += r == s
            c.update(k for k, v in field_errors(r, s).items() if v)
    vae.train()
    return ok / len(sc), dict(c)


t = time.time()
before = read_exact()
opt = torch.optim.AdamW(vae.parameters(), lr=3e-4, betas=(0.9, 0.99), weight_decay=0.0, eps=1e-6)
g = torch.Generator().manual_seed(0)
for step in range(steps):
    x = to_tensor([scenes.render(s) for s in pretrain.training_scenes(50_000 + step, 16)]) * 2 - 1
    post = vae.encode(x).latent_dist
    y = vae.decode(post.sample(generator=g)).sample
    loss = (y - x).abs().mean() + 1e-6 * post.kl().mean() / x[0].numel()
    loss.backward()
    opt.step()
    opt.zero_grad()
after = read_exact()
res = {"small_radius": small, "steps": steps, "before": before, "after": after, "wall": time.time() - t}
print(json.dumps(res))
Path("runs/trials").mkdir(parents=True, exist_ok=True)
with open("runs/trials/vae-finetune.jsonl", "a") as f:
    f.write(json.dumps(res) + "\n")
