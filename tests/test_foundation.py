"""The shared core: one loader, one set of edit settings, one prompt encoder, one atomic writer, one CLI convention."""

from __future__ import annotations

import ast
import os
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import save_tiny_model, tiny_parts
from PIL import Image

from instruct_pix2pix import atomic
from instruct_pix2pix.cli import main
from instruct_pix2pix.editing import Editor
from instruct_pix2pix.errors import UserError
from instruct_pix2pix.images import read_metadata
from instruct_pix2pix.loading import ModelBundle, load_model, save_single_file
from instruct_pix2pix.prompts import encode_prompts
from instruct_pix2pix.settings import EditSettings
from instruct_pix2pix.training.trainer import encode_batch

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "instruct_pix2pix"


# --- one loader ---------------------------------------------------------------------------------


def test_one_loader_for_both_kinds(tiny_model_dir, text_to_image_model_dir, tmp_path):
    assert load_model(tiny_model_dir).kind == "editing"
    assert load_model(text_to_image_model_dir, kind="text-to-image").kind == "text-to-image"
    with pytest.raises(UserError, match="is a text-to-image model, not an editing model"):
        load_model(text_to_image_model_dir)
    with pytest.raises(UserError, match="is an editing model, not a text-to-image model"):
        load_model(tiny_model_dir, kind="text-to-image")
    widened = load_model(text_to_image_model_dir, kind="any", widen=True)
    assert widened.kind == "editing" and widened.unet.conv_in.weight[:, 4:].abs().max() == 0
    # A single file of a text-to-image model goes through the same loader.
    model = load_model(text_to_image_model_dir, kind="text-to-image")
    path = tmp_path / "sd.safetensors"
    save_single_file(
        model.unet,
        model.vae,
        model.text_encoder,
        path,
        tokenizer=model.tokenizer,
        scheduler_config=model.scheduler_config,
    )
    assert load_model(path, kind="text-to-image").unet.config.in_channels == 4
    assert load_model(path, kind="any", widen=True).kind == "editing"


def module_imports(path: Path) -> set[str]:
    """The package modules a module imports at its top level (imports inside functions are lazy)."""
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("instruct_pix2pix"):
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("instruct_pix2pix"))
    return found


def test_no_import_circles():
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    graph = {name: {m for m in module_imports(path) if m in modules and m != name} for name, path in modules.items()}

    def reaches(start, target, seen):
        for nxt in graph[start]:
            if nxt == target or (nxt not in seen and (seen.add(nxt) or reaches(nxt, target, seen))):
                return True
        return False

    # A package's __init__ importing its own modules is not a circle; a module importing its package's
    # __init__, which imports it back, is.
    circles = [name for name in graph if reaches(name, name, set())]
    assert not circles, circles


# --- one set of settings; the stored command remakes the edit -----------------------------------


def remake(capsys, output: Path) -> np.ndarray:
    words = shlex.split(read_metadata(output)["ip2p-command"])
    again = output.with_name("again.png")
    words[words.index("OUT.png")] = str(again)
    assert main(words[1:]) == 0, capsys.readouterr().err
    return np.asarray(Image.open(again))


@pytest.mark.parametrize("source", ["folder", "single file, own configs", "single file, custom config"])
def test_stored_command_remakes_the_edit(capsys, tiny_model_dir, photo, tmp_path, source):
    model = load_model(tiny_model_dir)
    options = []
    if source == "folder":
        options = ["--model", str(tiny_model_dir)]
    elif source == "single file, own configs":  # what `ip2p export` writes: it carries its configs
        path = tmp_path / "model.safetensors"
        assert main(["export", "--model", str(tiny_model_dir), "-o", str(path)]) == 0
        options = ["--model", str(path)]
    else:
        path = tmp_path / "bare.safetensors"  # the bare layout other programs write: configs come from --config
        save_single_file(model.unet, model.vae, model.text_encoder, path)
        config = tmp_path / "config"
        save_tiny_model(config)
        for part in ("unet", "vae", "text_encoder"):
            for weights in (config / part).glob("*.safetensors"):
                weights.unlink()
        options = ["--model", str(path), "--config", str(config)]
    output = tmp_path / "out.png"
    code = main(
        [
            "edit",
            str(photo),
            "make it snowy",
            "-o",
            str(output),
            *options,
            "--steps",
            "3",
            "--text-cfg",
            "5",
            "--image-cfg",
            "1.2",
            "--guidance-rescale",
            "0.5",
            "--scheduler",
            "euler",
            "--resolution",
            "64",
        ]
    )
    assert code == 0, capsys.readouterr().err
    stored = read_metadata(output)["ip2p-command"]
    assert "--text-cfg 5.0" in stored and "--scheduler euler" in stored and "--image-cfg 1.2" in stored
    assert "--guidance-rescale 0.5" in stored
    assert ("--config" in stored) == (source == "single file, custom config")
    assert np.array_equal(remake(capsys, output), np.asarray(Image.open(output)))


def test_cli_options_and_editor_come_from_the_settings():
    import argparse

    parser = argparse.ArgumentParser()
    EditSettings.add_options(parser)  # options left out stay None: the model's own settings apply
    args = parser.parse_args(["--steps", "7", "--keep-size"])
    assert EditSettings.given_in(args) == {"num_inference_steps": 7, "keep_size": True}
    assert EditSettings.from_args(parser.parse_args([])) == EditSettings()  # the same defaults
    settings = EditSettings(num_inference_steps=7, guidance_scale=5.0, guidance_rescale=0.5, scheduler="ddim",
                            negative_prompt="blur")  # fmt: skip
    assert EditSettings.from_args(parser.parse_args(settings.command_words())) == settings  # and back again
    with pytest.raises(TypeError, match="unknown edit setting"):
        EditSettings().replace(steps=3)


# --- one prompt encoder ---------------------------------------------------------------------------


def test_training_and_editing_encode_prompts_alike_with_an_attention_mask(tiny_model_dir):
    from instruct_pix2pix.data import EditExample
    from instruct_pix2pix.training.config import TrainConfig

    model = load_model(tiny_model_dir)
    model.text_encoder.config.use_attention_mask = True  # an encoder that reads the mask (as T5-style ones do)
    prompts = ["make it snowy", "add fireworks to the red circle"]
    editor = Editor(model, "cpu")
    from_editor = editor.encode_text(prompts)
    image = Image.new("RGB", (32, 32))
    examples = [(EditExample(image, image, p), torch.Generator().manual_seed(0), "edited") for p in prompts]
    config = TrainConfig(output_dir="unused", train_data="unused", from_scratch="unused", resolution=32)
    from_trainer = encode_batch(examples, config, model.vae, model.text_encoder, model.tokenizer, "cpu")[3]
    assert torch.equal(from_editor, from_trainer)
    # ...and the mask matters for this encoder: without it the padding positions differ.
    model.text_encoder.config.use_attention_mask = False
    assert not torch.equal(from_trainer, encode_prompts(model.tokenizer, model.text_encoder, prompts))


# --- the editor leaves its model alone --------------------------------------------------------------


def test_editor_leaves_the_model_as_it_was(tiny_model_dir):
    parts = tiny_parts()
    model = ModelBundle(
        parts["unet"], parts["vae"], parts["text_encoder"], parts["tokenizer"], dict(parts["scheduler"].config)
    )
    model.unet.train()
    model.vae.eval()
    before = {k: v.clone() for k, v in model.unet.state_dict().items()}
    Editor(model, "cpu").edit(
        Image.new("RGB", (32, 32), "red"), "make it snowy", num_inference_steps=2, seed=0, show_progress=False
    )
    assert model.unet.training and not model.vae.training and model.text_encoder.training
    assert all(p.requires_grad for p in model.unet.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.unet.state_dict().items())


def test_vocabulary_warning_is_the_models_own_hook(tiny_model_dir, tmp_path, recwarn):
    editor = Editor.from_pretrained(tiny_model_dir, device="cpu")
    assert editor.prompt_check is None  # a model without a word list: no check
    default = Editor.from_pretrained(device="cpu")  # the shipped model lists its words in about.json
    with pytest.warns(UserWarning, match="does not know the word 'giraffe'"):
        default.prompt_check("make the giraffe blue")


# --- one atomic writer ------------------------------------------------------------------------------


def test_atomic_file_keeps_the_old_one_on_failure(tmp_path):
    path = tmp_path / "a.txt"
    atomic.write_text(path, "old")
    with pytest.raises(RuntimeError), atomic.atomic_file(path, "w") as stream:
        stream.write("half")
        raise RuntimeError("killed")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["a.txt"]
    assert atomic.temporary_name(path) != atomic.temporary_name(path)  # two writers never share a name


def test_atomic_folder_removes_the_old_one_only_when_the_new_one_is_in(tmp_path, monkeypatch):
    final = tmp_path / "model"
    with atomic.atomic_folder(final) as folder:
        (folder / "weights").write_text("v1")
    seen = []
    real_rmtree = atomic.shutil.rmtree

    def watching_rmtree(path, **kwargs):
        seen.append((final / "weights").read_text())  # what is in place while the old one goes
        real_rmtree(path, **kwargs)

    monkeypatch.setattr(atomic.shutil, "rmtree", watching_rmtree)
    with atomic.atomic_folder(final) as folder:
        (folder / "weights").write_text("v2")
    assert seen == ["v2"] and (final / "weights").read_text() == "v2"
    monkeypatch.undo()
    with pytest.raises(RuntimeError), atomic.atomic_folder(final) as folder:
        (folder / "weights").write_text("v3")
        raise RuntimeError("killed")
    assert (final / "weights").read_text() == "v2" and os.listdir(tmp_path) == ["model"]


def test_atomic_writes_refuse_a_folder_where_a_file_is_meant(tmp_path):
    with pytest.raises(UserError, match="is a folder"):
        atomic.write_text(tmp_path, "x")


# --- one CLI convention -----------------------------------------------------------------------------


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for command in (
        "edit",
        "train",
        "export",
        "info",
        "dataset info",
        "world sample",
        "world generate",
        "world demo",
        "world evaluate",
        "world train-default",
        "world pretrain",
    ):
        assert f"  {command} " in out, command


def test_world_pretrain_errors_are_one_line(capsys, tmp_path):
    assert main(["world", "pretrain", "vae", "-o", str(tmp_path / "v"), "--steps", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ip2p: error:") and "\n" not in err
