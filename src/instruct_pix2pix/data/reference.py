"""The on-disk format of the original instruct-pix2pix code, read as its edit_dataset.py reads it.

`seeds.json` lists [prompt folder, [seed, ...]] pairs; each folder holds `prompt.json`
({input, edit, output}) and `{seed}_0.jpg` / `{seed}_1.jpg`. The folders are split 90/5/5 in order.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from functools import partial
from pathlib import Path

from instruct_pix2pix.data.base import Cells, EditDataset, _canonical_split, _one_line, _rank_positions, _rng, _Skip
from instruct_pix2pix.errors import UserError

REFERENCE_SPLITS = (0.9, 0.05, 0.05)


def _reference_split_name(split: str) -> str:
    """The reference's name for a split: train, val or test (other names are passed through)."""
    name = _canonical_split(split)
    return {"validation": "val"}.get(name, name)


def reference_split_range(count: int, split: str, splits: Sequence[float] = REFERENCE_SPLITS) -> tuple[int, int]:
    """[begin, end) of `split` among `count` seeds.json entries, as the reference edit_dataset.py computes it."""
    name = _reference_split_name(split)
    if name not in ("train", "val", "test"):
        raise UserError(f"the reference format has splits train, val (validation) and test, not {split!r}")
    split_0, split_1 = {
        "train": (0.0, splits[0]),
        "val": (splits[0], splits[0] + splits[1]),
        "test": (splits[0] + splits[1], 1.0),
    }[name]
    return math.floor(split_0 * count), math.floor(split_1 * count)


class _ReferenceDataset(EditDataset):
    kind = "instruct-pix2pix reference folder (seeds.json, NNNNNNN/prompt.json, {seed}_0.jpg / {seed}_1.jpg)"

    def __init__(self, folder: Path, split: str):
        super().__init__()
        self.folder, self.source = folder, str(folder)
        try:
            entries = json.loads((folder / "seeds.json").read_text(encoding="utf-8"))
            entries = [(str(name), [int(s) for s in seeds]) for name, seeds in entries]
        except (OSError, ValueError, TypeError) as e:
            raise UserError(
                f"{folder / 'seeds.json'} is not a JSON list of [prompt folder, [seed, ...]] pairs ({_one_line(e)}); "
                "fix or re-create it"
            ) from e
        begin, end = reference_split_range(len(entries), split)
        self.split = _reference_split_name(split)
        self.entries = entries[begin:end]
        self.splits = {}
        for name in ("train", "val", "test"):
            b, e = reference_split_range(len(entries), name)
            self.splits[name] = e - b
        self.columns = {
            "input_image": "{seed}_0.jpg",
            "edited_image": "{seed}_1.jpg",
            "instruction": "prompt.json: edit",
            "input_caption": "prompt.json: input",
            "edited_caption": "prompt.json: output",
        }
        self.schema = [("seeds.json", f"{len(entries)} prompt folders"), ("prompt.json", "{input, edit, output}")]

    def _cells(self, index: int, seed_choice: int | None) -> Cells:
        """Entry `index` with one of its seeds (the first for None); reads its prompt.json."""
        name, seeds = self.entries[index]
        if not seeds:
            raise _Skip("no seeds listed", name)
        seed = seeds[seed_choice % len(seeds)] if seed_choice is not None else seeds[0]
        prompt_dir = self.folder / name
        key = f"{name}/{seed}"
        try:
            prompt = json.loads((prompt_dir / "prompt.json").read_text(encoding="utf-8"))
            if not isinstance(prompt, dict):
                raise ValueError("not an object")
        except (OSError, ValueError):
            raise _Skip("prompt.json: unreadable", key) from None
        values = {
            "instruction": prompt.get("edit"),
            "input_caption": prompt.get("input"),
            "edited_caption": prompt.get("output"),
            "input_image": str(prompt_dir / f"{seed}_0.jpg"),
            "edited_image": str(prompt_dir / f"{seed}_1.jpg"),
        }
        return key, values, None

    def _rows(self, seed, epoch, start, rank, world_size):
        order = _rng(seed, epoch, 0).permutation(len(self.entries))
        for g in _rank_positions(len(order), start, rank, world_size):
            index = int(order[g])
            # The reference picks one of the folder's seeds at random on every access; here the pick
            # depends on (seed, epoch, folder) only, so it is the same wherever the folder lands.
            choice = int(_rng(seed, epoch, 2, index).integers(1 << 62))
            yield (g - rank) // world_size, partial(self._cells, index, choice)

    def _sample_rows(self, rows):
        found = []
        for index in range(min(rows, len(self.entries))):
            try:
                found.append(self._cells(index, None))
            except _Skip as e:
                found.append((f"{e.key} ({e})", {}, None))
        return found
