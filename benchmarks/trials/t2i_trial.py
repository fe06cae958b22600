"""Trial: the world's text-to-image model, success (reader-exact at guidance 7.5) against steps.
Constant learning rate after warmup, so each segment continues the last exactly; evaluated after each.

    python benchmarks/trials/t2i_trial.py OUTPUT_DIR 300,800,1500 [key=value ...]

Results are appended to runs/trials/t2i-trials.jsonl.
"""

import json
import sys
import time
from pathlib import Path

from instruct_pix2pix.loading import DEFAULT_MODEL, load_model
from instruct_pix2pix.small_world.evaluate import SETTINGS, evaluate_text_to_image
from instruct_pix2pix.small_world.generate import write_dataset
from instruct_pix2pix.small_world.recipe import DEFAULT_CLIP, assemble_scratch
from instruct_pix2pix.training import load_config, train

Path("runs/trials").mkdir(parents=True, exist_ok=True)
work = Path(sys.argv[1])
points = [int(p) for p in sys.argv[2].split(",")]
extra = sys.argv[3:]
data, scratch = Path("runs/trials/data-10k"), Path("runs/trials/scratch-shipped")
if not (data / "train-triples.jsonl").exists():
    write_dataset(data, 10_000)
if not scratch.exists():
    assemble_scratch(DEFAULT_CLIP, DEFAULT_MODEL / "vae", scratch)
for steps in points:
    start = time.time()
    overrides = [
        f"from_scratch={scratch}",
        f"train_data={data}",
        f"output_dir={work}",
        "resume_from_checkpoint=latest",
        f"max_train_steps={steps}",
        "lr_scheduler=constant_with_warmup",
        "validation_steps=0",
        "checkpointing_steps=250",
        *extra,
    ]
    train(load_config("configs/small-world-t2i.yaml", overrides), show_progress=False)
    trained = time.time() - start
    model = load_model(work / "model", kind="text-to-image")
    results, _ = evaluate_text_to_image(model, SETTINGS, count=200, progress=False)
    row = {"run": str(work), "extra": extra, "steps": steps, "train_seconds_segment": round(trained), **results}
    print(json.dumps(row), flush=True)
    with open("runs/trials/t2i-trials.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
