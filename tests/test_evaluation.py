"""`ip2p evaluate`: the sweep, its files, resuming, baselines and bad input."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from test_cli import assert_one_line_error, run

from instruct_pix2pix.evaluation import sweep as sweep_module
from instruct_pix2pix.evaluation.report import mean_interval
from instruct_pix2pix.evaluation.sweep import EDITOR, SDEDIT_CAPTION, UNCHANGED, Methods, Point, Scorers, run_sweep
from instruct_pix2pix.images import read_metadata

FAST = ["--num-samples", "4", "--steps", "2", "--image-guidance", "1.0,1.5", "--strength", "0.5", "--no-progress"]


def rows_of(folder) -> list[dict]:
    return [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def world_sweep(tmp_path_factory):
    """The small world with the shipped model: 4 held-out edits, 2 steps, two image guidance scales,
    and SDEdit (one strength) on the shipped text-to-image model, which it uses by default."""
    from instruct_pix2pix.cli import main

    folder = tmp_path_factory.mktemp("sweep") / "out"
    assert main(["evaluate", "-o", str(folder), *FAST]) == 0
    return folder


def test_world_sweep_writes_table_plot_and_contact_sheet(world_sweep):
    rows = rows_of(world_sweep)
    assert [(r["method"], r["image_guidance"] or r["strength"]) for r in rows] == [
        (EDITOR, 1.0), (EDITOR, 1.5), ("sdedit-caption", 0.5), ("sdedit-instruction", 0.5), (UNCHANGED, None)
    ]  # fmt: skip
    assert all(r["baseline_model"].endswith("text_to_image") for r in rows)
    for row in rows:
        assert row["count"] == 4 and row["steps"] == 2 and row["seed"] == 0 and row["scheduler"] == "euler_ancestral"
        assert {"clip_image_ci95", "clip_direction_ci95", "target_l1", "success", "read_right"} <= set(row)
    unchanged = rows[-1]
    assert unchanged["clip_image"] == pytest.approx(1.0, abs=1e-6) and unchanged["clip_direction"] == 0
    assert unchanged["success"] == 0 and unchanged["read_right"] == 0  # every edit changes the scene
    with open(world_sweep / "results.csv", newline="") as stream:
        table = list(csv.DictReader(stream))
    assert len(table) == 5 and float(table[0]["clip_image"]) == pytest.approx(rows[0]["clip_image"])
    assert Image.open(world_sweep / "plot.png").size[0] > 500
    assert (world_sweep / "plot.svg").read_text().lstrip().startswith("<?xml")
    sheet = Image.open(world_sweep / "examples.png")
    assert sheet.height > 4 * 128  # inputs, targets, one row per edited point
    assert "evaluate" in read_metadata(world_sweep / "examples.png")["ip2p-command"]


def test_the_ground_truth_scores_the_right_answer_as_right(tmp_path):
    """A method that returns the exact targets is right on every edit, and its CLIP direction is the
    one the metrics module computes for the targets."""
    from instruct_pix2pix.evaluation.examples import world_examples
    from instruct_pix2pix.metrics import ClipScorer

    examples = world_examples(6)

    class Oracle(Methods):
        def __init__(self):
            self.batch_size = 4

        def prepare(self, image):
            return image

        def __call__(self, point, chunk, inputs):
            return [e.target for e in chunk]

    scorer = ClipScorer.from_pretrained()
    done = run_sweep(tmp_path, examples, [Point(EDITOR, 7.5, image_guidance=1.5)], Oracle(), Scorers(scorer),
                     record={}, progress=False)  # fmt: skip
    values = done[Point(EDITOR, 7.5, image_guidance=1.5)]["values"]
    assert values["success"] == [1.0] * 6 and values["read_right"] == [1.0] * 6
    assert values["target_l1"] == [0.0] * 6
    captions = [e.input_caption for e in examples], [e.edited_caption for e in examples]
    expected = scorer.edit_similarities([e.input_image for e in examples], [e.target for e in examples], *captions)
    np.testing.assert_allclose(values["clip_direction"], expected["clip_direction"], atol=1e-6)


def test_editor_points_are_the_edits_made_alone(tiny_model_dir):
    """Batched across examples, each edit is the one `Editor.edit` makes of that example alone (seed 0)."""
    from instruct_pix2pix import Editor
    from instruct_pix2pix.evaluation.examples import world_examples

    editor = Editor.from_pretrained(tiny_model_dir, device="cpu")
    examples = world_examples(3)
    methods = Methods(editor, sweep_module.SETTINGS.replace(num_inference_steps=3), batch_size=3)
    point = Point(EDITOR, 7.5, image_guidance=1.4)
    batched = methods(point, examples, [methods.prepare(e.input_image) for e in examples])
    for example, output in zip(examples, batched):
        alone = editor.edit(example.input_image, example.instruction, num_inference_steps=3, guidance_scale=7.5,
                            image_guidance_scale=1.4, seed=0, show_progress=False).images[0]  # fmt: skip
        difference = np.abs(np.asarray(alone, dtype=int) - np.asarray(output, dtype=int))
        assert difference.max() <= 2


def test_sdedit_is_diffusers_img2img_with_the_same_seed(text_to_image_model_dir, tiny_model_dir):
    from diffusers import StableDiffusionImg2ImgPipeline

    from instruct_pix2pix import Editor
    from instruct_pix2pix.evaluation.examples import world_examples
    from instruct_pix2pix.loading import TEXT_TO_IMAGE, load_model
    from instruct_pix2pix.settings import make_scheduler

    baseline = load_model(text_to_image_model_dir, kind=TEXT_TO_IMAGE)
    settings = sweep_module.SETTINGS.replace(num_inference_steps=10)
    methods = Methods(Editor.from_pretrained(tiny_model_dir, device="cpu"), settings, baseline=baseline, batch_size=3)
    examples = world_examples(3)
    inputs = [methods.prepare(e.input_image) for e in examples]
    ours = methods(Point(SDEDIT_CAPTION, 7.5, strength=0.6), examples, inputs)
    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(text_to_image_model_dir, safety_checker=None,
                                                          requires_safety_checker=False)  # fmt: skip
    pipe.scheduler = make_scheduler("euler_ancestral", pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    for example, image, output in zip(examples, inputs, ours):
        theirs = pipe(example.edited_caption, image=image, strength=0.6, guidance_scale=7.5, num_inference_steps=10,
                      generator=torch.Generator("cpu").manual_seed(0)).images[0]  # fmt: skip
        assert np.abs(np.asarray(theirs, dtype=int) - np.asarray(output, dtype=int)).max() <= 2
        assert np.abs(np.asarray(image, dtype=int) - np.asarray(output, dtype=int)).max() > 10  # it did something


def test_a_killed_sweep_goes_on_where_it_stopped(capsys, tmp_path, monkeypatch, world_sweep):
    """Killed after its first point, the sweep keeps it; run again, it makes only the others, and the
    results are those of the sweep never interrupted."""
    folder = tmp_path / "out"
    saved = sweep_module.save_point

    def save_then_die(*args, **kwargs):
        saved(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(sweep_module, "save_point", save_then_die)
    code, _, err = run(capsys, "evaluate", "-o", folder, *FAST)
    assert code == 130 and "interrupted" in err
    assert sorted(p.name for p in (folder / "points").glob("*.json")) == ["instruct-pix2pix_text-7.5_image-1.json"]
    assert not (folder / "results.jsonl").exists()

    monkeypatch.setattr(sweep_module, "save_point", saved)
    made = []
    call = Methods.__call__
    monkeypatch.setattr(Methods, "__call__", lambda self, point, *a: made.append(point.name) or call(self, point, *a))
    code, out, _ = run(capsys, "evaluate", "-o", folder, *FAST)
    assert code == 0, out
    assert sorted(set(made)) == [
        "instruct-pix2pix_text-7.5_image-1.5", "sdedit-caption_text-7.5_strength-0.5",
        "sdedit-instruction_text-7.5_strength-0.5", "unchanged",
    ]  # fmt: skip
    assert rows_of(folder) == rows_of(world_sweep)


def test_other_settings_are_refused_and_overwrite_starts_again(capsys, tmp_path):
    folder = tmp_path / "out"
    args = ["evaluate", "-o", folder, "--num-samples", "2", "--steps", "1", "--image-guidance", "1.5",
            "--strength", "1", "--no-progress"]  # fmt: skip
    assert run(capsys, *args)[0] == 0
    code, _, err = run(capsys, *args, "--seed", "1")
    assert_one_line_error(code, err, "other settings", "seed", "--overwrite")
    code, _, _ = run(capsys, *args, "--seed", "1", "--overwrite")
    assert code == 0 and rows_of(folder)[0]["seed"] == 1


def test_compile_runs_the_editor_and_the_baseline_compiled(capsys, tmp_path, monkeypatch):
    from instruct_pix2pix.loading.bundle import ModelBundle

    compiled = []
    monkeypatch.setattr(ModelBundle, "compiled", lambda self: compiled.append(self.kind) or self)  # compiling: slow
    args = ["evaluate", "-o", tmp_path / "out", "--num-samples", "2", "--steps", "1", "--image-guidance", "1.5",
            "--strength", "1", "--no-progress"]  # fmt: skip
    assert run(capsys, *args)[0] == 0 and compiled == []
    assert run(capsys, *args, "--compile", "--overwrite")[0] == 0
    assert sorted(compiled) == ["editing", "text-to-image"]


def test_a_reference_folder_test_split_with_tiny_models(capsys, tmp_path, tiny_model_dir, text_to_image_model_dir,
                                                        tiny_clip_dir):  # fmt: skip
    """Any dataset the trainer reads: the reference layout's test split, with MagicBrush's metrics
    against its edited images and SDEdit (both prompts) on a text-to-image model."""
    data = tmp_path / "data"
    assert run(capsys, "world", "generate", "-o", data, "--count", "40", "--format", "reference")[0] == 0
    folder = tmp_path / "out"
    code, out, err = run(capsys, "evaluate", "-o", folder, "--data", data, "--split", "test", "--model",
                         tiny_model_dir, "--baseline-model", text_to_image_model_dir, "--clip", tiny_clip_dir,
                         *FAST, "--strength", "0.5,0.8")  # fmt: skip
    assert code == 0, err
    rows = rows_of(folder)
    assert [r["method"] for r in rows] == [EDITOR] * 2 + ["sdedit-caption"] * 2 + ["sdedit-instruction"] * 2 + [
        UNCHANGED
    ]
    assert all(r["count"] == 2 for r in rows)  # the split holds 2 of the 40; fewer than asked, and said so
    assert "fewer than the 4 asked for" in out
    assert all("target_clip_i" in r and "success" not in r for r in rows)


def empty_parquet(folder):
    folder.mkdir()
    schema = pa.schema([("input_image", pa.binary()), ("edited_image", pa.binary()), ("edit_prompt", pa.string()),
                        ("original_prompt", pa.string()), ("edited_prompt", pa.string())])  # fmt: skip
    pq.write_table(schema.empty_table(), folder / "test-00000-of-00001.parquet")
    return folder


def not_a_clip(folder):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=50)).save_pretrained(folder)
    return folder


@pytest.mark.parametrize(
    "case, words",
    [
        ("not a number", ["--image-guidance", "'x' is not a number"]),
        ("strength out of range", ["--strength", "out of range"]),
        ("unknown split", ["not 'nope'"]),
        ("empty dataset", ["no usable examples"]),
        ("not a clip", ["not a CLIP model"]),
        ("split without data", ["--split goes with --data"]),
        ("SDEdit with no step", ["strength 0.3 with 1 steps", "--steps 4"]),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(capsys, tmp_path, case, words):
    reference = tmp_path / "data"
    if case == "unknown split":
        run(capsys, "world", "generate", "-o", reference, "--count", "20", "--format", "reference")
    extra = {
        "not a number": ["--image-guidance", "1.0,x"],
        "strength out of range": ["--strength", "0.5,1.5"],
        "unknown split": ["--data", reference, "--split", "nope"],
        "empty dataset": ["--data", empty_parquet(tmp_path / "empty")],
        "not a clip": ["--clip", not_a_clip(tmp_path / "gpt2")],
        "split without data": ["--split", "validation"],
        "SDEdit with no step": [],  # the default strengths, 0.3 to 0.9, of 1 step
    }[case]
    folder = tmp_path / "out"
    code, _, err = run(capsys, "evaluate", "-o", folder, "--num-samples", "2", "--steps", "1", "--no-progress", *extra)
    assert_one_line_error(code, err, *words)
    assert not folder.exists()


def test_mean_interval_is_the_normal_95_percent_interval():
    mean, half = mean_interval([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5 and half == pytest.approx(1.959964 * np.std([1, 2, 3, 4], ddof=1) / math.sqrt(4))
    assert mean_interval([0.5]) == (0.5, None)
