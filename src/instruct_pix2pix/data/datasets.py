"""Training data: (input image, instruction, edited image) triples, read deterministically and resumably.

`open_dataset` takes any of:

* parquet: one file, a glob, or a folder of `*.parquet` shards (in `data/` subfolders too, as the hub
  writes them). Images are HF `datasets` `Image()` structs {bytes, path}, plain binary columns of
  encoded image bytes, or strings holding image paths. Split names come from the file names / folders
  (`data/train-00000-of-00002.parquet`, `test/0000.parquet`); with none, everything is `train`.
* a folder written by `datasets.Dataset.save_to_disk` / `DatasetDict.save_to_disk` (arrow files).
* a hub dataset id such as `timbrooks/instructpix2pix-clip-filtered` (needs network; streamed).
* the on-disk format of the original instruct-pix2pix code: `seeds.json` plus one folder per prompt
  with `prompt.json` and `{seed}_0.jpg` / `{seed}_1.jpg`, split 90/5/5 exactly as the reference does.

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
"""

from __future__ import annotations

import collections
import glob
import io
import json
import logging
import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath
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

COLUMN_PRESETS: dict[str, dict[str, str]] = {
    # The released dataset (timbrooks/instructpix2pix-clip-filtered) and write_parquet.
    "instructpix2pix": dict(
        input_image="original_image",
        edited_image="edited_image",
        instruction="edit_prompt",
        input_caption="original_prompt",
        edited_caption="edited_prompt",
    ),
    # diffusers' train_instruct_pix2pix.py example (fusing/instructpix2pix-1000-samples).
    "diffusers-example": dict(input_image="input_image", edited_image="edited_image", instruction="edit_prompt"),
}

REFERENCE_SPLITS = (0.9, 0.05, 0.05)
DEFAULT_SHUFFLE_WINDOW = 1000  # rows shuffled together (rounded up to whole row groups)

_SPLIT_ALIASES = {
    "train": "train", "training": "train",
    "validation": "validation", "valid": "validation", "val": "validation", "dev": "validation",
    "test": "test", "testing": "test",
}  # fmt: skip
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_HF_SHARD_NAME = re.compile(r"^(?P<split>\w+?)-\d{5}-of-\d{5}")


def _canonical_split(name: str) -> str:
    return _SPLIT_ALIASES.get(name.lower(), name)


def _rng(*entropy: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(list(entropy)))


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
        raise NotImplementedError

    def _skip(self, reason: str, key: str) -> None:
        self.skipped[reason] += 1
        if reason not in self._warned:
            self._warned.add(reason)
            logger.warning("skipping training example %s: %s (later ones with this problem are only counted)", key, reason)

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

    def _sample_rows(self, rows: int) -> list[tuple[str, dict[str, Any], Path | None]]:
        """The first `rows` raw rows in stored order: (key, cells by our field, base folder)."""
        raise NotImplementedError

    def describe(self, rows: int = 3) -> str:
        """Format, counts, schema and a few sample rows, as `ip2p dataset info` prints them."""
        lines = [f"source: {self.source}", f"format: {self.kind}"]
        count = self.num_examples
        lines.append(f"examples: {'unknown' if count is None else count} (split {self.split})")
        if len(self.splits) > 1:
            order = {name: i for i, name in enumerate(("train", "val", "validation", "test"))}
            names = sorted(self.splits, key=lambda name: (order.get(name, len(order)), name))
            lines.append("splits: " + ", ".join(f"{n} {'unknown' if self.splits[n] is None else self.splits[n]}" for n in names))
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


# --------------------------------------------------------------------------------------------------
# Tables: parquet files, arrow files (save_to_disk), an in-memory arrow table (hub, not streamed)


def _column_kind(arrow_type) -> str:
    """'image', 'text' or 'other' for an arrow column type."""
    import pyarrow as pa

    if pa.types.is_struct(arrow_type) and arrow_type.get_field_index("bytes") >= 0:
        return "image"
    if pa.types.is_binary(arrow_type) or pa.types.is_large_binary(arrow_type) or pa.types.is_binary_view(arrow_type):
        return "image"
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type) or pa.types.is_string_view(arrow_type):
        return "text"  # also accepted as an image column: a path to an image file
    return "other"


def _resolve_columns(
    available: dict[str, str], kinds: dict[str, str], columns: dict[str, str] | None, source: str
) -> tuple[dict[str, str], str | None]:
    """Our field -> their column, from a detected preset with `columns` on top; UserError if impossible."""
    names = list(available)
    if columns is not None and not isinstance(columns, Mapping):
        raise UserError(f"the column mapping must map fields to column names, like {{'instruction': 'prompt'}}, not {columns!r}")

    def matches(item):
        required = sum(item[1][field] in available for field in REQUIRED_FIELDS)
        return required, sum(column in available for column in item[1].values())

    # The preset that fits best gives the columns it can; `columns` goes on top.
    preset_name, preset = max(COLUMN_PRESETS.items(), key=matches)  # the first of equals
    detected = {field: column for field, column in preset.items() if column in available}
    mapping = dict(detected)
    for field, column in (columns or {}).items():
        if field not in FIELDS:
            raise UserError(f"unknown field {field!r} in the column mapping; the fields are {', '.join(FIELDS)}")
        if column in (None, ""):
            mapping.pop(field, None)
            continue
        if column not in available:
            raise UserError(
                f"the column mapping names {column!r} for {field}, but {source} has no such column; "
                f"its columns are: {', '.join(names)}"
            )
        mapping[field] = column
    if mapping != detected or any(field not in detected for field in REQUIRED_FIELDS):
        preset_name = None
    missing = [field for field in REQUIRED_FIELDS if field not in mapping]
    if missing:
        looked = "; ".join(
            f"{field} (looked for {', '.join(dict.fromkeys(p[field] for p in COLUMN_PRESETS.values()))})" for field in missing
        )
        example = ", ".join(f"{field}=COLUMN" for field in missing)
        raise UserError(
            f"{source} has no column for {looked}; its columns are: {', '.join(names)}; "
            f"map them with columns={{{example}}} (data_columns in a training config)"
        )
    for field, column in mapping.items():
        kind = kinds[column]
        if field in IMAGE_FIELDS and kind == "other":
            raise UserError(
                f"column {column!r} ({field}) of {source} is {available[column]}, not an image: give a column of "
                "datasets Image() structs, encoded image bytes, or image paths"
            )
        if field in TEXT_FIELDS and kind != "text":
            raise UserError(f"column {column!r} ({field}) of {source} is {available[column]}, not text; map a text column")
    return mapping, preset_name


class _TableReader:
    """Row groups ("units") of one or more tables, read one at a time.

    Open files live in a `handles` dict owned by one iteration, so iterations do not share state.
    """

    files: list[str]  # names used in example keys
    base_dirs: list[Path | None]  # for relative image paths
    units: list[tuple[int, int, int]]  # (file index, group index, rows), in stored order
    rows_before: dict[tuple[int, int], int]  # (file, group) -> rows of that file before the group
    arrow_schema: Any
    schemas: list  # each file's schema

    def _add_file(self, index: int, group_rows: Sequence[int]) -> None:
        done = 0
        for group, rows in enumerate(group_rows):
            self.rows_before[(index, group)] = done
            done += rows
            if rows:
                self.units.append((index, group, rows))

    def read(self, handles: dict, file_index: int, group_index: int, columns: list[str]):
        raise NotImplementedError

    def close(self, handles: dict) -> None:
        for handle in handles.values():
            getattr(handle, "close", lambda: None)()
        handles.clear()


class _ParquetReader(_TableReader):
    """Parquet files; only their footers are read up front."""

    def __init__(self, paths: list[Path], root: Path | None):
        import pyarrow.parquet as pq

        self.paths = paths
        self.files = [str(p.relative_to(root)) if root is not None else str(p) for p in paths]
        self.base_dirs = [p.parent for p in paths]
        self.units, self.rows_before, self.schemas = [], {}, []
        for index, path in enumerate(paths):
            try:
                metadata = pq.read_metadata(path)
            except Exception as e:  # noqa: BLE001  (ArrowInvalid for a non-parquet file, OSError)
                raise UserError(f"{path} is not a readable parquet file ({_one_line(e)}); re-download or re-write it") from e
            self.schemas.append(metadata.schema.to_arrow_schema())
            self._add_file(index, [metadata.row_group(g).num_rows for g in range(metadata.num_row_groups)])
        self.arrow_schema = self.schemas[0] if self.schemas else None

    def read(self, handles, file_index, group_index, columns):
        import pyarrow.parquet as pq

        if file_index not in handles:
            self.close(handles)  # one open file at a time
            handles[file_index] = pq.ParquetFile(self.paths[file_index])
        return handles[file_index].read_row_group(group_index, columns=columns)


def _read_arrow_batches(path: Path) -> tuple[Any, list]:
    """(schema, record batches) of an arrow file (IPC stream as datasets writes, or IPC file), memory-mapped."""
    import pyarrow as pa

    try:
        try:
            reader = pa.ipc.open_stream(pa.memory_map(str(path)))
            return reader.schema, list(reader)
        except pa.ArrowInvalid:
            reader = pa.ipc.open_file(pa.memory_map(str(path)))
            return reader.schema, [reader.get_batch(i) for i in range(reader.num_record_batches)]
    except Exception as e:  # noqa: BLE001
        raise UserError(f"{path} is not a readable arrow file ({_one_line(e)}); re-save the dataset") from e


class _BatchReader(_TableReader):
    """Record batches of arrow files, memory-mapped: zero-copy, so 'reading' one costs next to nothing.

    The mapped batches are a per-process cache, not pickled: a DataLoader worker maps the files itself.
    `in_memory` (a table that is no file's) is the exception and does travel.
    """

    def __init__(self, files: list[tuple[str, Path | None, Path | None]], in_memory: tuple[Any, list] | None = None):
        self.files = [name for name, _, _ in files]
        self.base_dirs = [base for _, base, _ in files]
        self.paths = [path for _, _, path in files]
        self._in_memory = in_memory
        self._mapped: dict[int, tuple[Any, list]] = {}
        self.units, self.rows_before, self.schemas = [], {}, []
        for index in range(len(files)):
            schema, batches = self._schema_and_batches(index)
            self.schemas.append(schema)
            self._add_file(index, [b.num_rows for b in batches])
        self.arrow_schema = self.schemas[0] if self.schemas else None

    def _schema_and_batches(self, index: int) -> tuple[Any, list]:
        if self._in_memory is not None:
            return self._in_memory
        if index not in self._mapped:
            self._mapped[index] = _read_arrow_batches(self.paths[index])
        return self._mapped[index]

    def __getstate__(self):
        return {**self.__dict__, "_mapped": {}}

    def read(self, handles, file_index, group_index, columns):
        import pyarrow as pa

        return pa.Table.from_batches([self._schema_and_batches(file_index)[1][group_index]]).select(columns)


class _TableDataset(EditDataset):
    def __init__(
        self,
        reader: _TableReader,
        *,
        kind: str,
        source: str,
        split: str,
        splits: dict[str, int | None],
        columns: dict[str, str] | None,
        shuffle_window: int,
    ):
        super().__init__()
        self.reader, self.kind, self.source, self.split = reader, kind, source, split
        schema = reader.arrow_schema
        if schema is None:
            raise UserError(f"{source} holds no tables ({split}); check the path")
        available = {f.name: str(f.type) for f in schema}
        kinds = {f.name: _column_kind(f.type) for f in schema}
        self.schema = list(available.items())
        self.columns, self.preset = _resolve_columns(available, kinds, columns, source)
        for name, file_schema in zip(reader.files, reader.schemas):
            absent = [c for c in self.columns.values() if file_schema.get_field_index(c) < 0]
            if absent:
                raise UserError(f"{name} in {source} has no column {', '.join(absent)} unlike the others; remove or fix it")
        self._read_columns = list(dict.fromkeys(self.columns.values()))
        self.splits = dict(splits)
        self.splits[split] = sum(rows for _, _, rows in reader.units)
        self.shuffle_window = max(1, int(shuffle_window))

    def _windows(self, seed: int, epoch: int) -> list[list[tuple[int, int, int]]]:
        """The units in this epoch's order, cut into windows of at least shuffle_window rows."""
        order = _rng(seed, epoch, 0).permutation(len(self.reader.units))
        windows, current, rows = [], [], 0
        for index in order:
            unit = self.reader.units[index]
            current.append(unit)
            rows += unit[2]
            if rows >= self.shuffle_window:
                windows.append(current)
                current, rows = [], 0
        if current:
            windows.append(current)
        return windows

    def examples(self, *, seed, epoch, start=0, rank=0, world_size=1):
        _check_iteration_args(seed, epoch, start, rank, world_size)
        return self._iterate(seed, epoch, start, rank, world_size)

    def _iterate(self, seed, epoch, start, rank, world_size):
        first = rank + world_size * start  # the first global index to yield
        offset = 0
        handles: dict = {}
        try:
            for number, window in enumerate(self._windows(seed, epoch)):
                sizes = np.array([rows for _, _, rows in window])
                total = int(sizes.sum())
                begin, offset = offset, offset + total
                if offset <= first:
                    continue  # entirely before the resume point: not even read
                lo = max(begin, first)
                wanted = np.arange(lo + (rank - lo) % world_size, offset, world_size)
                if not len(wanted):
                    continue
                rows = _rng(seed, epoch, 1, number).permutation(total)[wanted - begin]
                bounds = np.concatenate([[0], np.cumsum(sizes)])
                unit_of = np.searchsorted(bounds, rows, side="right") - 1
                row_in_unit = rows - bounds[unit_of]
                cells: dict[tuple[int, int], dict] = {}
                for u in np.unique(unit_of):
                    file_index, group_index, _ = window[u]
                    picked = row_in_unit[unit_of == u]
                    table = self.reader.read(handles, file_index, group_index, self._read_columns).take(picked)
                    for r, row in zip(picked.tolist(), table.to_pylist()):
                        cells[(int(u), r)] = row
                    del table
                for g, u, r in zip(wanted.tolist(), unit_of.tolist(), row_in_unit.tolist()):
                    file_index, group_index, _ = window[u]
                    row = cells.pop((u, r))
                    key = f"{self.reader.files[file_index]} row {self.reader.rows_before[(file_index, group_index)] + r}"
                    values = {field: row[column] for field, column in self.columns.items()}
                    try:
                        example = self._build(values, key, self.reader.base_dirs[file_index])
                    except _Skip as e:
                        self._skip(str(e), key)
                        continue
                    yield (g - rank) // world_size, example
        finally:
            self.reader.close(handles)

    def _sample_rows(self, rows):
        found, handles = [], {}
        try:
            for file_index, group_index, _ in self.reader.units:
                table = self.reader.read(handles, file_index, group_index, self._read_columns).slice(0, rows - len(found))
                for r, row in enumerate(table.to_pylist()):
                    key = f"{self.reader.files[file_index]} row {self.reader.rows_before[(file_index, group_index)] + r}"
                    values = {field: row[column] for field, column in self.columns.items()}
                    found.append((key, values, self.reader.base_dirs[file_index]))
                if len(found) >= rows:
                    break
        finally:
            self.reader.close(handles)
        return found


# --------------------------------------------------------------------------------------------------
# The reference on-disk format


def reference_split_range(count: int, split: str, splits: Sequence[float] = REFERENCE_SPLITS) -> tuple[int, int]:
    """[begin, end) of `split` among `count` seeds.json entries, as the reference edit_dataset.py computes it."""
    name = {"validation": "val"}.get(_canonical_split(split), _canonical_split(split))
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
                f"{folder / 'seeds.json'} is not a JSON list of [prompt folder, [seed, ...]] pairs ({_one_line(e)}); fix or re-create it"
            ) from e
        begin, end = reference_split_range(len(entries), split)
        self.split = {"validation": "val"}.get(_canonical_split(split), _canonical_split(split))
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

    def _cells(self, index: int, seed_choice: int | None) -> tuple[str, dict[str, Any]]:
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
        return key, values

    def examples(self, *, seed, epoch, start=0, rank=0, world_size=1):
        _check_iteration_args(seed, epoch, start, rank, world_size)
        return self._iterate(seed, epoch, start, rank, world_size)

    def _iterate(self, seed, epoch, start, rank, world_size):
        order = _rng(seed, epoch, 0).permutation(len(self.entries))
        for g in _rank_positions(len(order), start, rank, world_size):
            index = int(order[g])
            position = (g - rank) // world_size
            # The reference picks one of the folder's seeds at random on every access; here the pick
            # depends on (seed, epoch, folder) only, so it is the same wherever the folder lands.
            choice = int(_rng(seed, epoch, 2, index).integers(1 << 62))
            try:
                key, values = self._cells(index, choice)
                example = self._build(values, key, None)
            except _Skip as e:
                self._skip(str(e), e.key)
                continue
            yield position, example

    def _sample_rows(self, rows):
        found = []
        for index in range(min(rows, len(self.entries))):
            try:
                key, values = self._cells(index, None)
            except _Skip as e:
                key, values = f"{e.key} ({e})", {}
            found.append((key, values, None))
        return found


# --------------------------------------------------------------------------------------------------
# A streamed hub dataset


class _HubStreamDataset(EditDataset):
    def __init__(self, repo_id: str, split: str, columns: dict[str, str] | None, shuffle_window: int, loaded=None):
        super().__init__()
        import datasets

        self.kind = "hub dataset (streamed)"
        self.source, self.split = repo_id, split
        self.shuffle_window = max(1, int(shuffle_window))
        stream = loaded if loaded is not None else _load_hub(repo_id, split, streaming=True)
        features = stream.features
        if features is None:  # not in the dataset's metadata: learn the columns from the first row
            try:
                first = next(iter(stream))
            except Exception as e:  # noqa: BLE001
                raise UserError(f"cannot read the hub dataset {repo_id} ({_one_line(e)}); check the id and your network") from e
            features = datasets.Features({name: _guess_feature(value) for name, value in first.items()})
            stream = stream.cast(features)
        available, kinds = {}, {}
        for name, feature in features.items():
            if isinstance(feature, datasets.Image):
                available[name], kinds[name] = "image", "image"
            elif isinstance(feature, datasets.Value) and feature.dtype in ("binary", "large_binary"):
                available[name], kinds[name] = feature.dtype, "image"
            elif isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string"):
                available[name], kinds[name] = feature.dtype, "text"
            else:
                available[name], kinds[name] = getattr(feature, "dtype", type(feature).__name__), "other"
        self.schema = list(available.items())
        self.columns, self.preset = _resolve_columns(available, kinds, columns, repo_id)
        stream = stream.select_columns(list(dict.fromkeys(self.columns.values())))
        for column in set(self.columns.values()):
            if isinstance(features[column], datasets.Image):
                stream = stream.cast_column(column, datasets.Image(decode=False))  # we decode what we yield, only
        self.stream = stream
        counts = {}
        for name, info in (getattr(stream.info, "splits", None) or {}).items():
            counts[name] = getattr(info, "num_examples", None) or None
        self.splits = counts if split in counts else {**counts, split: None}

    def examples(self, *, seed, epoch, start=0, rank=0, world_size=1):
        _check_iteration_args(seed, epoch, start, rank, world_size)
        return self._iterate(seed, epoch, start, rank, world_size)

    def _iterate(self, seed, epoch, start, rank, world_size):
        stream = self.stream.shuffle(seed=int(seed), buffer_size=self.shuffle_window)
        stream.set_epoch(int(epoch))
        first = rank + world_size * start
        for g, row in enumerate(stream):
            if g < first or (g - rank) % world_size:
                continue  # images stay encoded: skipping costs reading only
            key = f"{self.source} [{self.split}] example {g} of epoch {epoch}"
            values = {field: row[column] for field, column in self.columns.items()}
            try:
                example = self._build(values, key, None)
            except _Skip as e:
                self._skip(str(e), key)
                continue
            yield (g - rank) // world_size, example

    def _sample_rows(self, rows):
        found = []
        for g, row in enumerate(self.stream.take(rows)):
            found.append((f"example {g}", {field: row[column] for field, column in self.columns.items()}, None))
        return found


def _guess_feature(value):
    import datasets
    import pyarrow as pa

    if isinstance(value, Image.Image) or (isinstance(value, dict) and "bytes" in value):
        return datasets.Image()
    if isinstance(value, (bytes, bytearray)):
        return datasets.Value("binary")
    if isinstance(value, str) or value is None:
        return datasets.Value("string")
    return datasets.Value(str(pa.array([value]).type))


def _one_line(error: BaseException, limit: int = 200) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _load_hub(repo_id: str, split: str, *, streaming: bool):
    try:
        import datasets
    except ImportError as e:  # pragma: no cover - a dependency
        raise UserError("reading a hub dataset needs the `datasets` package: pip install datasets") from e
    try:
        return datasets.load_dataset(repo_id, split=split, streaming=streaming)
    except Exception as e:  # noqa: BLE001  (offline, unknown id, no such split, auth, ...)
        raise UserError(
            f"cannot open the hub dataset {repo_id} ({split}): {_one_line(e)}; check the id, the split and your "
            "network (HF_HUB_OFFLINE set?), or download it and give the local folder"
        ) from e


# --------------------------------------------------------------------------------------------------
# Finding out what a source is


def _split_of(relative: PurePath) -> str | None:
    """The split a parquet file belongs to, from its name or folders (HF conventions); None if none."""
    match = _HF_SHARD_NAME.match(relative.name)
    if match:
        return _canonical_split(match["split"])
    parts = [p.lower() for p in relative.parts[:-1]]
    for part in [relative.name.lower().rsplit(".", 1)[0], *reversed(parts)]:
        for token in re.split(r"[-._ 0-9]+", part):
            if token in _SPLIT_ALIASES:
                return _SPLIT_ALIASES[token]
    return None


def _pick_split(by_split: dict[str, list], split: str, source: str) -> list:
    name = _canonical_split(split)
    if name not in by_split:
        listed = ", ".join(by_split)
        raise UserError(f"{source} has no {split!r} split; its splits are: {listed}; pick one with --split / train_split")
    return by_split[name]


def _parquet_dataset(files: list[Path], root: Path | None, source: str, split: str, columns, shuffle_window, named_splits: bool):
    import pyarrow.parquet as pq

    if named_splits:
        by_split: dict[str, list[Path]] = {}
        for path in files:
            by_split.setdefault(_split_of(path.relative_to(root)) or "train", []).append(path)
        chosen = _pick_split(by_split, split, source)
        counts = {name: sum(pq.read_metadata(p).num_rows for p in paths) for name, paths in by_split.items() if paths is not chosen}
        split = _canonical_split(split)
    else:  # explicit files: all their rows, whatever the split
        chosen, counts = files, {}
        split = _canonical_split(split)
    reader = _ParquetReader(chosen, root)
    kind = f"parquet ({len(chosen)} file{'s' * (len(chosen) != 1)}, {len(reader.units)} row groups)"
    return _TableDataset(reader, kind=kind, source=source, split=split, splits=counts, columns=columns, shuffle_window=shuffle_window)


def _arrow_files_of(folder: Path) -> list[Path]:
    state = folder / "state.json"
    try:
        names = [entry["filename"] for entry in json.loads(state.read_text(encoding="utf-8"))["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{state} is not a datasets save_to_disk state file ({_one_line(e)}); re-save the dataset") from e
    return [folder / name for name in names]


def _arrow_dataset(folders: dict[str, Path], root: Path, source: str, split: str, columns, shuffle_window):
    chosen = _pick_split(folders, split, source)
    paths = _arrow_files_of(chosen)
    reader = _BatchReader([(str(path.relative_to(root)), path.parent, path) for path in paths])
    counts = {}
    for name, folder in folders.items():
        if folder is not chosen:
            counts[name] = sum(b.num_rows for p in _arrow_files_of(folder) for b in _read_arrow_batches(p)[1])
    kind = f"datasets save_to_disk folder ({len(paths)} arrow file{'s' * (len(paths) != 1)})"
    return _TableDataset(
        reader, kind=kind, source=source, split=_canonical_split(split), splits=counts, columns=columns, shuffle_window=shuffle_window
    )


def _arrow_rows(paths: list[Path]) -> list[int]:
    return [sum(b.num_rows for b in _read_arrow_batches(path)[1]) for path in paths]


def _is_hidden(relative: PurePath) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def open_dataset(
    source: str | os.PathLike[str],
    *,
    split: str = "train",
    columns: dict[str, str] | None = None,
    streaming: bool | None = None,
    shuffle_window: int = DEFAULT_SHUFFLE_WINDOW,
) -> EditDataset:
    """Open a dataset of edit examples (see the module docstring for what `source` can be).

    `columns` maps our fields (input_image, edited_image, instruction, input_caption, edited_caption)
    to their column names, on top of the preset detected from the column names; a None or "" value
    drops an optional field. `streaming` matters for hub ids only: True or None streams, False
    downloads into the datasets cache first. Local sources are always read one row group at a time.
    `shuffle_window` is how many rows (rounded up to whole row groups) are shuffled together.
    """
    text = os.fspath(source)
    path = Path(text).expanduser()
    if not text.strip():
        raise UserError("the dataset path is empty; give a parquet folder or file, a datasets folder or a hub id")
    if path.exists():
        root = path.resolve()
        if root.is_file():
            if root.name == "seeds.json":
                return _ReferenceDataset(root.parent, split)
            if root.suffix == ".parquet":
                return _parquet_dataset([root], None, text, split, columns, shuffle_window, named_splits=False)
            if root.suffix == ".arrow":
                reader = _BatchReader([(root.name, root.parent, root)])
                return _TableDataset(
                    reader, kind="arrow file", source=text, split=_canonical_split(split), splits={}, columns=columns,
                    shuffle_window=shuffle_window,
                )
            raise UserError(f"{text} is not a dataset file; give a .parquet or .arrow file, a folder, or a hub id")
        if (root / "seeds.json").is_file():
            return _ReferenceDataset(root, split)
        if (root / "dataset_dict.json").is_file():
            try:
                names = json.loads((root / "dataset_dict.json").read_text(encoding="utf-8"))["splits"]
            except (OSError, ValueError, KeyError) as e:
                raise UserError(f"{root / 'dataset_dict.json'} is damaged ({_one_line(e)}); re-save the dataset") from e
            folders = {_canonical_split(name): root / name for name in names}
            return _arrow_dataset(folders, root, text, split, columns, shuffle_window)
        if (root / "state.json").is_file():
            return _arrow_dataset({"train": root}, root, text, split, columns, shuffle_window)
        files = sorted(p for p in root.rglob("*.parquet") if p.is_file() and not _is_hidden(p.relative_to(root)))
        if files:
            return _parquet_dataset(files, root, text, split, columns, shuffle_window, named_splits=True)
        raise UserError(
            f"no dataset found in {text}: expected parquet files, a datasets save_to_disk folder "
            "(dataset_dict.json / state.json) or the reference format (seeds.json)"
        )
    if any(c in text for c in "*?["):
        files = sorted(Path(p).resolve() for p in glob.glob(os.path.expanduser(text), recursive=True))
        parquet = [p for p in files if p.suffix == ".parquet" and p.is_file()]
        if not parquet:
            raise UserError(f"no parquet files match {text}; check the pattern")
        return _parquet_dataset(parquet, None, text, split, columns, shuffle_window, named_splits=False)
    if isinstance(source, str) and _HUB_ID.match(text) and not text.startswith((".", "~")):
        if streaming is False:
            loaded = _load_hub(text, split, streaming=False)
            if loaded._indices is not None:
                loaded = loaded.flatten_indices()
            files = [Path(entry["filename"]) for entry in loaded.cache_files]
            table = loaded.data.table
            if files and sum(_arrow_rows(files)) == table.num_rows:
                # The split is whole cache files: map them (cheap to hand to DataLoader workers).
                reader = _BatchReader([(f"{text} ({split}) {file.name}", None, file) for file in files])
            else:  # a slice such as train[:10%]
                reader = _BatchReader([(f"{text} ({split})", None, None)], in_memory=(table.schema, table.to_batches()))
            return _TableDataset(
                reader, kind="hub dataset (downloaded)", source=text, split=_canonical_split(split), splits={},
                columns=columns, shuffle_window=shuffle_window,
            )
        return _HubStreamDataset(text, split, columns, shuffle_window)
    raise UserError(f"no such file or folder: {text}; give a parquet folder or file, a datasets folder or a hub id (owner/name)")


def describe_dataset(
    source: str | os.PathLike[str], *, split: str = "train", columns: dict[str, str] | None = None, rows: int = 3
) -> str:
    """Multi-line text for `ip2p dataset info`: format, counts per split, schema and `rows` sample rows."""
    return open_dataset(source, split=split, columns=columns).describe(rows=rows)


def __getattr__(name: str):
    # The writers live in writers.py (which imports EditExample from here); reachable from here too.
    if name in ("write_parquet", "write_reference_folder"):
        from instruct_pix2pix.data import writers

        return getattr(writers, name)
    raise AttributeError(name)
