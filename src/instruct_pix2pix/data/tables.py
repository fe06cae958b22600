"""Tables of edit examples: parquet files, arrow files (save_to_disk, a hub download) and an in-memory table.

A reader lists the row groups ("units") of its files and reads one at a time; `_TableDataset` puts
them in a seeded order, window by window, and reads only the mapped columns of the rows it yields.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from instruct_pix2pix.data.base import Cells, EditDataset, _canonical_split, _one_line, _rng
from instruct_pix2pix.data.columns import _resolve_columns
from instruct_pix2pix.errors import UserError


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
                raise UserError(
                    f"{path} is not a readable parquet file ({_one_line(e)}); re-download or re-write it"
                ) from e
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


def _arrow_rows(paths: list[Path]) -> list[int]:
    """The number of rows in each arrow file."""
    return [sum(b.num_rows for b in _read_arrow_batches(path)[1]) for path in paths]


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
        columns: dict[str, str] | None,
        shuffle_window: int,
        splits: dict[str, int | None] | None = None,
    ):
        super().__init__()
        self.reader, self.kind, self.source, self.split = reader, kind, source, _canonical_split(split)
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
                raise UserError(
                    f"{name} in {source} has no column {', '.join(absent)} unlike the others; remove or fix it"
                )
        self._read_columns = list(dict.fromkeys(self.columns.values()))
        self.splits = dict(splits or {})
        self.splits[self.split] = sum(rows for _, _, rows in reader.units)
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

    def _cells(self, file_index: int, group_index: int, row_index: int, row: dict[str, Any]) -> Cells:
        """Row `row_index` of a row group, as read."""
        key = f"{self.reader.files[file_index]} row {self.reader.rows_before[(file_index, group_index)] + row_index}"
        values = {field: row[column] for field, column in self.columns.items()}
        return key, values, self.reader.base_dirs[file_index]

    def _rows(self, seed, epoch, start, rank, world_size):
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
                read: dict[tuple[int, int], dict] = {}
                for u in np.unique(unit_of):
                    file_index, group_index, _ = window[u]
                    picked = row_in_unit[unit_of == u]
                    table = self.reader.read(handles, file_index, group_index, self._read_columns).take(picked)
                    for r, row in zip(picked.tolist(), table.to_pylist()):
                        read[(int(u), r)] = row
                    del table
                for g, u, r in zip(wanted.tolist(), unit_of.tolist(), row_in_unit.tolist()):
                    file_index, group_index, _ = window[u]
                    yield (g - rank) // world_size, partial(self._cells, file_index, group_index, r, read.pop((u, r)))
        finally:
            self.reader.close(handles)

    def _sample_rows(self, rows):
        found, handles = [], {}
        try:
            for file_index, group_index, _ in self.reader.units:
                table = self.reader.read(handles, file_index, group_index, self._read_columns)
                table = table.slice(0, rows - len(found))
                found.extend(self._cells(file_index, group_index, r, row) for r, row in enumerate(table.to_pylist()))
                if len(found) >= rows:
                    break
        finally:
            self.reader.close(handles)
        return found
