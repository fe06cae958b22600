"""A text-to-image model at several guidance scales: `ip2p world evaluate` (200 held-out captions,
20 steps) once a scale, with the world's small objects at a trial radius and a guidance rescale.

    python benchmarks/trials/t2i_guidance.py MODEL 2,7.5 [small=R] [rescale=PHI]

Each scale writes results.json, table.md and examples.png under MODEL/../evaluate-guidance-G/
(evaluate-guidance-G-rescale-PHI/ with a rescale).
"""

import sys
from pathlib import Path

from common import trial_settings

from instruct_pix2pix.loading import load_model
from instruct_pix2pix.small_world.evaluate import SETTINGS, run_text_to_image_evaluation

model_dir = Path(sys.argv[1])
scales = [float(g) for g in sys.argv[2].split(",")]
rescale = float(trial_settings(sys.argv[3:], {"small", "rescale"}).get("rescale", SETTINGS.guidance_rescale))
model = load_model(model_dir, kind="text-to-image")
for scale in scales:
    output = model_dir.parent / (f"evaluate-guidance-{scale:g}" + (f"-rescale-{rescale:g}" if rescale else ""))
    settings = SETTINGS.replace(guidance_scale=scale, guidance_rescale=rescale)
    print(f"guidance {scale:g}, rescale {rescale:g}", run_text_to_image_evaluation(model, output, settings))
