"""Diagnostic: does a text-to-image model of the world know from the caption where to put an object
at the start of sampling? For one-object captions ("a large red circle at the top left on a white
background", each of the 9 cells) it predicts the clean latent at the first (pure-noise) timestep
from a few noises, decodes it, and counts the predictions whose red is strongest in the captioned
cell (chance: 1 in 9), and in its row and its column (chance: 1 in 3). A sheet shows the
predictions: one row per noise, one column per cell.

    python benchmarks/trials/t2i_layout_probe.py MODEL_DIR [SHEET.png] [--position]

--position applies t2i_position_trial.py's patch (for models trained with it).
"""

import sys

import numpy as np
import torch
from diffusers import DDPMScheduler

from instruct_pix2pix.images import image_grid, to_pil
from instruct_pix2pix.loading import load_model
from instruct_pix2pix.prompts import encode_prompts
from instruct_pix2pix.small_world.reader import _bounds
from instruct_pix2pix.small_world.scenes import CELL_PHRASES, CELLS

if "--position" in sys.argv:
    import runpy

    runpy.run_path(sys.argv[0].replace("t2i_layout_probe", "t2i_position_trial"), run_name="patch")
args = [a for a in sys.argv[1:] if not a.startswith("--")]
NOISES = 3
model = load_model(args[0], kind="text-to-image")
scheduler = DDPMScheduler.from_config(model.scheduler_config)
captions = [f"a large red circle {CELL_PHRASES[cell]} on a white background" for cell in CELLS]
t = scheduler.config.num_train_timesteps - 1
signal = scheduler.alphas_cumprod[t]
hits, row_hits, column_hits, rows = 0, 0, 0, []
side = model.unet.config.sample_size
with torch.no_grad():
    states = encode_prompts(model.tokenizer, model.text_encoder, captions)
    for seed in range(NOISES):
        noise = torch.randn(1, model.unet.config.in_channels, side, side, generator=torch.Generator().manual_seed(seed))
        noisy = noise.expand(len(CELLS), -1, -1, -1) * (1 - signal) ** 0.5  # + signal**0.5 * x0, ~0.7% of it
        v = model.unet(noisy, torch.full((len(CELLS),), t), states).sample
        clean = signal**0.5 * noisy - (1 - signal) ** 0.5 * v  # v-prediction's x0
        images = model.vae.decode(clean / model.vae.config.scaling_factor).sample.clamp(-1, 1)
        redness = (images[:, 0] - (images[:, 1] + images[:, 2]) / 2).clamp_min(0)
        bounds = _bounds(images.shape[-1])  # the cells' pixels, as the scene reader divides them
        for i in range(len(CELLS)):
            mass = np.array([[redness[i, r0:r1, c0:c1].sum().item() for c0, c1 in bounds] for r0, r1 in bounds])
            hits += int(np.argmax(mass)) == i
            row_hits += int(np.argmax(mass.sum(1))) == CELLS[i][0]
            column_hits += int(np.argmax(mass.sum(0))) == CELLS[i][1]
        rows.append(to_pil(images))
if len(args) > 1:
    image_grid(rows, column_labels=[CELL_PHRASES[c] for c in CELLS]).save(args[1])
total = NOISES * len(CELLS)
print(f"{args[0]}: of {total} one-object predictions, {hits} are reddest in the captioned cell (chance: 1 in 9), "
      f"{row_hits} in its row and {column_hits} in its column (chance: 1 in 3)")  # fmt: skip
