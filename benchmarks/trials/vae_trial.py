"""VAE trials: read-exact through the VAE on held-out scenes at equal steps, per design.

    python benchmarks/trials/vae_trial.py ARM STEPS [SMALL_RADIUS [LOSS [bf16]]]

ARM: 4x (the shipped design: 32/64/64 channels, 4 latent channels), 4x-c8 (8 latent channels: twice
the numbers per latent pixel, the UNet's cost unchanged but for conv_in/conv_out) or 2x (32/64,
no mid-block attention: 32x32 latents). SMALL_RADIUS (default the world's, 0.085) redraws the
small objects at that radius of the side, in the training scenes and the held-out ones alike. LOSS
is train_vae's reconstruction_loss (default l1); bf16 trains under CPU bf16 autocast. Results are appended
to runs/trials/vae-trials.jsonl.
"""

import json
import sys
import time
from collections import Counter
from pathlib import Path

from diffusers import AutoencoderKL

from instruct_pix2pix.small_world import pretrain, scenes
from instruct_pix2pix.small_world.edits import sample_edits
from instruct_pix2pix.small_world.reader import _masks, field_errors, read

ARMS = {
    "4x": None,
    "4x-c8": {"latent_channels": 8},
    "2x": {"block_out_channels": (32, 64), "mid_block_add_attention": False},
}
arm, steps = sys.argv[1], int(sys.argv[2])
small = float(sys.argv[3]) if len(sys.argv) > 3 else scenes.RADIUS["small"]
scenes.RADIUS["small"] = small
_masks.cache_clear()
loss = sys.argv[4] if len(sys.argv) > 4 else "l1"
bf16 = len(sys.argv) > 5 and sys.argv[5] == "bf16"
out = Path(
    f"runs/trials/vae-{arm}-{steps}"
    + (f"-r{small}" if len(sys.argv) > 3 else "")
    + (f"-{loss}" if loss != "l1" else "")
    + ("-bf16" if bf16 else "")
)
out.parent.mkdir(parents=True, exist_ok=True)
t = time.time()
m = pretrain.train_vae(
    out,
    steps=steps,
    batch_size=16,
    learning_rate=1e-3,
    seed=0,
    model_config=ARMS[arm],
    progress=False,
    reconstruction_loss=loss,
    bf16_autocast=bf16,
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
    "arm": arm,
    "steps": steps,
    "small_radius": small,
    "loss": loss,
    "bf16_autocast": bf16,
    "psnr": m["psnr"],
    "train_seconds": m["train_seconds"],
    "read_exact": ok / len(held_out),
    "field_errors": dict(errors),
    "wall": time.time() - t,
}
print(json.dumps(result))
with open("runs/trials/vae-trials.jsonl", "a") as f:
    f.write(json.dumps(result) + "\n")
