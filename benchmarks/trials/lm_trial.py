"""Trial: the world's language model, one design, pretrained, fine-tuned on the 700 triples and
measured on held-out captions (parse, right), resumable.

    python benchmarks/trials/lm_trial.py OUTPUT_DIR PRETRAIN_STEPS EPOCHS [key=value ...]

key=value set the model (architecture=llama, n_layer=6, n_embd=192, ...); bf16=1 pretrains under CPU
bf16 autocast. Results are appended to runs/trials/lm-trials.jsonl.
"""

import json
import sys
import time
from pathlib import Path

from instruct_pix2pix.small_world.language import DEFAULTS, MODEL_CONFIG, train_language_model

work, steps, epochs = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
model, autocast = dict(MODEL_CONFIG), {}
for item in sys.argv[4:]:
    key, value = item.split("=", 1)
    if key == "bf16":
        autocast = {"bf16_autocast": value == "1"}
    else:
        model[key] = int(value) if value.isdigit() else value
started = time.time()
report = train_language_model(
    work,
    pretrain={**DEFAULTS["pretrain"], "steps": steps, "model_config": model, **autocast},
    finetune={**DEFAULTS["finetune"], "epochs": epochs},
    progress=False,
)
evaluation = report["evaluation"]
row = {
    "run": str(work),
    "model": model,
    **autocast,
    "pretrain_steps": steps,
    "epochs": epochs,
    "parameters": report["pretrain"]["parameters"],
    "pretrain_loss": report["pretrain"]["loss"],
    "parses": evaluation["parses"],
    "right": evaluation["right"],
    "reasons": evaluation["reasons"],
    "wall": round(time.time() - started),
}
print(json.dumps(row), flush=True)
with open("runs/trials/lm-trials.jsonl", "a") as f:
    f.write(json.dumps(row) + "\n")
