"""Probe: has a pretrained world language model learnt to copy a caption with one change?

Its internet (`language.internet_document`) is series of captions, each picture the one before with
one thing changed and a line between that tells the change, so a model that learnt it continues a
held-out caption with such a line and a caption one change away. Counts, over held-out captions, how
many objects differ between the caption and the caption the model writes after the line (0: copied
unchanged; 1-2: one change; "unparsed": not a world caption), and of the objects the line names ("the
red circle"; and the remarks before it, with `remarks`), how many the caption has not: a model that
has not learnt which colour goes with which shape names objects that are not there, the text
stage's "does not apply".
Seconds, not a fine-tune: it ranks pretraining designs on what the text stage needs most.

`copy_probabilities` says where copying fails: given a held-out caption, the line that tells a change
and the caption after it (teacher-forced), the mean probability the model gives each word of the
second caption's unchanged beginning, by the word's kind (size, colour, shape, other).

`narrated_copies` counts, in the same format with remarks, the changes whose every copied word gets
at least 0.5; run on a fine-tuned model, it says how much of that copying fine-tuning kept.

`edit_probabilities` does the same for a fine-tuned model on held-out edits written in the
fine-tuning format: the mean probability of the instruction's words, of the edited caption's words
copied from the input, and of its changed words, by edit kind; and the share of edits whose every
copied word gets at least 0.5. It says whether a fine-tuned model fails at the instruction, at
copying, or at making the change.

    python benchmarks/trials/lm_copy_probe.py MODEL_DIR [CAPTIONS]   (edit_probabilities too when fine-tuned)
"""

import random
import re
import sys
from collections import Counter
from difflib import SequenceMatcher
from itertools import takewhile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from instruct_pix2pix.data.triples import PROMPT_END, SEPARATOR, STOP
from instruct_pix2pix.small_world.edits import KINDS, edit_rng, sample_edits
from instruct_pix2pix.small_world.language import (
    CELL,
    COLOUR,
    SHAPE,
    TEST_SPLIT,
    described,
    held_out_captions,
    narrated_change,
    parse_caption,
)
from instruct_pix2pix.small_world.scenes import COLOURS, SHAPES, SIZES, caption, sample_scene

NAMED = re.compile(rf"the (?:{COLOUR}) (?:{SHAPE})\b")  # an object as instructions and remarks name it
REMARK = re.compile(rf"{NAMED.pattern} (?:{CELL})")


def copy_probe(source, count: int = 96) -> dict[str, int]:
    """How many objects differ between each of `count` held-out captions and the model's next line;
    `named` and `named absent`: the objects the line that tells the change names, and those of them
    the caption does not have."""
    tokenizer = AutoTokenizer.from_pretrained(source)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(source).eval()
    captions = held_out_captions(count)
    differences: Counter = Counter()
    torch.manual_seed(0)
    for start in range(0, count, 32):
        chunk = captions[start : start + 32]
        batch = tokenizer([text + "\n" for text in chunk], return_tensors="pt", padding=True)
        with torch.no_grad():
            sampling = {"do_sample": True, "temperature": 0.7, "top_k": 0, "max_new_tokens": 100}
            output = model.generate(**batch, **sampling, pad_token_id=tokenizer.pad_token_id)
        for text, tokens in zip(chunk, output):
            lines = tokenizer.decode(tokens[batch.input_ids.shape[1] :], skip_special_tokens=True).split("\n")
            remarks = list(takewhile(REMARK.fullmatch, lines))  # an internet with remarks: lines that point at objects
            lines = lines[len(remarks) :]
            written = lines[1] if len(lines) > 1 else ""  # the caption after the line that tells the change
            before, after = parse_caption(text), parse_caption(written)
            named = NAMED.findall("\n".join(remarks + lines[:1]))
            differences["named"] += len(named)
            differences["named absent"] += sum(name not in {thing.name for thing in before.things} for name in named)
            if after is None:
                differences["unparsed"] += 1
                continue
            changed = len(set(before.things) ^ set(after.things)) + (before.background != after.background)
            changed += (before.night != after.night) + (before.black_and_white != after.black_and_white)
            differences[str(changed) if changed < 5 else "5+"] += 1
    return dict(sorted(differences.items()))


def copy_probabilities(source, count: int = 96) -> dict[str, float]:
    """Mean probability of the right word on the unchanged beginning of an edited caption, by word kind."""
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForCausalLM.from_pretrained(source).eval()
    kinds = {word: kind for kind, words in (("size", SIZES), ("colour", COLOURS), ("shape", SHAPES)) for word in words}
    found: dict[str, list[float]] = {}
    for index in range(count):
        rng = edit_rng(TEST_SPLIT, index)
        scene = sample_scene(rng)
        change = narrated_change(scene, KINDS[index % len(KINDS)], rng)
        if change is None:  # it does not apply to this scene
            continue
        narration, after = change
        first = tokenizer(caption(scene) + "\n" + narration + "\n").input_ids
        second = tokenizer(caption(after)).input_ids
        same = next((i for i, (a, b) in enumerate(zip(first, second)) if a != b), min(len(first), len(second)))
        ids = torch.tensor([first + second])
        with torch.no_grad():
            probabilities = model(ids).logits[0].float().softmax(-1)
        for i in range(same):
            kind = kinds.get(tokenizer.decode(second[i]).strip(), "other")
            found.setdefault(kind, []).append(probabilities[len(first) + i - 1, second[i]].item())
    return {kind: round(sum(v) / len(v), 3) for kind, v in sorted(found.items())}


def copied_tokens(before: list[int], after: list[int]) -> list[bool]:
    """For each token of `after`: is it copied from `before` (in the longest matching blocks)?"""
    copied = [False] * len(after)
    for block in SequenceMatcher(None, before, after, autojunk=False).get_matching_blocks():
        copied[block.b : block.b + block.size] = [True] * block.size
    return copied


def kind_counts(kinds: list[str], good: list[bool]) -> dict[str, str]:
    """ "good/all", over all and for each edit kind present."""
    total, right = Counter(kinds), Counter(k for k, g in zip(kinds, good) if g)
    return {"all": f"{sum(good)}/{len(good)}", **{k: f"{right[k]}/{total[k]}" for k in KINDS if total[k]}}


def narrated_changes(count: int, remarks: int):
    """Held-out changes, the kinds in turn, as the internet tells them: (kind, scene, the scene's caption
    and remarks and the line that tells the change, each ending in a newline, the scene after it);
    the kinds that do not apply to their scene are left out."""
    for index in range(count):
        rng = edit_rng(TEST_SPLIT, 10_000 + index)
        scene, kind = sample_scene(rng), KINDS[index % len(KINDS)]
        change = narrated_change(scene, kind, rng)
        if change is not None:
            line, after = change
            yield kind, scene, "\n".join([*described(scene, remarks, random.Random(index)), line]) + "\n", after


def narrated_copies(source, count: int = 270, remarks: int = 2) -> dict[str, str]:
    """Teacher-forced in the internet's own format (a held-out caption, `remarks` remarks, the line
    that tells a change, the caption after it): of the changes of each kind, how many get every
    copied token of the second caption at p >= 0.5. Run on a fine-tuned model it says how much of
    pretraining's copying the fine-tuning kept."""
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForCausalLM.from_pretrained(source).eval()
    kinds, clean = [], []
    for kind, scene, told, after in narrated_changes(count, remarks):
        head = tokenizer(told).input_ids
        second = tokenizer(caption(after)).input_ids
        with torch.no_grad():
            probabilities = model(torch.tensor([head + second])).logits[0].float().softmax(-1)
        copied = copied_tokens(tokenizer(caption(scene)).input_ids, second)
        kinds.append(kind)
        clean.append(all(probabilities[len(head) + i - 1, t] >= 0.5 for i, t in enumerate(second) if copied[i]))
    return kind_counts(kinds, clean)


def edit_probabilities(source, count: int = 108) -> dict:
    """Teacher-forced on held-out edits in the fine-tuning format: mean p(right token) of the instruction,
    of the edited caption's copied tokens and of its changed ones (overall and by kind)."""
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForCausalLM.from_pretrained(source).eval()
    found: dict[str, list[float]] = {}
    clean = []  # per edit: every copied token at p >= 0.5
    for edit in sample_edits(TEST_SPLIT, count):
        head = tokenizer(edit.input_caption + PROMPT_END).input_ids
        instruction = tokenizer(edit.instruction + SEPARATOR).input_ids
        output = tokenizer(edit.edited_caption + STOP).input_ids
        with torch.no_grad():
            p = model(torch.tensor([head + instruction + output])).logits[0].float().softmax(-1)
        at = [p[i - 1, t].item() for i, t in enumerate(head + instruction + output) if i >= len(head)]
        found.setdefault("instruction", []).extend(at[: len(instruction)])
        copied = copied_tokens(tokenizer(edit.input_caption).input_ids, output)
        out = at[len(instruction) :]
        found.setdefault("copied", []).extend(q for q, c in zip(out, copied) if c)
        changed = [q for q, c in zip(out, copied) if not c]
        found.setdefault("changed", []).extend(changed)
        found.setdefault(f"changed {edit.kind}", []).extend(changed)
        clean.append(all(q >= 0.5 for q, c in zip(out, copied) if c))
    means = {key: round(sum(v) / len(v), 3) for key, v in found.items()}
    return {**means, "edits every copied token p>=0.5": round(sum(clean) / len(clean), 3)}


if __name__ == "__main__":
    source, count = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 96
    found = copy_probe(source, count)
    print(f"{source}: {found.get('1', 0) + found.get('2', 0)} of {count} one change away; differences: {found}")
    print(f"p(right word) copying, by kind: {copy_probabilities(source, count)}")
    print(f"changes whose every copied token gets p >= 0.5, the internet's format: {narrated_copies(source)}")
    if (Path(source) / "finetune.json").exists():  # a fine-tuned model
        print(f"p(right token) in held-out edits: {edit_probabilities(source)}")
