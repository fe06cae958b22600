"""Input captions for the text stage: read from any common source, deduplicated, split into partitions.

    read_captions("laion.parquet", column="TEXT", url_column="URL") -> [Caption(text, url), ...]
    partition(captions, num_partitions=8, index=3, seed=0)

Sources: a text file (one caption a line), JSONL, CSV, parquet (a file or a folder of them), a folder
saved by `datasets`' `save_to_disk`, or a hub dataset id (`name` or `name:config`, read with the
given split). Without `column`, the first of `input`, `caption`, `TEXT`, `text` that the source has
is taken, and `URL` or `url` for the link. Duplicates are dropped by caption and by URL, as the
reference does, keeping the first.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from instruct_pix2pix.errors import UserError

CAPTION_COLUMNS = ("input", "caption", "TEXT", "text")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(:[\w.-]+)?$")  # name or name:config
URL_COLUMNS = ("URL", "url")


@dataclass(frozen=True)
class Caption:
    text: str
    url: str | None = None


def _table_rows(path: Path, columns: list[str]) -> tuple[list[str], dict[str, list]]:
    """(all column names, the wanted columns' values) of a parquet file or folder."""
    import pyarrow.parquet as pq

    files = sorted(path.rglob("*.parquet")) if path.is_dir() else [path]
    if not files:
        raise UserError(f"{path} holds no parquet files")
    names = pq.read_schema(files[0]).names
    values: dict[str, list] = {c: [] for c in columns if c in names}
    for file in files:
        table = pq.read_table(file, columns=list(values))
        for column in values:
            values[column] += table.column(column).to_pylist()
    return names, values


def _dataset_rows(source: str, split: str, columns: list[str]) -> tuple[list[str], dict[str, list]]:
    import datasets

    try:
        if Path(source).is_dir():
            data = datasets.load_from_disk(source)
        else:
            name, _, config = source.partition(":")
            data = datasets.load_dataset(name, config or None, split=split)
    except (FileNotFoundError, ValueError, ConnectionError, OSError) as error:
        raise UserError(f"cannot open the dataset {source}: {str(error).splitlines()[0]}") from None
    if isinstance(data, datasets.DatasetDict):
        if split not in data:
            raise UserError(f"{source} has no split {split!r}; its splits are: {', '.join(data)}")
        data = data[split]
    names = list(data.column_names)
    return names, {c: data[c] for c in columns if c in names}


def _records(path: Path) -> list[dict]:
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8-sig") as stream:  # a byte-order mark is not part of a name
            return list(csv.DictReader(stream))
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
        if line.strip():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise UserError(f"{path}, line {number}: not JSON; a .jsonl file holds one object a line") from None
            if not isinstance(record, dict):
                raise UserError(f"{path}, line {number}: not a JSON object")
            records.append(record)
    return records


def _pick(names: list[str], wanted: str | None, defaults: tuple[str, ...], source, what: str) -> str | None:
    if wanted is not None:
        if wanted not in names:
            raise UserError(f"{source} has no column {wanted!r}; its columns are: {', '.join(names)}")
        return wanted
    found = next((name for name in defaults if name in names), None)
    if found is None and what == "caption":
        raise UserError(
            f"{source}: which column holds the captions? Its columns are: {', '.join(names)}; name one with --column"
        )
    return found


def read_captions(
    source: str | Path, *, column: str | None = None, url_column: str | None = None, split: str = "train"
) -> list[Caption]:
    """Every distinct caption of `source`, in its order (empty ones and duplicates dropped)."""
    import pyarrow as pa

    try:
        rows = _read_rows(source, column, url_column, split)
    except UnicodeDecodeError:
        raise UserError(f"{source} is not UTF-8 text; convert it (e.g. iconv -t utf-8) and try again") from None
    except (pa.ArrowException, OSError) as error:
        raise UserError(f"cannot read {source}: {str(error).splitlines()[0]}") from None
    unique, texts_seen, urls_seen = [], set(), set()
    for row in rows:
        if row.text and row.text not in texts_seen and (row.url is None or row.url not in urls_seen):
            unique.append(row)
            texts_seen.add(row.text)
            if row.url is not None:
                urls_seen.add(row.url)
    if not unique:
        raise UserError(f"{source} holds no captions")
    return unique


def _read_rows(source, column, url_column, split) -> list[Caption]:
    path = Path(source)
    suffix = path.suffix.lower()
    if path.is_file() and suffix in ("", ".txt"):
        if column is not None:
            raise UserError(f"{path} is a text file (one caption a line): it has no columns; drop --column")
        rows = [Caption(line.strip()) for line in path.read_text(encoding="utf-8-sig").splitlines()]
    else:
        if path.is_file() and suffix in (".jsonl", ".json", ".csv"):
            records = _records(path)
            names = list(dict.fromkeys(key for record in records for key in record))
            values = {name: [record.get(name) for record in records] for name in names}
        elif path.is_file() and suffix == ".parquet" or path.is_dir() and any(path.rglob("*.parquet")):
            names, values = _table_rows(path, [*filter(None, (column, url_column)), *CAPTION_COLUMNS, *URL_COLUMNS])
        elif path.is_dir() or (not path.exists() and _HUB_ID.match(str(source)) and not suffix):
            names, values = _dataset_rows(
                str(source), split, [*filter(None, (column, url_column)), *CAPTION_COLUMNS, *URL_COLUMNS]
            )
        elif not path.exists():
            raise UserError(f"no captions file {path}; give a .txt, .jsonl, .csv or .parquet file, or a dataset")
        else:
            raise UserError(f"{path}: unknown kind of file; give a .txt, .jsonl, .csv or .parquet file, or a dataset")
        caption_column = _pick(names, column, CAPTION_COLUMNS, source, "caption")
        link_column = _pick(names, url_column, URL_COLUMNS, source, "url")
        texts = values[caption_column]
        urls = values[link_column] if link_column else [None] * len(texts)
        rows = [
            Caption("" if t is None else str(t).strip(), None if u is None or not str(u).strip() else str(u).strip())
            for t, u in zip(texts, urls)
        ]
    return rows


def partition(captions: list, num_partitions: int = 1, index: int = 0, seed: int = 0) -> list:
    """Partition `index` of `num_partitions`: the captions in a seeded random order, cut into nearly equal
    contiguous parts (disjoint, and together all of them), as the reference splits its work."""
    if not (isinstance(num_partitions, int) and num_partitions >= 1 and isinstance(index, int)):
        raise UserError("--num-partitions must be a whole number >= 1")
    if not 0 <= index < num_partitions:
        raise UserError(f"--partition must be between 0 and {num_partitions - 1}, not {index}")
    order = np.random.default_rng(seed).permutation(len(captions))
    part = np.array_split(order, num_partitions)[index]
    return [captions[i] for i in part]
