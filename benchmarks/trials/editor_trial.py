"""Trial: the world's editor, success against steps, fine-tuned from a text-to-image model (the
paper's way: conv_in widened 4 -> 8) or trained from scratch. Constant learning rate after warmup, so
each segment continues the last exactly; evaluated (held-out scenes, training wording, 20 steps)
after each, at the world's guidance (text 7.5, image 1.5: `success`) and at the shipped model's
(text 1.5, image 1.5: `success_text_1.5`, and with held-out wording `held_out_text_1.5`).

    python benchmarks/trials/editor_trial.py OUTPUT_DIR 500,1000 T2I_MODEL|scratch|scratch=DIR [key=value ...]

scratch=DIR starts from a from_scratch folder of its own (the recipe's runs/default/scratch, so that
the comparison arm has the same VAE and text encoder as the text-to-image model started from).

small=R, edits=N, vae=DIR and unet.KEY=VALUE set the world, its data and the model as in
t2i_trial.py (common.py; the data and scratch folders are shared with it); the other key=value
override the training config. Results are appended to runs/trials/editor-trials.jsonl.
"""

import json
import sys
import time
from pathlib import Path

import torch
from common import train_segment, trial_inputs

from instruct_pix2pix import Editor
from instruct_pix2pix.loading import load_model
from instruct_pix2pix.small_world.evaluate import SETTINGS, editor_method, evaluate

PER_KIND = 10
work, points, start_from = Path(sys.argv[1]), [int(p) for p in sys.argv[2].split(",")], sys.argv[3]
extra = sys.argv[4:]
data, scratch, overrides = trial_inputs(extra)
if start_from.partition("=")[0] == "scratch":
    scratch = Path(start_from.partition("=")[2] or scratch)
    start = [f"from_scratch={scratch}", "pretrained_model_name_or_path=none"]
else:
    start = [f"pretrained_model_name_or_path={start_from}", "from_scratch=none"]
for steps in points:
    begun = time.time()
    train_segment("configs/small-world.yaml", start, data, work, steps, overrides)
    trained = time.time() - begun
    editor = Editor.for_model(load_model(work / "model"), torch.device("cpu"))
    methods = {text: editor_method(editor, SETTINGS.replace(guidance_scale=float(text))) for text in ("7.5", "1.5")}
    rows, _ = evaluate(methods, per_kind=PER_KIND, phrasings=("training",), progress=False)
    at = {text: [r for r in rows if r.method == text] for text in methods}
    held, _ = evaluate({"1.5": methods["1.5"]}, per_kind=PER_KIND, phrasings=("held-out",), progress=False)
    row = {
        "run": str(work),
        "start": start_from,
        "extra": extra,
        "steps": steps,
        "train_seconds_segment": round(trained),
        "success": {r.kind: round(r.success, 3) for r in at["7.5"]},
        "read_right": {r.kind: round(r.read_right, 3) for r in at["7.5"]},
        "success_text_1.5": {r.kind: round(r.success, 3) for r in at["1.5"]},
        "held_out_text_1.5": {r.kind: round(r.success, 3) for r in held},
    }
    print(json.dumps(row), flush=True)
    with open("runs/trials/editor-trials.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
