"""Trial: the world's text-to-image model, success (reader-exact at guidance 7.5) against steps.
Constant learning rate after warmup, so each segment continues the last exactly; evaluated after each.

    python benchmarks/trials/t2i_trial.py OUT 300,800,1500 [small=R] [edits=N] [vae=DIR] [unet.KEY=VALUE] [key=value...]

small, edits, vae and unet.KEY set the world and the model (common.py); the other key=value override the
training config.

Results are appended to runs/trials/t2i-trials.jsonl.
"""

import json
import sys
import time
from pathlib import Path

from common import train_segment, trial_inputs

from instruct_pix2pix.loading import load_model
from instruct_pix2pix.small_world.evaluate import SETTINGS, evaluate_text_to_image

work = Path(sys.argv[1])
points = [int(p) for p in sys.argv[2].split(",")]
extra = sys.argv[3:]
data, scratch, overrides = trial_inputs(extra)
for steps in points:
    start = time.time()
    train_segment("configs/small-world-t2i.yaml", [f"from_scratch={scratch}"], data, work, steps, overrides)
    trained = time.time() - start
    model = load_model(work / "model", kind="text-to-image")
    results, _ = evaluate_text_to_image(model, SETTINGS, count=200, progress=False)
    row = {"run": str(work), "extra": extra, "steps": steps, "train_seconds_segment": round(trained), **results}
    print(json.dumps(row), flush=True)
    with open("runs/trials/t2i-trials.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
