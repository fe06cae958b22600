"""Opening a dataset: find out what kind of source a path or id is, pick its split, and open it.

`open_dataset` takes any of:

* parquet: one file, a glob, or a folder of `*.parquet` shards (in `data/` subfolders too, as the hub
  writes them). Images are HF `datasets` `Image()` structs {bytes, path}, plain binary columns of
  encoded image bytes, or strings holding image paths. Split names come from the file names / folders
  (`data/train-00000-of-00002.parquet`, `test/0000.parquet`); with none, everything is `train`.
* a folder written by `datasets.Dataset.save_to_disk` / `DatasetDict.save_to_disk` (arrow files).
* a hub dataset id such as `timbrooks/instructpix2pix-clip-filtered` (needs network; streamed).
* the on-disk format of the original instruct-pix2pix code: `seeds.json` plus one folder per prompt
  with `prompt.json` and `{seed}_0.jpg` / `{seed}_1.jpg`, split 90/5/5 exactly as the reference does.

How the result is iterated is described in `instruct_pix2pix.data.base`.
"""

from __future__ import annotations

import glob
import json
import os
import re
from pathlib import Path, PurePath

from instruct_pix2pix.data.base import _SPLIT_ALIASES, DEFAULT_SHUFFLE_WINDOW, EditDataset, _canonical_split, _one_line
from instruct_pix2pix.data.hub import _downloaded_hub_dataset, _HubStreamDataset
from instruct_pix2pix.data.reference import _ReferenceDataset
from instruct_pix2pix.data.tables import _arrow_rows, _BatchReader, _ParquetReader, _TableDataset
from instruct_pix2pix.errors import UserError

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_HF_SHARD_NAME = re.compile(r"^(?P<split>\w+?)-\d{5}-of-\d{5}")


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
        raise UserError(
            f"{source} has no {split!r} split; its splits are: {listed}; pick one with --split / train_split"
        )
    return by_split[name]


def _is_hidden(relative: PurePath) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def _parquet_dataset(
    files: list[Path], root: Path | None, source: str, split: str, columns, shuffle_window, named_splits: bool
) -> _TableDataset:
    """Parquet files; with `named_splits`, the files of `split` only (see `_split_of`), else all of them."""
    import pyarrow.parquet as pq

    if named_splits:
        by_split: dict[str, list[Path]] = {}
        for path in files:
            by_split.setdefault(_split_of(path.relative_to(root)) or "train", []).append(path)
        chosen = _pick_split(by_split, split, source)
        counts = {
            name: sum(pq.read_metadata(p).num_rows for p in paths)
            for name, paths in by_split.items()
            if paths is not chosen
        }
    else:  # explicit files: all their rows, whatever the split
        chosen, counts = files, {}
    reader = _ParquetReader(chosen, root)
    kind = f"parquet ({len(chosen)} file{'s' * (len(chosen) != 1)}, {len(reader.units)} row groups)"
    return _TableDataset(
        reader, kind=kind, source=source, split=split, columns=columns, shuffle_window=shuffle_window, splits=counts
    )


def _arrow_files_of(folder: Path) -> list[Path]:
    state = folder / "state.json"
    try:
        names = [entry["filename"] for entry in json.loads(state.read_text(encoding="utf-8"))["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(
            f"{state} is not a datasets save_to_disk state file ({_one_line(e)}); re-save the dataset"
        ) from e
    return [folder / name for name in names]


def _arrow_dataset(folders: dict[str, Path], root: Path, source: str, split: str, columns, shuffle_window):
    """A save_to_disk folder per split (`folders`: split -> folder); reads the one of `split`."""
    chosen = _pick_split(folders, split, source)
    paths = _arrow_files_of(chosen)
    reader = _BatchReader([(str(path.relative_to(root)), path.parent, path) for path in paths])
    counts = {
        name: sum(_arrow_rows(_arrow_files_of(folder))) for name, folder in folders.items() if folder is not chosen
    }
    kind = f"datasets save_to_disk folder ({len(paths)} arrow file{'s' * (len(paths) != 1)})"
    return _TableDataset(
        reader, kind=kind, source=source, split=split, columns=columns, shuffle_window=shuffle_window, splits=counts
    )


def _local_dataset(text: str, root: Path, split: str, columns, shuffle_window) -> EditDataset:
    """A dataset file or folder that exists (`root`, resolved; `text` as given)."""
    if root.is_file():
        if root.name == "seeds.json":
            return _ReferenceDataset(root.parent, split)
        if root.suffix == ".parquet":
            return _parquet_dataset([root], None, text, split, columns, shuffle_window, named_splits=False)
        if root.suffix == ".arrow":
            reader = _BatchReader([(root.name, root.parent, root)])
            return _TableDataset(
                reader,
                kind="arrow file",
                source=text,
                split=split,
                columns=columns,
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
        return _local_dataset(text, path.resolve(), split, columns, shuffle_window)
    if any(c in text for c in "*?["):
        files = sorted(Path(p).resolve() for p in glob.glob(os.path.expanduser(text), recursive=True))
        parquet = [p for p in files if p.suffix == ".parquet" and p.is_file()]
        if not parquet:
            raise UserError(f"no parquet files match {text}; check the pattern")
        return _parquet_dataset(parquet, None, text, split, columns, shuffle_window, named_splits=False)
    if isinstance(source, str) and _HUB_ID.match(text) and not text.startswith((".", "~")):
        if streaming is False:
            return _downloaded_hub_dataset(text, split, columns, shuffle_window)
        return _HubStreamDataset(text, split, columns, shuffle_window)
    raise UserError(
        f"no such file or folder: {text}; give a parquet folder or file, a datasets folder or a hub id (owner/name)"
    )


def describe_dataset(
    source: str | os.PathLike[str], *, split: str = "train", columns: dict[str, str] | None = None, rows: int = 3
) -> str:
    """Multi-line text for `ip2p dataset info`: format, counts per split, schema and `rows` sample rows."""
    return open_dataset(source, split=split, columns=columns).describe(rows=rows)
