"""The image stage on tiny components: the CLIP filter, the written dataset, resume and partitions."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image
from test_cli import assert_one_line_error, run

from instruct_pix2pix.data.image_pairs import (
    ClipFilter,
    PairSettings,
    candidates_for,
    finished_folders,
    make_pairs,
    share,
)
from instruct_pix2pix.data.prompt_to_prompt import Candidate, sample_pairs
from instruct_pix2pix.data.sources import open_dataset
from instruct_pix2pix.loading import TEXT_TO_IMAGE, load_model
from instruct_pix2pix.metrics import ClipScorer

EDITS = [
    {"input": "a red circle", "edit": "make it blue", "output": "a blue circle"},
    {"input": "a red square", "edit": "add fireworks", "output": "a red square with fireworks"},
    {"input": "a watercolor painting", "edit": "make it snowy", "output": "a snowy watercolor painting"},
    {"input": "a blue square", "edit": "turn it into a circle", "output": "a blue circle"},
]
SETTINGS = PairSettings(steps=2, candidates=3)
# The tiny CLIP's similarities are small and often negative: thresholds that keep some and drop some.
FILTER = ClipFilter(image=0.9, direction=0.1, caption=-1.0, keep=2)


@pytest.fixture(scope="module")
def t2i(text_to_image_model_dir):
    return load_model(text_to_image_model_dir, kind=TEXT_TO_IMAGE)


@pytest.fixture(scope="module")
def scorer(tiny_clip_dir):
    return ClipScorer.from_pretrained(tiny_clip_dir)


def draw(t2i, scorer, output, **kwargs):
    options = dict(settings=SETTINGS, clip_filter=FILTER, record={"model": "tiny"}, batch_size=4, progress=False)
    return make_pairs(EDITS, output, t2i, scorer, **{**options, **kwargs})


@pytest.fixture(scope="module")
def drawn(t2i, scorer, tmp_path_factory):
    output = tmp_path_factory.mktemp("pairs")
    return output, draw(t2i, scorer, output)


def assert_same_pairs(ours, theirs):
    """The same files, seeds and settings; scores and pixels equal up to the float sums of other
    batch compositions."""
    files = [sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()) for root in (ours, theirs)]
    assert files[0] == files[1]
    for name in files[0]:
        a, b = ours / name, theirs / name
        if name.endswith(".jpg"):
            assert np.abs(np.asarray(Image.open(a), float) - np.asarray(Image.open(b), float)).mean() < 0.5, name
        elif name.endswith(".jsonl"):
            rows = [[json.loads(line) for line in path.read_text().splitlines()] for path in (a, b)]
            assert len(rows[0]) == len(rows[1]), name
            for x, y in zip(*rows):
                assert x == pytest.approx(y, abs=1e-4), name
        elif name != "make-pairs.json":  # the manifests say how many partitions
            assert a.read_bytes() == b.read_bytes(), name


def test_the_filter_keeps_exactly_what_the_thresholds_say():
    rng = np.random.default_rng(0)
    names = ("clip_image", "clip_direction", "clip_input_caption", "clip_output_caption")
    scores = [dict(zip(names, rng.uniform(-0.2, 1.0, 4))) for _ in range(200)]
    chosen = ClipFilter(keep=4).choose(scores)
    passing = [i for i, s in enumerate(scores) if s["clip_image"] >= 0.75 and s["clip_direction"] >= 0.2
               and s["clip_input_caption"] >= 0.2 and s["clip_output_caption"] >= 0.2]  # fmt: skip
    best = sorted(passing, key=lambda i: scores[i]["clip_direction"], reverse=True)[:4]
    assert len(passing) > 4 and chosen == best
    assert ClipFilter(image=2.0).choose(scores) == []


def test_the_folder_holds_the_reference_layout_and_the_trainer_reads_it(drawn):
    output, stats = drawn
    seeds = json.loads((output / "seeds.json").read_text())
    kept = 0
    for index, edit in enumerate(EDITS):
        folder = output / f"{index:07d}"
        assert json.loads((folder / "prompt.json").read_text()) == edit
        every = [json.loads(line) for line in (folder / "candidates.jsonl").read_text().splitlines()]
        lines = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
        assert [c["seed"] for c in every] == [c.seed for c in candidates_for(edit, index, SETTINGS, 0)]
        # The filter's record: exactly the candidates the thresholds pass, the best two by direction.
        ours = {"clip_image": "clip_sim_image", "clip_direction": "clip_sim_dir",
                "clip_input_caption": "clip_sim_0", "clip_output_caption": "clip_sim_1"}  # fmt: skip
        chosen = FILTER.choose([{name: c[key] for name, key in ours.items()} for c in every])
        assert [line["seed"] for line in lines] == [every[i]["seed"] for i in chosen]
        assert [c["kept"] for c in every] == [i in chosen for i in range(len(every))]
        assert sorted(p.name for p in folder.glob("*.jpg")) == sorted(
            f"{s}_{k}.jpg" for s in [x["seed"] for x in lines] for k in (0, 1)
        )
        if lines:
            assert [f"{index:07d}", [x["seed"] for x in lines]] in seeds
        kept += len(lines)
    assert 0 < kept < len(EDITS) * FILTER.keep, "the thresholds should keep some pairs and drop others"
    assert stats["kept"] == kept and stats["written"] == len(EDITS)
    dataset = open_dataset(output, split="train")
    assert len(dataset) == int(0.9 * len(seeds))
    _, example = next(dataset.examples(seed=0, epoch=0))
    assert example.input_image.size == example.edited_image.size


def test_a_kept_pair_is_drawn_again_alone_from_its_metadata(drawn, t2i, scorer):
    output, _ = drawn
    name, seeds = json.loads((output / "seeds.json").read_text())[0]
    prompt = json.loads((output / name / "prompt.json").read_text())
    line = json.loads((output / name / "metadata.jsonl").read_text().splitlines()[0])
    candidate = Candidate(prompt["input"], prompt["output"], line["seed"], line["p2p_threshold"], line["cfg_scale"])
    [(first, second)] = sample_pairs(t2i, [candidate], num_inference_steps=SETTINGS.steps)
    again = scorer.edit_similarities([first], [second], [prompt["input"]], [prompt["output"]])
    assert again["clip_direction"][0] == pytest.approx(line["clip_sim_dir"], abs=1e-4)
    assert again["clip_image"][0] == pytest.approx(line["clip_sim_image"], abs=1e-4)
    for image, k in ((first, 0), (second, 1)):
        saved = np.asarray(Image.open(output / name / f"{seeds[0]}_{k}.jpg"), dtype=float)
        assert np.abs(np.asarray(image, dtype=float) - saved).mean() < 1.0  # JPEG at quality 100, 4:4:4


class Interrupting:
    """A scorer that is interrupted (as by Ctrl-C) at its call number `at`."""

    def __init__(self, scorer, at: int):
        self.scorer, self.at, self.calls = scorer, at, 0

    def edit_similarities(self, *args):
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt
        return self.scorer.edit_similarities(*args)


def test_killed_and_rerun_it_goes_on_with_no_duplicate_and_no_loss(drawn, t2i, scorer, tmp_path):
    reference, _ = drawn
    output = tmp_path / "pairs"
    with pytest.raises(KeyboardInterrupt):
        draw(t2i, Interrupting(scorer, at=3), output)
    done = finished_folders(output)
    assert 0 < len(done) < len(EDITS)
    (output / ".0000003.abc.tmp").mkdir()  # what a SIGKILL leaves in the middle of a folder's write
    stats = draw(t2i, scorer, output)
    assert stats["done_before"] == len(done) and stats["written"] == len(EDITS) - len(done)
    shutil.rmtree(output / ".0000003.abc.tmp")
    assert_same_pairs(output, reference)


def test_partitions_are_disjoint_and_together_complete(drawn, t2i, scorer, tmp_path):
    for count in (1, 2, 3):
        for processes in (1, 2):
            shares = [share(EDITS, count * processes, p, seed=5) for p in range(count * processes)]
            indices = [i for part in shares for i, _ in part]
            assert sorted(indices) == list(range(len(EDITS)))
    reference, _ = drawn
    output = tmp_path / "pairs"
    for part in (1, 0):
        draw(t2i, scorer, output, num_partitions=2, partition_index=part)
    assert_same_pairs(output, reference)


def test_parquet_has_the_released_schema_and_reads_back(drawn, t2i, scorer, tmp_path):
    import pyarrow.parquet as pq

    reference, stats = drawn
    output = tmp_path / "pairs"
    result = draw(t2i, scorer, output, format="parquet")
    shard = output / "train-00000-of-00001.parquet"
    assert result["output"] == str(shard)
    table = pq.read_table(shard)
    assert table.column_names == ["original_prompt", "original_image", "edit_prompt", "edited_prompt", "edited_image"]
    assert table.num_rows == stats["kept"]
    assert len(open_dataset(output, split="train")) == stats["kept"]  # the working folders are hidden


def test_a_folder_made_with_other_settings_is_refused(drawn, t2i, scorer):
    from instruct_pix2pix.errors import UserError

    output, _ = drawn
    with pytest.raises(UserError, match="other settings .*candidates"):
        draw(t2i, scorer, output, settings=PairSettings(steps=2, candidates=4))


def test_cli_errors_are_one_line(capsys, tmp_path, text_to_image_model_dir, tiny_clip_dir):
    edits = tmp_path / "edits.jsonl"
    edits.write_text("".join(json.dumps(e) + "\n" for e in EDITS))
    base = ["data", "make-pairs", edits, "--model", text_to_image_model_dir, "--clip", tiny_clip_dir]
    cases = [
        (["--p-range", "0.9,0.1"], "--p-range"),
        (["--p-range", "0.1,x"], "not a number"),
        (["--partition", "2", "--num-partitions", "2"], "--partition"),
        (["--scheduler", "nope"], "unknown scheduler"),
        (["--self-replace", "2"], "--self-replace"),
    ]
    for extra, words in cases:
        code, _, err = run(capsys, *base, "-o", tmp_path / "out", *extra)
        assert_one_line_error(code, err, words)
    assert not (tmp_path / "out").exists()
    code, _, err = run(capsys, "data", "make-pairs", tmp_path / "missing.jsonl", "-o", tmp_path / "out")
    assert_one_line_error(code, err, "no triples file")


def test_cli_draws_pairs(capsys, tmp_path, text_to_image_model_dir, tiny_clip_dir):
    edits = tmp_path / "edits.jsonl"
    edits.write_text(json.dumps({"caption": "a red circle", "edit": "make it blue", "output": "a blue circle"}))
    args = ["data", "make-pairs", edits, "--model", text_to_image_model_dir, "--clip", tiny_clip_dir, "-o",
            tmp_path / "out", "--steps", "2", "--candidates", "2", "--clip-image-threshold", "0",
            "--clip-direction-threshold", "-1", "--clip-caption-threshold", "-1", "--no-progress"]  # fmt: skip
    code, out, _ = run(capsys, *args)
    assert code == 0 and "2 pairs kept for 1 edits" in out
    code, out, _ = run(capsys, *args)  # a rerun has nothing left to do
    assert code == 0 and "0 edits drawn now, 1 done before" in out


def test_cli_compiles_the_unet_when_asked(capsys, tmp_path, monkeypatch, text_to_image_model_dir, tiny_clip_dir):
    from instruct_pix2pix.loading.bundle import ModelBundle

    compiled = []
    monkeypatch.setattr(ModelBundle, "compiled", lambda self: compiled.append(self.kind) or self)  # compiling: slow
    edits = tmp_path / "edits.jsonl"
    edits.write_text(json.dumps(EDITS[0]))
    args = ["data", "make-pairs", edits, "--model", text_to_image_model_dir, "--clip", tiny_clip_dir, "-o",
            tmp_path / "out", "--steps", "1", "--candidates", "1", "--no-progress", "--compile"]  # fmt: skip
    assert run(capsys, *args)[0] == 0 and compiled == ["text-to-image"]


@pytest.mark.slow
def test_accelerate_processes_take_disjoint_shares(drawn, tmp_path, text_to_image_model_dir, tiny_clip_dir):
    """`accelerate launch` with two CPU processes: each draws its own edits, together all of them,
    the same pairs as one process, and seeds.json lists every folder once."""
    import os
    import subprocess
    import sys

    reference, _ = drawn
    edits = tmp_path / "edits.jsonl"
    edits.write_text("".join(json.dumps(e) + "\n" for e in EDITS))
    output = tmp_path / "pairs"
    accelerate = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                  "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]  # fmt: skip
    command = [*accelerate, "-m", "instruct_pix2pix.cli", "data", "make-pairs", str(edits), "--model",
               str(text_to_image_model_dir), "--clip", str(tiny_clip_dir), "-o", str(output), "--steps", "2",
               "--candidates", "3", "--keep", "2", "--clip-image-threshold", "0.9", "--clip-direction-threshold",
               "0.1", "--clip-caption-threshold", "-1", "--batch-size", "4", "--no-progress"]  # fmt: skip
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}  # DDP over gloo on the CPU
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [line for line in done.stdout.splitlines() if "pairs kept for" in line]
    assert len(lines) == 2 and sum(int(line.split(" for ")[1].split()[0]) for line in lines) == len(EDITS)
    assert sorted(finished_folders(output)) == sorted(finished_folders(reference))
    seeds = json.loads((output / "seeds.json").read_text())
    assert seeds == json.loads((reference / "seeds.json").read_text())
