"""Probe: given the change, does a world language model write the right caption after it?

The text stage's model does two things: it picks an edit (the instruction) and applies it (the edited
caption). This probe takes the first away and measures the second, greedy, on held-out scenes, by
edit kind (the share whose written caption is exactly the right one):

- `narrated`: in the internet's own format (a caption, its remarks, the line that tells a change),
  for a pretrained model: the skill pretraining teaches, the ceiling fine-tuning starts from;
- `instructed`: in the fine-tuning format, the instruction given (`input\\n##\\ninstruction\\n%%\\n`),
  for a fine-tuned model: how often it applies an instruction right once it has written one.

    python benchmarks/trials/lm_apply_probe.py MODEL_DIR [COUNT]   (instructed too when fine-tuned)
"""

import sys
from pathlib import Path

import torch
from lm_copy_probe import kind_counts, narrated_changes
from transformers import AutoModelForCausalLM, AutoTokenizer

from instruct_pix2pix.data.triples import PROMPT_END, SEPARATOR, STOP
from instruct_pix2pix.small_world.edits import sample_edits
from instruct_pix2pix.small_world.language import TEST_SPLIT
from instruct_pix2pix.small_world.scenes import caption


@torch.no_grad()
def greedy(model, tokenizer, prompts: list[str], end: str, batch_size: int = 32) -> list[str]:
    """Each prompt's greedy continuation, cut at `end`."""
    tokenizer.padding_side = "left"
    written = []
    for start in range(0, len(prompts), batch_size):
        batch = tokenizer(prompts[start : start + batch_size], return_tensors="pt", padding=True)
        out = model.generate(**batch, do_sample=False, max_new_tokens=120, pad_token_id=tokenizer.pad_token_id)
        texts = tokenizer.batch_decode(out[:, batch.input_ids.shape[1] :], skip_special_tokens=True)
        written += [text.split(end)[0].strip() for text in texts]
    return written


def narrated(model, tokenizer, count: int = 270, remarks: int = 2) -> dict[str, str]:
    """The held-out changes of `lm_copy_probe.narrated_copies`, written out greedily."""
    kinds, _, prompts, afters = zip(*narrated_changes(count, remarks))
    written = greedy(model, tokenizer, list(prompts), "\n")
    return kind_counts(list(kinds), [caption(after) == w for after, w in zip(afters, written)])


def instructed(model, tokenizer, count: int = 270) -> dict[str, str]:
    """Held-out edits in the fine-tuning format, the instruction given: the edited caption, greedily."""
    edits = list(sample_edits(TEST_SPLIT, count))
    prompts = [e.input_caption + PROMPT_END + e.instruction + SEPARATOR for e in edits]
    written = greedy(model, tokenizer, prompts, STOP)
    return kind_counts([e.kind for e in edits], [e.edited_caption == w for e, w in zip(edits, written)])


if __name__ == "__main__":
    source, count = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 270
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForCausalLM.from_pretrained(source).eval()
    print(f"{source}: narrated change -> right caption, greedy: {narrated(model, tokenizer, count)}")
    if (Path(source) / "finetune.json").exists():  # a fine-tuned model
        print(f"{source}: instruction given -> right edited caption, greedy: {instructed(model, tokenizer, count)}")
