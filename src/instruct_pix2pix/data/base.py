"""What every source of edit examples shares: the example, the field names, decoding, and `EditDataset`.

`EditDataset.examples(seed=, epoch=, start=, rank=, world_size=)` yields `(position, EditExample)`:

* The global order is a function of (seed, epoch) and the data only (not of rank or world size).
  For tables it is a seeded permutation of the row groups, cut into windows of about
  `shuffle_window` rows, each window permuted by its own seeded generator: only one row group is read
  at a time (projected onto the mapped columns), and a dataset of any size is never loaded whole.
* Process `rank` gets global examples rank, rank + world_size, rank + 2 * world_size, ...;
  `position` counts this rank's examples from 0, skipped ones included.
* `start=k` resumes after this rank's first k examples (positions 0..k-1) and yields exactly what an
  uninterrupted run yields from position k on; whole windows before it are never read, and no image
  before it is decoded.
* A bad example (undecodable image, missing field, empty instruction) is skipped: counted in
  `dataset.skipped` (reason -> count, for the life of the dataset object), logged once per reason as
  a warning on the `instruct_pix2pix.data` logger, and its position is used up all the same, so a
  resumed run stays exact. So positions can have gaps; record the last one consumed and pass
  `start=last + 1` to resume.

With DataLoader workers, give each worker rank' = rank + world_size * worker_id and world_size' =
world_size * num_workers: worker w of a rank then gets that rank's positions w, w + num_workers, ...
(position' q is the rank's position w + num_workers * q).

A source subclasses `EditDataset` and gives `_rows` (its order) and `_sample_rows` (for `describe`);
checking the arguments, decoding and skipping happen here, once for all of them.
"""

from __future__ import annotations

import collections
import contextlib
import io
import logging
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from instruct_pix2pix.errors import UserError
from instruct_pix2pix.images import load_image

logger = logging.getLogger("instruct_pix2pix.data")


@dataclass
class EditExample:
    input_image: Image.Image  # RGB
    edited_image: Image.Image  # RGB
    instruction: str
    input_caption: str | None = None
    edited_caption: str | None = None
    key: str = ""  # where it came from (file and row, folder/seed), for messages


FIELDS = ("input_image", "edited_image", "instruction", "input_caption", "edited_caption")
REQUIRED_FIELDS = ("input_image", "edited_image", "instruction")
IMAGE_FIELDS = ("input_image", "edited_image")
TEXT_FIELDS = ("instruction", "input_caption", "edited_caption")

DEFAULT_SHUFFLE_WINDOW = 1000  # rows shuffled together (rounded up to whole row groups)

_SPLIT_ALIASES = {
    "train": "train", "training": "train",
    "validation": "validation", "valid": "validation", "val": "validation", "dev": "validation",
    "test": "test", "testing": "test",
}  # fmt: skip

# One raw example: (key for messages, cells by our field name, folder that relative image paths are in).
Cells = tuple[str, dict[str, Any], Path | None]
# What a source's `_rows` yields: (position, a function that gives the row's Cells or raises _Skip).
Rows = Generator[tuple[int, Callable[[], Cells]], None, None]


def _canonical_split(name: str) -> str:
    return _SPLIT_ALIASES.get(name.lower(), name)


def _rng(*entropy: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(list(entropy)))


def _one_line(error: BaseException, limit: int = 200) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _Skip(Exception):
    """One example is unusable; the message is the short reason counted in `skipped`."""

    def __init__(self, reason: str, key: str = ""):
        super().__init__(reason)
        self.key = key


def _check_iteration_args(seed: int, epoch: int, start: int, rank: int, world_size: int) -> None:
    for name, value in (("seed", seed), ("epoch", epoch), ("start", start), ("rank", rank)):
        if not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    if not isinstance(world_size, (int, np.integer)) or world_size < 1:
        raise ValueError(f"world_size must be a positive integer, got {world_size!r}")
    if rank >= world_size:
        raise ValueError(f"rank must be below world_size ({world_size}), got {rank}")


def _rank_positions(total: int, start: int, rank: int, world_size: int) -> range:
    """The global indices this rank gets from its position `start` on."""
    return range(rank + world_size * start, total, world_size)


# --------------------------------------------------------------------------------------------------
# Decoding one example


def _decode_image(value: Any, base_dir: Path | None) -> Image.Image:
    """An image cell (HF struct {bytes, path}, encoded bytes, or a path) as RGB; _Skip if unusable."""
    data = path = None
    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
    elif isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
    elif isinstance(value, str):
        path = value
    elif value is not None:
        raise _Skip("not an image")
    if data:
        try:
            opened = Image.open(io.BytesIO(data))
        except Exception:  # noqa: BLE001  (UnidentifiedImageError, decompression bombs, ...)
            raise _Skip("undecodable") from None
        try:
            return load_image(opened)
        except UserError:
            raise _Skip("undecodable") from None
    if path:
        file = Path(path)
        if not file.is_absolute() and base_dir is not None and not file.exists():
            file = base_dir / file
        try:
            return load_image(file)
        except UserError:
            raise _Skip("unreadable file") from None
    raise _Skip("missing")


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)


# --------------------------------------------------------------------------------------------------
# The common part


class EditDataset:
    """A split of a dataset of edit examples. Open one with `open_dataset`."""

    kind: str = ""
    source: str = ""
    split: str = "train"
    columns: dict[str, str]  # our field -> their column (or file pattern)
    preset: str | None = None  # the preset the columns came from, if one matched
    schema: list[tuple[str, str]]  # all their columns, with types
    splits: dict[str, int | None]  # every split's number of examples, where known

    def __init__(self) -> None:
        self.skipped: collections.Counter[str] = collections.Counter()
        self._warned: set[str] = set()
        self.columns = {}
        self.schema = []
        self.splits = {}

    @property
    def num_examples(self) -> int | None:
        """Examples in this split, or None where unknown (a streamed hub dataset without counts)."""
        return self.splits.get(self.split)

    def __len__(self) -> int:
        count = self.num_examples
        if count is None:
            raise TypeError(f"the number of examples in {self.source} ({self.split}) is not known before reading it")
        return count

    def examples(
        self, *, seed: int, epoch: int, start: int = 0, rank: int = 0, world_size: int = 1
    ) -> Iterator[tuple[int, EditExample]]:
        """This rank's (position, example) pairs from position `start` on (see the module docstring)."""
        _check_iteration_args(seed, epoch, start, rank, world_size)  # now, not at the first next()
        return self._examples(self._rows(seed, epoch, start, rank, world_size))

    def _examples(self, rows: Rows) -> Iterator[tuple[int, EditExample]]:
        """Decode the rows; a bad one is counted, warned about once per reason, and its position left out."""
        with contextlib.closing(rows):  # closing the examples closes the rows (and their open files) at once
            for position, cells in rows:
                try:
                    key, values, base_dir = cells()
                    example = self._build(values, key, base_dir)
                except _Skip as e:
                    self._skip(str(e), e.key)
                    continue
                yield position, example

    def _rows(self, seed: int, epoch: int, start: int, rank: int, world_size: int) -> Rows:
        """This rank's rows from its position `start` on, in order (arguments already checked).

        Rows before `start` are not read, and nothing is decoded here: that is `_examples`'s job.
        """
        raise NotImplementedError

    def _skip(self, reason: str, key: str) -> None:
        self.skipped[reason] += 1
        if reason not in self._warned:
            self._warned.add(reason)
            logger.warning(
                "skipping training example %s: %s (later ones with this problem are only counted)", key, reason
            )

    def _build(self, values: dict[str, Any], key: str, base_dir: Path | None) -> EditExample:
        """An EditExample from raw cells keyed by our field names; raises _Skip (with the key)."""
        instruction = _text(values.get("instruction"))
        if instruction is None:
            raise _Skip("instruction: missing", key)
        if not instruction.strip():
            raise _Skip("instruction: empty", key)
        images = {}
        for field in IMAGE_FIELDS:
            try:
                images[field] = _decode_image(values.get(field), base_dir)
            except _Skip as e:
                raise _Skip(f"{field}: {e}", key) from None
        return EditExample(
            input_image=images["input_image"],
            edited_image=images["edited_image"],
            instruction=instruction,
            input_caption=_text(values.get("input_caption")),
            edited_caption=_text(values.get("edited_caption")),
            key=key,
        )

    def _sample_rows(self, rows: int) -> list[Cells]:
        """The first `rows` raw rows in stored order."""
        raise NotImplementedError

    def describe(self, rows: int = 3) -> str:
        """Format, counts, schema and a few sample rows, as `ip2p dataset info` prints them."""
        lines = [f"source: {self.source}", f"format: {self.kind}"]
        count = self.num_examples
        lines.append(f"examples: {'unknown' if count is None else count} (split {self.split})")
        if len(self.splits) > 1:
            order = {name: i for i, name in enumerate(("train", "val", "validation", "test"))}
            names = sorted(self.splits, key=lambda name: (order.get(name, len(order)), name))
            counts = (f"{n} {'unknown' if self.splits[n] is None else self.splits[n]}" for n in names)
            lines.append("splits: " + ", ".join(counts))
        lines.append("fields (ours <- theirs)" + (f", preset {self.preset}:" if self.preset else ":"))
        width = max(len(field) for field in FIELDS)
        for field in FIELDS:
            lines.append(f"  {field:<{width}} <- {self.columns.get(field, '(none)')}")
        lines.append("all columns:")
        lines.extend(f"  {name}: {kind}" for name, kind in self.schema)
        if rows > 0:
            lines.append("sample rows:")
            samples = self._sample_rows(rows)
            if not samples:
                lines.append("  (none)")
            for key, values, base_dir in samples:
                lines.append(f"  {key}:")
                for field in TEXT_FIELDS:
                    if field in self.columns:
                        text = _text(values.get(field))
                        shown = "None" if text is None else repr(text if len(text) <= 100 else text[:97] + "...")
                        lines.append(f"    {field}: {shown}")
                for field in IMAGE_FIELDS:
                    try:
                        image = _decode_image(values.get(field), base_dir)
                        lines.append(f"    {field}: {image.width}x{image.height}")
                    except _Skip as e:
                        lines.append(f"    {field}: ({e})")
        return "\n".join(lines)
