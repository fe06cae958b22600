"""VAE trials: read-exact through the VAE on held-out scenes at equal steps, per design.

    python benchmarks/trials/vae_trial.py [KEY=VALUE ...]

Keys (defaults in brackets): steps [2400]; small, the small objects' radius as a share of the side,
in the training scenes and the held-out ones alike [the world's]; loss, train_vae's
reconstruction_loss [l1]; bf16, 1 to train under CPU bf16 autocast [0]; lr [1e-3]; batch [16];
and the model: channels, block_out_channels as 32,64,64 [the shipped design: 32,64,64, two
downsamplings]; latent, latent channels [4]; groups, norm_num_groups [vae_config's: 8, 32 before the
groups trials]; layers, layers_per_block [1]. Each run trains in its own folder under runs/trials/,
named after the keys given; results are appended to runs/trials/vae-trials.jsonl.
"""

import json
import sys
import time
from collections import Counter
from pathlib import Path

from common import trial_settings
from diffusers import AutoencoderKL

from instruct_pix2pix.small_world import pretrain, scenes
from instruct_pix2pix.small_world.edits import sample_edits
from instruct_pix2pix.small_world.reader import field_errors, read

MODEL_KEYS = {  # key: (the AutoencoderKL config entry, how to parse the value)
    "channels": ("block_out_channels", lambda value: tuple(int(c) for c in value.split(","))),
    "latent": ("latent_channels", int),
    "groups": ("norm_num_groups", int),
    "layers": ("layers_per_block", int),
}
given = trial_settings(sys.argv[1:], {"steps", "small", "loss", "bf16", "lr", "batch", *MODEL_KEYS})
steps = int(given.get("steps", 2400))
model_config = {name: parse(given[key]) for key, (name, parse) in MODEL_KEYS.items() if key in given}
if "channels" in given and len(model_config["block_out_channels"]) == 2:
    model_config["mid_block_add_attention"] = False
out = Path("runs/trials/vae-" + "-".join(f"{k}{v}" for k, v in sorted(given.items())))
out.parent.mkdir(parents=True, exist_ok=True)
t = time.time()
m = pretrain.train_vae(
    out,
    steps=steps,
    batch_size=int(given.get("batch", 16)),
    learning_rate=float(given.get("lr", 1e-3)),
    seed=0,
    model_config=model_config or None,
    progress=False,
    reconstruction_loss=given.get("loss", "l1"),
    bf16_autocast=given.get("bf16", "0") == "1",
)
vae = AutoencoderKL.from_pretrained(out / "model").eval()
edits = list(sample_edits("test", 200))
held_out = [s for e in edits for s in (e.before, e.after)]
ok, errors = 0, Counter()
for i in range(0, len(held_out), 50):
    chunk = held_out[i : i + 50]
    decoded = pretrain.reconstruct(vae, pretrain.to_unit_tensor([scenes.render(s) for s in chunk]))
    for scene, image in zip(chunk, decoded):
        reading = read(image.permute(1, 2, 0).numpy()).scene
        ok += reading == scene
        errors.update(k for k, v in field_errors(reading, scene).items() if v)
result = {
    **given,
    "psnr": m["psnr"],
    "parameters": m["parameters"],
    "train_seconds": m["train_seconds"],
    "read_exact": ok / len(held_out),
    "field_errors": dict(errors),
    "wall": time.time() - t,
}
print(json.dumps(result))
with open("runs/trials/vae-trials.jsonl", "a") as f:
    f.write(json.dumps(result) + "\n")
