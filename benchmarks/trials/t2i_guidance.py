"""A text-to-image model at several guidance scales: `ip2p world evaluate` (200 held-out captions,
20 steps) once a scale, with the world's small objects at a trial radius.

    python benchmarks/trials/t2i_guidance.py MODEL 2,7.5 [small=R]

Each scale writes results.json, table.md and examples.png under MODEL/../evaluate-guidance-G/.
"""

import sys
from dataclasses import replace
from pathlib import Path

from common import trial_settings

from instruct_pix2pix.loading import load_model
from instruct_pix2pix.small_world.evaluate import SETTINGS, run_text_to_image_evaluation

model_dir = Path(sys.argv[1])
scales = [float(g) for g in sys.argv[2].split(",")]
trial_settings(sys.argv[3:], {"small"})
model = load_model(model_dir, kind="text-to-image")
for scale in scales:
    output = model_dir.parent / f"evaluate-guidance-{scale:g}"
    print(f"guidance {scale:g}", run_text_to_image_evaluation(model, output, replace(SETTINGS, guidance_scale=scale)))
