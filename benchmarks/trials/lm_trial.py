"""Trial: the world's language model, one design, pretrained, fine-tuned on the 700 triples and
measured on held-out captions (parse, right), resumable.

    python benchmarks/trials/lm_trial.py OUTPUT_DIR PRETRAIN_STEPS EPOCHS [key=value ...]

key=value set the model (architecture=llama, n_layer=6, n_embd=256, n_positions=512,
tie_word_embeddings=false, embedding_std=0.3, ...; values read as JSON); bf16=0 pretrains in float32
(the default is the shipped model's, bf16 autocast); series=N puts up to N captions in a document of
the internet (default `language.SERIES`); remarks=N up to N lines after each caption that point at its
objects (`language.internet_document`; the shipped model's 2 unless given); finetune_KEY=VALUE sets
the fine-tuning (finetune_learning_rate=3e-4). EPOCHS 0 stops after pretraining and reports the copy probes
(`lm_copy_probe.py`) instead. Results are appended to runs/trials/lm-trials.jsonl.
"""

import json
import sys
import time
from pathlib import Path

from lm_copy_probe import copy_probabilities, copy_probe

from instruct_pix2pix.small_world.language import (
    DEFAULTS,
    INTERNET,
    MODEL_CONFIG,
    SERIES,
    pretrain_language_model,
    train_language_model,
)

TRIALS = Path("runs/trials/lm-trials.jsonl")


def parse_options(items: list[str]) -> tuple[dict, dict, dict]:
    """key=value arguments -> (model config, pretraining options, fine-tuning options)."""
    model, pretrain, finetune = dict(MODEL_CONFIG), {}, {}
    for item in items:
        key, value = item.split("=", 1)
        if key == "bf16":
            pretrain["bf16_autocast"] = value == "1"
        elif key.startswith("finetune_"):  # finetune_learning_rate=3e-4, finetune_batch_size=16
            finetune[key.removeprefix("finetune_")] = json.loads(value)
        elif key == "series":
            if int(value) != SERIES:  # passed only when not the default, as the pretraining records it
                pretrain["series"] = int(value)
        elif key == "remarks":
            pretrain["remarks"] = int(value)
        else:
            try:
                model[key] = json.loads(value)  # numbers, true/false
            except json.JSONDecodeError:
                model[key] = value
    return model, pretrain, finetune


def summary(report: dict, epochs: int) -> dict:
    """The trial row's measurements of a pretrained, fine-tuned and evaluated model."""
    evaluation = report["evaluation"]
    return {
        "epochs": epochs,
        "parameters": report["pretrain"]["parameters"],
        "pretrain_loss": report["pretrain"]["loss"],
        "parses": evaluation["parses"],
        "right": evaluation["right"],
        "reasons": evaluation["reasons"],
    }


def record(row: dict, started: float) -> None:
    """Print the trial's row, with its wall time, and append it to TRIALS."""
    row["wall"] = round(time.time() - started)
    print(json.dumps(row), flush=True)
    with TRIALS.open("a") as stream:
        stream.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    work, steps, epochs = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    model, options, finetune = parse_options(sys.argv[4:])
    started = time.time()
    settings = {**DEFAULTS["pretrain"], "steps": steps, "model_config": model, **options}
    row = {"run": str(work), "internet": INTERNET, "series": options.get("series", SERIES), "model": model, **options}
    row["remarks"] = settings.get("remarks", 0)  # the shipped model's (DEFAULTS) unless remarks=N
    row |= {"pretrain_steps": steps} | ({"finetune": finetune} if finetune else {})
    if epochs == 0:
        metrics = pretrain_language_model(work / "pretrain", progress=False, **settings)
        pretrained = work / "pretrain" / "model"
        row |= {"pretrain_loss": metrics["loss"], "copy_probe": copy_probe(pretrained),
                "copy_probabilities": copy_probabilities(pretrained)}  # fmt: skip
    else:
        finetune = {**DEFAULTS["finetune"], "epochs": epochs, **finetune}
        row |= summary(train_language_model(work, pretrain=settings, finetune=finetune, progress=False), epochs)
    record(row, started)
