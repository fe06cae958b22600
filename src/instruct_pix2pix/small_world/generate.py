"""Write small-world edits in the formats the trainer reads, and sample sheets for people to look at."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from tqdm.auto import tqdm

from instruct_pix2pix.atomic import atomic_file, write_text
from instruct_pix2pix.data import EditExample, write_parquet, write_reference_folder
from instruct_pix2pix.errors import UserError
from instruct_pix2pix.small_world.edits import KINDS, WorldEdit, sample_edits
from instruct_pix2pix.small_world.scenes import DEFAULT_SIZE, render


def to_example(edit: WorldEdit, size: int = DEFAULT_SIZE) -> EditExample:
    return EditExample(render(edit.before, size), render(edit.after, size), edit.instruction,
                       edit.input_caption, edit.edited_caption, key=edit.kind)  # fmt: skip


def write_dataset(
    output: str | os.PathLike[str],
    count: int,
    *,
    split: str = "train",
    size: int = DEFAULT_SIZE,
    shard_size: int = 5000,
    format: str = "parquet",
    filler: float = 0.0,
    kinds: tuple[str, ...] = KINDS,
    progress: bool = True,
) -> Path:
    """Write `count` edits of `split` to `output`.

    parquet: shards `{split}-00000-of-000NN.parquet` with the released dataset's schema, each
    written atomically; a killed run resumes by skipping the shards already there. reference:
    the original on-disk format (seeds.json, NNNNNNN/prompt.json, {seed}_0.jpg, {seed}_1.jpg).
    Both also get `{split}-triples.jsonl`: (input caption, instruction, output caption) in the
    format of the paper's human-written prompts. `filler`: the share of instructions with made-up
    words in them (`edits.with_filler`).
    """
    if count < 1 or shard_size < 1:
        raise UserError(f"count and shard size must be at least 1, not {count} and {shard_size}")
    if not 0 <= filler <= 1:
        raise UserError(f"the share of instructions with made-up words must be from 0 to 1, not {filler}")
    if not kinds or set(kinds) - set(KINDS):
        raise UserError(f"edit kinds must be some of {', '.join(KINDS)}, not {', '.join(kinds) or 'none'}")
    if format not in ("parquet", "reference"):
        raise UserError(f"unknown dataset format {format!r}; use parquet or reference")
    output = Path(output)

    def edits(number: int, start: int = 0) -> Iterable[WorldEdit]:
        return sample_edits(split, number, kinds=kinds, start=start, filler=filler)

    bar = tqdm(total=count, desc=f"writing {split} edits", unit="edit", disable=not progress)
    if format == "reference":
        write_reference_folder(_examples(edits(count), size, bar), output)
    else:
        shards = (count + shard_size - 1) // shard_size
        output.mkdir(parents=True, exist_ok=True)
        for shard in range(shards):
            start = shard * shard_size
            number = min(shard_size, count - start)
            path = output / f"{split}-{shard:05d}-of-{shards:05d}.parquet"
            if path.exists():  # written whole by an earlier run (shards are renamed into place)
                bar.update(number)
                continue
            write_parquet(_examples(edits(number, start), size, bar), path)
    bar.close()
    with atomic_file(output / f"{split}-triples.jsonl", "w", encoding="utf-8") as f:
        for edit in edits(count):
            triple = {"input": edit.input_caption, "edit": edit.instruction, "output": edit.edited_caption}
            f.write(json.dumps(triple) + "\n")
    return output


def _examples(edits: Iterable[WorldEdit], size: int, bar) -> Iterable[EditExample]:
    for edit in edits:
        yield to_example(edit, size)
        bar.update()


def write_samples(output: str | os.PathLike[str], *, count: int = 2, size: int = DEFAULT_SIZE, seed: int = 0) -> Path:
    """For people: `count` edits of every kind as PNGs (input, ground truth) plus a labelled sheet
    `sheet.png` and `edits.jsonl` with captions and instructions."""
    from instruct_pix2pix.images import figure_metadata, image_grid, save_png

    output = Path(output)
    edits = list(sample_edits(f"sample-{seed}", count * len(KINDS)))
    records, rows, labels = [], [], []
    for index, edit in enumerate(edits):
        before, after = render(edit.before, size), render(edit.after, size)
        stem = f"{index:03d}-{edit.kind}"
        save_png(before, output / f"{stem}-input.png", {"caption": edit.input_caption})
        save_png(
            after, output / f"{stem}-edited.png", {"caption": edit.edited_caption, "instruction": edit.instruction}
        )
        records.append({"input": f"{stem}-input.png", "edited": f"{stem}-edited.png", "kind": edit.kind,
                        "instruction": edit.instruction, "input_caption": edit.input_caption,
                        "edited_caption": edit.edited_caption})  # fmt: skip
        rows.append([before, after])
        labels.append([edit.kind, edit.instruction])
    sheet = image_grid(
        rows, column_labels=["input", "edited (ground truth)"], scale=2, cell_labels=labels, cell_label_lines=3
    )
    command = ["ip2p", "world", "sample", "-o", output, "--count", count, "--seed", seed]
    save_png(sheet, output / "sheet.png", figure_metadata(command, count=count, seed=seed, size=size))
    write_text(output / "edits.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    return output
