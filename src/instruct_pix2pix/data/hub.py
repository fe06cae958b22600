"""Hugging Face hub datasets by id: streamed (`_HubStreamDataset`) or downloaded into the datasets cache.

A downloaded split is read as a table (`_TableDataset`) over its memory-mapped cache files; a
streamed one is shuffled by `datasets` itself in a buffer of `shuffle_window` rows.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from PIL import Image

from instruct_pix2pix.data.base import Cells, EditDataset, _one_line
from instruct_pix2pix.data.columns import _resolve_columns
from instruct_pix2pix.data.tables import _arrow_rows, _BatchReader, _TableDataset
from instruct_pix2pix.errors import UserError


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


def _downloaded_hub_dataset(repo_id: str, split: str, columns: dict[str, str] | None, shuffle_window: int):
    """A hub split downloaded into the datasets cache, read as a table."""
    loaded = _load_hub(repo_id, split, streaming=False)
    if loaded._indices is not None:
        loaded = loaded.flatten_indices()
    files = [Path(entry["filename"]) for entry in loaded.cache_files]
    table = loaded.data.table
    if files and sum(_arrow_rows(files)) == table.num_rows:
        # The split is whole cache files: map them (cheap to hand to DataLoader workers).
        reader = _BatchReader([(f"{repo_id} ({split}) {file.name}", None, file) for file in files])
    else:  # a slice such as train[:10%]
        reader = _BatchReader([(f"{repo_id} ({split})", None, None)], in_memory=(table.schema, table.to_batches()))
    return _TableDataset(
        reader,
        kind="hub dataset (downloaded)",
        source=repo_id,
        split=split,
        columns=columns,
        shuffle_window=shuffle_window,
    )


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
                raise UserError(
                    f"cannot read the hub dataset {repo_id} ({_one_line(e)}); check the id and your network"
                ) from e
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

    def _cells(self, key: str, row: dict) -> Cells:
        return key, {field: row[column] for field, column in self.columns.items()}, None

    def _rows(self, seed, epoch, start, rank, world_size):
        stream = self.stream.shuffle(seed=int(seed), buffer_size=self.shuffle_window)
        stream.set_epoch(int(epoch))
        first = rank + world_size * start
        for g, row in enumerate(stream):
            if g < first or (g - rank) % world_size:
                continue  # images stay encoded: skipping costs reading only
            key = f"{self.source} [{self.split}] example {g} of epoch {epoch}"
            yield (g - rank) // world_size, partial(self._cells, key, row)

    def _sample_rows(self, rows):
        return [self._cells(f"example {g}", row) for g, row in enumerate(self.stream.take(rows))]
