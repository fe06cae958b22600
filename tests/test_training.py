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
from conftest import scene
from diffusers import StableDiffusionInstructPix2PixPipeline
from PIL import Image

from instruct_pix2pix.data import EditExample, write_reference_folder
from instruct_pix2pix.editing import Editor
from instruct_pix2pix.errors import EditWarning, UserError
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
    examples = [
        EditExample(scene(40, 40, seed), redden(scene(40, 40, seed)), "make it red", "a scene", "a red scene")
        for seed in range(24)
    ]
    write_reference_folder(examples, folder)
    return folder


def settings(dataset, output_dir, **more) -> list[str]:
    values = dict(
        from_scratch=TINY_MODEL,
        train_data=dataset,
        output_dir=output_dir,
        resolution=32,
        max_resize_resolution=40,
        max_train_steps=4,
        train_batch_size=2,
        gradient_accumulation_steps=2,
        checkpointing_steps=2,
        checkpoints_total_limit=1,
        use_ema=True,
        ema_decay=0.99,
        seed=3,
    )
    values.update(more)
    return [f"{key}={value}" for key, value in values.items()]


def losses(output_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (output_dir / "metrics.jsonl").read_text().splitlines()]


def test_tiny_run_writes_metrics_checkpoints_and_a_model_diffusers_loads(tiny_dataset, tmp_path):
    out = tmp_path / "run"
    final = train(
        load_config(None, settings(tiny_dataset, out, lr_scheduler="linear", lr_warmup_steps=1)), show_progress=False
    )
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    # diffusers' linear schedule after one warmup step, stepped once per optimizer step (not per micro-batch)
    assert np.allclose([r["lr"] / 1e-4 for r in records], [1, 2 / 3, 1 / 3, 0])
    assert all(np.isfinite(r["loss"]) and r["samples_per_s"] > 0 for r in records)
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-4"]  # keeps the last 1
    assert not list(out.glob(".*tmp"))
    for part in ("model_index.json", "unet", "unet_non_ema", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (final / part).exists(), part
    # unet/ holds the EMA weights, unet_non_ema/ the trained ones; they differ
    ema = Editor.from_pretrained(final, device="cpu").model.unet.state_dict()
    raw = (
        type(Editor.from_pretrained(final, device="cpu").model.unet)
        .from_pretrained(final / "unet_non_ema")
        .state_dict()
    )
    assert any(not torch.equal(ema[k], raw[k]) for k in ema)

    editor = Editor.from_pretrained(final, device="cpu")
    ours = editor.edit(scene(), "make it red", seed=0, num_inference_steps=4, show_progress=False).edits[0].pixels
    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(
        final, safety_checker=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(
        "make it red",
        image=scene(),
        num_inference_steps=4,
        generator=[torch.Generator().manual_seed(0)],
        output_type="np",
    ).images[0]
    assert np.abs(ours - theirs).max() <= 1e-4


def run_training(args: list[str], **popen) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "instruct_pix2pix.training", str(ROOT / "configs" / "tiny.yaml"), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def test_resume_after_sigkill_gives_the_same_losses(tiny_dataset, tmp_path):
    steps = ["max_train_steps=6", "checkpointing_steps=2", "checkpoints_total_limit=2", "gradient_accumulation_steps=1"]
    whole = tmp_path / "whole"
    done = run_training(settings(tiny_dataset, whole) + steps + ["validation_steps=0"])
    assert done.wait(timeout=600) == 0, done.stderr.read()

    # The interrupted run also saves validation grids (the uninterrupted one does not): they must not
    # move any random stream, so its losses still equal those of the run without them.
    killed = tmp_path / "killed"
    steps_killed = steps + ["validation_steps=4", "validation_prompts=['make it red']", "validation_inference_steps=2"]
    run = run_training(settings(tiny_dataset, killed) + steps_killed)
    metrics = killed / "metrics.jsonl"
    deadline = time.time() + 600
    while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
        time.sleep(0.05)
    run.send_signal(signal.SIGKILL)
    run.wait()
    assert len(losses(killed)) < 6  # it really died mid-way
    resumed = run_training(settings(tiny_dataset, killed) + steps_killed + ["resume_from_checkpoint=latest"])
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()
    assert losses(killed) == losses(whole)
    assert len(losses(whole)) == 6
    assert sorted(p.name for p in (killed / "validation").glob("step-*.png")) == ["step-000004.png", "step-000006.png"]


def test_export_round_trips_through_the_single_file_loader(tiny_dataset, tmp_path):
    from instruct_pix2pix.cli import main
    from instruct_pix2pix.loading import load_model

    final = train(
        load_config(None, settings(tiny_dataset, tmp_path / "run", max_train_steps=1, use_ema=False)),
        show_progress=False,
    )
    checkpoint = tmp_path / "model.safetensors"
    assert main(["export", "--model", str(final), "-o", str(checkpoint)]) == 0
    original = load_model(final)
    loaded = load_model(checkpoint, config=final)
    for name in ("unet", "vae", "text_encoder"):
        a, b = getattr(original, name).state_dict(), getattr(loaded, name).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["nonsense=1"], "unknown setting"),
        (["max_train_steps=zero"], "max_train_steps"),
        (["conditioning_dropout_prob=0.5"], "conditioning_dropout_prob"),
        (["mixed_precision=fp8"], "mixed_precision"),
        (["lr_scheduler=sometimes"], "lr_scheduler"),
        (["learning_rate=-1"], "learning_rate must be a positive number"),
        (["adam_beta2=1.5"], r"adam_beta2 must be in \[0, 1\)"),
        (["snr_gamma=0"], "snr_gamma must be a positive number"),
        (["changed_region_weight=-1"], "changed_region_weight must be a positive number"),
        (["task=text-to-image", "changed_region_weight=4"], "text-to-image has none"),
    ],
)
def test_bad_settings(overrides, message, tmp_path):
    with pytest.raises(UserError, match=message):
        load_config(ROOT / "configs" / "tiny.yaml", [f"output_dir={tmp_path}", *overrides])


def test_shipped_configs_parse():
    paper = load_config(ROOT / "configs" / "instruct-pix2pix-sd15.yaml")
    assert (paper.resolution, paper.learning_rate, paper.train_batch_size, paper.gradient_accumulation_steps) == (
        256,
        1e-4,
        32,
        4,
    )
    assert (paper.ema_decay, paper.conditioning_dropout_prob) == (0.9999, 0.05)
    tiny = load_config(ROOT / "configs" / "tiny.yaml")
    assert tiny.from_scratch == "configs/tiny-model" and (tiny.validation_steps, tiny.validation_prompts) == (
        10,
        ["make it red"],
    )


def test_two_processes_match_one_with_the_same_global_batch(tiny_dataset, tmp_path):
    """Real DDP over gloo on the CPU: each process sees its own half of every global batch."""
    common = ["max_train_steps=3", "gradient_accumulation_steps=1", "use_ema=false", "checkpointing_steps=100"]
    accelerate = Path(sys.executable).parent / "accelerate"
    two = subprocess.run(
        [
            accelerate,
            "launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "-m",
            "instruct_pix2pix.training",
            ROOT / "configs" / "tiny.yaml",
            *settings(tiny_dataset, tmp_path / "two", train_batch_size=2),
            *common,
        ],
        env={**os.environ, "ACCELERATE_USE_CPU": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert two.returncode == 0, two.stderr[-2000:]
    one = run_training(settings(tiny_dataset, tmp_path / "one", train_batch_size=4) + common)
    assert one.wait(timeout=600) == 0, one.stderr.read()
    assert np.allclose(losses(tmp_path / "two"), losses(tmp_path / "one"), rtol=1e-5)
    from diffusers import UNet2DConditionModel

    a = UNet2DConditionModel.from_pretrained(tmp_path / "one" / "model", subfolder="unet").state_dict()
    b = UNet2DConditionModel.from_pretrained(tmp_path / "two" / "model", subfolder="unet").state_dict()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4


def test_validation_grid_is_saved_every_n_steps_and_at_the_end(tiny_dataset, tmp_path):
    out = tmp_path / "run"
    inputs = [tmp_path / "a.png", tmp_path / "b.png"]
    for seed, path in enumerate(inputs):
        scene(48, 40, seed).save(path)
    config = load_config(
        None,
        settings(
            tiny_dataset,
            out,
            max_train_steps=3,
            gradient_accumulation_steps=1,
            validation_steps=2,
            validation_prompts=["make it red", "add fireworks"],
            validation_inference_steps=2,
            validation_images=[str(p) for p in inputs],
        ),
    )
    train(config, show_progress=False)
    assert sorted(p.name for p in (out / "validation").iterdir()) == [
        "step-000002.png",
        "step-000003.png",
    ]  # no temporary files
    grid = Image.open(out / "validation" / "step-000003.png")
    # columns: input, one per prompt; rows: images, enlarged to 128 px, 4 px apart; a label band on top
    assert grid.size == (3 * (128 + 4), 16 + 2 * (128 + 4))
    assert json.loads(grid.text["prompts"]) == ["make it red", "add fireworks"]
    pixels = np.asarray(grid.convert("RGB")).astype(int)
    cells = [
        pixels[16 + row * 132 : 16 + row * 132 + 128, col * 132 : col * 132 + 128]
        for row in range(2)
        for col in range(3)
    ]
    assert all(np.abs(a - b).max() > 0 for i, a in enumerate(cells) for b in cells[i + 1 :])  # six different pictures


def test_cached_latents_give_the_losses_of_an_uncached_run(tiny_dataset, tmp_path, monkeypatch):
    from diffusers import AutoencoderKL

    encoded = []
    encode = AutoencoderKL.encode
    monkeypatch.setattr(
        AutoencoderKL, "encode", lambda self, x, *a, **k: encoded.append(len(x)) or encode(self, x, *a, **k)
    )
    runs = {}
    for cache in (False, True):
        encoded.clear()
        # 21 training examples (the reference split of 24), 4 per step: steps 6-8 are in the second epoch
        out = tmp_path / f"cache-{cache}"
        train(
            load_config(
                None,
                settings(
                    tiny_dataset,
                    out,
                    max_train_steps=8,
                    gradient_accumulation_steps=1,
                    train_batch_size=4,
                    random_flip=False,
                    max_resize_resolution=None,
                    use_ema=False,
                    cache_latents=cache,
                ),
            ),
            show_progress=False,
        )
        runs[cache] = losses(out), sum(encoded)
    # images through the VAE: two per example and step / two per example, once (20 or 21 examples seen)
    assert runs[False][1] == 8 * 4 * 2 and 20 * 2 <= runs[True][1] <= 21 * 2
    assert np.allclose(runs[True][0], runs[False][0], rtol=1e-5, atol=0)


def test_changed_region_weight_reaches_the_loss(tiny_dataset, tmp_path, monkeypatch):
    from instruct_pix2pix.training import objective, trainer

    seen = []
    loss = trainer.training_loss
    monkeypatch.setattr(trainer, "training_loss", lambda *a: seen.append(a[-1]) or loss(*a))
    monkeypatch.setattr(objective, "CHANGED", -1.0)  # the tiny random VAE's latents barely move: count all as changed
    for weight in (None, 4):
        train(load_config(None, settings(tiny_dataset, tmp_path / f"w{weight}", max_train_steps=1,
                                         changed_region_weight=weight)), show_progress=False)  # fmt: skip
    unweighted, weighted = seen[0], seen[-1]
    assert unweighted is None and weighted.shape == (2, 16, 16)  # a micro-batch of 2, 32 px through the 2x VAE
    assert torch.equal(weighted, torch.full((2, 16, 16), 5.0))  # (which positions count: test_objective.py)


def test_cache_needs_augmentation_off(tmp_path):
    with pytest.raises(UserError, match="cache_latents needs augmentation off"):
        load_config(ROOT / "configs" / "tiny.yaml", [f"output_dir={tmp_path}", "cache_latents=true"])  # tiny.yaml flips
    with pytest.raises(UserError, match="cache_latents needs augmentation off"):
        load_config(
            ROOT / "configs" / "tiny.yaml", [f"output_dir={tmp_path}", "cache_latents=true", "random_flip=false"]
        )
    config = load_config(
        ROOT / "configs" / "tiny.yaml", ["cache_latents=true", "random_flip=false", "max_resize_resolution=none"]
    )
    assert config.cache_latents


def test_help_settings_lists_every_setting(capsys):
    import dataclasses

    from instruct_pix2pix.cli import main
    from instruct_pix2pix.training import TrainConfig

    assert main(["train", "--help-settings"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for f in dataclasses.fields(TrainConfig):
        assert any(line.split()[:1] == [f.name] for line in lines), f.name
    row = next(line for line in lines if line.split()[:1] == ["checkpoints_total_limit"])
    assert row.split()[1:5] == ["int", "|", "None", "3"] and row.endswith(
        "keep the newest this many checkpoints (none: keep all)"
    )
    assert "model: start from a text-to-image or editing checkpoint, or from scratch" in lines


def test_training_starts_from_a_text_to_image_single_file(tiny_dataset, tmp_path):
    """A 4-channel (text-to-image) checkpoint in the CompVis layout is read with the editing model's
    configs, and its conv_in is widened to 8 channels: new weights zero, the rest kept."""
    from diffusers import UNet2DConditionModel

    from instruct_pix2pix.loading import save_single_file
    from instruct_pix2pix.training.trainer import build_from_configs, load_parts

    torch.manual_seed(0)
    parts = build_from_configs(TINY_MODEL)
    text_to_image = UNet2DConditionModel.from_config({**parts.unet.config, "in_channels": 4})
    checkpoint = tmp_path / "sd.safetensors"
    save_single_file(text_to_image, parts.vae, parts.text_encoder, checkpoint)
    config = load_config(
        None,
        settings(
            tiny_dataset,
            tmp_path / "run",
            from_scratch=None,
            pretrained_model_name_or_path=checkpoint,
            pretrained_config=TINY_MODEL,
            max_train_steps=1,
            use_ema=False,
        ),
    )
    unet = load_parts(config).unet
    assert unet.config.in_channels == 8
    assert torch.equal(unet.conv_in.weight[:, :4], text_to_image.conv_in.weight) and torch.all(
        unet.conv_in.weight[:, 4:] == 0
    )
    before = text_to_image.state_dict()
    assert all(torch.equal(value, before[key]) for key, value in unet.state_dict().items() if key != "conv_in.weight")
    final = train(config, show_progress=False)
    assert Editor.from_pretrained(final, device="cpu").model.unet.config.in_channels == 8


def test_a_run_never_mixes_its_files_with_another(tiny_dataset, tmp_path):
    out = tmp_path / "run"
    first = settings(tiny_dataset, out, max_train_steps=2, checkpointing_steps=1, use_ema=False)
    train(load_config(None, first), show_progress=False)
    second = settings(tiny_dataset, out, max_train_steps=1, use_ema=False)
    left = sorted(p.name for p in out.glob("checkpoint-*"))
    assert "checkpoint-2" in left
    with pytest.raises(UserError, match="holds another run .*checkpoint-2.*overwrite_output_dir=true"):
        train(load_config(None, second), show_progress=False)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == left  # untouched
    train(load_config(None, second + ["overwrite_output_dir=true"]), show_progress=False)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1"]  # the old run's are gone
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1


def test_resuming_latest_with_no_checkpoint_says_so(tiny_dataset, tmp_path):
    config = load_config(None, settings(tiny_dataset, tmp_path / "run", max_train_steps=1, use_ema=False)
                         + ["resume_from_checkpoint=latest"])  # fmt: skip
    with pytest.warns(EditWarning, match="no checkpoint in .* yet: training starts from step 0"):
        train(config, show_progress=False)
