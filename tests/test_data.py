"""Training data: formats, column mapping, the reference split, deterministic / sharded / resumable order."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from instruct_pix2pix.data import (
    COLUMN_PRESETS,
    EditExample,
    base,
    describe_dataset,
    open_dataset,
    reference_split_range,
    sources,
    write_parquet,
    write_reference_folder,
)
from instruct_pix2pix.errors import UserError

IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def colour(i: int, salt: int) -> tuple[int, int, int]:
    return (i * 37 + salt) % 256, (i * 11 + 3 * salt) % 256, (i * 5 + 7 * salt) % 256


def make_example(i: int, size: int = 16) -> EditExample:
    return EditExample(
        input_image=Image.new("RGB", (size, size), colour(i, 0)),
        edited_image=Image.new("RGB", (size, size + 2), colour(i, 1)),
        instruction=f"make it {i}",
        input_caption=f"photo {i}",
        edited_caption=f"edited photo {i}",
    )


def make_examples(n: int) -> list[EditExample]:
    return [make_example(i) for i in range(n)]


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def names(pairs) -> list[str]:
    return [example.instruction for _, example in pairs]


def same_pixels(a: Image.Image, b: Image.Image, tolerance: int = 0) -> bool:
    if a.size != b.size:
        return False
    difference = np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int))
    return int(difference.max()) <= tolerance


# --- sources of each kind, for the tests of order, sharding and resume -----------------------------


def parquet_source(tmp_path, n):
    examples = make_examples(n)
    # Uneven shards and row groups, in HF's layout.
    write_parquet(examples[: n // 3], tmp_path / "data" / "train-00000-of-00002.parquet", rows_per_group=3)
    write_parquet(examples[n // 3 :], tmp_path / "data" / "train-00001-of-00002.parquet", rows_per_group=4)
    return open_dataset(tmp_path, shuffle_window=7)


def arrow_source(tmp_path, n):
    import datasets

    features = datasets.Features(
        {"input_image": datasets.Image(), "edited_image": datasets.Image(), "edit_prompt": datasets.Value("string")}
    )
    examples = make_examples(n)
    table = {
        "input_image": [e.input_image for e in examples],
        "edited_image": [e.edited_image for e in examples],
        "edit_prompt": [e.instruction for e in examples],
    }
    # Several arrow files: several units to shuffle.
    datasets.Dataset.from_dict(table, features=features).save_to_disk(str(tmp_path / "saved"), num_shards=4)
    return open_dataset(tmp_path / "saved", shuffle_window=5)


def reference_source(tmp_path, n):
    groups = [[make_example(i), make_example(i + 1000)] if i % 2 else make_example(i) for i in range(n)]
    write_reference_folder(groups, tmp_path / "ref")
    return open_dataset(tmp_path / "ref")  # the train split: 90% of the folders


@pytest.fixture
def local_hub(monkeypatch, tmp_path):
    """`datasets.load_dataset(id, streaming=True)` answered by a streamed local parquet file."""
    import datasets

    real_load = datasets.load_dataset
    served = {}

    def fake_load(repo_id, split=None, streaming=False, **kwargs):
        if repo_id not in served:
            raise ConnectionError(f"Couldn't reach '{repo_id}' on the Hub (offline)")
        cache = {} if streaming else {"cache_dir": str(tmp_path / "hf-cache")}
        return real_load("parquet", data_files=str(served[repo_id]), split=split, streaming=streaming, **cache)

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    # datasets sleeps 5 s after each streamed parquet epoch (an arrow threading workaround).
    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0)
    return served


def hub_source(tmp_path, n, served):
    write_parquet(make_examples(n), tmp_path / "hub.parquet", rows_per_group=4)
    served["someone/edits"] = tmp_path / "hub.parquet"
    return open_dataset("someone/edits", shuffle_window=6)


KINDS = ["parquet", "arrow", "reference", "hub"]


@pytest.fixture
def source_of(tmp_path, request):
    def build(kind, n=23):
        if kind == "hub":
            return hub_source(tmp_path, n, request.getfixturevalue("local_hub"))
        return {"parquet": parquet_source, "arrow": arrow_source, "reference": reference_source}[kind](tmp_path, n)

    return build


# --- formats ---------------------------------------------------------------------------------------


def test_parquet_round_trip(tmp_path):
    examples = make_examples(10)
    assert write_parquet(examples, tmp_path / "one.parquet", rows_per_group=3) == 10
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # the temporary file is gone
    assert pq.ParquetFile(tmp_path / "one.parquet").metadata.num_row_groups == 4
    dataset = open_dataset(tmp_path / "one.parquet")
    assert len(dataset) == 10
    assert dataset.preset == "instructpix2pix" and dataset.columns == COLUMN_PRESETS["instructpix2pix"]
    got = {example.instruction: example for _, example in dataset.examples(seed=0, epoch=0)}
    assert len(got) == 10
    for original in examples:
        example = got[original.instruction]
        assert example.input_image.mode == example.edited_image.mode == "RGB"
        assert same_pixels(example.input_image, original.input_image)
        assert same_pixels(example.edited_image, original.edited_image)
        assert (example.input_caption, example.edited_caption) == (original.input_caption, original.edited_caption)
        assert example.key.endswith(f"one.parquet row {examples.index(original)}")


def test_written_parquet_is_the_datasets_image_schema(tmp_path):
    import datasets

    write_parquet(make_examples(3), tmp_path / "x.parquet", image_format="jpeg")
    loaded = datasets.Dataset.from_parquet(str(tmp_path / "x.parquet"), cache_dir=str(tmp_path / "cache"))
    columns = ["original_prompt", "original_image", "edit_prompt", "edited_prompt", "edited_image"]
    assert list(loaded.features) == columns
    assert isinstance(loaded.features["original_image"], datasets.Image)
    row = loaded[2]
    assert row["edit_prompt"] == "make it 2" and row["original_prompt"] == "photo 2"
    assert same_pixels(row["edited_image"].convert("RGB"), make_example(2).edited_image, tolerance=8)


def test_write_parquet_leaves_nothing_when_interrupted(tmp_path):
    def broken():
        yield make_example(0)
        raise RuntimeError("generator died")

    with pytest.raises(RuntimeError):
        write_parquet(broken(), tmp_path / "x.parquet", rows_per_group=1)
    assert list(tmp_path.iterdir()) == []


def test_sharded_folder_named_splits(tmp_path):
    write_parquet(make_examples(6), tmp_path / "data" / "train-00000-of-00002.parquet", rows_per_group=4)
    write_parquet(make_examples(4), tmp_path / "data" / "train-00001-of-00002.parquet", rows_per_group=4)
    write_parquet(make_examples(3), tmp_path / "data" / "test-00000-of-00001.parquet")
    write_parquet(make_examples(9), tmp_path / ".cache" / "train-00000-of-00001.parquet")  # hidden: not data
    train = open_dataset(tmp_path)
    assert len(train) == 10 and train.splits == {"train": 10, "test": 3}
    assert len(open_dataset(tmp_path, split="test")) == 3
    with pytest.raises(UserError, match="no 'validation' split; its splits are: .*train.*test|test.*train"):
        open_dataset(tmp_path, split="validation")


def test_folder_without_split_names_is_all_train(tmp_path):
    write_parquet(make_examples(5), tmp_path / "part-a.parquet")
    write_parquet(make_examples(2), tmp_path / "more" / "part-b.parquet")
    assert len(open_dataset(tmp_path)) == 7
    with pytest.raises(UserError, match="its splits are: train"):
        open_dataset(tmp_path, split="test")
    # A glob or a single file: all of its rows.
    assert len(open_dataset(str(tmp_path / "**" / "*.parquet"))) == 7
    assert len(open_dataset(tmp_path / "more" / "part-b.parquet", split="test")) == 2


def test_split_names_from_paths():
    split_of = sources._split_of
    from pathlib import PurePath

    assert split_of(PurePath("data/train-00000-of-00262-abcdef.parquet")) == "train"
    assert split_of(PurePath("data/validation-00000-of-00001.parquet")) == "validation"
    assert split_of(PurePath("data/holdout_v2-00000-of-00001.parquet")) == "holdout_v2"  # any name, HF's shard pattern
    assert split_of(PurePath("default/test/0000.parquet")) == "test"
    assert split_of(PurePath("default/partial-train/0000.parquet")) == "train"
    assert split_of(PurePath("val.parquet")) == "validation"
    assert split_of(PurePath("shards/part-0001.parquet")) is None
    assert split_of(PurePath("contest.parquet")) is None


def test_save_to_disk_dataset_and_dict(tmp_path):
    import datasets

    examples = make_examples(6)
    features = datasets.Features(
        {"input_image": datasets.Image(), "edited_image": datasets.Image(), "edit_prompt": datasets.Value("string")}
    )

    def build(part):
        return datasets.Dataset.from_dict(
            {
                "input_image": [e.input_image for e in part],
                "edited_image": [e.edited_image for e in part],
                "edit_prompt": [e.instruction for e in part],
            },
            features=features,
        )

    build(examples).save_to_disk(str(tmp_path / "single"))
    single = open_dataset(tmp_path / "single")
    assert single.preset == "diffusers-example" and len(single) == 6
    got = {e.instruction: e for _, e in single.examples(seed=3, epoch=0)}
    assert same_pixels(got["make it 4"].edited_image, examples[4].edited_image)
    assert got["make it 4"].input_caption is None

    datasets.DatasetDict(train=build(examples[:4]), validation=build(examples[4:])).save_to_disk(str(tmp_path / "dict"))
    validation = open_dataset(tmp_path / "dict", split="val")
    assert len(validation) == 2 and validation.splits == {"train": 4, "validation": 2}
    assert sorted(names(validation.examples(seed=0, epoch=0))) == ["make it 4", "make it 5"]
    with pytest.raises(UserError, match="no 'test' split"):
        open_dataset(tmp_path / "dict", split="test")


def test_binary_columns_explicit_mapping_and_missing_columns(tmp_path):
    examples = make_examples(5)
    table = pa.table(
        {
            "before": pa.array([png(e.input_image) for e in examples], pa.binary()),
            "after": pa.array([png(e.edited_image) for e in examples], pa.large_binary()),
            "text": [e.instruction for e in examples],
            "score": pa.array([0.5] * 5),
        }
    )
    pq.write_table(table, tmp_path / "custom.parquet", row_group_size=2)
    with pytest.raises(UserError) as caught:
        open_dataset(tmp_path / "custom.parquet")
    message = str(caught.value)
    assert "\n" not in message
    for expected in ("input_image", "instruction", "before, after, text, score", "columns="):
        assert expected in message
    mapping = {"input_image": "before", "edited_image": "after", "instruction": "text"}
    dataset = open_dataset(tmp_path / "custom.parquet", columns=mapping)
    assert dataset.columns == mapping and dataset.preset is None
    got = {e.instruction: e for _, e in dataset.examples(seed=0, epoch=0)}
    assert len(got) == 5 and same_pixels(got["make it 2"].input_image, examples[2].input_image)
    with pytest.raises(UserError, match="no such column; its columns are: before, after, text, score"):
        open_dataset(tmp_path / "custom.parquet", columns={**mapping, "input_caption": "caption"})
    with pytest.raises(UserError, match="not text"):
        open_dataset(tmp_path / "custom.parquet", columns={**mapping, "instruction": "score"})
    with pytest.raises(UserError, match="unknown field 'prompt'"):
        open_dataset(tmp_path / "custom.parquet", columns={**mapping, "prompt": "text"})


def test_preset_detection_and_override(tmp_path):
    write_parquet(make_examples(2), tmp_path / "a.parquet")
    # The released schema, with one column renamed: no preset matches until it is mapped.
    table = pq.read_table(tmp_path / "a.parquet").rename_columns(
        ["original_prompt", "original_image", "instruction_text", "edited_prompt", "edited_image"]
    )
    pq.write_table(table, tmp_path / "b.parquet")
    with pytest.raises(UserError, match=r"no column for instruction \(looked for edit_prompt\)"):
        open_dataset(tmp_path / "b.parquet")
    dataset = open_dataset(tmp_path / "b.parquet", columns={"instruction": "instruction_text"})
    assert dataset.preset is None  # only some of the preset's columns plus a mapping
    assert dataset.columns["input_caption"] == "original_prompt"
    assert dataset.columns["instruction"] == "instruction_text"
    # An override on top of a detected preset; None drops an optional field.
    dropped = open_dataset(tmp_path / "a.parquet", columns={"edited_caption": None})
    assert "edited_caption" not in dropped.columns
    assert all(e.edited_caption is None and e.input_caption for _, e in dropped.examples(seed=0, epoch=0))


def test_image_path_column(tmp_path):
    (tmp_path / "images").mkdir()
    examples = make_examples(3)
    for i, e in enumerate(examples):
        e.input_image.save(tmp_path / "images" / f"{i}_in.png")
        e.edited_image.save(tmp_path / "images" / f"{i}_out.png")
    table = pa.table(
        {
            "input_image": [f"images/{i}_in.png" for i in range(3)],
            "edited_image": [f"images/{i}_out.png" for i in range(3)],
            "edit_prompt": [e.instruction for e in examples],
        }
    )
    pq.write_table(table, tmp_path / "paths.parquet")
    got = {e.instruction: e for _, e in open_dataset(tmp_path / "paths.parquet").examples(seed=0, epoch=0)}
    assert same_pixels(got["make it 1"].edited_image, examples[1].edited_image)


# --- the reference format ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("count", "expected"),
    [
        (20, {"train": (0, 18), "val": (18, 19), "test": (19, 20)}),
        (101, {"train": (0, 90), "val": (90, 95), "test": (95, 101)}),
    ],
)
def test_reference_split_arithmetic(tmp_path, count, expected):
    for split, bounds in expected.items():
        assert reference_split_range(count, split) == bounds
    assert reference_split_range(count, "validation") == expected["val"]
    # The same on a folder: the count needs seeds.json only.
    (tmp_path / "seeds.json").write_text(json.dumps([[f"{i:07d}", [i]] for i in range(count)]))
    for split, (begin, end) in expected.items():
        dataset = open_dataset(tmp_path, split=split)
        assert len(dataset) == end - begin
        assert [name for name, _ in dataset.entries] == [f"{i:07d}" for i in range(begin, end)]
    with pytest.raises(UserError, match="train, val"):
        open_dataset(tmp_path, split="dev-2")


def test_reference_round_trip_and_seed_choice(tmp_path):
    groups = [[make_example(i), make_example(100 + i), make_example(200 + i)] for i in range(18)]
    groups += [make_example(50), make_example(60)]
    assert write_reference_folder(groups, tmp_path / "ref") == 20
    seeds = json.loads((tmp_path / "ref" / "seeds.json").read_text())
    assert seeds[0] == ["0000000", [0, 1, 2]] and seeds[19] == ["0000019", [55]]
    prompt = json.loads((tmp_path / "ref" / "0000003" / "prompt.json").read_text())
    assert prompt == {"input": "photo 3", "edit": "make it 3", "output": "edited photo 3"}
    assert (tmp_path / "ref" / "0000003" / "10_1.jpg").is_file()

    val = list(open_dataset(tmp_path / "ref", split="validation").examples(seed=0, epoch=0))
    assert [(p, e.key) for p, e in val] == [(0, "0000018/54")]
    assert same_pixels(val[0][1].input_image, make_example(50).input_image, tolerance=6)
    assert val[0][1].input_caption == "photo 50" and val[0][1].edited_caption == "edited photo 50"

    train = open_dataset(tmp_path / "ref")
    assert len(train) == 18
    chosen = [{e.key for _, e in train.examples(seed=0, epoch=epoch)} for epoch in range(4)]
    assert chosen[0] == {e.key for _, e in train.examples(seed=0, epoch=0)}  # deterministic
    # Each prompt folder shows one of its seeds; the pick changes with the epoch.
    assert all(len(keys) == 18 and len({k.split("/")[0] for k in keys}) == 18 for keys in chosen)
    assert len(set.union(*chosen)) > 18 + 10
    # ...and the images follow the seed.
    for _, example in train.examples(seed=0, epoch=1):
        folder, seed = example.key.split("/")
        index = int(folder)
        source = make_example(index + 100 * (int(seed) - 3 * index))
        assert example.instruction == f"make it {index}"
        assert same_pixels(example.edited_image, source.edited_image, tolerance=6)

    with pytest.raises(UserError, match="not an empty folder"):
        write_reference_folder([make_example(0)], tmp_path / "ref")


# --- order, sharding, resume ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_order_is_deterministic_and_changes_with_epoch(source_of, kind):
    dataset = source_of(kind)
    total = len(dataset) if kind != "hub" else 23
    first = list(dataset.examples(seed=5, epoch=0))
    assert [p for p, _ in first] == list(range(total))
    keys = [e.key for _, e in first]
    assert len(set(keys)) == total
    assert keys == [e.key for _, e in dataset.examples(seed=5, epoch=0)]
    other_epoch = [e.instruction for _, e in dataset.examples(seed=5, epoch=1)]
    other_seed = [e.instruction for _, e in dataset.examples(seed=6, epoch=0)]
    assert sorted(other_epoch) == sorted(names(first)) == sorted(other_seed)
    assert other_epoch != names(first) and other_seed != names(first)
    assert names(first) != sorted(names(first), key=lambda n: int(n.split()[-1]))  # shuffled at all


def test_parquet_order_shuffles_row_groups_then_rows_within_windows(tmp_path):
    dataset = parquet_source(tmp_path, 40)  # row groups of 3 and 4 rows, windows of >= 7 rows
    order = [int(e.instruction.split()[-1]) for _, e in dataset.examples(seed=0, epoch=0)]
    files = dataset.reader.files
    first_row = {0: 0, 1: 40 // 3}  # the rows of file 1 follow those of file 0

    def rows_of(unit):
        file_index, group_index, rows = unit
        begin = first_row[file_index] + dataset.reader.rows_before[(file_index, group_index)]
        return set(range(begin, begin + rows))

    windows = dataset._windows(0, 0)
    assert len(files) == 2 and len(windows) > 3
    units_in_order = [unit for window in windows for unit in window]
    assert sorted(units_in_order) == sorted(dataset.reader.units) and units_in_order != dataset.reader.units
    done = 0
    for window in windows:
        size = sum(unit[2] for unit in window)
        assert size >= 7 or window is windows[-1]
        # Each stretch of the order holds exactly its window's row groups...
        assert set(order[done : done + size]) == set().union(*(rows_of(unit) for unit in window))
        done += size
    # ...and the rows inside are permuted, not row group after row group.
    runs = sum(b == a + 1 for a, b in zip(order, order[1:]))
    assert runs < 15


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("world_size", [2, 3])
def test_sharding_is_disjoint_and_complete(source_of, kind, world_size):
    dataset = source_of(kind)
    full = [e.key for _, e in dataset.examples(seed=1, epoch=2)]
    shards = []
    for rank in range(world_size):
        pairs = list(dataset.examples(seed=1, epoch=2, rank=rank, world_size=world_size))
        assert [p for p, _ in pairs] == list(range(len(pairs)))
        shards.append([e.key for _, e in pairs])
        assert shards[-1] == full[rank::world_size]
    assert sum(len(s) for s in shards) == len(full)
    assert sorted(k for s in shards for k in s) == sorted(full)


@pytest.mark.parametrize("kind", KINDS)
def test_resume_gives_the_tail(source_of, kind):
    dataset = source_of(kind)
    for world_size, rank in ((1, 0), (3, 1)):
        full = [(p, e.key) for p, e in dataset.examples(seed=9, epoch=1, rank=rank, world_size=world_size)]
        for start in (0, 1, 2, 5, len(full) - 1, len(full), len(full) + 4):
            pairs = dataset.examples(seed=9, epoch=1, start=start, rank=rank, world_size=world_size)
            resumed = [(p, e.key) for p, e in pairs]
            assert resumed == full[start:], (world_size, rank, start)


def test_resume_skips_without_reading_or_decoding(tmp_path, monkeypatch):
    dataset = parquet_source(tmp_path, 40)
    decoded = []
    real_decode = base._decode_image
    monkeypatch.setattr(base, "_decode_image", lambda *a: decoded.append(1) or real_decode(*a))
    reads = []
    real_read = dataset.reader.read
    monkeypatch.setattr(
        dataset.reader, "read", lambda handles, f, g, c: reads.append((f, g)) or real_read(handles, f, g, c)
    )
    assert len(list(dataset.examples(seed=0, epoch=0))) == 40
    assert sorted(reads) == sorted(unit[:2] for unit in dataset.reader.units) and len(decoded) == 80
    decoded.clear(), reads.clear()
    assert len(list(dataset.examples(seed=0, epoch=0, start=30))) == 10
    assert len(decoded) == 2 * 10  # two images per yielded example, none for the 30 skipped
    # Only row groups of windows that reach past the first 30 examples are read.
    later, done = set(), 0
    for window in dataset._windows(0, 0):
        done += sum(unit[2] for unit in window)
        if done > 30:
            later |= {unit[:2] for unit in window}
    assert reads and set(reads) <= later and len(later) < len(dataset.reader.units)


def test_bad_examples_are_skipped_and_counted(tmp_path, caplog):
    good = [png(Image.new("RGB", (16, 16), colour(i, 0))) for i in range(10)]
    truncated = good[0][: len(good[0]) // 2]
    rows = [
        ("ok 0", good[0], good[1]),
        ("corrupt", b"definitely not an image", good[1]),
        ("ok 1", good[2], good[3]),
        (None, good[4], good[5]),
        ("", good[4], good[5]),
        ("   ", good[4], good[5]),
        ("no image", None, good[5]),
        ("ok 2", good[6], good[7]),
        ("corrupt again", good[1], b"\x89PNG junk"),
        ("cut off", good[1], truncated),
        ("ok 3", good[8], good[9]),
    ]
    table = pa.table(
        {
            "original_image": pa.array(
                [None if a is None else {"bytes": a, "path": None} for _, a, _ in rows], IMAGE_TYPE
            ),
            "edited_image": pa.array([{"bytes": b, "path": None} for _, _, b in rows], IMAGE_TYPE),
            "edit_prompt": pa.array([t for t, _, _ in rows], pa.string()),
        }
    )
    pq.write_table(table, tmp_path / "bad.parquet", row_group_size=3)
    dataset = open_dataset(tmp_path / "bad.parquet", shuffle_window=4)
    assert len(dataset) == 11
    with caplog.at_level(logging.WARNING, logger="instruct_pix2pix.data"):
        pairs = list(dataset.examples(seed=0, epoch=0))
    assert sorted(names(pairs)) == ["ok 0", "ok 1", "ok 2", "ok 3"]
    assert dataset.skipped == {
        "input_image: undecodable": 1,
        "edited_image: undecodable": 2,
        "instruction: missing": 1,
        "instruction: empty": 2,
        "input_image: missing": 1,
    }
    warnings = [r for r in caplog.records if r.name == "instruct_pix2pix.data"]
    assert len(warnings) == 5 and all("skipping" in r.getMessage() for r in warnings)
    # Skipped examples use up their positions, so resuming stays exact.
    positions = [p for p, _ in pairs]
    assert len(set(positions)) == 4 and max(positions) <= 10
    for start in range(12):
        assert [(p, e.key) for p, e in dataset.examples(seed=0, epoch=0, start=start)] == [
            (p, e.key) for p, e in pairs if p >= start
        ]


def test_reference_bad_examples_are_skipped(tmp_path):
    write_reference_folder(make_examples(20), tmp_path / "ref")
    (tmp_path / "ref" / "0000002" / "2_0.jpg").write_bytes(b"garbage")
    (tmp_path / "ref" / "0000005" / "5_1.jpg").unlink()
    (tmp_path / "ref" / "0000007" / "prompt.json").write_text(json.dumps({"input": "a", "edit": "", "output": "b"}))
    (tmp_path / "ref" / "0000009" / "prompt.json").write_text("{not json")
    dataset = open_dataset(tmp_path / "ref")
    pairs = list(dataset.examples(seed=0, epoch=0))
    assert len(pairs) == 14
    assert dataset.skipped == {
        "input_image: unreadable file": 1,
        "edited_image: unreadable file": 1,
        "instruction: empty": 1,
        "prompt.json: unreadable": 1,
    }


def test_reads_one_projected_row_group_at_a_time(tmp_path, monkeypatch):
    examples = make_examples(30)
    write_parquet(examples, tmp_path / "a.parquet", rows_per_group=5)
    table = pq.read_table(tmp_path / "a.parquet")
    table = table.append_column("junk", pa.array([b"x" * 1000] * 30, pa.binary()))
    pq.write_table(table, tmp_path / "b.parquet", row_group_size=5)

    calls = []
    real_read = pq.ParquetFile.read_row_group

    def spy(self, index, columns=None, **kwargs):
        result = real_read(self, index, columns=columns, **kwargs)
        calls.append((index, columns, result.num_rows))
        return result

    def forbidden(*args, **kwargs):
        raise AssertionError("read more than one row group at once")

    monkeypatch.setattr(pq.ParquetFile, "read_row_group", spy)
    for name in ("read", "read_row_groups", "iter_batches"):
        monkeypatch.setattr(pq.ParquetFile, name, forbidden)
    monkeypatch.setattr(pq, "read_table", forbidden)

    dataset = open_dataset(tmp_path / "b.parquet", shuffle_window=10)
    assert len(dataset) == 30 and calls == []  # counted from the footer
    assert len(list(dataset.examples(seed=0, epoch=0))) == 30
    assert len(calls) == 6
    assert all(rows == 5 for _, _, rows in calls)
    assert all(columns is not None and "junk" not in columns for _, columns, _ in calls)
    assert sorted(index for index, _, _ in calls) == list(range(6))


# --- describe, bad sources, the hub -----------------------------------------------------------------


def test_describe_dataset(tmp_path):
    write_parquet(make_examples(12), tmp_path / "data" / "train-00000-of-00001.parquet", rows_per_group=5)
    write_parquet(make_examples(2), tmp_path / "data" / "validation-00000-of-00001.parquet")
    text = describe_dataset(tmp_path, rows=2)
    assert "examples: 12 (split train)" in text and "splits: train 12, validation 2" in text
    assert "parquet (1 file, 3 row groups)" in text and "preset instructpix2pix" in text
    for column in ("original_image", "edited_image", "edit_prompt", "original_prompt", "edited_prompt"):
        assert f"  {column}: " in text and f"<- {column}" in text
    assert "'make it 1'" in text and "'make it 2'" not in text and "16x18" in text

    write_reference_folder(make_examples(20), tmp_path / "ref")
    text = describe_dataset(tmp_path / "ref", split="test", rows=1)
    assert "examples: 1 (split test)" in text and "train 18, val 1, test 1" in text and "'make it 19'" in text
    assert "sample rows" not in describe_dataset(tmp_path / "ref", rows=0)


@pytest.mark.parametrize(
    ("source", "match"),
    [
        ("no/such/folder/data.parquet", "no such file or folder"),
        ("./missing", "no such file or folder"),
        ("", "empty"),
    ],
)
def test_bad_paths(tmp_path, source, match):
    with pytest.raises(UserError, match=match):
        describe_dataset(source)


def test_bad_local_sources(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no dataset found"):
        describe_dataset(tmp_path / "empty")
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(UserError, match="not a dataset file"):
        open_dataset(tmp_path / "notes.txt")
    (tmp_path / "fake.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(UserError, match="not a readable parquet file"):
        open_dataset(tmp_path / "fake.parquet")
    with pytest.raises(UserError, match="no parquet files match"):
        open_dataset(str(tmp_path / "nothing-*.parquet"))


def test_iteration_arguments_are_checked(tmp_path):
    write_parquet(make_examples(2), tmp_path / "a.parquet")
    dataset = open_dataset(tmp_path / "a.parquet")
    for kwargs in ({"rank": 2, "world_size": 2}, {"world_size": 0}, {"start": -1}, {"seed": -3}):
        with pytest.raises(ValueError):
            dataset.examples(**{"seed": 0, "epoch": 0, **kwargs})


def test_hub_id_offline_is_a_user_error(tmp_path):
    code = (
        "from instruct_pix2pix.data import open_dataset\n"
        "from instruct_pix2pix.errors import UserError\n"
        "try:\n"
        "    open_dataset('timbrooks/instructpix2pix-clip-filtered')\n"
        "except UserError as e:\n"
        "    print('USERERROR', e)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("USERERROR "), done.stdout + done.stderr
    assert "timbrooks/instructpix2pix-clip-filtered" in lines[0]


def test_hub_id_errors_are_one_line(local_hub):
    with pytest.raises(UserError) as caught:
        open_dataset("someone/not-there", split="train")
    assert "someone/not-there" in str(caught.value) and "\n" not in str(caught.value)


def test_hub_stream_columns_and_describe(tmp_path, local_hub):
    dataset = hub_source(tmp_path, 5, local_hub)
    assert dataset.columns == COLUMN_PRESETS["instructpix2pix"]
    assert dataset.num_examples is None
    with pytest.raises(TypeError):
        len(dataset)
    text = dataset.describe(rows=1)
    assert "someone/edits" in text and "examples: unknown" in text and "'make it 0'" in text and "16x18" in text


def test_hub_downloaded_reads_the_cache_files(tmp_path, local_hub):
    write_parquet(make_examples(9), tmp_path / "hub.parquet", rows_per_group=2)
    local_hub["someone/edits"] = tmp_path / "hub.parquet"
    dataset = open_dataset("someone/edits", streaming=False, shuffle_window=3)
    assert dataset.kind == "hub dataset (downloaded)" and len(dataset) == 9
    assert all(path is not None for path in dataset.reader.paths)  # memory-mapped cache files, not a copy
    full = [(p, e.key) for p, e in dataset.examples(seed=0, epoch=0)]
    instructions = sorted(e.instruction for _, e in dataset.examples(seed=0, epoch=0))
    assert instructions == sorted(f"make it {i}" for i in range(9))
    assert [(p, e.key) for p, e in dataset.examples(seed=0, epoch=0, start=4)] == full[4:]


def test_arrow_ipc_file_with_several_batches(tmp_path):
    write_parquet(make_examples(7), tmp_path / "a.parquet")
    table = pq.read_table(tmp_path / "a.parquet")
    with pa.ipc.new_file(str(tmp_path / "a.arrow"), table.schema) as writer:
        for batch in table.to_batches(max_chunksize=2):
            writer.write_batch(batch)
    dataset = open_dataset(tmp_path / "a.arrow", shuffle_window=2)
    assert len(dataset) == 7 and len(dataset.reader.units) == 4
    assert sorted(names(dataset.examples(seed=0, epoch=0))) == sorted(f"make it {i}" for i in range(7))


@pytest.mark.parametrize("kind", ["parquet", "arrow", "reference"])
def test_datasets_pickle_for_dataloader_workers(source_of, kind):
    import pickle

    dataset = source_of(kind)
    list(dataset.examples(seed=0, epoch=0, start=len(dataset) - 1))  # some files opened / mapped
    pickled = pickle.dumps(dataset)
    if kind != "reference":  # no image data travels: workers read (or map) the files themselves
        stored = dataset.reader.read({}, *dataset.reader.units[-1][:2], ["edited_image"]).column(0)[0]["bytes"].as_py()
        assert stored not in pickled
    copy = pickle.loads(pickled)
    assert [e.key for _, e in copy.examples(seed=4, epoch=1)] == [e.key for _, e in dataset.examples(seed=4, epoch=1)]
