"""Trial: the world's language model pretrained on a narrated internet, fine-tuned and measured as
`lm_trial.py` does (parse, right, on 200 held-out captions).

The shipped internet is series of captions, each picture the one before with one thing changed.
Here a line between two captions tells the change in words of its own (`NARRATIONS`: statements,
never an instruction phrasing of `edits.PHRASINGS`), as real text often says what changed. The
question: does text that says where a caption changes teach the model to copy exactly everywhere
else, given the instruction, after fine-tuning? The narrations' words join the tokenizer; nothing
else differs from `language.train_language_model` (the module's tokenizer and internet are swapped
for this process only).

    python benchmarks/trials/lm_narrated_trial.py OUTPUT_DIR PRETRAIN_STEPS [key=value ...]

key=value as in lm_trial.py (n_embd=256, architecture=llama, bf16=0, finetune_learning_rate=3e-3,
...). The result is appended to runs/trials/lm-trials.jsonl. Measured: README, 'Making data: the text stage'.
"""

import re
import sys
import time
from dataclasses import replace
from pathlib import Path

from lm_trial import parse_options, record, summary

from instruct_pix2pix.small_world import language
from instruct_pix2pix.small_world.edits import EDIT_FUNCTIONS, KINDS, edit_rng, vocabulary
from instruct_pix2pix.small_world.scenes import caption, sample_scene

# Kind -> variant -> statements of the change (the slots are the edit functions' words).
NARRATIONS = {
    "recolor": {"": ["then {obj} turned {colour}", "after that {obj} was {colour}"]},
    "reshape": {"": ["then {obj} became a {shape}", "after that {obj} was a {colour} {shape}"]},
    "add": {"": ["then {thing} appeared {where}", "after that there was {thing} {where}"]},
    "remove": {"": ["then {obj} disappeared", "after that {obj} was gone"]},
    "resize": {"bigger": ["then {obj} grew", "after that {obj} was large"],
               "smaller": ["then {obj} shrank", "after that {obj} was small"]},
    "move": {"": ["then {obj} went {direction}", "after that {obj} was one cell further {direction}"]},
    "background": {"plain": ["then the background turned {background}", "after that the background was {background}"],
                   "scenery": ["then the scene went to {background}", "after that everything was on {background}"]},
    "global": {"night": ["then night fell", "after that it was night"],
               "day": ["then day came", "after that it was day"],
               "black_and_white": ["then the colors faded", "after that it was black and white"]},
    "count": {"": ["then {number} {size} {colour} {shapes} appeared",
                   "after that there were {number} more {size} {colour} {shapes}"]},
}  # fmt: skip


def narrated_tokenizer():
    """The world's tokenizer with one token more for each narration word the world lacks."""
    from instruct_pix2pix.tokenizers import build_gpt2_tokenizer

    statements = [s for variants in NARRATIONS.values() for options in variants.values() for s in options]
    words = sorted({w for s in statements for w in re.sub(r"\{\w+\}", " ", s).split()} - set(vocabulary()))
    markers = [language.PROMPT_END.strip(), language.SEPARATOR.strip(), language.STOP.strip()]
    return build_gpt2_tokenizer(vocabulary() + words + markers, model_max_length=language.MODEL_CONFIG["n_positions"])


def narrated_document(index: int, series: int = language.SERIES) -> str:
    """`language.internet_document`, with a narration line before each changed caption."""
    rng = edit_rng(language.PRETRAIN_SPLIT, index)
    scene = sample_scene(rng)
    if rng.random() < language.BLACK_AND_WHITE_PROBABILITY:
        scene = replace(scene, black_and_white=True)
    lines = [caption(scene)]
    for _ in range(rng.randint(1, series - 1)):
        kind = rng.choice(KINDS)
        change = EDIT_FUNCTIONS[kind](scene, rng)
        if change is not None:
            scene, words, variant = change
            lines += [rng.choice(NARRATIONS[kind][variant]).format(**words), caption(scene)]
    return "\n".join(lines)


if __name__ == "__main__":
    work, steps = Path(sys.argv[1]), int(sys.argv[2])
    model, options, finetune = parse_options(sys.argv[3:])
    language.world_tokenizer, language.internet_document = narrated_tokenizer, narrated_document
    started = time.time()
    pretrain = {**language.DEFAULTS["pretrain"], "steps": steps, "model_config": model, **options}
    report = language.train_language_model(work, pretrain=pretrain, finetune=finetune, progress=False)
    row = {"run": str(work), "internet": "narrated", "model": model, **options, "pretrain_steps": steps}
    row |= summary(report, report["finetune"]["epochs"]) | {"right_by_kind": report["evaluation"]["right_by_kind"]}
    record(row, started)
