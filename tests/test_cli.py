"""The `ip2p` command: outputs, metadata, and one-line errors for bad input."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys

import numpy as np
import pytest
from conftest import scene
from PIL import Image

from instruct_pix2pix.cli import main
from instruct_pix2pix.images import read_metadata

FAST = ["--steps", "2", "--seed", "1"]


def run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *words):
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith("ip2p: error: "), err
    for word in words:
        assert word in lines[0], lines[0]


def test_edit_writes_png_with_reproducible_metadata(capsys, tiny_model_dir, photo, tmp_path):
    out = tmp_path / "out.png"
    code, stdout, _ = run(
        capsys, "edit", photo, "make it snowy", "--then", "add fireworks", "-o", out, "--model", tiny_model_dir, *FAST
    )
    assert code == 0 and stdout.strip() == str(out)
    meta = read_metadata(out)
    record = json.loads(meta["instruct-pix2pix"])
    assert record["instructions"] == ["make it snowy", "add fireworks"]
    assert record["seed"] == 1 and record["num_inference_steps"] == 2 and record["model"] == str(tiny_model_dir)
    # the stored command line reproduces the file exactly
    again = tmp_path / "again.png"
    words = shlex.split(meta["ip2p-command"])
    assert words[:2] == ["ip2p", "edit"]
    words[words.index("OUT.png")] = str(again)
    assert run(capsys, *words[1:])[0] == 0
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(again)))


def test_folder_input_and_several_variants(capsys, tiny_model_dir, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name, seed in (("a.png", 1), ("b.jpg", 2)):
        scene(64, 64, seed).save(inputs / name)
    (inputs / "notes.txt").write_text("not an image, and not picked up")
    out = tmp_path / "out"
    code, stdout, _ = run(
        capsys, "edit", inputs, "make it snowy", "-o", out, "--model", tiny_model_dir, "--num-images", "2", *FAST
    )
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["a_1.png", "a_2.png", "b_1.png", "b_2.png"]
    assert len(stdout.split()) == 4


def test_several_files_as_input(capsys, tiny_model_dir, tmp_path):
    paths = []
    for seed in (1, 2):
        paths.append(tmp_path / f"p{seed}.png")
        scene(64, 64, seed).save(paths[-1])
    code, _, _ = run(capsys, "edit", *paths, "make it snowy", "-o", tmp_path / "out", "--model", tiny_model_dir, *FAST)
    assert code == 0 and sorted(p.name for p in (tmp_path / "out").iterdir()) == ["p1_1.png", "p2_1.png"]


def test_info(capsys, tiny_model_dir, text_to_image_model_dir):
    code, out, _ = run(capsys, "info", "--model", tiny_model_dir)
    assert code == 0 and "editing model" in out and "8 input channels" in out and "CLIPTextModel" in out
    code, out, _ = run(capsys, "info", "--model", text_to_image_model_dir)
    assert code == 0 and "not an editing model" in out


def test_empty_instruction_returns_the_input(capsys, tiny_model_dir, tmp_path):
    source = tmp_path / "in.png"
    scene(64, 64).save(source)
    out = tmp_path / "out.png"
    assert run(capsys, "edit", source, "", "-o", out, "--model", tiny_model_dir, *FAST)[0] == 0
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(source)))


def test_long_instruction_warns_in_one_line(capsys, tiny_model_dir, photo, tmp_path):
    code, _, err = run(
        capsys, "edit", photo, "make it snowy " * 40, "-o", tmp_path / "o.png", "--model", tiny_model_dir, *FAST
    )
    assert code == 0
    warnings = [line for line in err.splitlines() if line.startswith("ip2p: warning:")]
    assert len(warnings) == 1 and "77 tokens" in warnings[0]


def truncated_png(path):
    scene(64, 64).save(path)
    path.write_bytes(path.read_bytes()[:300])


BAD_INPUTS = {
    "missing file": (lambda p: None, "no such file"),
    "not an image": (lambda p: p.write_text("hello"), "not an image"),
    "zero bytes": (lambda p: p.write_bytes(b""), "empty"),
    "truncated": (truncated_png, "truncated"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_image_files(capsys, tiny_model_dir, tmp_path, case):
    make, word = BAD_INPUTS[case]
    source = tmp_path / "input.png"
    make(source)
    out = tmp_path / "out.png"
    code, _, err = run(capsys, "edit", source, "make it snowy", "-o", out, "--model", tiny_model_dir, *FAST)
    assert_one_line_error(code, err, "input.png")
    assert word in err.lower()
    assert not out.exists() and [p.name for p in tmp_path.iterdir() if p.name != "input.png"] == []


def test_over_the_pixel_limit(capsys, tiny_model_dir, photo, tmp_path):
    out = tmp_path / "out.png"
    code, _, err = run(
        capsys, "edit", photo, "make it snowy", "-o", out, "--model", tiny_model_dir, "--max-pixels", "1000", *FAST
    )
    assert_one_line_error(code, err, "--max-pixels")
    assert not out.exists()


@pytest.mark.parametrize(
    "args, words",
    [
        (["--scheduler", "nope"], ["--scheduler", "invalid choice: 'nope'", "euler_ancestral"]),
        (["--steps", "0"], ["--steps", "at least 1"]),
        (["--steps", "-5"], ["--steps"]),
        (["--steps", "many"], ["--steps", "whole number"]),
        (["--dtype", "float8"], ["--dtype", "invalid choice: 'float8'"]),
        (
            ["--device", "cuda:0"] if not __import__("torch").cuda.is_available() else ["--device", "nonsense"],
            ["device"],
        ),
    ],
)
def test_bad_options(capsys, tiny_model_dir, photo, tmp_path, args, words):
    out = tmp_path / "out.png"
    code, _, err = run(capsys, "edit", photo, "make it snowy", "-o", out, "--model", tiny_model_dir, *FAST[:0], *args)
    assert_one_line_error(code, err, *words)
    assert not out.exists()


def test_model_folder_missing_pieces(capsys, tiny_model_dir, photo, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    shutil.rmtree(broken / "unet")
    code, _, err = run(capsys, "edit", photo, "make it snowy", "-o", tmp_path / "o.png", "--model", broken, *FAST)
    assert_one_line_error(code, err, "missing unet/")


def test_text_to_image_model_refused(capsys, text_to_image_model_dir, photo, tmp_path):
    code, _, err = run(capsys, "edit", photo, "x", "-o", tmp_path / "o.png", "--model", text_to_image_model_dir, *FAST)
    assert_one_line_error(code, err, "not an editing model")


def test_output_format_must_keep_the_settings(capsys, tiny_model_dir, photo, tmp_path):
    code, _, err = run(capsys, "edit", photo, "x", "-o", tmp_path / "o.gif", "--model", tiny_model_dir, *FAST)
    assert_one_line_error(code, err, ".png, .jpg/.jpeg or .webp")
    assert not (tmp_path / "o.gif").exists()


def exif_rotated_jpeg(path):
    image = scene(96, 64)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    image.save(path, exif=exif)


def sixteen_bit_gray(path):
    Image.fromarray((np.linspace(0, 65535, 64 * 64).reshape(64, 64)).astype(np.uint16)).save(path)


HANDLED = {
    "exif.jpg": (exif_rotated_jpeg, (64, 96)),
    "rgba.png": (lambda p: scene().convert("RGBA").save(p), (64, 64)),
    "la.png": (lambda p: scene().convert("LA").save(p), (64, 64)),
    "palette.png": (lambda p: scene().convert("P").save(p), (64, 64)),
    "gray16.png": (sixteen_bit_gray, (64, 64)),
    "gray.png": (lambda p: scene().convert("L").save(p), (64, 64)),
    "cmyk.jpg": (lambda p: scene().convert("CMYK").save(p), (64, 64)),
}


@pytest.mark.parametrize("name", HANDLED)
def test_unusual_images_are_handled(capsys, tiny_model_dir, tmp_path, name):
    make, size = HANDLED[name]
    make(tmp_path / name)
    out = tmp_path / "out.png"
    code, _, err = run(
        capsys, "edit", tmp_path / name, "make it snowy", "-o", out, "--model", tiny_model_dir, "--keep-size", *FAST
    )
    assert code == 0, err
    assert Image.open(out).size == size and Image.open(out).mode == "RGB"


def test_console_script_exits_without_traceback(tmp_path):
    """The installed `ip2p` command, as a user runs it (offline: a hub id gives one line, no traceback)."""
    photo = tmp_path / "p.png"
    scene().save(photo)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    ip2p = os.path.join(os.path.dirname(sys.executable), "ip2p")
    done = subprocess.run(
        [
            ip2p,
            "edit",
            str(photo),
            "make it snowy",
            "-o",
            str(tmp_path / "o.png"),
            "--model",
            "timbrooks/instruct-pix2pix",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert_one_line_error(done.returncode, done.stderr, "timbrooks/instruct-pix2pix", "local cache")
    assert not (tmp_path / "o.png").exists()
