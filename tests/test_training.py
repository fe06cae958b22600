"""Training end to end on a tiny model: metrics, checkpoints, exact resume after SIGKILL, outputs, export."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionInstructPix2PixPipeline
from PIL import Image

from conftest import scene
from instruct_pix2pix.data import EditExample, write_reference_folder
from instruct_pix2pix.editing import Editor
from instruct_pix2pix.errors import UserError
from instruct_pix2pix.training import load_config, train

ROOT = Path(__file__).resolve().parents[1]
TINY_MODEL = ROOT / "configs" / "tiny-model"


def redden(image: Image.Image) -> Image.Image:
    pixels = np.asarray(image).astype(np.int16)
    pixels[..., 0] = np.minimum(pixels[..., 0] + 80, 255)
    return Image.fromarray(pixels.astype(np.uint8))


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("edits")
    examples = [EditExample(scene(40, 40, seed), redden(scene(40, 40, seed)), "make it red", "a scene", "a red scene")
                for seed in range(24)]
    write_reference_folder(examples, folder)
    return folder


def settings(dataset, output_dir, **more) -> list[str]:
    values = dict(from_scratch=TINY_MODEL, train_data=dataset, output_dir=output_dir, resolution=32,
                  max_resize_resolution=40, max_train_steps=4, train_batch_size=2, gradient_accumulation_steps=2,
                  checkpointing_steps=2, checkpoints_total_limit=1, use_ema=True, ema_decay=0.99, seed=3)
    values.update(more)
    return [f"{key}={value}" for key, value in values.items()]


def losses(output_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (output_dir / "metrics.jsonl").read_text().splitlines()]


def test_tiny_run_writes_metrics_checkpoints_and_a_model_diffusers_loads(tiny_dataset, tmp_path):
    out = tmp_path / "run"
    final = train(load_config(None, settings(tiny_dataset, out)), show_progress=False)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert all(np.isfinite(r["loss"]) and r["samples_per_s"] > 0 for r in records)
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-4"]  # keeps the last 1
    assert not list(out.glob(".*tmp"))
    for part in ("model_index.json", "unet", "unet_non_ema", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (final / part).exists(), part
    # unet/ holds the EMA weights, unet_non_ema/ the trained ones; they differ
    ema = Editor.from_pretrained(final, device="cpu").model.unet.state_dict()
    raw = type(Editor.from_pretrained(final, device="cpu").model.unet).from_pretrained(final / "unet_non_ema").state_dict()
    assert any(not torch.equal(ema[k], raw[k]) for k in ema)

    editor = Editor.from_pretrained(final, device="cpu")
    ours = editor.edit(scene(), "make it red", seed=0, num_inference_steps=4, show_progress=False).edits[0].pixels
    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(final, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe("make it red", image=scene(), num_inference_steps=4, generator=[torch.Generator().manual_seed(0)],
                  output_type="np").images[0]
    assert np.abs(ours - theirs).max() <= 1e-4


def run_training(args: list[str], **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "instruct_pix2pix.training", str(ROOT / "configs" / "tiny.yaml"), *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **popen)


def test_resume_after_sigkill_gives_the_same_losses(tiny_dataset, tmp_path):
    steps = ["max_train_steps=6", "checkpointing_steps=2", "checkpoints_total_limit=2", "gradient_accumulation_steps=1"]
    whole = tmp_path / "whole"
    done = run_training(settings(tiny_dataset, whole) + steps)
    assert done.wait(timeout=600) == 0, done.stderr.read()

    killed = tmp_path / "killed"
    run = run_training(settings(tiny_dataset, killed) + steps)
    metrics = killed / "metrics.jsonl"
    deadline = time.time() + 600
    while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
        time.sleep(0.05)
    run.send_signal(signal.SIGKILL)
    run.wait()
    assert len(losses(killed)) < 6  # it really died mid-way
    resumed = run_training(settings(tiny_dataset, killed) + steps + ["resume_from_checkpoint=latest"])
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()
    assert losses(killed) == losses(whole)
    assert len(losses(whole)) == 6


def test_export_round_trips_through_the_single_file_loader(tiny_dataset, tmp_path):
    from instruct_pix2pix.cli import main
    from instruct_pix2pix.models import load_model

    final = train(load_config(None, settings(tiny_dataset, tmp_path / "run", max_train_steps=1, use_ema=False)), show_progress=False)
    checkpoint = tmp_path / "model.safetensors"
    assert main(["export", str(final), str(checkpoint)]) == 0
    original = load_model(final)
    loaded = load_model(checkpoint, config=final)
    for name in ("unet", "vae", "text_encoder"):
        a, b = getattr(original, name).state_dict(), getattr(loaded, name).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


@pytest.mark.parametrize("overrides, message", [
    (["nonsense=1"], "unknown setting"),
    (["max_train_steps=zero"], "max_train_steps"),
    (["conditioning_dropout_prob=0.5"], "conditioning_dropout_prob"),
    (["mixed_precision=fp8"], "mixed_precision"),
])
def test_bad_settings(overrides, message, tmp_path):
    with pytest.raises(UserError, match=message):
        load_config(ROOT / "configs" / "tiny.yaml", [f"output_dir={tmp_path}", *overrides])


def test_shipped_configs_parse():
    paper = load_config(ROOT / "configs" / "instruct-pix2pix-sd15.yaml")
    assert (paper.resolution, paper.learning_rate, paper.train_batch_size, paper.gradient_accumulation_steps) == (256, 1e-4, 32, 4)
    assert (paper.ema_decay, paper.conditioning_dropout_prob) == (0.9999, 0.05)
    assert load_config(ROOT / "configs" / "tiny.yaml").from_scratch == "configs/tiny-model"


def test_two_processes_match_one_with_the_same_global_batch(tiny_dataset, tmp_path):
    """Real DDP over gloo on the CPU: each process sees its own half of every global batch."""
    common = ["max_train_steps=3", "gradient_accumulation_steps=1", "use_ema=false", "checkpointing_steps=100"]
    accelerate = Path(sys.executable).parent / "accelerate"
    two = subprocess.run(
        [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
         "--dynamo_backend", "no", "-m", "instruct_pix2pix.training", ROOT / "configs" / "tiny.yaml",
         *settings(tiny_dataset, tmp_path / "two", train_batch_size=2), *common],
        env={**os.environ, "ACCELERATE_USE_CPU": "1"}, capture_output=True, text=True, timeout=600,
    )
    assert two.returncode == 0, two.stderr[-2000:]
    one = run_training(settings(tiny_dataset, tmp_path / "one", train_batch_size=4) + common)
    assert one.wait(timeout=600) == 0, one.stderr.read()
    assert np.allclose(losses(tmp_path / "two"), losses(tmp_path / "one"), rtol=1e-5)
    from diffusers import UNet2DConditionModel

    a = UNet2DConditionModel.from_pretrained(tmp_path / "one" / "model", subfolder="unet").state_dict()
    b = UNet2DConditionModel.from_pretrained(tmp_path / "two" / "model", subfolder="unet").state_dict()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4
