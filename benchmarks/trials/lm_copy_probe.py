"""Probe: has a pretrained world language model learnt to copy a caption with one change?

Its internet (`language.internet_document`) is series of captions, each picture the one before with
one thing changed, so a model that learnt it continues a held-out caption with a caption one change
away. Counts, over held-out captions, how many objects differ between the caption and the line the
model writes after it (0: copied unchanged; 1-2: one change; "unparsed": not a world caption).
Seconds, not a fine-tune: it ranks pretraining designs on what the text stage needs most.

`copy_probabilities` says where copying fails: given a held-out caption and the caption after one
edit (teacher-forced), the mean probability the model gives each word of the second caption's
unchanged beginning, by the word's kind (size, colour, shape, other).

    python benchmarks/trials/lm_copy_probe.py MODEL_DIR [CAPTIONS]
"""

import sys
from collections import Counter

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from instruct_pix2pix.small_world.edits import sample_edits
from instruct_pix2pix.small_world.language import TEST_SPLIT, held_out_captions, parse_caption
from instruct_pix2pix.small_world.scenes import COLOURS, SHAPES, SIZES


def copy_probe(source, count: int = 96) -> dict[str, int]:
    """How many objects differ between each of `count` held-out captions and the model's next line."""
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
            sampling = {"do_sample": True, "temperature": 0.7, "top_k": 0, "max_new_tokens": 80}
            output = model.generate(**batch, **sampling, pad_token_id=tokenizer.pad_token_id)
        for text, tokens in zip(chunk, output):
            written = tokenizer.decode(tokens[batch.input_ids.shape[1] :], skip_special_tokens=True).split("\n")[0]
            before, after = parse_caption(text), parse_caption(written)
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
    for edit in sample_edits(TEST_SPLIT, count):
        first, second = tokenizer(edit.input_caption + "\n").input_ids, tokenizer(edit.edited_caption).input_ids
        same = next((i for i, (a, b) in enumerate(zip(first, second)) if a != b), min(len(first), len(second)))
        ids = torch.tensor([first + second])
        with torch.no_grad():
            probabilities = model(ids).logits[0].float().softmax(-1)
        for i in range(same):
            kind = kinds.get(tokenizer.decode(second[i]).strip(), "other")
            found.setdefault(kind, []).append(probabilities[len(first) + i - 1, second[i]].item())
    return {kind: round(sum(v) / len(v), 3) for kind, v in sorted(found.items())}


if __name__ == "__main__":
    source, count = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 96
    found = copy_probe(source, count)
    print(f"{source}: {found.get('1', 0) + found.get('2', 0)} of {count} one change away; differences: {found}")
    print(f"p(right word) copying, by kind: {copy_probabilities(source, count)}")
