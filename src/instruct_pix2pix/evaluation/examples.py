"""The examples a sweep edits: a dataset's split (any source the trainer reads), or the small
world's held-out edits, which carry their exact ground truth."""

from __future__ import annotations

from instruct_pix2pix.errors import UserError
from instruct_pix2pix.evaluation.sweep import Example


def world_examples(count: int, *, held_out: bool = False) -> list[Example]:
    """`count` held-out small-world edits (every kind in turn), rendered exactly: input, target,
    captions, and the edit itself for the ground truth. `held_out` words the instructions in
    phrasings training never saw."""
    from instruct_pix2pix.small_world.edits import sample_edits
    from instruct_pix2pix.small_world.evaluate import EVALUATION_SPLIT
    from instruct_pix2pix.small_world.scenes import caption, render

    return [
        Example(render(e.before), e.instruction, caption(e.before), caption(e.after), f"{EVALUATION_SPLIT}/{i}",
                target=render(e.after), world_edit=e)
        for i, e in enumerate(sample_edits(EVALUATION_SPLIT, count, held_out=held_out))
    ]  # fmt: skip


def dataset_examples(source: str, *, split: str = "test", count: int = 100, seed: int = 0) -> list[Example]:
    """The first `count` examples of a split in the dataset's seeded order (`seed`, epoch 0), with
    their edited image as the target. Directional similarity needs both captions: a dataset
    without them is refused."""
    from instruct_pix2pix.data import open_dataset

    dataset = open_dataset(source, split=split)
    found: list[Example] = []
    read = 0
    examples = dataset.examples(seed=seed, epoch=0)
    try:
        for _, example in examples:
            read += 1
            if example.input_caption is None or example.edited_caption is None:
                continue
            found.append(Example(example.input_image, example.instruction, example.input_caption,
                                 example.edited_caption, example.key, target=example.edited_image))  # fmt: skip
            if len(found) == count:
                break
    finally:
        examples.close()
    if not found:
        skipped = sum(dataset.skipped.values())
        reason = f" ({skipped} rows could not be read)" if skipped else ""
        if read:
            raise UserError(f"{source} ({split}) has no input and edited captions; CLIP's directional "
                            "similarity needs both (input_caption/edited_caption, or prompt.json)")  # fmt: skip
        raise UserError(f"{source} has no usable examples in split {split!r}{reason}; check --split and the data")
    return found
